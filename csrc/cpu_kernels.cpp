// CPU row kernels (see ibb.h for what each computes). Rows are split across threads with
// at::parallel_for; every row is owned by one thread, so results do not depend on the thread count.
#include "ibb.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <limits>

namespace ribkernels {
namespace cpu {
namespace {

// Rows per task: enough work per task to amortise scheduling.
int64_t grain(int64_t cols) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(cols, 1)); }

// Reductions with 8 independent partial sums: the compiler may not reorder floating-point adds,
// so a single accumulator would be one serial dependency chain (and never vectorised).
template <typename T>
T dot(const T* a, const T* b, int64_t n) {
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += a[i + k] * b[i + k];
  T s = 0;
  for (; i < n; ++i) s += a[i] * b[i];
  return s + ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

template <typename T>
T sum(const T* a, int64_t n) {
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += a[i + k];
  T s = 0;
  for (; i < n; ++i) s += a[i];
  return s + ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}


template <typename T>
void row_sumsq_impl(const T* x, T* out, int64_t rows, int64_t cols, bool inverse) {
  at::parallel_for(0, rows, grain(cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * cols;
      const T s = dot(xr, xr, cols);
      out[r] = inverse ? T(1) / std::max(std::sqrt(s), T(kNormEps)) : s;
    }
  });
}

// Two passes around ATen's vectorised exp (SIMD for this CPU, unlike a baseline-ISA loop here):
// logits minus the row max, exp in place, then normalisation and the weighted gather of log Q.
template <typename T>
void logits_minus_max_impl(T* dots, const T* cn, const T* inv, int64_t n, int64_t A, T beta) {
  at::parallel_for(0, n, grain(A), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      T* row = dots + i * A;
      const T two_inv = T(2) * inv[i];
      for (int64_t a = 0; a < A; ++a) row[a] = -beta * (cn[a] - two_inv * row[a]);
      T mx = -std::numeric_limits<T>::infinity();
      for (int64_t a = 0; a < A; ++a) mx = row[a] > mx ? row[a] : mx;
      for (int64_t a = 0; a < A; ++a) row[a] -= mx;
    }
  });
}

template <typename T>
void normalize_rows_impl(T* rows, const int64_t* labels, const T* log_q, T* loss, int64_t n,
                         int64_t A, int64_t K) {
  at::parallel_for(0, n, grain(A), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      T* row = rows + i * A;
      const T scale = T(1) / sum(row, A);
      for (int64_t a = 0; a < A; ++a) row[a] *= scale;
      if (log_q) {
        const int64_t y = labels[i];
        if (y < 0 || y >= K) {
          loss[i] = std::numeric_limits<T>::quiet_NaN();
          continue;
        }
        const T* lq = log_q + y;
        T weighted = 0;
        for (int64_t a = 0; a < A; ++a) weighted += row[a] * lq[a * K];
        loss[i] = -weighted;
      }
    }
  });
}

template <typename T>
void ibb_logit_grad_impl(const T* phi, const int64_t* labels, const T* log_q, const T* loss,
                         const T* g, T* w, int64_t n, int64_t A, int64_t K) {
  at::parallel_for(0, n, grain(A), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const T* p = phi + i * A;
      T* wr = w + i * A;
      const int64_t y = labels[i];
      if (y < 0 || y >= K) {
        for (int64_t a = 0; a < A; ++a) wr[a] = std::numeric_limits<T>::quiet_NaN();
        continue;
      }
      const T* lq = log_q + y;
      for (int64_t a = 0; a < A; ++a) wr[a] = -g[i] * p[a] * (lq[a * K] + loss[i]);
    }
  });
}

template <typename T>
void softmax_grad_impl(const T* phi, const T* dphi, T* w, int64_t n, int64_t A) {
  at::parallel_for(0, n, grain(A), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const T* p = phi + i * A;
      const T* d = dphi + i * A;
      const T pd = dot(p, d, A);
      T* wr = w + i * A;
      for (int64_t a = 0; a < A; ++a) wr[a] = p[a] * (d[a] - pd);
    }
  });
}

template <typename T>
void features_grad_impl(T* g, const T* f, const T* inv, int64_t n, int64_t D, T beta,
                        bool normalize) {
  at::parallel_for(0, n, grain(D), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      T* gr = g + i * D;
      const T* fr = f + i * D;
      if (!normalize) {
        for (int64_t d = 0; d < D; ++d) gr[d] *= T(2) * beta;
        continue;
      }
      const T s = inv[i];
      const T fg = dot(fr, gr, D) * s;  // f̂ . g
      const T scale = T(2) * beta * s;
      for (int64_t d = 0; d < D; ++d) gr[d] = scale * (gr[d] - fr[d] * s * fg);
    }
  });
}

template <typename T>
void argmin_rows_impl(const T* dots, const T* xsq, const T* cn, int64_t* assign, T* mind,
                      int64_t n, int64_t A) {
  at::parallel_for(0, n, grain(A), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const T* row = dots + i * A;
      T best = std::numeric_limits<T>::infinity();
      int64_t arg = 0;
      for (int64_t a = 0; a < A; ++a) {
        const T d = cn[a] - T(2) * row[a];
        if (d < best) {  // strict: the lowest index wins ties
          best = d;
          arg = a;
        }
      }
      assign[i] = arg;
      mind[i] = std::max(T(0), xsq[i] + best);
    }
  });
}

template <typename T>
void segment_sum_impl(const T* src, const int64_t* order, const int64_t* offsets, T* out,
                      int64_t segments, int64_t cols) {
  at::parallel_for(0, segments, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      T* o = out + s * cols;
      for (int64_t c = 0; c < cols; ++c) o[c] = 0;
      for (int64_t j = offsets[s]; j < offsets[s + 1]; ++j) {
        const T* r = src + order[j] * cols;
        for (int64_t c = 0; c < cols; ++c) o[c] += r[c];
      }
    }
  });
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

}  // namespace

void row_sumsq(const at::Tensor& x, const at::Tensor& out, bool inverse) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "row_sumsq_cpu", [&] {
    row_sumsq_impl<scalar_t>(x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), x.size(0), x.size(1),
                             inverse);
  });
}

void softmax_rows(const at::Tensor& dots, const at::Tensor& cn, const at::Tensor& inv,
                  const at::Tensor& labels, const at::Tensor& log_q, const at::Tensor& loss,
                  double beta) {
  const int64_t n = dots.size(0), A = dots.size(1);
  AT_DISPATCH_FLOATING_TYPES(dots.scalar_type(), "softmax_rows_cpu", [&] {
    logits_minus_max_impl<scalar_t>(dots.data_ptr<scalar_t>(), cn.data_ptr<scalar_t>(),
                                    inv.data_ptr<scalar_t>(), n, A, static_cast<scalar_t>(beta));
  });
  at::Tensor rows = dots;  // a handle on the same storage
  rows.exp_();
  AT_DISPATCH_FLOATING_TYPES(dots.scalar_type(), "softmax_rows_cpu", [&] {
    normalize_rows_impl<scalar_t>(dots.data_ptr<scalar_t>(),
                                  labels.defined() ? labels.data_ptr<int64_t>() : nullptr,
                                  ptr_or_null<scalar_t>(log_q),
                                  loss.defined() ? loss.data_ptr<scalar_t>() : nullptr, n, A,
                                  log_q.defined() ? log_q.size(1) : 0);
  });
}

void ibb_logit_grad(const at::Tensor& phi, const at::Tensor& labels, const at::Tensor& log_q,
                    const at::Tensor& loss, const at::Tensor& grad_loss, const at::Tensor& w) {
  AT_DISPATCH_FLOATING_TYPES(phi.scalar_type(), "ibb_logit_grad_cpu", [&] {
    ibb_logit_grad_impl<scalar_t>(phi.data_ptr<scalar_t>(), labels.data_ptr<int64_t>(),
                                  log_q.data_ptr<scalar_t>(), loss.data_ptr<scalar_t>(),
                                  grad_loss.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                                  phi.size(0), phi.size(1), log_q.size(1));
  });
}

void softmax_grad(const at::Tensor& phi, const at::Tensor& grad_phi, const at::Tensor& w) {
  AT_DISPATCH_FLOATING_TYPES(phi.scalar_type(), "softmax_grad_cpu", [&] {
    softmax_grad_impl<scalar_t>(phi.data_ptr<scalar_t>(), grad_phi.data_ptr<scalar_t>(),
                                w.data_ptr<scalar_t>(), phi.size(0), phi.size(1));
  });
}

void features_grad(const at::Tensor& g, const at::Tensor& features, const at::Tensor& inv,
                   double beta, bool normalize) {
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "features_grad_cpu", [&] {
    features_grad_impl<scalar_t>(g.data_ptr<scalar_t>(), features.data_ptr<scalar_t>(),
                                 inv.data_ptr<scalar_t>(), g.size(0), g.size(1),
                                 static_cast<scalar_t>(beta), normalize);
  });
}

void argmin_rows(const at::Tensor& dots, const at::Tensor& xsq, const at::Tensor& cn,
                 const at::Tensor& assign, const at::Tensor& mind) {
  AT_DISPATCH_FLOATING_TYPES(dots.scalar_type(), "argmin_rows_cpu", [&] {
    argmin_rows_impl<scalar_t>(dots.data_ptr<scalar_t>(), xsq.data_ptr<scalar_t>(),
                               cn.data_ptr<scalar_t>(), assign.data_ptr<int64_t>(),
                               mind.data_ptr<scalar_t>(), dots.size(0), dots.size(1));
  });
}

void segment_sum(const at::Tensor& src, const at::Tensor& order, const at::Tensor& offsets,
                 const at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "segment_sum_cpu", [&] {
    segment_sum_impl<scalar_t>(src.data_ptr<scalar_t>(), order.data_ptr<int64_t>(),
                               offsets.data_ptr<int64_t>(), out.data_ptr<scalar_t>(),
                               out.size(0), out.size(1));
  });
}

}  // namespace cpu
}  // namespace ribkernels
