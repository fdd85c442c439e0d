// CPU row kernels (see ibb.h for what each computes). Rows are split across threads with
// at::parallel_for; every row is owned by one thread, so results do not depend on the thread count.
#include "ibb.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

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

// ---- the per-batch beta fit (kernels.h: fit_beta) ----
//
// Same rule and arithmetic as the grid search of ribkernels.ibb.calibrate (its float64 reference),
// with one difference in how the grid is visited: H(beta) is non-increasing in beta, so "the number
// of grid points whose mean entropy is above the target" is found by bisection over the grid index
// (about log2(grid) evaluations of H instead of grid). Each evaluation of H is one pass over d2:
// e = exp(-beta d2) (ATen's vectorised exp), then per row H_i = log S_i + beta P_i / S_i with
// S_i = sum_a e, P_i = sum_a e d2 (d2 >= 0 with a zero in every row, so S_i >= 1: no overflow).
// The exponent is floored at log of the smallest normal number (a term below that is under one ulp
// of S_i >= 1): subnormal results make the vectorised exp about ten times slower.
template <typename T>
constexpr T exp_floor() { return sizeof(T) == 4 ? T(-87) : T(-708); }

template <typename T>
struct EntropyOfBeta {
  const at::Tensor& d2;  // [n, A], shifted squared distances
  at::Tensor e;          // [n, A] scratch
  std::vector<T> rows;   // per-row entropies, summed in row order (independent of threads)
  int64_t n, A;

  EntropyOfBeta(const at::Tensor& d2_) : d2(d2_), e(at::empty_like(d2_)), rows(d2_.size(0)),
                                         n(d2_.size(0)), A(d2_.size(1)) {}

  T operator()(T log_beta) {
    const T beta = std::exp(log_beta);
    const T* dp = d2.data_ptr<T>();
    T* z = e.data_ptr<T>();
    at::parallel_for(0, n * A, 32768, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        const T v = -beta * dp[k];
        z[k] = v > exp_floor<T>() ? v : exp_floor<T>();
      }
    });
    e.exp_();
    const T* ep = z;
    at::parallel_for(0, n, grain(A), [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        const T S = sum(ep + i * A, A), P = dot(ep + i * A, dp + i * A, A);
        rows[i] = std::log(S) + beta * P / S;
      }
    });
    T h = 0;
    for (int64_t i = 0; i < n; ++i) h += rows[i];
    return h / T(n);
  }
};

template <typename T>
void fit_beta_impl(const at::Tensor& dots, const T* fsq, const T* inv, const T* cn, T target,
                   int64_t grid, T* out) {
  const int64_t n = dots.size(0), A = dots.size(1);
  T* d2 = dots.data_ptr<T>();
  std::vector<T> rowsum(n);
  at::parallel_for(0, n, grain(A), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      T* row = d2 + i * A;
      const T two_inv = T(2) * inv[i];
      T mn = std::numeric_limits<T>::infinity();
      for (int64_t a = 0; a < A; ++a) {
        const T v = std::max(T(0), fsq[i] + cn[a] - two_inv * row[a]);
        row[a] = v;
        mn = v < mn ? v : mn;
      }
      for (int64_t a = 0; a < A; ++a) row[a] -= mn;
      rowsum[i] = sum(row, A);
    }
  });
  T total = 0;
  for (int64_t i = 0; i < n; ++i) total += rowsum[i];
  const T scale = std::max(total / (T(n) * T(A)), std::numeric_limits<T>::min());
  T lo = std::log(T(1e-4) / scale), hi = std::log(T(1e6) / scale), est = lo;
  EntropyOfBeta<T> entropy(dots);
  std::vector<T> memo(grid);
  std::vector<char> known(grid);
  for (int stage = 0; stage < 2; ++stage) {
    std::fill(known.begin(), known.end(), 0);
    auto logb = [&](int64_t j) { return lo + (hi - lo) * (T(j) / T(grid - 1)); };
    auto h = [&](int64_t j) {
      if (!known[j]) {
        memo[j] = entropy(logb(j));
        known[j] = 1;
      }
      return memo[j];
    };
    int64_t first = 0, last = grid;  // the first grid point with H <= target lies in [first, last]
    while (first < last) {
      const int64_t mid = (first + last) / 2;
      if (h(mid) > target) first = mid + 1; else last = mid;
    }
    const int64_t i = std::min(std::max<int64_t>(first, 1), grid - 1);
    const T h0 = h(i - 1), h1 = h(i);
    T w = (h0 - target) / std::max(h0 - h1, T(1e-12));
    w = std::min(std::max(w, T(0)), T(1));
    const T a = logb(i - 1), b = logb(i);
    est = a + w * (b - a);
    lo = a;
    hi = b;
  }
  *out = std::exp(est);
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
                  const at::Tensor& beta) {
  const int64_t n = dots.size(0), A = dots.size(1);
  AT_DISPATCH_FLOATING_TYPES(dots.scalar_type(), "softmax_rows_cpu", [&] {
    logits_minus_max_impl<scalar_t>(dots.data_ptr<scalar_t>(), cn.data_ptr<scalar_t>(),
                                    inv.data_ptr<scalar_t>(), n, A, *beta.data_ptr<scalar_t>());
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
                   const at::Tensor& beta, bool normalize) {
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "features_grad_cpu", [&] {
    features_grad_impl<scalar_t>(g.data_ptr<scalar_t>(), features.data_ptr<scalar_t>(),
                                 inv.data_ptr<scalar_t>(), g.size(0), g.size(1),
                                 *beta.data_ptr<scalar_t>(), normalize);
  });
}

void fit_beta(const at::Tensor& dots, const at::Tensor& fsq, const at::Tensor& inv,
              const at::Tensor& cn, double target_entropy, int64_t grid, const at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES(dots.scalar_type(), "fit_beta_cpu", [&] {
    fit_beta_impl<scalar_t>(dots, fsq.data_ptr<scalar_t>(), inv.data_ptr<scalar_t>(),
                            cn.data_ptr<scalar_t>(), static_cast<scalar_t>(target_entropy), grid,
                            out.data_ptr<scalar_t>());
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
