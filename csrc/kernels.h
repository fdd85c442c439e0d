// No include guard on purpose: ibb.h includes this file once inside each device namespace.
// Row kernels, declared once per device namespace by ibb.h. Outputs are written through the data
// pointers of the (const) tensor handles they are given, so views such as narrow() can be passed.

// out[r] = sum_c x[r, c]^2, or 1 / max(sqrt(that), kNormEps) when `inverse`.
void row_sumsq(const at::Tensor& x, const at::Tensor& out, bool inverse);

// dots[i, a] -> phi[i, a] = softmax_a(-beta (cn[a] - 2 inv[i] dots[i, a])) in place. When log_q is
// defined, also loss[i] = -sum_a phi[i, a] log_q[a, labels[i]] (NaN when labels[i] is not in [0, K)).
// beta: a 0-d tensor of the dots' dtype on their device (read by the kernel: no host sync).
void softmax_rows(const at::Tensor& dots, const at::Tensor& cn, const at::Tensor& inv,
                  const at::Tensor& labels, const at::Tensor& log_q, const at::Tensor& loss,
                  const at::Tensor& beta);

// w[i, a] = -grad_loss[i] phi[i, a] (log_q[a, labels[i]] + loss[i]): the gradient of the loss
// with respect to the softmax logits (NaN when labels[i] is not in [0, K)).
void ibb_logit_grad(const at::Tensor& phi, const at::Tensor& labels, const at::Tensor& log_q,
                    const at::Tensor& loss, const at::Tensor& grad_loss, const at::Tensor& w);

// w[i, a] = phi[i, a] (grad_phi[i, a] - sum_b phi[i, b] grad_phi[i, b])   (softmax backward)
void softmax_grad(const at::Tensor& phi, const at::Tensor& grad_phi, const at::Tensor& w);

// In place, g = w C on entry: g <- 2 beta inv (g - f̂ (f̂ . g)) with f̂ = inv f when normalize
// (the backward of the L2 normalisation), else g <- 2 beta g. beta: 0-d, as in softmax_rows.
void features_grad(const at::Tensor& g, const at::Tensor& features, const at::Tensor& inv,
                   const at::Tensor& beta, bool normalize);

// The per-batch β fit (ibb_fit_beta). In place, dots [n, A] -> d2[i, a] = max(0, fsq[i] + cn[a]
// - 2 inv[i] dots[i, a]) minus its row minimum; scale = max(mean d2, tiny); log β is searched on
// `grid` log-spaced points in [log(1e-4 / scale), log(1e6 / scale)], then on `grid` points between
// the two that bracket the target mean entropy H(β) = mean_i H(softmax_a(-β d2[i, a])), and
// interpolated linearly between the last bracket. Writes β to out (0-d, the dots' dtype).
void fit_beta(const at::Tensor& dots, const at::Tensor& fsq, const at::Tensor& inv,
              const at::Tensor& cn, double target_entropy, int64_t grid, const at::Tensor& out);

// assign[i] = argmin_a (cn[a] - 2 dots[i, a]) (lowest index on ties),
// mind[i] = max(0, xsq[i] + that minimum) (the squared distance).
void argmin_rows(const at::Tensor& dots, const at::Tensor& xsq, const at::Tensor& cn,
                 const at::Tensor& assign, const at::Tensor& mind);

// out[s, :] = sum_{j in [offsets[s], offsets[s + 1])} src[order[j], :]
void segment_sum(const at::Tensor& src, const at::Tensor& order, const at::Tensor& offsets,
                 const at::Tensor& out);
