"""Float64 references written directly from the formulas of docs/design.md §2 (independent of ribkernels' backends).

Shared by the DCS test files. ``reference_forward_backward`` returns the output and the gradients of
q, k, v and θ for a given upstream gradient, with θ's gradient from the straight-through rule
``dθ = Σ_broadcast dM · soft · (1 − soft) / τ``.
"""
import torch


def reduce_to_shape(t: torch.Tensor, shape) -> torch.Tensor:
    """Sum ``t`` over the dimensions along which a tensor of ``shape`` was broadcast to ``t``."""
    shape = tuple(shape)
    lead = t.dim() - len(shape)
    if lead:
        t = t.sum(dim=tuple(range(lead)))
    dims = tuple(i for i, s in enumerate(shape) if s == 1 and t.shape[i] != 1)
    return t.sum(dim=dims, keepdim=True) if dims else t


def reference_forward_backward(q, k, v, theta, noise, grad_out, *, tau=1.0, scale=None, training=True,
                               mask=None):
    """All inputs are upcast to float64. ``noise`` may be None only when ``training`` is False.
    ``mask``: the 0/1 training mask to use instead of ``1[θ + noise > 0]`` (contract v2 decides it
    as ``u > sigmoid(−θ)`` in float32); ``soft`` still comes from ``θ + noise``."""
    q, k, v, theta, grad_out = (t.detach().double() for t in (q, k, v, theta, grad_out))
    D = q.shape[-1]
    scale = D ** -0.5 if scale is None else scale
    if training:
        z = theta + noise.detach().double()
        mask = (z > 0).double() if mask is None else mask.detach().double()
        soft = torch.sigmoid(z / tau)
    else:
        mask = (theta > 0).double().expand_as(theta)
    mask = mask.expand(q.shape).clone().requires_grad_(True)
    q, k, v = (t.clone().requires_grad_(True) for t in (q, k, v))
    s = scale * (q * mask) @ (k * mask).transpose(-2, -1)
    out = torch.softmax(s, dim=-1) @ v
    dq, dk, dv, dmask = torch.autograd.grad(out, (q, k, v, mask), grad_out)
    if training:
        dtheta = reduce_to_shape(dmask * soft.expand(q.shape) * (1 - soft.expand(q.shape)) / tau, theta.shape)
    else:
        dtheta = torch.zeros_like(theta)
    return out.detach(), dq, dk, dv, dtheta


def manual_mask_gradient(q, k, v, mask, grad_out, scale):
    """dM from the closed form in docs/design.md §2: dM_i = (dS·(k⊙M))_i ⊙ q_i + (dSᵀ·(q⊙M))_i ⊙ k_i (float64)."""
    q, k, v, mask, grad_out = (t.double() for t in (q, k, v, mask, grad_out))
    qm, km = q * mask, k * mask
    p = torch.softmax(scale * qm @ km.transpose(-2, -1), dim=-1)
    out = p @ v
    dp = grad_out @ v.transpose(-2, -1)
    ds = p * (dp - (grad_out * out).sum(-1, keepdim=True))
    return scale * ((ds @ km) * q + (ds.transpose(-2, -1) @ qm) * k)
