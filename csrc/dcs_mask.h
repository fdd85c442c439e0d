// The DCS-Attention mask pre-pass on the CPU (noise contract v2, docs/design.md §2.1): one pass makes the
// training mask M = 1[u > sigmoid(-θ)] of a [B, H, N, D] attention input and applies it to q and k;
// its backward regenerates u (one Philox-4x32-10 call per 4 elements) for the straight-through dθ.
#pragma once

#include <ATen/ATen.h>
#include <tuple>

namespace ribkernels {

// q, k: [B, H, N, D] (any float dtype, last dim contiguous); theta: float32, expanded to q's shape
// (stride 0 or 1 on D); seed: 0-d int64 CPU tensor in [0, 2**63); offset >= 0 (Philox calls).
// Returns qm = q·M, km = k·M (contiguous, q's dtype; a NaN in q or k stays NaN), M as uint8
// [B, H, N, D], and q_nan_count, a 0-d int64 count of NaN in q (so callers can restore the NaN
// rows that SDPA would zero). tau (> 0) is unused here: the registered autograd passes it to the
// backward.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dcs_mask_apply(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& theta, const at::Tensor& seed,
    int64_t offset, double tau);

// grad_qm, grad_km: [B, H, N, D] gradients of qm, km. Returns grad_q = grad_qm·M,
// grad_k = grad_km·M and, when theta_grad, grad_theta = (grad_qm·q + grad_km·k)·soft·(1-soft)/τ
// (float32, [B, H, N, D]; an empty tensor otherwise), soft = sigmoid((θ + L)/τ) for the same u.
std::tuple<at::Tensor, at::Tensor, at::Tensor> dcs_mask_apply_backward(
    const at::Tensor& grad_qm, const at::Tensor& grad_km, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& theta, const at::Tensor& mask, const at::Tensor& seed, int64_t offset,
    double tau, bool theta_grad);

}  // namespace ribkernels
