// replab_fast::conv2d and conv2d_backward on CUDA (TORCH_LIBRARY_IMPL(replab_fast, CUDA, ...)).
// The schema and the argument checks live in conv2d.cpp; the math is in conv2d.h.
//
// GPU verification pending: this file compiles for sm_80 and sm_90 with warnings as errors
// (`make cuda-compile-check`, run by CI without a GPU); it has not yet run on a GPU.
//
// Forward, two kernels, picked per layer (pick_forward_path):
// - direct_fused_kernel: tiny channel counts (LeNet-5: 1 -> 6 and 6 -> 16 channels, 5x5). One
//   thread per *final* output element (after pooling): it computes the conv outputs of its
//   pooling window from the weights (all of them staged in shared memory) and the input (read
//   through L1), adds the bias, applies the activation, pools, and writes one value: conv + bias
//   + activation + pooling in one launch, the conv output never goes to memory (unless the
//   backward needs it: then the window's z values are written to preact too).
// - igemm kernels: implicit GEMM for AlexNet-sized layers, per group: C[m, k] = sum_kk A[m, kk] B[kk, k]
//   with m = (n, oh, ow) the output pixels, k the output channels of the group and
//   kk = (c, r, s) the reduction; A is gathered from x on the fly (im2col never materialized),
//   B is the weight as it lies in memory ((K, Cg*R*S) rows). 64x64 output tiles, 128 threads:
//   * igemm_wmma_kernel (float16 / bfloat16): 32-wide K slices staged in shared memory, tensor
//     cores through WMMA (16x16x16 fragments, fp32 accumulators, 2x2 fragments per warp);
//   * igemm_simt_kernel (float32 / float64): 16-wide K slices in shared memory, a 4x8 register
//     tile per thread, fp32 (fp64) FMA.
//   The epilogue (from the accumulators in shared memory / registers) adds the bias, applies the
//   activation and writes y, and preact when asked. With a pooling the epilogue writes z and a
//   second launch (pool_epilogue_kernel) pools act(z) (pooling windows straddle the 64-pixel tiles; fusing
//   it into the GEMM epilogue is future work).
// Backward (correct first; simpler kernels):
// - epilogue_backward_kernel: dz = act'(z) * unpool(dy), one thread per conv output, gathering
//   from the pooling windows that cover it (max: recomputes each window's first maximum from z);
//   in fp32 (fp64 for float64) in a scratch tensor.
// - grad_bias_kernel: one block per output channel, a tree reduction over (n, oh, ow).
// - grad_weight_kernel: one block per (k, c, r, 16 kernel columns), threads stride over the
//   output pixels with 16 register accumulators, then a block reduction.
// - grad_input_kernel: one thread per input element, gathering dz * w over the (k, r, s) that
//   reach it.
// Every launch goes to the current CUDA stream (c10::cuda::getCurrentCUDAStream(), the stream
// at::cuda::getCurrentCUDAStream() returns) and is followed by C10_CUDA_KERNEL_LAUNCH_CHECK().
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>

#include "conv2d.h"

namespace replab_fast {
namespace {

template <typename T>
struct AccType {
  using type = float;  // float16, bfloat16, float32 accumulate in fp32
};
template <>
struct AccType<double> {
  using type = double;
};

template <typename T>
__device__ __forceinline__ typename AccType<T>::type to_acc(T v) {
  return static_cast<typename AccType<T>::type>(v);
}

template <typename T, typename A>
__device__ __forceinline__ T from_acc(A v) {
  return static_cast<T>(v);
}

constexpr int kThreads = 256;        // direct, elementwise and reduction kernels
constexpr int kGemmThreads = 128;    // implicit-GEMM kernels: 4 warps
constexpr int kBM = 64;              // output pixels per GEMM tile
constexpr int kBN = 64;              // output channels per GEMM tile
constexpr int kBKSimt = 16;          // reduction slice of the SIMT kernel
constexpr int kBKWmma = 32;          // reduction slice of the WMMA kernel
constexpr int kLdWmma = kBKWmma + 8; // shared-memory row pitch (elements) of the WMMA tiles
constexpr int kLdC = kBN + 4;        // pitch of the fp32 accumulator tile
constexpr int kWeightCols = 16;      // kernel columns per grad_weight block

inline unsigned int blocks_for(int64_t total, int threads) {
  const int64_t blocks = (total + threads - 1) / threads;
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 1 << 20));
}

// x[n, c, ih, iw] or 0 outside the input (zero padding).
template <typename scalar_t>
__device__ __forceinline__ typename AccType<scalar_t>::type load_x(const scalar_t* __restrict__ x, const ConvGeometry& g,
                                                                   int64_t n, int64_t c, int64_t ih, int64_t iw) {
  using acc_t = typename AccType<scalar_t>::type;
  if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) return acc_t(0);
  return to_acc(x[((n * g.C + c) * g.H + ih) * g.W + iw]);
}

// ------------------------------------------------------------------------------------------
// Forward: direct fused kernel (tiny channel counts)

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    direct_fused_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                        const scalar_t* __restrict__ bias, scalar_t* __restrict__ out, scalar_t* __restrict__ preact,
                        const ConvGeometry g) {
  using acc_t = typename AccType<scalar_t>::type;
  extern __shared__ __align__(16) unsigned char direct_smem[];
  acc_t* ws = reinterpret_cast<acc_t*>(direct_smem);  // every weight, K * Cg * R * S
  const int64_t kernel_size = g.Cg * g.R * g.S;
  for (int64_t i = threadIdx.x; i < g.K * kernel_size; i += blockDim.x) ws[i] = to_acc(w[i]);
  __syncthreads();

  const int64_t total = g.N * g.K * g.PH * g.PW;
  const acc_t inv_area = acc_t(1) / acc_t(g.pkh * g.pkw);
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t px = idx % g.PW;
    int64_t t = idx / g.PW;
    const int64_t py = t % g.PH;
    t /= g.PH;
    const int64_t k = t % g.K;
    const int64_t n = t / g.K;
    const int64_t c0 = (k / g.Kg) * g.Cg;
    const acc_t* wk = ws + k * kernel_size;
    const acc_t b = bias != nullptr ? to_acc(bias[k]) : acc_t(0);
    acc_t result = acc_t(0);
    bool first = true;
    for (int64_t i = 0; i < g.pkh; ++i) {
      for (int64_t j = 0; j < g.pkw; ++j) {
        const int64_t oh = py * g.psh + i, ow = px * g.psw + j;
        acc_t z = b;
        for (int64_t cl = 0; cl < g.Cg; ++cl) {
          for (int64_t r = 0; r < g.R; ++r) {
            const int64_t ih = oh * g.sh - g.ph + r * g.dh;
            if (ih < 0 || ih >= g.H) continue;
            const scalar_t* xrow = x + ((n * g.C + c0 + cl) * g.H + ih) * g.W;
            const acc_t* wrow = wk + (cl * g.R + r) * g.S;
            for (int64_t s = 0; s < g.S; ++s) {
              const int64_t iw = ow * g.sw - g.pw + s * g.dw;
              if (iw >= 0 && iw < g.W) z += wrow[s] * to_acc(xrow[iw]);
            }
          }
        }
        if (preact != nullptr) preact[((n * g.K + k) * g.OH + oh) * g.OW + ow] = from_acc<scalar_t>(z);
        const acc_t a = activation_forward<acc_t>(g.act, z);
        if (g.pool == PoolKind::Avg) {
          result += a;
        } else if (first || a > result || isnan(a)) {  // max (or the single element without pooling)
          result = a;
        }
        first = false;
      }
    }
    if (g.pool == PoolKind::Avg) result *= inv_area;
    out[idx] = from_acc<scalar_t>(result);
  }
}

// ------------------------------------------------------------------------------------------
// Forward: implicit GEMM

// Writes one conv output: z to preact (when asked), act(z) to out (when not pooling).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void store_output(const ConvGeometry& g, int64_t m, int64_t k, acc_t z,
                                             scalar_t* __restrict__ out, scalar_t* __restrict__ preact) {
  const int64_t plane = g.OH * g.OW;
  const int64_t n = m / plane, pix = m % plane;
  const int64_t offset = (n * g.K + k) * plane + pix;
  if (preact != nullptr) preact[offset] = from_acc<scalar_t>(z);
  if (out != nullptr) out[offset] = from_acc<scalar_t>(activation_forward<acc_t>(g.act, z));
}

// A[m, kk] of the implicit GEMM: x at output pixel m = (n, oh, ow), reduction index kk = (c, r, s).
template <typename scalar_t>
__device__ __forceinline__ typename AccType<scalar_t>::type load_a(const scalar_t* __restrict__ x, const ConvGeometry& g,
                                                                   int64_t group, int64_t m, int64_t kk) {
  const int64_t plane = g.OH * g.OW;
  const int64_t n = m / plane, pix = m % plane;
  const int64_t oh = pix / g.OW, ow = pix % g.OW;
  const int64_t rs = g.R * g.S;
  const int64_t c = group * g.Cg + kk / rs;
  const int64_t r = (kk % rs) / g.S, s = kk % g.S;
  return load_x(x, g, n, c, oh * g.sh - g.ph + r * g.dh, ow * g.sw - g.pw + s * g.dw);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kGemmThreads)
    igemm_simt_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                      const scalar_t* __restrict__ bias, scalar_t* __restrict__ out, scalar_t* __restrict__ preact,
                      const ConvGeometry g) {
  using acc_t = typename AccType<scalar_t>::type;
  __shared__ acc_t As[kBKSimt][kBM + 1];  // A^T slice: [kk][m]
  __shared__ acc_t Bs[kBKSimt][kBN + 1];  // B slice: [kk][k]
  const int64_t M = g.N * g.OH * g.OW;
  const int64_t KD = g.Cg * g.R * g.S;
  const int64_t group = blockIdx.z;
  const int64_t m0 = int64_t(blockIdx.x) * kBM, n0 = int64_t(blockIdx.y) * kBN;
  const int tid = threadIdx.x;
  const int tm = tid % 16, tn = tid / 16;  // this thread's pixels tm + 16 i, channels tn + 8 j
  acc_t acc[4][8];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = acc_t(0);

  for (int64_t k0 = 0; k0 < KD; k0 += kBKSimt) {
    for (int e = tid; e < kBKSimt * kBM; e += kGemmThreads) {  // consecutive threads: consecutive pixels
      const int ml = e % kBM, kl = e / kBM;
      const int64_t m = m0 + ml, kk = k0 + kl;
      As[kl][ml] = (m < M && kk < KD) ? load_a(x, g, group, m, kk) : acc_t(0);
    }
    for (int e = tid; e < kBKSimt * kBN; e += kGemmThreads) {  // consecutive threads: along a weight row
      const int kl = e % kBKSimt, nl = e / kBKSimt;
      const int64_t kc = n0 + nl, kk = k0 + kl;
      Bs[kl][nl] = (kc < g.Kg && kk < KD) ? to_acc(w[(group * g.Kg + kc) * KD + kk]) : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int kl = 0; kl < kBKSimt; ++kl) {
      acc_t a[4], b[8];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[kl][tm + 16 * i];
#pragma unroll
      for (int j = 0; j < 8; ++j) b[j] = Bs[kl][tn + 8 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }

#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const int64_t kc = n0 + tn + 8 * j;
    if (kc >= g.Kg) continue;
    const int64_t k = group * g.Kg + kc;
    const acc_t b = bias != nullptr ? to_acc(bias[k]) : acc_t(0);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t m = m0 + tm + 16 * i;
      if (m < M) store_output<scalar_t, acc_t>(g, m, k, acc[i][j] + b, out, preact);
    }
  }
}

template <typename scalar_t>
struct WmmaType;
template <>
struct WmmaType<c10::Half> {
  using type = __half;
};
template <>
struct WmmaType<c10::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename scalar_t>
__global__ void __launch_bounds__(kGemmThreads)
    igemm_wmma_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                      const scalar_t* __restrict__ bias, scalar_t* __restrict__ out, scalar_t* __restrict__ preact,
                      const ConvGeometry g) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  using frag_t = typename WmmaType<scalar_t>::type;
  constexpr int kTileBytes = 2 * kBM * kLdWmma * 2;  // A and B slices, 16-bit elements
  constexpr int kAccBytes = kBM * kLdC * 4;          // fp32 accumulator tile
  __shared__ __align__(128) unsigned char smem[kTileBytes > kAccBytes ? kTileBytes : kAccBytes];
  uint16_t* As = reinterpret_cast<uint16_t*>(smem);  // [m][kk], row-major A
  uint16_t* Bs = As + kBM * kLdWmma;                 // [k][kk]: B column-major
  float* Cs = reinterpret_cast<float*>(smem);        // [m][k] after the main loop

  const int64_t M = g.N * g.OH * g.OW;
  const int64_t KD = g.Cg * g.R * g.S;
  const int64_t group = blockIdx.z;
  const int64_t m0 = int64_t(blockIdx.x) * kBM, n0 = int64_t(blockIdx.y) * kBN;
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int wm = warp / 2, wn = warp % 2;  // this warp's 32x32 quarter of the tile
  const uint16_t* xbits = reinterpret_cast<const uint16_t*>(x);
  const uint16_t* wbits = reinterpret_cast<const uint16_t*>(w);

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c_frag[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(c_frag[i][j], 0.0f);

  const int64_t plane = g.OH * g.OW, rs = g.R * g.S;
  for (int64_t k0 = 0; k0 < KD; k0 += kBKWmma) {
    for (int e = tid; e < kBM * kBKWmma; e += kGemmThreads) {  // consecutive threads: consecutive pixels
      const int ml = e % kBM, kl = e / kBM;
      const int64_t m = m0 + ml, kk = k0 + kl;
      uint16_t v = 0;  // +0.0 in float16 and bfloat16
      if (m < M && kk < KD) {
        const int64_t n = m / plane, pix = m % plane;
        const int64_t oh = pix / g.OW, ow = pix % g.OW;
        const int64_t c = group * g.Cg + kk / rs;
        const int64_t r = (kk % rs) / g.S, s = kk % g.S;
        const int64_t ih = oh * g.sh - g.ph + r * g.dh, iw = ow * g.sw - g.pw + s * g.dw;
        if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) v = xbits[((n * g.C + c) * g.H + ih) * g.W + iw];
      }
      As[ml * kLdWmma + kl] = v;
    }
    for (int e = tid; e < kBN * kBKWmma; e += kGemmThreads) {  // consecutive threads: along a weight row
      const int kl = e % kBKWmma, nl = e / kBKWmma;
      const int64_t kc = n0 + nl, kk = k0 + kl;
      Bs[nl * kLdWmma + kl] = (kc < g.Kg && kk < KD) ? wbits[(group * g.Kg + kc) * KD + kk] : uint16_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBKWmma; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, frag_t, wmma::row_major> a_frag[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, frag_t, wmma::col_major> b_frag[2];
#pragma unroll
      for (int i = 0; i < 2; ++i)
        wmma::load_matrix_sync(a_frag[i], reinterpret_cast<const frag_t*>(As + (wm * 32 + i * 16) * kLdWmma + kk),
                               kLdWmma);
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::load_matrix_sync(b_frag[j], reinterpret_cast<const frag_t*>(Bs + (wn * 32 + j * 16) * kLdWmma + kk),
                               kLdWmma);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(c_frag[i][j], a_frag[i], b_frag[j], c_frag[i][j]);
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * kLdC + wn * 32 + j * 16, c_frag[i][j], kLdC,
                              wmma::mem_row_major);
  __syncthreads();
  for (int e = tid; e < kBM * kBN; e += kGemmThreads) {  // consecutive threads: consecutive pixels
    const int ml = e % kBM, nl = e / kBM;
    const int64_t m = m0 + ml, kc = n0 + nl;
    if (m >= M || kc >= g.Kg) continue;
    const int64_t k = group * g.Kg + kc;
    const float b = bias != nullptr ? static_cast<float>(bias[k]) : 0.0f;
    store_output<scalar_t, float>(g, m, k, Cs[ml * kLdC + nl] + b, out, preact);
  }
#else
  // Tensor-core path needs sm_80+ (bfloat16 WMMA); the host never launches it below that.
  __trap();
#endif
}

// y = pool(act(z)) for the GEMM path with pooling: one thread per pooled output.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    pool_epilogue_kernel(const scalar_t* __restrict__ z, scalar_t* __restrict__ out, const ConvGeometry g) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t total = g.N * g.K * g.PH * g.PW;
  const acc_t inv_area = acc_t(1) / acc_t(g.pkh * g.pkw);
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t px = idx % g.PW;
    int64_t t = idx / g.PW;
    const int64_t py = t % g.PH;
    const int64_t nk = t / g.PH;
    const scalar_t* zp = z + (nk * g.OH + py * g.psh) * g.OW + px * g.psw;
    acc_t result = acc_t(0);
    bool first = true;
    for (int64_t i = 0; i < g.pkh; ++i)
      for (int64_t j = 0; j < g.pkw; ++j) {
        const acc_t a = activation_forward<acc_t>(g.act, to_acc(zp[i * g.OW + j]));
        if (g.pool == PoolKind::Avg) {
          result += a;
        } else if (first || a > result || isnan(a)) {
          result = a;
        }
        first = false;
      }
    if (g.pool == PoolKind::Avg) result *= inv_area;
    out[idx] = from_acc<scalar_t>(result);
  }
}

// ------------------------------------------------------------------------------------------
// Backward

// dz[n, k, oh, ow] = act'(z) * (sum of the pooled gradients that reach (oh, ow)).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    epilogue_backward_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ z,
                             typename AccType<scalar_t>::type* __restrict__ dz, const ConvGeometry g) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t total = g.N * g.K * g.OH * g.OW;
  const bool fused = g.act != Activation::None || g.pool != PoolKind::None;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    if (!fused) {
      dz[idx] = to_acc(dy[idx]);
      continue;
    }
    const int64_t ow = idx % g.OW;
    int64_t t = idx / g.OW;
    const int64_t oh = t % g.OH;
    const int64_t nk = t / g.OH;
    acc_t grad = acc_t(0);
    bool covered = g.pool == PoolKind::None;
    if (g.pool == PoolKind::None) {
      grad = to_acc(dy[idx]);
    } else {
      // pooled rows py with py * psh <= oh < py * psh + pkh (and likewise for columns)
      const int64_t py_lo = oh >= g.pkh ? (oh - g.pkh) / g.psh + 1 : 0;
      const int64_t py_hi = oh / g.psh < g.PH - 1 ? oh / g.psh : g.PH - 1;
      const int64_t px_lo = ow >= g.pkw ? (ow - g.pkw) / g.psw + 1 : 0;
      const int64_t px_hi = ow / g.psw < g.PW - 1 ? ow / g.psw : g.PW - 1;
      const acc_t inv_area = acc_t(1) / acc_t(g.pkh * g.pkw);
      for (int64_t py = py_lo; py <= py_hi; ++py) {
        for (int64_t px = px_lo; px <= px_hi; ++px) {
          covered = true;
          const acc_t g_out = to_acc(dy[(nk * g.PH + py) * g.PW + px]);
          if (g.pool == PoolKind::Avg) {
            grad += g_out * inv_area;
            continue;
          }
          // the window's first maximum (row-major), as F.max_pool2d picks it
          const scalar_t* zw = z + (nk * g.OH + py * g.psh) * g.OW + px * g.psw;
          int64_t best = 0;
          acc_t best_v = activation_forward<acc_t>(g.act, to_acc(zw[0]));
          for (int64_t i = 0; i < g.pkh; ++i)
            for (int64_t j = 0; j < g.pkw; ++j) {
              const acc_t v = activation_forward<acc_t>(g.act, to_acc(zw[i * g.OW + j]));
              if (v > best_v || isnan(v)) {  // F.max_pool2d's rule
                best_v = v;
                best = i * g.OW + j;
              }
            }
          if ((py * g.psh) * g.OW + px * g.psw + best == oh * g.OW + ow) grad += g_out;
        }
      }
    }
    // a conv output no pooling window covers gets no gradient (and its z may be unwritten)
    dz[idx] = covered ? grad * activation_derivative<acc_t>(g.act, to_acc(z[idx])) : acc_t(0);
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v, acc_t* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  const acc_t total = shared[0];
  __syncthreads();
  return total;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    grad_bias_kernel(const typename AccType<scalar_t>::type* __restrict__ dz, scalar_t* __restrict__ grad_b,
                     const ConvGeometry g) {
  using acc_t = typename AccType<scalar_t>::type;
  __shared__ acc_t shared[kThreads];
  const int64_t k = blockIdx.x;
  const int64_t plane = g.OH * g.OW;
  acc_t sum = acc_t(0);
  for (int64_t i = threadIdx.x; i < g.N * plane; i += blockDim.x) {
    const int64_t n = i / plane, pix = i % plane;
    sum += dz[(n * g.K + k) * plane + pix];
  }
  sum = block_sum(sum, shared);
  if (threadIdx.x == 0) grad_b[k] = from_acc<scalar_t>(sum);
}

// grad_w[k, cl, r, s0 .. s0 + 15] = sum over (n, oh, ow) of dz[n, k, oh, ow] * x[n, c, ih, iw]
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    grad_weight_kernel(const typename AccType<scalar_t>::type* __restrict__ dz, const scalar_t* __restrict__ x,
                       scalar_t* __restrict__ grad_w, const ConvGeometry g) {
  using acc_t = typename AccType<scalar_t>::type;
  __shared__ acc_t shared[kThreads];
  const int64_t row = blockIdx.x;  // (k, cl, r)
  const int64_t r = row % g.R;
  const int64_t kc = row / g.R;
  const int64_t cl = kc % g.Cg, k = kc / g.Cg;
  const int64_t c = (k / g.Kg) * g.Cg + cl;
  const int64_t s0 = int64_t(blockIdx.y) * kWeightCols;
  const int64_t plane = g.OH * g.OW;
  acc_t acc[kWeightCols];
#pragma unroll
  for (int j = 0; j < kWeightCols; ++j) acc[j] = acc_t(0);
  for (int64_t i = threadIdx.x; i < g.N * plane; i += blockDim.x) {
    const int64_t n = i / plane, pix = i % plane;
    const int64_t oh = pix / g.OW, ow = pix % g.OW;
    const int64_t ih = oh * g.sh - g.ph + r * g.dh;
    if (ih < 0 || ih >= g.H) continue;
    const acc_t d = dz[(n * g.K + k) * plane + pix];
    const scalar_t* xrow = x + ((n * g.C + c) * g.H + ih) * g.W;
#pragma unroll
    for (int j = 0; j < kWeightCols; ++j) {
      const int64_t s = s0 + j;
      const int64_t iw = ow * g.sw - g.pw + s * g.dw;
      if (s < g.S && iw >= 0 && iw < g.W) acc[j] += d * to_acc(xrow[iw]);
    }
  }
  for (int j = 0; j < kWeightCols; ++j) {
    const acc_t total = block_sum(acc[j], shared);
    if (threadIdx.x == 0 && s0 + j < g.S) grad_w[(kc * g.R + r) * g.S + s0 + j] = from_acc<scalar_t>(total);
  }
}

// grad_x[n, c, ih, iw] = sum over k in c's group, r, s with ih = oh * sh - ph + r * dh (and the
// same for columns) of dz[n, k, oh, ow] * w[k, cl, r, s].
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    grad_input_kernel(const typename AccType<scalar_t>::type* __restrict__ dz, const scalar_t* __restrict__ w,
                      scalar_t* __restrict__ grad_x, const ConvGeometry g) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t total = g.N * g.C * g.H * g.W;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t iw = idx % g.W;
    int64_t t = idx / g.W;
    const int64_t ih = t % g.H;
    t /= g.H;
    const int64_t c = t % g.C;
    const int64_t n = t / g.C;
    const int64_t group = c / g.Cg, cl = c % g.Cg;
    acc_t sum = acc_t(0);
    for (int64_t r = 0; r < g.R; ++r) {
      const int64_t h = ih + g.ph - r * g.dh;
      if (h < 0 || h % g.sh != 0) continue;
      const int64_t oh = h / g.sh;
      if (oh >= g.OH) continue;
      for (int64_t s = 0; s < g.S; ++s) {
        const int64_t wv = iw + g.pw - s * g.dw;
        if (wv < 0 || wv % g.sw != 0) continue;
        const int64_t ow = wv / g.sw;
        if (ow >= g.OW) continue;
        for (int64_t kl = 0; kl < g.Kg; ++kl) {
          const int64_t k = group * g.Kg + kl;
          sum += dz[((n * g.K + k) * g.OH + oh) * g.OW + ow] * to_acc(w[((k * g.Cg + cl) * g.R + r) * g.S + s]);
        }
      }
    }
    grad_x[idx] = from_acc<scalar_t>(sum);
  }
}

// ------------------------------------------------------------------------------------------
// Host side

enum class ForwardPath { Direct, Gemm };

// The direct kernel for tiny layers (every weight fits in 32 KB of shared memory and a conv
// output sums at most 256 products: LeNet's C1 and C3), the implicit GEMM otherwise.
ForwardPath pick_forward_path(const ConvGeometry& g, size_t acc_size) {
  const int64_t weights = g.K * g.Cg * g.R * g.S;
  if (weights * int64_t(acc_size) <= 32 * 1024 && g.Cg * g.R * g.S <= 256) return ForwardPath::Direct;
  return ForwardPath::Gemm;
}

// The implicit GEMM launch: SIMT for float32 / float64, tensor cores (WMMA) for float16 / bfloat16
// (explicit specializations, so that no kernel is instantiated for a dtype it does not support).
template <typename scalar_t>
void launch_igemm(dim3 grid, cudaStream_t stream, const scalar_t* x, const scalar_t* w, const scalar_t* bias,
                  scalar_t* out, scalar_t* preact, const ConvGeometry& g, int /*device*/) {
  igemm_simt_kernel<scalar_t><<<grid, kGemmThreads, 0, stream>>>(x, w, bias, out, preact, g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void launch_igemm_wmma(dim3 grid, cudaStream_t stream, const scalar_t* x, const scalar_t* w, const scalar_t* bias,
                       scalar_t* out, scalar_t* preact, const ConvGeometry& g, int device) {
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  TORCH_CHECK(major >= 8, "replab_fast.conv2d: float16/bfloat16 layers this size use tensor cores (WMMA) "
              "and need compute capability 8.0 or newer; this GPU is ", major, ".x");
  igemm_wmma_kernel<scalar_t><<<grid, kGemmThreads, 0, stream>>>(x, w, bias, out, preact, g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <>
void launch_igemm<c10::Half>(dim3 grid, cudaStream_t stream, const c10::Half* x, const c10::Half* w,
                             const c10::Half* bias, c10::Half* out, c10::Half* preact, const ConvGeometry& g,
                             int device) {
  launch_igemm_wmma<c10::Half>(grid, stream, x, w, bias, out, preact, g, device);
}

template <>
void launch_igemm<c10::BFloat16>(dim3 grid, cudaStream_t stream, const c10::BFloat16* x, const c10::BFloat16* w,
                                 const c10::BFloat16* bias, c10::BFloat16* out, c10::BFloat16* preact,
                                 const ConvGeometry& g, int device) {
  launch_igemm_wmma<c10::BFloat16>(grid, stream, x, w, bias, out, preact, g, device);
}

std::tuple<at::Tensor, at::Tensor> conv2d_cuda(const at::Tensor& x_in, const at::Tensor& weight_in,
                                               const std::optional<at::Tensor>& bias_in, at::IntArrayRef stride,
                                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                               c10::string_view activation, c10::string_view pool,
                                               at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride,
                                               bool save_preact) {
  TORCH_CHECK(x_in.is_cuda(), "replab_fast.conv2d: the CUDA kernel got an input on ", x_in.device());
  const ConvGeometry g = check_conv2d_args("replab_fast.conv2d", x_in, weight_in, bias_in, stride, padding, dilation,
                                           groups, activation, pool, pool_kernel, pool_stride);
  const c10::cuda::CUDAGuard device_guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  const bool fused = g.act != Activation::None || g.pool != PoolKind::None;
  const bool keep_preact = save_preact && fused;
  at::Tensor out = at::empty({g.N, g.K, g.PH, g.PW}, x.options());
  at::Tensor preact = keep_preact ? at::empty({g.N, g.K, g.OH, g.OW}, x.options()) : at::empty({0}, x.options());
  if (out.numel() == 0) return {out, preact};
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "replab_fast_conv2d_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    scalar_t* pp = keep_preact ? preact.mutable_data_ptr<scalar_t>() : nullptr;
    if (pick_forward_path(g, sizeof(acc_t)) == ForwardPath::Direct) {
      const size_t smem = size_t(g.K * g.Cg * g.R * g.S) * sizeof(acc_t);
      direct_fused_kernel<scalar_t><<<blocks_for(out.numel(), kThreads), kThreads, smem, stream>>>(xp, wp, bp, op, pp, g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    // GEMM: with pooling it writes z (to preact, or to a scratch tensor) and pool_epilogue_kernel follows.
    at::Tensor z;
    scalar_t* zp = pp;
    if (g.pool != PoolKind::None && zp == nullptr) {
      z = at::empty({g.N, g.K, g.OH, g.OW}, x.options());
      zp = z.mutable_data_ptr<scalar_t>();
    }
    scalar_t* gemm_out = g.pool == PoolKind::None ? op : nullptr;
    const int64_t M = g.N * g.OH * g.OW;
    const dim3 grid(static_cast<unsigned int>((M + kBM - 1) / kBM), static_cast<unsigned int>((g.Kg + kBN - 1) / kBN),
                    static_cast<unsigned int>(g.G));
    launch_igemm<scalar_t>(grid, stream, xp, wp, bp, gemm_out, zp, g, x.get_device());
    if (g.pool != PoolKind::None) {
      pool_epilogue_kernel<scalar_t><<<blocks_for(out.numel(), kThreads), kThreads, 0, stream>>>(zp, op, g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {out, preact};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& weight_in, const at::Tensor& preact_in,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    c10::string_view activation, c10::string_view pool, at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride,
    std::array<bool, 3> output_mask) {
  const char* op = "replab_fast.conv2d_backward";
  TORCH_CHECK(x_in.is_cuda(), op, ": the CUDA kernel got an input on ", x_in.device());
  const ConvGeometry g = check_conv2d_backward_args(op, grad_out_in, x_in, weight_in, preact_in, stride, padding,
                                                    dilation, groups, activation, pool, pool_kernel, pool_stride);
  const bool fused = g.act != Activation::None || g.pool != PoolKind::None;
  const c10::cuda::CUDAGuard device_guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor preact = fused ? preact_in.contiguous() : preact_in;
  const auto acc_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor dz = at::empty({g.N, g.K, g.OH, g.OW}, x.options().dtype(acc_dtype));
  at::Tensor grad_x = output_mask[0] ? at::empty_like(x) : at::empty({0}, x.options());
  at::Tensor grad_w = output_mask[1] ? at::empty_like(weight) : at::empty({0}, x.options());
  at::Tensor grad_b = output_mask[2] ? at::empty({g.K}, x.options()) : at::empty({0}, x.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "replab_fast_conv2d_backward_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    acc_t* dzp = dz.mutable_data_ptr<acc_t>();
    if (dz.numel() > 0) {
      epilogue_backward_kernel<scalar_t><<<blocks_for(dz.numel(), kThreads), kThreads, 0, stream>>>(
          grad_out.const_data_ptr<scalar_t>(), fused ? preact.const_data_ptr<scalar_t>() : nullptr, dzp, g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (output_mask[2]) {
      grad_bias_kernel<scalar_t><<<static_cast<unsigned int>(g.K), kThreads, 0, stream>>>(
          dzp, grad_b.mutable_data_ptr<scalar_t>(), g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (output_mask[1]) {
      const dim3 grid(static_cast<unsigned int>(g.K * g.Cg * g.R),
                      static_cast<unsigned int>((g.S + kWeightCols - 1) / kWeightCols));
      grad_weight_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(dzp, x.const_data_ptr<scalar_t>(),
                                                                  grad_w.mutable_data_ptr<scalar_t>(), g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (output_mask[0] && grad_x.numel() > 0) {
      grad_input_kernel<scalar_t><<<blocks_for(grad_x.numel(), kThreads), kThreads, 0, stream>>>(
          dzp, weight.const_data_ptr<scalar_t>(), grad_x.mutable_data_ptr<scalar_t>(), g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_x, grad_w, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(replab_fast, CUDA, m) {
  m.impl("conv2d", &conv2d_cuda);
  m.impl("conv2d_backward", &conv2d_backward_cuda);
}

}  // namespace replab_fast
