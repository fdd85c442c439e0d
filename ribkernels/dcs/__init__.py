"""DCS-Attention: binary Gumbel channel mask + masked QKᵀ attention (docs/design.md §2)."""
