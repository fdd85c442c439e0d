// CUDA row kernels (see kernels.h for what each computes). Reductions over a row run in one thread
// block (warp shuffles + shared memory), so results are deterministic: no atomics anywhere.
// Accumulation happens in the input dtype (float32 or float64: the Python layer upcasts half types).
#include "ibb.h"

#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <limits>

namespace ribkernels {
namespace cuda {
namespace {

__device__ __forceinline__ float dexp(float x) { return expf(x); }
__device__ __forceinline__ double dexp(double x) { return exp(x); }
__device__ __forceinline__ float dsqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double dsqrt(double x) { return sqrt(x); }

struct Sum {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a > b ? a : b; }
};

// Reduces v over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the
// result. Safe to call several times in a row.
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T identity) {
  __shared__ T smem[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < int(blockDim.x >> 5) ? smem[lane] : identity;
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (lane == 0) smem[0] = v;
  }
  __syncthreads();
  v = smem[0];
  __syncthreads();
  return v;
}

// (value, index) minimum over the block; ties go to the lowest index.
template <typename T>
__device__ __forceinline__ void argmin_combine(T& v, int64_t& i, T v2, int64_t i2) {
  if (v2 < v || (v2 == v && i2 < i)) {
    v = v2;
    i = i2;
  }
}

template <typename T>
__device__ void block_argmin(T& v, int64_t& i) {
  __shared__ T sv[32];
  __shared__ int64_t si[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1)
    argmin_combine(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
  if (lane == 0) {
    sv[warp] = v;
    si[warp] = i;
  }
  __syncthreads();
  if (warp == 0) {
    const bool live = lane < int(blockDim.x >> 5);
    v = live ? sv[lane] : std::numeric_limits<T>::infinity();
    i = live ? si[lane] : std::numeric_limits<int64_t>::max();
    for (int o = 16; o > 0; o >>= 1)
      argmin_combine(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
  }
}

template <typename T>
__global__ void row_sumsq_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t cols,
                                 bool inverse) {
  const T* xr = x + int64_t(blockIdx.x) * cols;
  T s = 0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) s += xr[c] * xr[c];
  s = block_reduce(s, Sum(), T(0));
  if (threadIdx.x == 0) {
    const T norm = dsqrt(s);
    out[blockIdx.x] = inverse ? T(1) / (norm > T(kNormEps) ? norm : T(kNormEps)) : s;
  }
}

template <typename T>
__global__ void softmax_rows_kernel(T* __restrict__ dots, const T* __restrict__ cn,
                                    const T* __restrict__ inv, const int64_t* __restrict__ labels,
                                    const T* __restrict__ log_q, T* __restrict__ loss, int64_t A,
                                    int64_t K, const T* __restrict__ beta_ptr) {
  const int64_t i = blockIdx.x;
  const T beta = *beta_ptr;
  T* row = dots + i * A;
  const T two_inv = T(2) * inv[i];
  // Each thread visits the same columns in every pass, so rewriting `row` in place is race free.
  T mx = -std::numeric_limits<T>::infinity();
  for (int64_t a = threadIdx.x; a < A; a += blockDim.x) {
    const T s = -beta * (cn[a] - two_inv * row[a]);
    row[a] = s;
    mx = s > mx ? s : mx;
  }
  mx = block_reduce(mx, Max(), -std::numeric_limits<T>::infinity());
  T sum = 0;
  for (int64_t a = threadIdx.x; a < A; a += blockDim.x) {
    const T e = dexp(row[a] - mx);
    row[a] = e;
    sum += e;
  }
  const T scale = T(1) / block_reduce(sum, Sum(), T(0));
  T weighted = 0;
  const int64_t y = log_q ? labels[i] : 0;
  const bool valid = y >= 0 && y < K;  // out of range: NaN loss, no out-of-bounds read
  const T* lq = (log_q && valid) ? log_q + y : nullptr;
  for (int64_t a = threadIdx.x; a < A; a += blockDim.x) {
    const T p = row[a] * scale;
    row[a] = p;
    if (lq) weighted += p * lq[a * K];
  }
  if (log_q) {  // uniform over the block
    weighted = block_reduce(weighted, Sum(), T(0));
    if (threadIdx.x == 0) loss[i] = valid ? -weighted : std::numeric_limits<T>::quiet_NaN();
  }
}

template <typename T>
__global__ void ibb_logit_grad_kernel(const T* __restrict__ phi, const int64_t* __restrict__ labels,
                                      const T* __restrict__ log_q, const T* __restrict__ loss,
                                      const T* __restrict__ g, T* __restrict__ w, int64_t n,
                                      int64_t A, int64_t K) {
  const int64_t total = n * A;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = idx / A, a = idx - i * A;
    const int64_t y = labels[i];
    w[idx] = (y >= 0 && y < K) ? -g[i] * phi[idx] * (log_q[a * K + y] + loss[i])
                               : std::numeric_limits<T>::quiet_NaN();
  }
}

template <typename T>
__global__ void softmax_grad_kernel(const T* __restrict__ phi, const T* __restrict__ dphi,
                                    T* __restrict__ w, int64_t A) {
  const int64_t base = int64_t(blockIdx.x) * A;
  T dot = 0;
  for (int64_t a = threadIdx.x; a < A; a += blockDim.x) dot += phi[base + a] * dphi[base + a];
  dot = block_reduce(dot, Sum(), T(0));
  for (int64_t a = threadIdx.x; a < A; a += blockDim.x)
    w[base + a] = phi[base + a] * (dphi[base + a] - dot);
}

template <typename T>
__global__ void features_grad_kernel(T* __restrict__ g, const T* __restrict__ f,
                                     const T* __restrict__ inv, int64_t D,
                                     const T* __restrict__ beta_ptr, bool normalize) {
  const int64_t base = int64_t(blockIdx.x) * D;
  const T beta = *beta_ptr;
  if (!normalize) {
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) g[base + d] *= T(2) * beta;
    return;
  }
  const T s = inv[blockIdx.x];
  T dot = 0;  // f̂ . g
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) dot += f[base + d] * s * g[base + d];
  dot = block_reduce(dot, Sum(), T(0));
  const T scale = T(2) * beta * s;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
    g[base + d] = scale * (g[base + d] - f[base + d] * s * dot);
}

template <typename T>
__global__ void argmin_rows_kernel(const T* __restrict__ dots, const T* __restrict__ xsq,
                                   const T* __restrict__ cn, int64_t* __restrict__ assign,
                                   T* __restrict__ mind, int64_t A) {
  const int64_t i = blockIdx.x;
  const T* row = dots + i * A;
  T best = std::numeric_limits<T>::infinity();
  int64_t arg = std::numeric_limits<int64_t>::max();
  for (int64_t a = threadIdx.x; a < A; a += blockDim.x) argmin_combine(best, arg, cn[a] - T(2) * row[a], a);
  block_argmin(best, arg);
  if (threadIdx.x == 0) {
    if (arg == std::numeric_limits<int64_t>::max()) arg = 0;  // every distance NaN (as on CPU)
    assign[i] = arg;
    const T d = xsq[i] + best;
    mind[i] = d > T(0) ? d : T(0);
  }
}

template <typename T>
__global__ void segment_sum_kernel(const T* __restrict__ src, const int64_t* __restrict__ order,
                                   const int64_t* __restrict__ offsets, T* __restrict__ out,
                                   int64_t cols) {
  const int64_t s = blockIdx.x;
  const int64_t c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  T acc = 0;
  for (int64_t j = offsets[s]; j < offsets[s + 1]; ++j) acc += src[order[j] * cols + c];
  out[s * cols + c] = acc;
}


// ---- the per-batch beta fit (kernels.h: fit_beta): the whole grid of each stage is evaluated, as
// in the reference; the bracket and the interpolation are picked on the device, so the host
// launches a fixed sequence of kernels and never waits. params = {lo, hi, est} of log beta.
__device__ __forceinline__ float dlog(float x) { return logf(x); }
__device__ __forceinline__ double dlog(double x) { return log(x); }
template <typename T> __device__ __forceinline__ T tiny_of();
template <> __device__ __forceinline__ float tiny_of<float>() { return 1.17549435e-38f; }
template <> __device__ __forceinline__ double tiny_of<double>() { return 2.2250738585072014e-308; }

// In place dots -> d2 = max(0, fsq + cn - 2 inv dots) minus the row minimum; rowsum[i] = sum of d2.
template <typename T>
__global__ void fit_d2_kernel(T* __restrict__ d2, const T* __restrict__ fsq,
                              const T* __restrict__ inv, const T* __restrict__ cn,
                              T* __restrict__ rowsum, int64_t A) {
  const int64_t i = blockIdx.x;
  T* row = d2 + i * A;
  const T two_inv = T(2) * inv[i];
  T mn = std::numeric_limits<T>::infinity();
  for (int64_t a = threadIdx.x; a < A; a += blockDim.x) {
    T v = fsq[i] + cn[a] - two_inv * row[a];
    v = v > T(0) ? v : T(0);
    row[a] = v;
    mn = v < mn ? v : mn;
  }
  mn = -block_reduce(-mn, Max(), -std::numeric_limits<T>::infinity());
  T s = 0;
  for (int64_t a = threadIdx.x; a < A; a += blockDim.x) {
    const T v = row[a] - mn;
    row[a] = v;
    s += v;
  }
  s = block_reduce(s, Sum(), T(0));
  if (threadIdx.x == 0) rowsum[i] = s;
}

// One block: scale = max(mean d2, tiny); params = {log(1e-4 / scale), log(1e6 / scale), lo}.
template <typename T>
__global__ void fit_init_kernel(const T* __restrict__ rowsum, int64_t n, int64_t A,
                                T* __restrict__ params) {
  T s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += rowsum[i];
  s = block_reduce(s, Sum(), T(0));
  if (threadIdx.x == 0) {
    T scale = s / (T(n) * T(A));
    scale = scale > tiny_of<T>() ? scale : tiny_of<T>();
    params[0] = dlog(T(1e-4) / scale);
    params[1] = dlog(T(1e6) / scale);
    params[2] = params[0];
  }
}

// Block i: H[i, g] = entropy of softmax_a(-beta_g d2[i, a]) for every grid point g.
template <typename T>
__global__ void fit_entropy_kernel(const T* __restrict__ d2, const T* __restrict__ params,
                                   T* __restrict__ H, int64_t A, int64_t grid) {
  const int64_t i = blockIdx.x;
  const T* row = d2 + i * A;
  const T lo = params[0], hi = params[1];
  for (int64_t g = 0; g < grid; ++g) {
    const T beta = dexp(lo + (hi - lo) * (T(g) / T(grid - 1)));
    T S = 0, P = 0;
    for (int64_t a = threadIdx.x; a < A; a += blockDim.x) {
      const T e = dexp(-beta * row[a]);
      S += e;
      P += e * row[a];
    }
    S = block_reduce(S, Sum(), T(0));
    P = block_reduce(P, Sum(), T(0));
    if (threadIdx.x == 0) H[i * grid + g] = dlog(S) + beta * P / S;
  }
}

// One block: h[g] = mean_i H[i, g] (each summed in row order by one thread); the bracket i =
// clamp(#{g: h[g] > target}, 1, grid - 1), the interpolated log beta, and the next stage's range.
template <typename T>
__global__ void fit_select_kernel(const T* __restrict__ H, int64_t n, int64_t grid, T target,
                                  T* __restrict__ params, T* __restrict__ out) {
  extern __shared__ unsigned char smem_raw[];
  T* h = reinterpret_cast<T*>(smem_raw);
  for (int64_t g = threadIdx.x; g < grid; g += blockDim.x) {
    T s = 0;
    for (int64_t i = 0; i < n; ++i) s += H[i * grid + g];
    h[g] = s / T(n);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t above = 0;
    for (int64_t g = 0; g < grid; ++g) above += h[g] > target ? 1 : 0;
    const int64_t i = above < 1 ? 1 : (above > grid - 1 ? grid - 1 : above);
    const T lo = params[0], hi = params[1];
    const T a = lo + (hi - lo) * (T(i - 1) / T(grid - 1)), b = lo + (hi - lo) * (T(i) / T(grid - 1));
    const T diff = h[i - 1] - h[i];
    T w = (h[i - 1] - target) / (diff > T(1e-12) ? diff : T(1e-12));
    w = w < T(0) ? T(0) : (w > T(1) ? T(1) : w);
    params[0] = a;
    params[1] = b;
    params[2] = a + w * (b - a);
    if (out) *out = dexp(params[2]);
  }
}

// A warp multiple, up to 256 threads, so that short rows do not leave most threads idle.
int threads_for(int64_t cols) {
  int t = 32;
  while (t < 256 && t < cols) t *= 2;
  return t;
}

template <typename T>
T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

}  // namespace

void row_sumsq(const at::Tensor& x, const at::Tensor& out, bool inverse) {
  const int64_t rows = x.size(0), cols = x.size(1);
  if (rows == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "row_sumsq_cuda", [&] {
    row_sumsq_kernel<scalar_t><<<rows, threads_for(cols), 0, stream>>>(
        x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), cols, inverse);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void softmax_rows(const at::Tensor& dots, const at::Tensor& cn, const at::Tensor& inv,
                  const at::Tensor& labels, const at::Tensor& log_q, const at::Tensor& loss,
                  const at::Tensor& beta) {
  const int64_t n = dots.size(0), A = dots.size(1);
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(dots.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(dots.scalar_type(), "softmax_rows_cuda", [&] {
    softmax_rows_kernel<scalar_t><<<n, threads_for(A), 0, stream>>>(
        dots.data_ptr<scalar_t>(), cn.data_ptr<scalar_t>(), inv.data_ptr<scalar_t>(),
        ptr_or_null<int64_t>(labels), ptr_or_null<scalar_t>(log_q), ptr_or_null<scalar_t>(loss),
        A, log_q.defined() ? log_q.size(1) : 0, beta.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void ibb_logit_grad(const at::Tensor& phi, const at::Tensor& labels, const at::Tensor& log_q,
                    const at::Tensor& loss, const at::Tensor& grad_loss, const at::Tensor& w) {
  const int64_t n = phi.size(0), A = phi.size(1);
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(phi.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((n * A + threads - 1) / threads, int64_t(1) << 20);
  AT_DISPATCH_FLOATING_TYPES(phi.scalar_type(), "ibb_logit_grad_cuda", [&] {
    ibb_logit_grad_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
        phi.data_ptr<scalar_t>(), labels.data_ptr<int64_t>(), log_q.data_ptr<scalar_t>(),
        loss.data_ptr<scalar_t>(), grad_loss.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), n, A,
        log_q.size(1));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void softmax_grad(const at::Tensor& phi, const at::Tensor& grad_phi, const at::Tensor& w) {
  const int64_t n = phi.size(0), A = phi.size(1);
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(phi.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(phi.scalar_type(), "softmax_grad_cuda", [&] {
    softmax_grad_kernel<scalar_t><<<n, threads_for(A), 0, stream>>>(
        phi.data_ptr<scalar_t>(), grad_phi.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), A);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void features_grad(const at::Tensor& g, const at::Tensor& features, const at::Tensor& inv,
                   const at::Tensor& beta, bool normalize) {
  const int64_t n = g.size(0), D = g.size(1);
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(g.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "features_grad_cuda", [&] {
    features_grad_kernel<scalar_t><<<n, threads_for(D), 0, stream>>>(
        g.data_ptr<scalar_t>(), features.data_ptr<scalar_t>(), inv.data_ptr<scalar_t>(), D,
        beta.data_ptr<scalar_t>(), normalize);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void argmin_rows(const at::Tensor& dots, const at::Tensor& xsq, const at::Tensor& cn,
                 const at::Tensor& assign, const at::Tensor& mind) {
  const int64_t n = dots.size(0), A = dots.size(1);
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(dots.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(dots.scalar_type(), "argmin_rows_cuda", [&] {
    argmin_rows_kernel<scalar_t><<<n, threads_for(A), 0, stream>>>(
        dots.data_ptr<scalar_t>(), xsq.data_ptr<scalar_t>(), cn.data_ptr<scalar_t>(),
        assign.data_ptr<int64_t>(), mind.data_ptr<scalar_t>(), A);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void segment_sum(const at::Tensor& src, const at::Tensor& order, const at::Tensor& offsets,
                 const at::Tensor& out) {
  const int64_t segments = out.size(0), cols = out.size(1);
  if (segments == 0 || cols == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const int threads = threads_for(cols);
  const dim3 grid(static_cast<unsigned>(segments), static_cast<unsigned>((cols + threads - 1) / threads));
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "segment_sum_cuda", [&] {
    segment_sum_kernel<scalar_t><<<grid, threads, 0, stream>>>(
        src.data_ptr<scalar_t>(), order.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(),
        out.data_ptr<scalar_t>(), cols);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void fit_beta(const at::Tensor& dots, const at::Tensor& fsq, const at::Tensor& inv,
              const at::Tensor& cn, double target_entropy, int64_t grid, const at::Tensor& out) {
  const int64_t n = dots.size(0), A = dots.size(1);
  const c10::cuda::CUDAGuard guard(dots.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  auto rowsum = at::empty({n}, dots.options());
  auto params = at::empty({3}, dots.options());
  auto H = at::empty({n, grid}, dots.options());
  const int threads = threads_for(A);
  AT_DISPATCH_FLOATING_TYPES(dots.scalar_type(), "fit_beta_cuda", [&] {
    scalar_t* d2 = dots.data_ptr<scalar_t>();
    scalar_t* p = params.data_ptr<scalar_t>();
    fit_d2_kernel<scalar_t><<<n, threads, 0, stream>>>(d2, fsq.data_ptr<scalar_t>(),
        inv.data_ptr<scalar_t>(), cn.data_ptr<scalar_t>(), rowsum.data_ptr<scalar_t>(), A);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    fit_init_kernel<scalar_t><<<1, 256, 0, stream>>>(rowsum.data_ptr<scalar_t>(), n, A, p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    for (int stage = 0; stage < 2; ++stage) {
      fit_entropy_kernel<scalar_t><<<n, threads, 0, stream>>>(d2, p, H.data_ptr<scalar_t>(), A, grid);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      fit_select_kernel<scalar_t><<<1, 64, grid * sizeof(scalar_t), stream>>>(
          H.data_ptr<scalar_t>(), n, grid, static_cast<scalar_t>(target_entropy), p,
          stage == 1 ? out.data_ptr<scalar_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

}  // namespace cuda
}  // namespace ribkernels
