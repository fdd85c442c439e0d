// Argument checks of the host ops. Errors name the op, the argument, what it got and what was
// expected; TORCH_CHECK_TYPE / TORCH_CHECK_VALUE surface in Python as TypeError / ValueError.
#include "ibb.h"

#include <cmath>
#include <sstream>

namespace ribkernels {

std::string describe(const at::Tensor& t) {
  std::ostringstream s;
  s << "shape " << t.sizes() << ", dtype " << t.scalar_type() << ", device " << t.device();
  return s.str();
}

void check_matrix(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
                   " must be float32 or float64 (ribkernels.ibb upcasts other dtypes), got ",
                   describe(t));
  TORCH_CHECK_VALUE(t.dim() == 2, op, ": ", name, " must be 2-D, got ", describe(t));
}

void check_same(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " must be on ", ref.device(),
                    " like features, got ", describe(t));
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have dtype ",
                   ref.scalar_type(), " like features, got ", describe(t));
}

void check_labels(const char* op, const at::Tensor& labels, int64_t n, int64_t num_classes,
                  const at::Tensor& ref, bool check_range) {
  TORCH_CHECK_TYPE(labels.defined() && labels.scalar_type() == at::kLong, op,
                   ": labels must be an int64 tensor, got ",
                   labels.defined() ? describe(labels) : std::string("undefined"));
  TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == n, op, ": labels must have shape [",
                    n, "] (one per feature row), got ", describe(labels));
  TORCH_CHECK_VALUE(labels.device() == ref.device(), op, ": labels must be on ", ref.device(),
                    " like features, got ", describe(labels));
  if (n == 0 || !check_range) return;
  // One device->host copy of the labels (a sync on CUDA, no kernel), min/max on the host.
  const auto host = labels.to(at::kCPU);
  const auto range = at::aminmax(host);
  const int64_t lo = std::get<0>(range).item<int64_t>(), hi = std::get<1>(range).item<int64_t>();
  TORCH_CHECK_VALUE(lo >= 0 && hi < num_classes, op, ": labels must lie in [0, ", num_classes,
                    "), got values in [", lo, ", ", hi, "] (labels: ", describe(labels), ")");
}

void check_beta(const char* op, double beta) {
  TORCH_CHECK_VALUE(std::isfinite(beta) && beta > 0, op, ": beta must be a positive finite number, got ",
                    beta);
}

at::Tensor check_beta_tensor(const char* op, const at::Tensor& beta, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(beta.defined(), op, ": beta is undefined");
  TORCH_CHECK_TYPE(at::isFloatingType(beta.scalar_type()), op,
                   ": beta must be a positive float or a 0-d floating tensor, got ", describe(beta));
  TORCH_CHECK_VALUE(beta.dim() == 0, op, ": beta must be a 0-d tensor (one temperature), got ",
                    describe(beta));
  TORCH_CHECK_VALUE(beta.device() == ref.device(), op, ": beta must be on ", ref.device(),
                    " like features, got ", describe(beta));
  auto b = beta.to(ref.scalar_type());
  if (b.device().is_cpu()) check_beta(op, b.item<double>());  // no sync on CPU
  return b;
}

int64_t chunk_rows(int64_t rows, int64_t cols) {
  const int64_t budget = int64_t(1) << 24;
  return std::max<int64_t>(1, std::min<int64_t>(rows, budget / std::max<int64_t>(cols, 1)));
}

std::tuple<at::Tensor, at::Tensor> csr_by_key(const at::Tensor& keys, int64_t num_segments) {
  auto sorted = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  auto bounds = at::arange(num_segments + 1, keys.options());
  auto offsets = at::searchsorted(std::get<0>(sorted), bounds);
  return {std::get<1>(sorted).contiguous(), offsets.contiguous()};
}

}  // namespace ribkernels
