// Host side of ibb_forward / ibb_backward and soft_assign (+ backward): checks, one ATen GEMM per
// direction, and the device's row kernels.
//
// Buffers: forward allocates dots = F C^T [n, A] and the row kernel overwrites it with phi, which is
// returned and saved for backward (the only n x A buffer autograd keeps). Backward allocates one
// more n x A buffer (the logit gradient w) and the [n, D] result G = w C, finished in place.
#include "ibb.h"

#include <c10/core/impl/LocalDispatchKeySet.h>

#include <cmath>

namespace ribkernels {
namespace {

// Inside the op, ATen's own matmul must not be re-cast by autocast: everything runs in the
// dtype the op was called with (float32 or float64).
using NoAutocast = c10::impl::ExcludeDispatchKeyGuard;

void check_features_centroids(const char* op, const at::Tensor& features,
                              const at::Tensor& centroids) {
  check_matrix(op, "features", features);
  check_matrix(op, "centroids", centroids);
  check_same(op, "centroids", centroids, features);
  TORCH_CHECK_VALUE(centroids.size(1) == features.size(1), op, ": centroids must have shape [A, ",
                    features.size(1), "] (features are [n, D] with D = ", features.size(1),
                    "), got ", describe(centroids));
  TORCH_CHECK_VALUE(centroids.size(0) >= 1, op, ": centroids must hold at least one cluster, got ",
                    describe(centroids));
}

void check_log_q(const char* op, const at::Tensor& log_q, const at::Tensor& centroids,
                 const at::Tensor& features) {
  check_matrix(op, "log_q", log_q);
  check_same(op, "log_q", log_q, features);
  TORCH_CHECK_VALUE(log_q.size(0) == centroids.size(0) && log_q.size(1) >= 1, op,
                    ": log_q must have shape [A, K] with A = ", centroids.size(0),
                    " (the number of centroids) and K >= 1, got ", describe(log_q));
}

at::Tensor row_norms(const at::Tensor& x, bool inverse) {
  auto out = at::empty({x.size(0)}, x.options());
  RIBKERNELS_LAUNCH(x, row_sumsq, x, out, inverse);
  return out;
}

at::Tensor inv_norms(const at::Tensor& f, bool normalize) {
  return normalize ? row_norms(f, /*inverse=*/true) : at::ones({f.size(0)}, f.options());
}

}  // namespace

namespace {

void check_forward_args(const char* op, const at::Tensor& features, const at::Tensor& labels,
                        const at::Tensor& centroids, const at::Tensor& log_q, bool check_range) {
  check_features_centroids(op, features, centroids);
  check_log_q(op, log_q, centroids, features);
  // Without the range check (no sync), the kernels give NaN for rows whose label is out of range.
  check_labels(op, labels, features.size(0), log_q.size(1), features, check_range);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_impl(
    const at::Tensor& features, const at::Tensor& labels, const at::Tensor& centroids,
    const at::Tensor& log_q, const at::Tensor& beta, bool normalize) {
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  auto f = features.contiguous(), c = centroids.contiguous(), lq = log_q.contiguous();
  auto y = labels.contiguous();
  auto inv = inv_norms(f, normalize);
  auto cn = row_norms(c, /*inverse=*/false);
  auto loss = at::empty({f.size(0)}, f.options());
  auto phi = at::mm(f, c.t());  // dots, overwritten with phi
  RIBKERNELS_LAUNCH(f, softmax_rows, phi, cn, inv, y, lq, loss, beta);
  return {loss, phi, inv};
}

void check_backward_args(const char* op, const at::Tensor& grad_loss, const at::Tensor& features,
                         const at::Tensor& labels, const at::Tensor& centroids,
                         const at::Tensor& log_q, const at::Tensor& phi,
                         const at::Tensor& inv_norm, const at::Tensor& loss) {
  check_features_centroids(op, features, centroids);
  check_log_q(op, log_q, centroids, features);
  const int64_t n = features.size(0), A = centroids.size(0);
  TORCH_CHECK_VALUE(phi.sizes() == at::IntArrayRef({n, A}), op, ": phi must have shape [", n, ", ",
                    A, "], got ", describe(phi));
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"grad_loss", &grad_loss},
                                {"inv_norm", &inv_norm}, {"loss", &loss}}) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == n, op, ": ", name, " must have shape [", n,
                      "], got ", describe(*t));
    check_same(op, name, *t, features);
  }
  check_same(op, "phi", phi, features);
  TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == n && labels.scalar_type() == at::kLong,
                    op, ": labels must be int64 of shape [", n, "], got ", describe(labels));
}

at::Tensor backward_impl(const at::Tensor& grad_loss, const at::Tensor& features,
                         const at::Tensor& labels, const at::Tensor& centroids,
                         const at::Tensor& log_q, const at::Tensor& phi,
                         const at::Tensor& inv_norm, const at::Tensor& loss,
                         const at::Tensor& beta, bool normalize) {
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  auto f = features.contiguous(), c = centroids.contiguous(), lq = log_q.contiguous();
  auto p = phi.contiguous(), y = labels.contiguous(), g = grad_loss.contiguous();
  auto w = at::empty_like(p);
  RIBKERNELS_LAUNCH(f, ibb_logit_grad, p, y, lq, loss.contiguous(), g, w);
  auto grad = at::mm(w, c);
  RIBKERNELS_LAUNCH(f, features_grad, grad, f, inv_norm.contiguous(), beta, normalize);
  return grad;
}

// A float beta as the 0-d tensor the kernels read (on CUDA: one fill kernel, no sync).
at::Tensor beta_scalar(double beta, const at::Tensor& ref) { return at::full({}, beta, ref.options()); }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> ibb_forward(
    const at::Tensor& features, const at::Tensor& labels, const at::Tensor& centroids,
    const at::Tensor& log_q, double beta, bool normalize, bool check_labels_range) {
  const char* op = "ribkernels::ibb_forward";
  check_forward_args(op, features, labels, centroids, log_q, check_labels_range);
  check_beta(op, beta);
  return forward_impl(features, labels, centroids, log_q, beta_scalar(beta, features), normalize);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ibb_forward_tb(
    const at::Tensor& features, const at::Tensor& labels, const at::Tensor& centroids,
    const at::Tensor& log_q, const at::Tensor& beta, bool normalize, bool check_labels_range) {
  const char* op = "ribkernels::ibb_forward.beta_tensor";
  check_forward_args(op, features, labels, centroids, log_q, check_labels_range);
  auto b = check_beta_tensor(op, beta, features);
  return forward_impl(features, labels, centroids, log_q, b, normalize);
}

at::Tensor ibb_backward(
    const at::Tensor& grad_loss, const at::Tensor& features, const at::Tensor& labels,
    const at::Tensor& centroids, const at::Tensor& log_q, const at::Tensor& phi,
    const at::Tensor& inv_norm, const at::Tensor& loss, double beta, bool normalize) {
  check_backward_args("ribkernels::ibb_backward", grad_loss, features, labels, centroids, log_q,
                      phi, inv_norm, loss);
  return backward_impl(grad_loss, features, labels, centroids, log_q, phi, inv_norm, loss,
                       beta_scalar(beta, features), normalize);
}

at::Tensor ibb_backward_tb(
    const at::Tensor& grad_loss, const at::Tensor& features, const at::Tensor& labels,
    const at::Tensor& centroids, const at::Tensor& log_q, const at::Tensor& phi,
    const at::Tensor& inv_norm, const at::Tensor& loss, const at::Tensor& beta, bool normalize) {
  const char* op = "ribkernels::ibb_backward.beta_tensor";
  check_backward_args(op, grad_loss, features, labels, centroids, log_q, phi, inv_norm, loss);
  auto b = check_beta_tensor(op, beta, features);
  return backward_impl(grad_loss, features, labels, centroids, log_q, phi, inv_norm, loss, b,
                       normalize);
}

namespace {

void check_fit_args(const char* op, const at::Tensor& features, const at::Tensor& centroids,
                    double target_entropy, int64_t grid) {
  check_features_centroids(op, features, centroids);
  TORCH_CHECK_VALUE(features.size(0) >= 1, op, ": features must hold at least one row, got ",
                    describe(features));
  TORCH_CHECK_VALUE(centroids.size(0) >= 2, op, ": centroids must hold at least 2 clusters (with "
                    "one, phi = 1 whatever beta), got ", describe(centroids));
  TORCH_CHECK_VALUE(std::isfinite(target_entropy) && target_entropy > 0, op,
                    ": target_entropy must be a positive finite number of nats, got ",
                    target_entropy);
  TORCH_CHECK_VALUE(grid >= 2 && grid <= 1024, op, ": grid must lie in [2, 1024], got ", grid);
}

// The fit on dots = F C^T (left untouched): returns the fitted beta, 0-d.
at::Tensor fit_on_dots(const at::Tensor& f, const at::Tensor& dots, const at::Tensor& inv,
                       const at::Tensor& cn, bool normalize, double target_entropy, int64_t grid,
                       bool dots_scratch) {
  auto sq = row_norms(f, /*inverse=*/false);
  auto fsq = normalize ? sq * inv * inv : sq;  // ||f̂_i||^2
  auto d2 = dots_scratch ? dots : dots.clone();  // overwritten with the shifted squared distances
  auto out = at::empty({}, f.options());
  RIBKERNELS_LAUNCH(f, fit_beta, d2, fsq, inv, cn, target_entropy, grid, out);
  return out;
}

}  // namespace

at::Tensor ibb_fit_beta(const at::Tensor& features, const at::Tensor& centroids,
                        double target_entropy, bool normalize, int64_t grid) {
  check_fit_args("ribkernels::ibb_fit_beta", features, centroids, target_entropy, grid);
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);

  auto f = features.contiguous(), c = centroids.contiguous();
  auto inv = inv_norms(f, normalize);
  auto cn = row_norms(c, /*inverse=*/false);
  return fit_on_dots(f, at::mm(f, c.t()), inv, cn, normalize, target_entropy, grid, true);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ibb_forward_fit(
    const at::Tensor& features, const at::Tensor& labels, const at::Tensor& centroids,
    const at::Tensor& log_q, const c10::optional<at::Tensor>& log_beta_ema, double momentum,
    double target_entropy, bool normalize, bool check_labels_range, int64_t grid) {
  const char* op = "ribkernels::ibb_forward_fit";
  check_forward_args(op, features, labels, centroids, log_q, check_labels_range);
  check_fit_args(op, features, centroids, target_entropy, grid);
  TORCH_CHECK_VALUE(std::isfinite(momentum) && momentum >= 0 && momentum < 1, op,
                    ": momentum must lie in [0, 1), got ", momentum);
  const bool has_ema = log_beta_ema.has_value() && log_beta_ema->defined();
  at::Tensor ema;
  if (has_ema) {
    const auto& e = *log_beta_ema;
    TORCH_CHECK_VALUE(e.dim() == 0 && at::isFloatingType(e.scalar_type()), op,
                      ": log_beta_ema must be a 0-d floating tensor, got ", describe(e));
    TORCH_CHECK_VALUE(e.device() == features.device(), op, ": log_beta_ema must be on ",
                      features.device(), " like features, got ", describe(e));
    ema = e.to(features.scalar_type());
  }
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);

  auto f = features.contiguous(), c = centroids.contiguous(), lq = log_q.contiguous();
  auto y = labels.contiguous();
  auto inv = inv_norms(f, normalize);
  auto cn = row_norms(c, /*inverse=*/false);
  auto phi = at::mm(f, c.t());  // dots, overwritten with phi
  auto logb = fit_on_dots(f, phi, inv, cn, normalize, target_entropy, grid, false).log_();
  auto ema_out = has_ema ? ema * momentum + logb * (1.0 - momentum) : logb;
  auto beta = ema_out.exp();
  auto loss = at::empty({f.size(0)}, f.options());
  RIBKERNELS_LAUNCH(f, softmax_rows, phi, cn, inv, y, lq, loss, beta);
  return {loss, phi, inv, beta, ema_out};
}

std::tuple<at::Tensor, at::Tensor> soft_assign(
    const at::Tensor& features, const at::Tensor& centroids, double beta, bool normalize) {
  const char* op = "ribkernels::soft_assign";
  check_features_centroids(op, features, centroids);
  check_beta(op, beta);
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);

  auto f = features.contiguous(), c = centroids.contiguous();
  auto inv = inv_norms(f, normalize);
  auto cn = row_norms(c, /*inverse=*/false);
  auto phi = at::mm(f, c.t());
  RIBKERNELS_LAUNCH(f, softmax_rows, phi, cn, inv, at::Tensor(), at::Tensor(), at::Tensor(),
                    beta_scalar(beta, f));
  return {phi, inv};
}

at::Tensor soft_assign_backward(
    const at::Tensor& grad_phi, const at::Tensor& features, const at::Tensor& centroids,
    const at::Tensor& phi, const at::Tensor& inv_norm, double beta, bool normalize) {
  const char* op = "ribkernels::soft_assign_backward";
  check_features_centroids(op, features, centroids);
  const int64_t n = features.size(0), A = centroids.size(0);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"grad_phi", &grad_phi},
                                {"phi", &phi}}) {
    TORCH_CHECK_VALUE(t->sizes() == at::IntArrayRef({n, A}), op, ": ", name, " must have shape [",
                      n, ", ", A, "], got ", describe(*t));
    check_same(op, name, *t, features);
  }
  TORCH_CHECK_VALUE(inv_norm.dim() == 1 && inv_norm.size(0) == n, op,
                    ": inv_norm must have shape [", n, "], got ", describe(inv_norm));
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);

  auto f = features.contiguous(), c = centroids.contiguous(), p = phi.contiguous();
  auto w = at::empty_like(p);
  RIBKERNELS_LAUNCH(f, softmax_grad, p, grad_phi.contiguous(), w);
  auto grad = at::mm(w, c);
  RIBKERNELS_LAUNCH(f, features_grad, grad, f, inv_norm.contiguous(), beta_scalar(beta, f), normalize);
  return grad;
}

at::Tensor soft_counts(
    const at::Tensor& features, const at::Tensor& labels, const at::Tensor& centroids,
    double beta, int64_t num_classes, bool normalize) {
  const char* op = "ribkernels::soft_counts";
  check_features_centroids(op, features, centroids);
  check_beta(op, beta);
  TORCH_CHECK_VALUE(num_classes >= 1, op, ": num_classes must be >= 1, got ", num_classes);
  check_labels(op, labels, features.size(0), num_classes, features);
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);

  auto f = features.contiguous(), c = centroids.contiguous(), y = labels.contiguous();
  const int64_t n = f.size(0), A = c.size(0);
  auto inv = inv_norms(f, normalize);
  auto cn = row_norms(c, /*inverse=*/false);
  auto counts_t = at::zeros({num_classes, A}, f.options());  // [K, A]: rows are written whole
  auto part = at::empty({num_classes, A}, f.options());
  auto b = beta_scalar(beta, f);
  const int64_t step = chunk_rows(n, A);
  for (int64_t r0 = 0; r0 < n; r0 += step) {
    const int64_t rows = std::min(step, n - r0);
    auto phi = at::mm(f.narrow(0, r0, rows), c.t());
    RIBKERNELS_LAUNCH(f, softmax_rows, phi, cn, inv.narrow(0, r0, rows), at::Tensor(),
                      at::Tensor(), at::Tensor(), b);
    auto [order, offsets] = csr_by_key(y.narrow(0, r0, rows), num_classes);
    RIBKERNELS_LAUNCH(f, segment_sum, phi, order, offsets, part);
    counts_t.add_(part);
  }
  return counts_t.t().contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kmeans_step(
    const at::Tensor& features, const at::Tensor& centroids) {
  const char* op = "ribkernels::kmeans_step";
  check_features_centroids(op, features, centroids);
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);

  auto x = features.contiguous(), c = centroids.contiguous();
  const int64_t n = x.size(0), A = c.size(0);
  auto xsq = row_norms(x, /*inverse=*/false);
  auto cn = row_norms(c, /*inverse=*/false);
  auto assign = at::empty({n}, x.options().dtype(at::kLong));
  auto mind = at::empty({n}, x.options());
  const int64_t step = chunk_rows(n, A);
  for (int64_t r0 = 0; r0 < n; r0 += step) {
    const int64_t rows = std::min(step, n - r0);
    auto dots = at::mm(x.narrow(0, r0, rows), c.t());
    RIBKERNELS_LAUNCH(x, argmin_rows, dots, xsq.narrow(0, r0, rows), cn, assign.narrow(0, r0, rows),
                      mind.narrow(0, r0, rows));
  }
  auto [order, offsets] = csr_by_key(assign, A);
  auto counts = offsets.narrow(0, 1, A) - offsets.narrow(0, 0, A);
  auto sums = at::empty({A, x.size(1)}, x.options());
  RIBKERNELS_LAUNCH(x, segment_sum, x, order, offsets, sums);
  return {assign, sums, counts, mind};
}

}  // namespace ribkernels
