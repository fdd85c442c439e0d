"""DCS-Attention: binary Gumbel channel mask + masked QKᵀ attention (SPEC §2)."""
