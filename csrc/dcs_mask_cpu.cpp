// CPU mask pre-pass of DCS-Attention (see dcs_mask.h). Rows of D elements are split across threads
// with at::parallel_for; each thread regenerates the Philox groups of its rows, so the result does
// not depend on the thread count. The hot loops are compiled for AVX-512, AVX2 and the baseline ISA
// (GCC target_clones) and picked at load time; they are plain loops the compiler vectorises.
#include "dcs_mask.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
// The selects and comparisons in the loops below only vectorise when GCC may assume floating-point
// exceptions are not trapped (they never are in PyTorch); results are unchanged. Header functions
// (std::max, std::fabs) were compiled without it and GCC would not inline them here: the loops use
// plain expressions instead.
#pragma GCC optimize("no-trapping-math")
#define RK_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define RK_CLONES
#endif

namespace ribkernels {
namespace {

constexpr int64_t kBlock = 2048;  // elements per block of uniforms (stays in L1 with its inputs)

// Philox-4x32-10 constants (Salmon et al. 2011; as Triton's tl.philox).
constexpr uint32_t kRoundA = 0xD2511F53u, kRoundB = 0xCD9E8D57u;
constexpr uint32_t kKeyA = 0x9E3779B9u, kKeyB = 0xBB67AE85u;

inline float bits_to_float(int32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

// e^x for x <= 0 (inputs below -87 give ~1e-38): Cephes' expf polynomial, ~1 ulp, branch-free so
// the loops around it vectorise.
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = static_cast<float>(static_cast<int32_t>(x * 1.44269504088896341f - 0.5f));
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * bits_to_float((static_cast<int32_t>(n) + 127) << 23);
}

// u[4j + t] = ((r_t >> 9) + 0.5)·2^-23 for output r_t of the Philox call with counter
// g0 + j + offset (as 64 bits: low word, high word, 0, 0), j in [0, groups).
RK_CLONES
void philox_uniforms(uint64_t seed, uint64_t first_counter, int64_t groups, float* u) {
  const uint32_t s0 = static_cast<uint32_t>(seed), s1 = static_cast<uint32_t>(seed >> 32);
  for (int64_t j = 0; j < groups; ++j) {
    const uint64_t counter = first_counter + static_cast<uint64_t>(j);
    uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
    uint32_t c2 = 0, c3 = 0, k0 = s0, k1 = s1;
    for (int round = 0; round < 10; ++round) {
      const uint64_t pb = static_cast<uint64_t>(kRoundB) * c2;
      const uint64_t pa = static_cast<uint64_t>(kRoundA) * c0;
      c0 = static_cast<uint32_t>(pb >> 32) ^ c1 ^ k0;
      c2 = static_cast<uint32_t>(pa >> 32) ^ c3 ^ k1;
      c1 = static_cast<uint32_t>(pb);
      c3 = static_cast<uint32_t>(pa);
      k0 += kKeyA;
      k1 += kKeyB;
    }
    constexpr float kScale = 1.0f / 8388608.0f;
    u[4 * j + 0] = (static_cast<float>(static_cast<int32_t>(c0 >> 9)) + 0.5f) * kScale;
    u[4 * j + 1] = (static_cast<float>(static_cast<int32_t>(c1 >> 9)) + 0.5f) * kScale;
    u[4 * j + 2] = (static_cast<float>(static_cast<int32_t>(c2 >> 9)) + 0.5f) * kScale;
    u[4 * j + 3] = (static_cast<float>(static_cast<int32_t>(c3 >> 9)) + 0.5f) * kScale;
  }
}

// mask[i] = 1[u > sigmoid(-θ)], sigmoid(-θ) = e^{-θ}/(1 + e^{-θ}) for θ >= 0, 1/(1 + e^{θ}) else.
RK_CLONES
void decide_mask(const float* theta, const float* u, uint8_t* mask, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float t = theta[i];
    const float e = exp_nonpositive(t >= 0.0f ? -t : t);
    const float num = t >= 0.0f ? e : 1.0f;  // select the operand, not the division: vectorises
    mask[i] = u[i] > num / (1.0f + e) ? 1 : 0;
  }
}

// w[i] = soft·(1 - soft), soft = sigmoid(θ + L) = u / (u + (1 - u)·e^{-θ}), written with
// e^{-|θ|} on one side so nothing overflows (τ = 1).
RK_CLONES
void soft_weight_tau1(const float* theta, const float* u, float* w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float t = theta[i], ui = u[i];
    const float e = exp_nonpositive(t >= 0.0f ? -t : t);
    const float ea = t >= 0.0f ? 1.0f : e, eb = t >= 0.0f ? e : 1.0f;
    const float a = ui * ea, b = (1.0f - ui) * eb;  // u·e^{min(θ,0)}, (1-u)·e^{-max(θ,0)}
    const float soft = a / (a + b);
    w[i] = soft * (1.0f - soft);
  }
}

// float32 forward of one block, fused: mask[i] = 1[u > sigmoid(-θ)], qm = q·M, km = k·M; returns
// the number of NaN in q.
RK_CLONES
int32_t mask_apply_f32(const float* __restrict theta, const float* __restrict u,
                       const float* __restrict q, const float* __restrict k, uint8_t* __restrict mask,
                       float* __restrict qm, float* __restrict km, int64_t n) {
  int32_t nans = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float t = theta[i];
    const float e = exp_nonpositive(t >= 0.0f ? -t : t);
    const float num = t >= 0.0f ? e : 1.0f;
    const bool keep = u[i] > num / (1.0f + e);
    const float m = keep ? 1.0f : 0.0f;
    mask[i] = keep ? 1 : 0;
    qm[i] = q[i] * m;  // multiply, not select: NaN·0 stays NaN as in eager
    km[i] = k[i] * m;
    nans += q[i] != q[i] ? 1 : 0;
  }
  return nans;
}

// float32 backward of one block, τ = 1, fused: dq = dqm·M, dk = dkm·M,
// dθ = (dqm·q + dkm·k)·soft·(1 - soft) with soft from u as in soft_weight_tau1.
RK_CLONES
void mask_backward_f32_tau1(const float* __restrict theta, const float* __restrict u,
                            const float* __restrict q, const float* __restrict k,
                            const float* __restrict gq, const float* __restrict gk,
                            const uint8_t* __restrict mask, float* __restrict dq,
                            float* __restrict dk, float* __restrict dtheta, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float m = static_cast<float>(mask[i]);
    dq[i] = gq[i] * m;
    dk[i] = gk[i] * m;
    const float t = theta[i], ui = u[i];
    const float e = exp_nonpositive(t >= 0.0f ? -t : t);
    const float ea = t >= 0.0f ? 1.0f : e, eb = t >= 0.0f ? e : 1.0f;
    const float a = ui * ea, b = (1.0f - ui) * eb;
    const float soft = a / (a + b);
    dtheta[i] = (gq[i] * q[i] + gk[i] * k[i]) * (soft * (1.0f - soft));
  }
}

// Any τ: soft = sigmoid((θ + log u - log(1-u))/τ), w = soft·(1 - soft)/τ (libm, not vectorised).
void soft_weight_any_tau(const float* theta, const float* u, float* w, int64_t n, float tau) {
  for (int64_t i = 0; i < n; ++i) {
    const float z = (theta[i] + (std::log(u[i]) - std::log1p(-u[i]))) / tau;
    const float soft = 1.0f / (1.0f + std::exp(-z));
    w[i] = soft * (1.0f - soft) / tau;
  }
}

// θ of q's [B, H, N, D] shape (expanded: stride 0 on broadcast dims, 0 or 1 on D) and the row
// strides of q, k (and of the incoming gradients), whose last dimension is contiguous: the op
// reads timm's permuted q/k views and SDPA's gradients without a copy.
struct RowGeometry {
  int64_t H, N, D;
  const float* theta;
  int64_t st_b, st_h, st_n, st_d;
};

struct RowStrides {
  int64_t b, h, n;
  explicit RowStrides(const at::Tensor& t) : b(t.stride(0)), h(t.stride(1)), n(t.stride(2)) {}
  int64_t at(int64_t bi, int64_t hi, int64_t ni) const { return bi * b + hi * h + ni * n; }
};

// Per-thread work on rows [r0, r1) of D elements, block by block of whole rows: the uniforms of
// the block (u[(r - ra)·D + d] is element (r, d)), θ gathered to a contiguous float buffer laid out
// the same way, then body(r, b, h, n, u row, θ row) for each row.
template <typename Body>
void for_rows(const RowGeometry& g, uint64_t seed, uint64_t offset, int64_t r0, int64_t r1,
              Body&& body) {
  const int64_t D = g.D;
  const int64_t rows_per_block = std::max<int64_t>(1, kBlock / D);
  std::vector<float> u(rows_per_block * D + 8), th(rows_per_block * D);
  for (int64_t ra = r0; ra < r1; ra += rows_per_block) {
    const int64_t rb = std::min(r1, ra + rows_per_block);
    const int64_t e0 = ra * D, e1 = rb * D;
    const int64_t g0 = e0 / 4, g1 = (e1 + 3) / 4;
    philox_uniforms(seed, static_cast<uint64_t>(g0) + offset, g1 - g0, u.data());
    const float* ublock = u.data() + (e0 - 4 * g0);  // element e0's position inside its group
    for (int64_t r = ra; r < rb; ++r) {
      const int64_t n = r % g.N, h = (r / g.N) % g.H, b = r / (g.N * g.H);
      const float* trow = g.theta + b * g.st_b + h * g.st_h + n * g.st_n;
      float* dst = th.data() + (r - ra) * D;
      if (g.st_d == 1)
        std::memcpy(dst, trow, D * sizeof(float));
      else
        std::fill(dst, dst + D, trow[0]);
      body(r, b, h, n, ublock + (r - ra) * D, static_cast<const float*>(dst));
    }
  }
}

int64_t row_grain(int64_t D) { return std::max<int64_t>(1, 16384 / D); }

at::Tensor last_dim_contiguous(const at::Tensor& t) {
  return t.stride(3) == 1 ? t : t.contiguous();
}

void check_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& theta,
                  const at::Tensor& seed, int64_t offset, double tau) {
  TORCH_CHECK(q.dim() == 4, op, ": q must be 4-D [B, H, N, D], got ", q.sizes());
  TORCH_CHECK(q.size(3) > 0, op, ": q must have at least one channel, got ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes() && k.scalar_type() == q.scalar_type(), op,
              ": k must have q's shape ", q.sizes(), " and dtype ", q.scalar_type(), ", got ",
              k.sizes(), " ", k.scalar_type());
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && theta.device().is_cpu(), op,
              ": q, k, theta must be CPU tensors");
  TORCH_CHECK(theta.scalar_type() == at::kFloat && theta.sizes() == q.sizes(), op,
              ": theta must be float32 expanded to q's shape ", q.sizes(), ", got ", theta.sizes(),
              " ", theta.scalar_type());
  TORCH_CHECK(theta.stride(3) == 0 || theta.stride(3) == 1, op,
              ": theta's last stride must be 0 or 1, got ", theta.stride(3));
  TORCH_CHECK(seed.dim() == 0 && seed.scalar_type() == at::kLong && seed.device().is_cpu(), op,
              ": seed must be a 0-d int64 CPU tensor, got ", seed.sizes(), " ", seed.scalar_type());
  TORCH_CHECK(seed.item<int64_t>() >= 0, op, ": seed must be in [0, 2**63), got ",
              seed.item<int64_t>());
  TORCH_CHECK(offset >= 0, op, ": offset must be >= 0, got ", offset);
  TORCH_CHECK(tau > 0, op, ": tau must be positive, got ", tau);
}

RowGeometry geometry(const at::Tensor& q, const at::Tensor& theta) {
  return RowGeometry{q.size(1), q.size(2), q.size(3), theta.data_ptr<float>(),
                     theta.stride(0), theta.stride(1), theta.stride(2), theta.stride(3)};
}

template <typename T>
const float* as_float(const T* p) { return reinterpret_cast<const float*>(p); }
template <typename T>
float* as_float(T* p) { return reinterpret_cast<float*>(p); }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dcs_mask_apply(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& theta, const at::Tensor& seed_t,
    int64_t offset, double tau) {
  check_inputs("dcs_mask_apply", q_in, k_in, theta, seed_t, offset, tau);
  const at::Tensor q = last_dim_contiguous(q_in), k = last_dim_contiguous(k_in);
  const uint64_t seed = static_cast<uint64_t>(seed_t.item<int64_t>());
  const RowGeometry g = geometry(q, theta);
  const int64_t D = g.D, rows = q.numel() / D;
  const RowStrides sq(q), sk(k);
  const auto out_options = q.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor qm = at::empty(q.sizes(), out_options), km = at::empty(q.sizes(), out_options);
  at::Tensor mask = at::empty(q.sizes(), out_options.dtype(at::kByte));
  std::atomic<int64_t> nan_count{0};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "dcs_mask_apply", [&] {
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const scalar_t* kp = k.data_ptr<scalar_t>();
    scalar_t* qmp = qm.data_ptr<scalar_t>();
    scalar_t* kmp = km.data_ptr<scalar_t>();
    uint8_t* mp = mask.data_ptr<uint8_t>();
    at::parallel_for(0, rows, row_grain(D), [&](int64_t r0, int64_t r1) {
      int64_t nan_in_q = 0;
      for_rows(g, seed, static_cast<uint64_t>(offset), r0, r1,
               [&](int64_t r, int64_t b, int64_t h, int64_t n, const float* ur, const float* tr) {
        const scalar_t* qr = qp + sq.at(b, h, n);
        const scalar_t* kr = kp + sk.at(b, h, n);
        const int64_t e = r * D;
        if (std::is_same_v<scalar_t, float>) {  // the casts are no-ops: only reached for float
          nan_in_q += mask_apply_f32(tr, ur, as_float(qr), as_float(kr), mp + e, as_float(qmp + e),
                                     as_float(kmp + e), D);
          return;
        }
        decide_mask(tr, ur, mp + e, D);
        for (int64_t d = 0; d < D; ++d) {
          const scalar_t m = static_cast<scalar_t>(mp[e + d]);
          qmp[e + d] = qr[d] * m;  // multiply, not select: NaN·0 stays NaN as in eager
          kmp[e + d] = kr[d] * m;
          nan_in_q += qr[d] != qr[d];
        }
      });
      nan_count += nan_in_q;
    });
  });
  return {qm, km, mask, at::scalar_tensor(nan_count.load(), q.options().dtype(at::kLong))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dcs_mask_apply_backward(
    const at::Tensor& grad_qm_in, const at::Tensor& grad_km_in, const at::Tensor& q_in,
    const at::Tensor& k_in, const at::Tensor& theta, const at::Tensor& mask_in,
    const at::Tensor& seed_t, int64_t offset, double tau, bool theta_grad) {
  check_inputs("dcs_mask_apply_backward", q_in, k_in, theta, seed_t, offset, tau);
  for (const at::Tensor* t : {&grad_qm_in, &grad_km_in})
    TORCH_CHECK(t->sizes() == q_in.sizes() && t->scalar_type() == q_in.scalar_type(),
                "dcs_mask_apply_backward: gradients must have q's shape ", q_in.sizes(),
                " and dtype ", q_in.scalar_type(), ", got ", t->sizes(), " ", t->scalar_type());
  TORCH_CHECK(mask_in.sizes() == q_in.sizes() && mask_in.scalar_type() == at::kByte,
              "dcs_mask_apply_backward: mask must be uint8 of q's shape ", q_in.sizes(), ", got ",
              mask_in.sizes(), " ", mask_in.scalar_type());
  const at::Tensor q = last_dim_contiguous(q_in), k = last_dim_contiguous(k_in);
  const at::Tensor dqm = last_dim_contiguous(grad_qm_in), dkm = last_dim_contiguous(grad_km_in);
  const at::Tensor mask = mask_in.contiguous();
  const uint64_t seed = static_cast<uint64_t>(seed_t.item<int64_t>());
  const RowGeometry g = geometry(q, theta);
  const int64_t D = g.D, rows = q.numel() / D;
  const RowStrides sq(q), sk(k), sgq(dqm), sgk(dkm);
  const auto out_options = q.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor dq = at::empty(q.sizes(), out_options), dk = at::empty(q.sizes(), out_options);
  at::Tensor dtheta = at::empty(theta_grad ? q.sizes() : at::IntArrayRef{0}, out_options.dtype(at::kFloat));
  const float tau_f = static_cast<float>(tau);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "dcs_mask_apply_backward", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t *qp = q.data_ptr<scalar_t>(), *kp = k.data_ptr<scalar_t>();
    const scalar_t *gqp = dqm.data_ptr<scalar_t>(), *gkp = dkm.data_ptr<scalar_t>();
    const uint8_t* mp = mask.data_ptr<uint8_t>();
    scalar_t *dqp = dq.data_ptr<scalar_t>(), *dkp = dk.data_ptr<scalar_t>();
    float* dtp = theta_grad ? dtheta.data_ptr<float>() : nullptr;
    at::parallel_for(0, rows, row_grain(D), [&](int64_t r0, int64_t r1) {
      if (!theta_grad) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t n = r % g.N, h = (r / g.N) % g.H, b = r / (g.N * g.H), e = r * D;
          const scalar_t *gq = gqp + sgq.at(b, h, n), *gk = gkp + sgk.at(b, h, n);
          for (int64_t d = 0; d < D; ++d) {
            const scalar_t m = static_cast<scalar_t>(mp[e + d]);
            dqp[e + d] = gq[d] * m;
            dkp[e + d] = gk[d] * m;
          }
        }
        return;
      }
      std::vector<float> w(D);
      for_rows(g, seed, static_cast<uint64_t>(offset), r0, r1,
               [&](int64_t r, int64_t b, int64_t h, int64_t n, const float* ur, const float* tr) {
        const scalar_t *qr = qp + sq.at(b, h, n), *kr = kp + sk.at(b, h, n);
        const scalar_t *gq = gqp + sgq.at(b, h, n), *gk = gkp + sgk.at(b, h, n);
        const int64_t e = r * D;
        if (std::is_same_v<scalar_t, float> && tau_f == 1.0f) {  // casts: only reached for float
          mask_backward_f32_tau1(tr, ur, as_float(qr), as_float(kr), as_float(gq), as_float(gk),
                                 mp + e, as_float(dqp + e), as_float(dkp + e), dtp + e, D);
          return;
        }
        if (tau_f == 1.0f)
          soft_weight_tau1(tr, ur, w.data(), D);
        else
          soft_weight_any_tau(tr, ur, w.data(), D, tau_f);
        for (int64_t d = 0; d < D; ++d) {
          const scalar_t m = static_cast<scalar_t>(mp[e + d]);
          dqp[e + d] = gq[d] * m;
          dkp[e + d] = gk[d] * m;
          const acc_t dmask = static_cast<acc_t>(gq[d]) * static_cast<acc_t>(qr[d]) +
                              static_cast<acc_t>(gk[d]) * static_cast<acc_t>(kr[d]);
          dtp[e + d] = static_cast<float>(dmask * static_cast<acc_t>(w[d]));
        }
      });
    });
  });
  return {dq, dk, dtheta};
}

}  // namespace ribkernels
