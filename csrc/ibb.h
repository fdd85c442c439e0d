// The IBB bound of the RIB loss (docs/design.md §3): shared declarations of the host ops (device generic:
// argument checks, ATen GEMMs, chunking) and of the per-device row kernels they launch.
//
// Notation: features F [n, D], centroids C [A, D], log_q [A, K], labels y [n] (int64).
// dots[i, a] = F_i · c_a (raw, before normalisation), inv[i] = 1 / max(||F_i||, eps) when the
// features are L2-normalised (1 otherwise), cn[a] = ||c_a||^2. Since ||f̂_i||^2 is the same for
// every cluster it cancels in the softmax:  phi[i, a] = softmax_a(-beta (cn[a] - 2 inv[i] dots[i, a])).
#pragma once

#include <ATen/ATen.h>
#include <tuple>

namespace ribkernels {

constexpr double kNormEps = 1e-12;  // as torch.nn.functional.normalize

// ---- host ops (ops.cpp registers them for CPU and, when built with CUDA, for CUDA) ----
std::tuple<at::Tensor, at::Tensor, at::Tensor> ibb_forward(
    const at::Tensor& features, const at::Tensor& labels, const at::Tensor& centroids,
    const at::Tensor& log_q, double beta, bool normalize, bool check_labels);
at::Tensor ibb_backward(
    const at::Tensor& grad_loss, const at::Tensor& features, const at::Tensor& labels,
    const at::Tensor& centroids, const at::Tensor& log_q, const at::Tensor& phi,
    const at::Tensor& inv_norm, const at::Tensor& loss, double beta, bool normalize);
// The same with β a 0-d floating tensor on the features' device (overload "beta_tensor"): the
// kernels read it where it lives, so a β computed on the GPU needs no host sync. On CPU its value
// is checked (positive, finite); on CUDA it is not (that would be a sync).
std::tuple<at::Tensor, at::Tensor, at::Tensor> ibb_forward_tb(
    const at::Tensor& features, const at::Tensor& labels, const at::Tensor& centroids,
    const at::Tensor& log_q, const at::Tensor& beta, bool normalize, bool check_labels);
at::Tensor ibb_backward_tb(
    const at::Tensor& grad_loss, const at::Tensor& features, const at::Tensor& labels,
    const at::Tensor& centroids, const at::Tensor& log_q, const at::Tensor& phi,
    const at::Tensor& inv_norm, const at::Tensor& loss, const at::Tensor& beta, bool normalize);
// β fitted to one batch (features [n, D], centroids [A, D], A >= 2) so that the mean entropy of
// phi is target_entropy nats: 0-d tensor in the features' dtype, on their device, no host sync.
at::Tensor ibb_fit_beta(const at::Tensor& features, const at::Tensor& centroids,
                        double target_entropy, bool normalize, int64_t grid);
// The training step in one op, sharing one GEMM between the fit and the bound: b = ibb_fit_beta,
// log_beta_ema_out = momentum * log_beta_ema + (1 - momentum) * log b (log b when log_beta_ema is
// undefined), beta = exp(log_beta_ema_out), then ibb_forward with that beta. Returns
// (loss, phi, inv_norm, beta, log_beta_ema_out); no host sync.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ibb_forward_fit(
    const at::Tensor& features, const at::Tensor& labels, const at::Tensor& centroids,
    const at::Tensor& log_q, const c10::optional<at::Tensor>& log_beta_ema, double momentum,
    double target_entropy, bool normalize, bool check_labels, int64_t grid);
std::tuple<at::Tensor, at::Tensor> soft_assign(
    const at::Tensor& features, const at::Tensor& centroids, double beta, bool normalize);
at::Tensor soft_assign_backward(
    const at::Tensor& grad_phi, const at::Tensor& features, const at::Tensor& centroids,
    const at::Tensor& phi, const at::Tensor& inv_norm, double beta, bool normalize);
at::Tensor soft_counts(
    const at::Tensor& features, const at::Tensor& labels, const at::Tensor& centroids,
    double beta, int64_t num_classes, bool normalize);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kmeans_step(
    const at::Tensor& features, const at::Tensor& centroids);

// ---- argument checks shared by the host ops (checks.cpp) ----
std::string describe(const at::Tensor& t);
void check_matrix(const char* op, const char* name, const at::Tensor& t);
void check_same(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref);
// Metadata always; the range [0, num_classes) when check_range (one device->host copy).
void check_labels(const char* op, const at::Tensor& labels, int64_t n, int64_t num_classes,
                  const at::Tensor& ref, bool check_range = true);
void check_beta(const char* op, double beta);
// beta: a defined 0-d floating tensor on ref's device; returns it in ref's dtype. On CPU its value
// is also checked (positive and finite).
at::Tensor check_beta_tensor(const char* op, const at::Tensor& beta, const at::Tensor& ref);
// Rows per chunk so that a chunk x cols buffer stays near 2^24 elements.
int64_t chunk_rows(int64_t rows, int64_t cols);
// (order, offsets[S + 1]) such that rows order[offsets[s]:offsets[s + 1]] carry key s (stable).
std::tuple<at::Tensor, at::Tensor> csr_by_key(const at::Tensor& keys, int64_t num_segments);

// ---- row kernels (kernels.h), one set per device; every tensor they get is contiguous, on one
// device, of one floating dtype (labels, order, offsets, assignments: int64) ----
namespace cpu {
#include "kernels.h"
}
#ifdef WITH_CUDA
namespace cuda {
#include "kernels.h"
}
#endif

// Calls the kernel `name` of the device `t` lives on.
#ifdef WITH_CUDA
#define RIBKERNELS_LAUNCH(t, name, ...)                                                         \
  ((t).is_cuda() ? ::ribkernels::cuda::name(__VA_ARGS__) : ::ribkernels::cpu::name(__VA_ARGS__))
#else
#define RIBKERNELS_LAUNCH(t, name, ...) ::ribkernels::cpu::name(__VA_ARGS__)
#endif

}  // namespace ribkernels
