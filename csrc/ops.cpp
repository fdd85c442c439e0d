// Registers the ops of ribkernels._C under torch.ops.ribkernels. One op name serves CPU and CUDA
// (the same host functions; they launch the kernels of the device their inputs live on).
// Autograd and fake (meta) kernels are registered from Python: ribkernels/ibb/_registrations.py
// (run by ribkernels/_extension.py once the library is loaded).
#include <Python.h>
#include <torch/library.h>

#include "dcs_mask.h"
#include "ibb.h"

namespace ribkernels {
namespace {
bool cuda_enabled() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace
}  // namespace ribkernels

TORCH_LIBRARY(ribkernels, m) {
  // check_labels=False skips the labels' range check (a device sync); out-of-range rows give NaN.
  m.def("ibb_forward(Tensor features, Tensor labels, Tensor centroids, Tensor log_q, float beta, "
        "bool normalize, bool check_labels=True) -> (Tensor loss, Tensor phi, Tensor inv_norm)");
  m.def("ibb_backward(Tensor grad_loss, Tensor features, Tensor labels, Tensor centroids, "
        "Tensor log_q, Tensor phi, Tensor inv_norm, Tensor loss, float beta, bool normalize) "
        "-> Tensor");
  // The same with beta a 0-d tensor on the features' device (no host sync on CUDA).
  m.def("ibb_forward.beta_tensor(Tensor features, Tensor labels, Tensor centroids, Tensor log_q, "
        "Tensor beta, bool normalize, bool check_labels=True) "
        "-> (Tensor loss, Tensor phi, Tensor inv_norm)");
  m.def("ibb_backward.beta_tensor(Tensor grad_loss, Tensor features, Tensor labels, "
        "Tensor centroids, Tensor log_q, Tensor phi, Tensor inv_norm, Tensor loss, Tensor beta, "
        "bool normalize) -> Tensor");
  // beta fitted to a batch so that the mean entropy of phi is target_entropy (0-d, no host sync).
  m.def("ibb_fit_beta(Tensor features, Tensor centroids, float target_entropy, bool normalize, "
        "int grid=48) -> Tensor");
  // A training step's bound with beta fitted to the batch and averaged (one GEMM for both).
  m.def("ibb_forward_fit(Tensor features, Tensor labels, Tensor centroids, Tensor log_q, "
        "Tensor? log_beta_ema, float momentum, float target_entropy, bool normalize, "
        "bool check_labels=True, int grid=48) "
        "-> (Tensor loss, Tensor phi, Tensor inv_norm, Tensor beta, Tensor log_beta_ema_out)");
  m.def("soft_assign(Tensor features, Tensor centroids, float beta, bool normalize) "
        "-> (Tensor phi, Tensor inv_norm)");
  m.def("soft_assign_backward(Tensor grad_phi, Tensor features, Tensor centroids, Tensor phi, "
        "Tensor inv_norm, float beta, bool normalize) -> Tensor");
  m.def("soft_counts(Tensor features, Tensor labels, Tensor centroids, float beta, "
        "int num_classes, bool normalize) -> Tensor");
  m.def("kmeans_step(Tensor features, Tensor centroids) "
        "-> (Tensor assignments, Tensor sums, Tensor counts, Tensor min_dist)");
  m.def("cuda_enabled() -> bool", &ribkernels::cuda_enabled);
  // DCS-Attention mask pre-pass (noise contract v2), CPU only: dcs_mask.h.
  // tau is not used by the forward: it is an argument so the registered autograd can pass it on.
  m.def("dcs_mask_apply(Tensor q, Tensor k, Tensor theta, Tensor seed, int offset, float tau) "
        "-> (Tensor qm, Tensor km, Tensor mask, Tensor q_nan_count)");
  m.def("dcs_mask_apply_backward(Tensor grad_qm, Tensor grad_km, Tensor q, Tensor k, "
        "Tensor theta, Tensor mask, Tensor seed, int offset, float tau, bool theta_grad) "
        "-> (Tensor grad_q, Tensor grad_k, Tensor grad_theta)");
}

TORCH_LIBRARY_IMPL(ribkernels, CPU, m) {
  m.impl("dcs_mask_apply", &ribkernels::dcs_mask_apply);
  m.impl("dcs_mask_apply_backward", &ribkernels::dcs_mask_apply_backward);
}

#define RIBKERNELS_IMPL(KEY)                                           \
  TORCH_LIBRARY_IMPL(ribkernels, KEY, m) {                             \
    m.impl("ibb_forward", &ribkernels::ibb_forward);                   \
    m.impl("ibb_backward", &ribkernels::ibb_backward);                 \
    m.impl("ibb_forward.beta_tensor", &ribkernels::ibb_forward_tb);    \
    m.impl("ibb_backward.beta_tensor", &ribkernels::ibb_backward_tb);  \
    m.impl("ibb_fit_beta", &ribkernels::ibb_fit_beta);                 \
    m.impl("ibb_forward_fit", &ribkernels::ibb_forward_fit);           \
    m.impl("soft_assign", &ribkernels::soft_assign);                   \
    m.impl("soft_assign_backward", &ribkernels::soft_assign_backward); \
    m.impl("soft_counts", &ribkernels::soft_counts);                   \
    m.impl("kmeans_step", &ribkernels::kmeans_step);                   \
  }

RIBKERNELS_IMPL(CPU)
#ifdef WITH_CUDA
RIBKERNELS_IMPL(CUDA)
#endif

// `import ribkernels._C` (the ahead-of-time build) only needs a module object: loading the shared
// library runs the registrations above.
static struct PyModuleDef ribkernels_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&ribkernels_module); }
