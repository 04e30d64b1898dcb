// replab_fast::conv2d and conv2d_backward on CUDA (TORCH_LIBRARY_IMPL(replab_fast, CUDA, ...)).
// The schema lives in conv2d.cpp, the argument checks in conv2d_checks.cpp; the math is in conv2d.h.
//
// GPU verification pending: this file compiles for sm_80 and sm_90 with warnings as errors
// (`make cuda-compile-check`, run by CI without a GPU); it has not yet run on a GPU. (The index
// math of the GEMM kernels was checked on the CPU only, by running this source under an emulation
// of CUDA threads, WMMA and cp.async against PyTorch in float64; that is no substitute for a GPU run.)
//
// Forward, two kernels, picked per layer (pick_forward_path):
// - direct_fused_kernel: tiny layers (every weight fits in 32 KB of shared memory and a conv
//   output sums at most 256 products: LeNet-5's 1 -> 6 and 6 -> 16 channels, 5x5). One
//   thread per *final* output element (after pooling): it computes the conv outputs of its
//   pooling window from the weights (all of them staged in shared memory) and the input (read
//   through L1), adds the bias, applies the activation, pools, and writes one value: conv + bias
//   + activation + pooling in one launch, the conv output never goes to memory (unless the
//   backward needs it: then the window's z values are written to preact too).
// - igemm kernels: implicit GEMM for the other (AlexNet-sized) layers, per group:
//   C[m, k] = sum_kk A[m, kk] B[kk, k] with m = (n, oh, ow) the output pixels, k the output
//   channels of the group and kk = (c, r, s) the reduction; A is gathered from x on the fly
//   (im2col never materialized), B is the weight as it lies in memory ((K, Cg*R*S) rows).
//   64x64 output tiles, 128 threads:
//   * igemm_wmma_kernel (float16 / bfloat16, sm_80+): tensor cores through WMMA (16x16x16
//     fragments, fp32 accumulators, 2x2 fragments per warp) on 32-wide reduction slices in
//     shared memory, pipelined: the weight slices stream in with cp.async (16-byte copies,
//     zero-filled past the ends, 3 stages, two slices in flight) when Cg*R*S % 8 == 0 and the
//     weight is 16-byte aligned (AlexNet conv2-5), else through registers (conv1: 363); the
//     im2col slice t + 1 is gathered into registers while the MMA works on slice t, then stored
//     to the other of two shared buffers. One __syncthreads per slice.
//   * igemm_simt_kernel (float32 / float64): 16-wide K slices in shared memory, a 4x8 register
//     tile per thread, fp32 (fp64) FMA.
//   The epilogue (from the accumulators in shared memory / registers) adds the bias, applies the
//   activation and writes y, and preact when asked. With a pooling the epilogue writes z and a
//   second launch (pool_epilogue_kernel) pools act(z) (pooling windows straddle the 64-pixel tiles; fusing
//   it into the GEMM epilogue is future work).
// Backward, two paths (pick_backward_path):
// - every path starts with epilogue_backward_kernel: dz = act'(z) * unpool(dy), one thread per
//   conv output, gathering from the pooling windows that cover it (max: recomputes each window's
//   first maximum from z), computed in fp32 (fp64 for float64).
// - GEMM path (the layers the forward runs as a GEMM, in float16 / bfloat16 / float32): dz is
//   stored in the input dtype (for float16 / bfloat16 rounded to 16 bits, as PyTorch's (cuDNN's)
//   backward of such a model holds it; with nothing fused, dz is grad_out itself). Every sum
//   accumulates in fp32 and none uses atomics (the results do not depend on scheduling):
//   * grad_bias_partial_kernel: per (k, part of the batch) a block sum, then splitk_reduce_kernel
//     adds the parts in a fixed order;
//   * grad_weight: backward_gemm_kernel with WgradOp, per group dw[k, (c, r, s)] = sum over
//     (n, oh, ow) of dz[n, k, oh, ow] x[n, c, ih, iw], the long reduction split over blocks
//     (split-K) into fp32 partials, then splitk_reduce_kernel;
//   * grad_input, 16 or more input channels per group: pack_weight_dgrad_kernel lays the weight
//     out as (G, Cg, R*S*Kg), then backward_gemm_kernel with DgradOp, per group
//     dx[(n, ih, iw), c] = sum over (r, s, k) of dz[n, k, oh, ow] w[k, c, r, s], dz gathered where
//     (ih + ph - r*dh) / sh and (iw + pw - s*dw) / sw are whole and inside the output;
//   * grad_input, fewer than 16 input channels per group (AlexNet conv1: 3 -> 96, where DgradOp's
//     64-wide channel tiles would be mostly padding): per chunk of images (the fp32 workspace under
//     256 MB, or one image), backward_gemm_kernel with DcolOp, a dense GEMM per group
//     dcol[(n, oh, ow), (c, r, s)] = sum over k of dz[n, k, oh, ow] w[k, c, r, s] (M = pixels,
//     N = Cg*R*S, reduction Kg), stored in fp32, then col2im_kernel, one thread per input element:
//     dx[n, c, ih, iw] = the sum of dcol over the taps (r, s) that reach (ih, iw), in a fixed order,
//     the taps of each input row and column found once beforehand by col2im_taps_kernel.
//   backward_gemm_kernel: 64x64 tiles, 128 threads, 32-wide reduction slices double-buffered in
//   shared memory through registers (slice t + 1 loads while slice t multiplies), WMMA tensor
//   cores for float16 / bfloat16 (sm_80+), a 4x8 SIMT FMA tile per thread for float32.
// - simple path (the direct kernel's tiny layers, and float64), correct first: dz in an fp32
//   (fp64) scratch tensor;
//   * grad_bias_kernel: one block per output channel, a tree reduction over (n, oh, ow);
//   * grad_weight_kernel: one block per (k, c, r, 16 kernel columns), threads stride over the
//     output pixels with 16 register accumulators, then a block reduction;
//   * grad_input_kernel: one thread per input element, gathering dz * w over the (k, r, s) that
//     reach it.
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
#include <numeric>
#include <type_traits>

#include "conv2d.h"
#include "conv2d_checks.h"

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
constexpr int kBK = 32;              // reduction slice of the WMMA forward and of the backward GEMMs
constexpr int kLdWmma = kBK + 8;     // shared-memory row pitch (16-bit elements) of the WMMA tiles: 80 bytes
constexpr int kLdSimt = kBK + 4;     // shared-memory row pitch (floats) of the backward SIMT tiles: 144 bytes
constexpr int kLdC = kBN + 4;        // pitch of the fp32 accumulator tile
constexpr int kStagesB = 3;          // cp.async stages of the forward's weight (B) slices
constexpr int kWeightCols = 16;      // kernel columns per grad_weight block

inline unsigned int blocks_for(int64_t total, int threads) {
  const int64_t blocks = (total + threads - 1) / threads;
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 1 << 20));
}

REPLAB_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Where flat index idx of a contiguous (planes, rows, cols) tensor lies: plane = n * channels + c.
struct PlanePos {
  int64_t plane, row, col;
};
__device__ __forceinline__ PlanePos plane_position(int64_t idx, int64_t rows, int64_t cols) {
  const int64_t t = idx / cols;
  return {t / rows, t % rows, idx % cols};
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
    const PlanePos pos = plane_position(idx, g.PH, g.PW);
    const int64_t px = pos.col, py = pos.row, k = pos.plane % g.K, n = pos.plane / g.K;
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

// ------------------------------------------------------------------------------------------
// Building blocks of the GEMM kernels (the WMMA forward and the backward GEMMs)
//
// Each GEMM block computes a 64 x 64 tile C[m][n] = sum_kk A[m][kk] B[kk][n] with 128 threads, in
// 32-wide reduction slices staged in shared memory as As[m][kk] (A row-major) and Bs[n][kk]
// (B column-major): the reduction is contiguous in both, rows are padded to kLd elements
// (16-byte aligned rows, 32-byte aligned 16-row blocks for WMMA). After the main loop the
// accumulators go to shared memory column-major, Cs[n][m] with pitch kLdC, so that an epilogue
// whose consecutive threads take consecutive m reads it without bank conflicts.

// 16-byte global -> shared copy, asynchronous on sm_80+ (cp.async.cg: through L2 only). valid ==
// false writes 16 zero bytes and reads nothing (src-size 0); src must still be a mapped address.
// Both addresses must be 16-byte aligned.
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned int dst = static_cast<unsigned int>(__cvta_generic_to_shared(smem_dst));
  const int src_size = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src), "r"(src_size)
               : "memory");
#else
  *static_cast<uint4*>(smem_dst) = valid ? *static_cast<const uint4*>(gmem_src) : make_uint4(0, 0, 0, 0);
#endif
}

// Closes the group of cp.async copies this thread issued since the last commit.
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most `pending` of this thread's committed groups are still in flight (the copies
// are then visible to this thread; a __syncthreads() makes them visible to the block).
template <int pending>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(pending) : "memory");
#endif
}

// 16 consecutive elements of one shared-memory row (16-byte aligned): two 16-byte stores for
// 16-bit elements (element 2i in the low half of word i: little endian), four for floats.
__device__ __forceinline__ void store_row16(uint16_t* dst, const uint16_t (&v)[16]) {
  uint4* d = reinterpret_cast<uint4*>(dst);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const uint16_t* u = v + 8 * h;
    d[h] = make_uint4(uint32_t(u[0]) | (uint32_t(u[1]) << 16), uint32_t(u[2]) | (uint32_t(u[3]) << 16),
                      uint32_t(u[4]) | (uint32_t(u[5]) << 16), uint32_t(u[6]) | (uint32_t(u[7]) << 16));
  }
}
__device__ __forceinline__ void store_row16(float* dst, const float (&v)[16]) {
  float4* d = reinterpret_cast<float4*>(dst);
#pragma unroll
  for (int h = 0; h < 4; ++h) d[h] = make_float4(v[4 * h], v[4 * h + 1], v[4 * h + 2], v[4 * h + 3]);
}

// Tensor-core tile (float16 / bfloat16; frag_t = __half or __nv_bfloat16): warp w computes the
// 32 x 32 quarter (wm, wn) = (w / 2, w % 2) of the tile as 2 x 2 WMMA 16x16x16 fragments with
// fp32 accumulators. sm_80+ only (bfloat16 WMMA); below that the host never launches it.
template <typename frag_t>
struct WmmaTile {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> c[2][2];
#endif

  __device__ __forceinline__ void zero() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) nvcuda::wmma::fill_fragment(c[i][j], 0.0f);
#else
    __trap();
#endif
  }

  // C += As (64 x 32, [m][kk], pitch kLdWmma) x Bs (32 x 64, stored [n][kk], pitch kLdWmma).
  // Fragment pointers: rows multiples of 16 (16 * 80 bytes) plus kk in {0, 16} (32 bytes) from a
  // 32-byte aligned slice: 256-bit aligned, ldm = 40 a multiple of 8, as load_matrix_sync needs.
  __device__ __forceinline__ void step(const uint16_t* As, const uint16_t* Bs) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    using namespace nvcuda;
    const int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
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
        for (int j = 0; j < 2; ++j) wmma::mma_sync(c[i][j], a_frag[i], b_frag[j], c[i][j]);
    }
#else
    __trap();
#endif
  }

  // Cs[n][m] = C[m][n] (pitch kLdC = 68 floats, a multiple of 4; 16-row blocks 32-byte aligned):
  // fragment (i, j) holds rows m = wm*32 + 16i + (0..15) and columns n = wn*32 + 16j + (0..15);
  // stored column-major its element (row, col) lands at base + col * kLdC + row.
  __device__ __forceinline__ void store(float* Cs) const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    using namespace nvcuda;
    const int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(Cs + (wn * 32 + j * 16) * kLdC + wm * 32 + i * 16, c[i][j], kLdC,
                                wmma::mem_col_major);
#else
    __trap();
#endif
  }
};

// SIMT tile (float32): thread (tm, tn) = (tid % 16, tid / 16) owns rows m = tm + 16 i (i < 4) and
// columns n = tn + 8 j (j < 8), and reads 4 reduction elements at a time as float4: a quarter
// warp reads 8 consecutive rows at a 144-byte pitch (banks 4r .. 4r + 3: conflict-free), the B
// reads of a quarter warp are one address (broadcast).
struct SimtTile {
  float acc[4][8];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;
  }

  // C += As (64 x 32, [m][kk], pitch kLdSimt) x Bs (32 x 64, stored [n][kk], pitch kLdSimt)
  __device__ __forceinline__ void step(const float* As, const float* Bs) {
    const int tm = threadIdx.x % 16, tn = threadIdx.x / 16;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 4) {
      float4 a[4], b[8];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = *reinterpret_cast<const float4*>(As + (tm + 16 * i) * kLdSimt + kk);
#pragma unroll
      for (int j = 0; j < 8; ++j) b[j] = *reinterpret_cast<const float4*>(Bs + (tn + 8 * j) * kLdSimt + kk);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          float v = acc[i][j];
          v = fmaf(a[i].x, b[j].x, v);
          v = fmaf(a[i].y, b[j].y, v);
          v = fmaf(a[i].z, b[j].z, v);
          v = fmaf(a[i].w, b[j].w, v);
          acc[i][j] = v;
        }
    }
  }

  // Cs[n][m] = C[m][n], pitch kLdC
  __device__ __forceinline__ void store(float* Cs) const {
    const int tm = threadIdx.x % 16, tn = threadIdx.x / 16;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) Cs[(tn + 8 * j) * kLdC + tm + 16 * i] = acc[i][j];
  }
};

// Per dtype: E, the element as staged in shared memory (the raw 16 bits of a float16 / bfloat16,
// which WMMA reads as frag_t), its row pitch, and the tile that multiplies.
template <typename scalar_t>
struct GemmTraits;
template <typename frag_t>
struct WmmaGemmTraits {
  using E = uint16_t;
  using Tile = WmmaTile<frag_t>;
  static constexpr int kLd = kLdWmma;
  static constexpr bool kTensorCores = true;
};
template <>
struct GemmTraits<c10::Half> : WmmaGemmTraits<__half> {};
template <>
struct GemmTraits<c10::BFloat16> : WmmaGemmTraits<__nv_bfloat16> {};
template <>
struct GemmTraits<float> {
  using E = float;
  using Tile = SimtTile;
  static constexpr int kLd = kLdSimt;
  static constexpr bool kTensorCores = false;
};

template <typename scalar_t>
__device__ __forceinline__ const typename GemmTraits<scalar_t>::E* elems(const scalar_t* p) {
  return reinterpret_cast<const typename GemmTraits<scalar_t>::E*>(p);
}

// ------------------------------------------------------------------------------------------
// Forward: WMMA implicit GEMM (float16 / bfloat16)
//
// Per group (blockIdx.z): C[m, kc] = sum_kk A[m, kk] B[kk, kc], m = (n, oh, ow) < N*OH*OW,
// kc < Kg, kk = (c, r, s) < KD = Cg*R*S (s fastest, the weight's own order), with
//   A[m, kk] = x[n, g*Cg + c, oh*sh - ph + r*dh, ow*sw - pw + s*dw]   (0 in the padding)
//   B[kk, kc] = w[g*Kg + kc, kk]                                      (weight rows, contiguous)
// Thread t gathers A row t % 64 (its output pixel, decomposed once) at the 16 consecutive
// reduction indices (t / 64) * 16 .. + 15 of each slice, walking (c, r, s) with no division.

// This thread's output pixel m: where its im2col row starts in x, and its output offset.
struct FwdPixel {
  bool ok;         // m < N*OH*OW
  int64_t xoff;    // (n*C + g*Cg) * H*W: the group's first input channel of image n
  int64_t ih0;     // oh*sh - ph: input row of kernel row r = 0
  int64_t iw0;     // ow*sw - pw
  int64_t obase;   // n*K*OH*OW + oh*OW + ow: output offset of channel 0
};

__device__ __forceinline__ FwdPixel fwd_pixel(const ConvGeometry& g, int64_t m, int64_t group) {
  const int64_t plane = g.OH * g.OW;
  FwdPixel p{};
  p.ok = m < g.N * plane;
  if (!p.ok) return p;
  const int64_t n = m / plane, pix = m - n * plane;
  const int64_t oh = pix / g.OW, ow = pix - oh * g.OW;
  p.xoff = (n * g.C + group * g.Cg) * g.H * g.W;
  p.ih0 = oh * g.sh - g.ph;
  p.iw0 = ow * g.sw - g.pw;
  p.obase = n * g.K * plane + pix;
  return p;
}

// a[q] = A[m, kk0 + q], q < 16 (x's raw 16-bit elements; 0 past KD or in the padding).
__device__ __forceinline__ void fwd_load_a(const uint16_t* __restrict__ xb, const ConvGeometry& g, const FwdPixel& p,
                                           int64_t kk0, int64_t kd, uint16_t (&a)[16]) {
  const int64_t rs = g.R * g.S, hw = g.H * g.W;
  const int64_t c = kk0 / rs, rem = kk0 - c * rs;
  int64_t r = rem / g.S, s = rem - r * g.S;
  int64_t coff = p.xoff + c * hw;  // channel c's plane
  int64_t ih = p.ih0 + r * g.dh, iw = p.iw0 + s * g.dw;
#pragma unroll
  for (int q = 0; q < 16; ++q) {
    uint16_t v = 0;  // +0.0 in float16 and bfloat16
    if (p.ok && kk0 + q < kd && ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) v = xb[coff + ih * g.W + iw];
    a[q] = v;
    // next (c, r, s): s fastest
    ++s;
    iw += g.dw;
    if (s == g.S) {
      s = 0;
      iw = p.iw0;
      ++r;
      ih += g.dh;
      if (r == g.R) {
        r = 0;
        ih = p.ih0;
        coff += hw;
      }
    }
  }
}

// cp.async path (KD % 8 == 0, w 16-byte aligned): the B slice at k0, 64 rows x 32 elements = 256
// chunks of 16 bytes, two per thread (row e / 4, chunk e % 4 for e = tid, tid + 128). A chunk is
// wholly inside or outside a weight row (KD % 8 == 0, k0 % 32 == 0); rows past Kg and chunks past
// KD are zero-filled. wg: the group's weight row n0; rows: Kg - n0 (> 0).
__device__ __forceinline__ void fwd_issue_b_async(const uint16_t* __restrict__ wg, int64_t rows, int64_t kd, int64_t k0,
                                                  uint16_t* Bst) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int e = threadIdx.x + i * kGemmThreads;
    const int nl = e / 4, ch = e % 4;
    const int64_t kk = k0 + ch * 8;
    const bool ok = nl < rows && kk < kd;
    cp_async_16(Bst + nl * kLdWmma + ch * 8, ok ? wg + nl * kd + kk : wg, ok);
  }
}

// Fallback (any KD or alignment): the B slice at k0 through registers, thread t taking column
// kl = t % 32 of rows t / 32 + 4 i (i < 16): a warp reads 64 contiguous bytes of one row.
__device__ __forceinline__ void fwd_load_b(const uint16_t* __restrict__ wg, int64_t rows, int64_t kd, int64_t k0,
                                           uint16_t (&b)[16]) {
  const int kl = threadIdx.x % kBK, rb = threadIdx.x / kBK;
  const int64_t kk = k0 + kl;
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    const int nl = rb + 4 * i;
    b[i] = (nl < rows && kk < kd) ? wg[nl * kd + kk] : uint16_t(0);
  }
}

__device__ __forceinline__ void fwd_store_b(uint16_t* Bst, const uint16_t (&b)[16]) {
  const int kl = threadIdx.x % kBK, rb = threadIdx.x / kBK;
#pragma unroll
  for (int i = 0; i < 16; ++i) Bst[(rb + 4 * i) * kLdWmma + kl] = b[i];
}

// The pipeline, per slice t (one __syncthreads per slice):
//   issue cp.async of B slice t + 2 into stage (t + 2) % 3 (read at slice t - 1, before the last barrier)
//   load A slice t + 1 (and, in the fallback, B slice t + 1) into registers
//   MMA on As[t % 2], Bs[t % 3]
//   store the registers into As[(t + 1) % 2] (and Bs[(t + 1) % 3])  (read at slice t - 1)
//   wait until B slice t + 1 has landed (cp.async.wait_group 1), __syncthreads
// so two weight slices are in flight and the A gather's latency hides behind the MMA.
// Shared memory: As 2 x 5120 B + Bs 3 x 5120 B = 25600 B (static), the accumulators (17408 B)
// alias it after the loop.
template <typename scalar_t, bool kAsyncB>
__global__ void __launch_bounds__(kGemmThreads)
    igemm_wmma_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                      const scalar_t* __restrict__ bias, scalar_t* __restrict__ out, scalar_t* __restrict__ preact,
                      const ConvGeometry g) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int kTile = kBM * kLdWmma;  // elements of one 64 x 32 slice buffer (padded rows)
  constexpr int kOperandBytes = (2 + kStagesB) * kTile * 2;
  constexpr int kAccBytes = kBN * kLdC * 4;
  __shared__ __align__(128) unsigned char smem[kOperandBytes > kAccBytes ? kOperandBytes : kAccBytes];
  uint16_t* As = reinterpret_cast<uint16_t*>(smem);  // As + (t % 2) * kTile: [m][kk]
  uint16_t* Bs = As + 2 * kTile;                     // Bs + (t % 3) * kTile: [kc][kk] (B column-major)
  float* Cs = reinterpret_cast<float*>(smem);        // [kc][m] after the main loop

  const int tid = threadIdx.x;
  const int64_t kd = g.Cg * g.R * g.S;
  const int num_slices = static_cast<int>(ceil_div(kd, kBK));  // host: kd < 2^30
  const int64_t group = blockIdx.z;
  const int64_t m0 = int64_t(blockIdx.x) * kBM, n0 = int64_t(blockIdx.y) * kBN;
  const int64_t rows = g.Kg - n0;  // valid B rows of this tile (> 0)
  const uint16_t* xb = elems(x);
  const uint16_t* wg = elems(w) + (group * g.Kg + n0) * kd;
  const int ml = tid % kBM, half = tid / kBM;  // A row and 16-element half of each slice
  const FwdPixel px = fwd_pixel(g, m0 + ml, group);

  typename GemmTraits<scalar_t>::Tile tile;
  tile.zero();
  uint16_t ra[16];
  uint16_t rb[16];

  // prologue: B slices 0 .. kStagesB - 2 in flight (one group each, empty past the end), A slice 0
  if constexpr (kAsyncB) {
#pragma unroll
    for (int st = 0; st < kStagesB - 1; ++st) {
      if (st < num_slices) fwd_issue_b_async(wg, rows, kd, int64_t(st) * kBK, Bs + st * kTile);
      cp_async_commit();
    }
  }
  if (num_slices > 0) {
    fwd_load_a(xb, g, px, half * 16, kd, ra);
    store_row16(As + ml * kLdWmma + half * 16, ra);
    if constexpr (!kAsyncB) {
      fwd_load_b(wg, rows, kd, 0, rb);
      fwd_store_b(Bs, rb);
    }
  }
  if constexpr (kAsyncB) cp_async_wait<kStagesB - 2>();  // B slice 0 landed
  __syncthreads();

  int stage = 0;  // t % kStagesB
  for (int t = 0; t < num_slices; ++t) {
    const int prev_stage = stage == 0 ? kStagesB - 1 : stage - 1;  // (t + kStagesB - 1) % kStagesB
    const int next_stage = stage == kStagesB - 1 ? 0 : stage + 1;  // (t + 1) % kStagesB
    const bool more = t + 1 < num_slices;
    if constexpr (kAsyncB) {
      if (t + kStagesB - 1 < num_slices)
        fwd_issue_b_async(wg, rows, kd, int64_t(t + kStagesB - 1) * kBK, Bs + prev_stage * kTile);
      cp_async_commit();  // always: the wait below counts groups
    }
    if (more) {
      fwd_load_a(xb, g, px, int64_t(t + 1) * kBK + half * 16, kd, ra);
      if constexpr (!kAsyncB) fwd_load_b(wg, rows, kd, int64_t(t + 1) * kBK, rb);
    }
    tile.step(As + (t & 1) * kTile, Bs + stage * kTile);
    if (more) {
      store_row16(As + ((t + 1) & 1) * kTile + ml * kLdWmma + half * 16, ra);
      if constexpr (!kAsyncB) fwd_store_b(Bs + next_stage * kTile, rb);
    }
    if constexpr (kAsyncB) cp_async_wait<kStagesB - 2>();  // B slice t + 1 landed
    __syncthreads();
    stage = next_stage;
  }
  if constexpr (kAsyncB) cp_async_wait<0>();  // nothing may land in Cs (only empty groups remain)

  tile.store(Cs);  // every read of As / Bs finished at the loop's last barrier
  __syncthreads();
  // Epilogue: thread t writes pixel m0 + t % 64 of channels n0 + t / 64 + 2 i (consecutive threads:
  // consecutive pixels, coalesced; Cs read along m, conflict-free).
  const int64_t plane = g.OH * g.OW;
  for (int nl = half; nl < kBN; nl += kGemmThreads / kBM) {
    const int64_t kc = n0 + nl;
    if (!px.ok || kc >= g.Kg) continue;
    const int64_t k = group * g.Kg + kc;
    const float z = Cs[nl * kLdC + ml] + (bias != nullptr ? static_cast<float>(bias[k]) : 0.0f);
    const int64_t offset = px.obase + k * plane;
    if (preact != nullptr) preact[offset] = from_acc<scalar_t>(z);
    if (out != nullptr) out[offset] = from_acc<scalar_t>(activation_forward<float>(g.act, z));
  }
#else
  // Tensor-core path needs sm_80+ (bfloat16 WMMA, cp.async); the host never launches it below that.
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
    const PlanePos pos = plane_position(idx, g.PH, g.PW);
    const int64_t px = pos.col, py = pos.row, nk = pos.plane;
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

// dz[n, k, oh, ow] = act'(z) * (sum of the pooled gradients that reach (oh, ow)), computed in
// fp32 (fp64 for float64) and stored as dz_t: the accumulation type for the simple kernels, the
// input dtype for the GEMM backward (see backward_gemm_impl).
template <typename scalar_t, typename dz_t>
__global__ void __launch_bounds__(kThreads)
    epilogue_backward_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ z, dz_t* __restrict__ dz,
                             const ConvGeometry g) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t total = g.N * g.K * g.OH * g.OW;
  const bool fused = g.act != Activation::None || g.pool != PoolKind::None;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    if (!fused) {
      dz[idx] = from_acc<dz_t>(to_acc(dy[idx]));
      continue;
    }
    const PlanePos pos = plane_position(idx, g.OH, g.OW);
    const int64_t ow = pos.col, oh = pos.row, nk = pos.plane;
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
    dz[idx] = from_acc<dz_t>(covered ? grad * activation_derivative<acc_t>(g.act, to_acc(z[idx])) : acc_t(0));
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
// same for columns) of dz[n, k, oh, ow] * w[k, cl, r, s], dz the simple path's fp32 (fp64) scratch.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    grad_input_kernel(const typename AccType<scalar_t>::type* __restrict__ dz, const scalar_t* __restrict__ w,
                      scalar_t* __restrict__ grad_x, const ConvGeometry g) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t total = g.N * g.C * g.H * g.W;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const PlanePos pos = plane_position(idx, g.H, g.W);
    const int64_t iw = pos.col, ih = pos.row, c = pos.plane % g.C, n = pos.plane / g.C;
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
// Backward on the GEMM path (the layers the forward sends to the implicit GEMM; float16,
// bfloat16 on tensor cores, float32 with SIMT FMA). dz is in the input dtype here.

// Partial bias gradients: ws[p, k] = sum over images n = p, p + P, p + 2P, ... and over every
// pixel of dz[n, k, :, :] (grid (K, P), fp32). splitk_reduce_kernel then adds the P partials in
// a fixed order: no atomics, the result does not depend on scheduling.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    grad_bias_partial_kernel(const scalar_t* __restrict__ dz, float* __restrict__ ws, const ConvGeometry g) {
  __shared__ float shared[kThreads];
  const int64_t k = blockIdx.x, p = blockIdx.y, parts = gridDim.y;
  const int64_t plane = g.OH * g.OW;
  float sum = 0.0f;
  for (int64_t n = p; n < g.N; n += parts) {
    const scalar_t* row = dz + (n * g.K + k) * plane;
    for (int64_t i = threadIdx.x; i < plane; i += blockDim.x) sum += static_cast<float>(row[i]);
  }
  sum = block_sum(sum, shared);
  if (threadIdx.x == 0) ws[p * g.K + k] = sum;
}

// out[i] = sum_{p < parts} ws[p * numel + i], p in increasing order (deterministic), cast to scalar_t.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    splitk_reduce_kernel(const float* __restrict__ ws, int64_t parts, int64_t numel, scalar_t* __restrict__ out) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < numel;
       idx += int64_t(gridDim.x) * blockDim.x) {
    float sum = 0.0f;
    for (int64_t p = 0; p < parts; ++p) sum += ws[p * numel + idx];
    out[idx] = from_acc<scalar_t>(sum);
  }
}

// The weight packed for grad_input: wt[g, cl, kk] = w[g*Kg + kl, cl, r, s] with kk = (r*S + s)*Kg + kl
// (kl fastest), rows of kdp elements (kd = R*S*Kg rounded up to a multiple of 8, the tail zero):
// each row is B's column cl of the grad_input GEMM, contiguous along its reduction, 16-byte aligned.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    pack_weight_dgrad_kernel(const scalar_t* __restrict__ w, scalar_t* __restrict__ wt, const ConvGeometry g,
                             int64_t kdp) {
  const int64_t rs = g.R * g.S, kd = rs * g.Kg;
  const int64_t total = g.C * kdp;  // rows (g, cl): G * Cg = C of them
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t kk = idx % kdp, row = idx / kdp;
    const int64_t group = row / g.Cg, cl = row - group * g.Cg;
    scalar_t v = from_acc<scalar_t>(0.0f);
    if (kk < kd) {
      const int64_t tap = kk / g.Kg, kl = kk - tap * g.Kg;  // tap = r*S + s
      v = w[((group * g.Kg + kl) * g.Cg + cl) * rs + tap];
    }
    wt[idx] = v;
  }
}

// The output pixel (oh, ow) that input pixel (ih, iw) feeds through kernel tap (r, s) in the
// forward (ih = oh*sh - ph + r*dh, iw = ow*sw - pw + s*dw), as the offset oh*OW + ow into a dz
// plane; -1 when there is none: r past the kernel, the stride does not divide, or outside the output.
__device__ __forceinline__ int64_t dgrad_tap(const ConvGeometry& g, int64_t ih, int64_t iw, int64_t r, int64_t s) {
  if (r >= g.R) return -1;
  const int64_t h = ih + g.ph - r * g.dh, w = iw + g.pw - s * g.dw;
  if (h < 0 || w < 0) return -1;
  int64_t oh = h, ow = w;
  if (g.sh != 1) {
    if (h % g.sh != 0) return -1;
    oh = h / g.sh;
  }
  if (g.sw != 1) {
    if (w % g.sw != 0) return -1;
    ow = w / g.sw;
  }
  if (oh >= g.OH || ow >= g.OW) return -1;
  return oh * g.OW + ow;
}

// grad_input as an implicit GEMM, per group g = blockIdx.z:
//   dx[n, g*Cg + cl, ih, iw] = sum_kk A[m, kk] B[kk, cl]
//   m = (n, ih, iw) < N*H*W (rows), cl < Cg (columns), kk = (r*S + s)*Kg + kl < kd = R*S*Kg
//   A[m, kk] = dz[n, g*Kg + kl, oh, ow] for the (oh, ow) of dgrad_tap(ih, iw, r, s), else 0
//   B[kk, cl] = w[g*Kg + kl, cl, r, s] = wt[g, cl, kk]
// Thread t loads row t % 64 of both A and B (B's rows are its columns cl) at the 16 reduction
// indices kk0 = 32 t' + (t / 64) * 16 .. + 15 of slice t'. A: consecutive threads, consecutive
// input pixels (coalesced for stride 1); the tap is found once per slice when Kg % 16 == 0 (the 16
// indices then share (r, s)), else recomputed whenever kl wraps. B: two (float: four) 16-byte loads.
template <typename scalar_t, bool kKgMult16>
struct DgradOp {
  using E = typename GemmTraits<scalar_t>::E;
  static constexpr int kLd = GemmTraits<scalar_t>::kLd;
  static constexpr int kChunks = int(sizeof(E));  // 16-byte chunks in 16 elements
  static constexpr int kPerChunk = 16 / int(sizeof(E));

  const scalar_t* dz;  // (N, K, OH, OW)
  const scalar_t* wt;  // (G, Cg, kdp), pack_weight_dgrad_kernel
  scalar_t* dx;        // (N, C, H, W)
  ConvGeometry g;
  int64_t kd;          // R*S*Kg
  int64_t kdp;         // kd rounded up to a multiple of 8

  struct Shared {
    int unused;
  };
  struct Thread {
    int ml, half;       // row t % 64, half t / 64 of each slice
    bool m_ok, b_ok;    // input pixel m < N*H*W; column cl = n0 + ml < Cg
    int64_t group, n0;  // group, first column of the tile
    int64_t ih, iw;     // input pixel of row m
    int64_t dz_base;    // (n*K + g*Kg) * OH*OW: dz of image n, the group's first channel
    int64_t wt_row;     // (g*Cg + n0 + ml) * kdp
    int64_t out_base;   // (n*C + g*Cg) * H*W + ih*W + iw
    int64_t slices;
  };
  struct Regs {
    E a[16];
    uint4 b[kChunks];
  };

  __device__ __forceinline__ void init(Shared&, Thread& th) const {
    const int tid = threadIdx.x;
    th.ml = tid % kBM;
    th.half = tid / kBM;
    th.group = blockIdx.z;
    th.n0 = int64_t(blockIdx.y) * kBN;
    const int64_t hw = g.H * g.W;
    const int64_t m = int64_t(blockIdx.x) * kBM + th.ml;
    th.m_ok = m < g.N * hw;
    const int64_t n = th.m_ok ? m / hw : 0, p = th.m_ok ? m - n * hw : 0;
    th.ih = p / g.W;
    th.iw = p - th.ih * g.W;
    th.dz_base = (n * g.K + th.group * g.Kg) * g.OH * g.OW;
    th.b_ok = th.n0 + th.ml < g.Cg;
    th.wt_row = (th.group * g.Cg + th.n0 + th.ml) * kdp;
    th.out_base = (n * g.C + th.group * g.Cg) * hw + p;
    th.slices = ceil_div(kd, kBK);
  }

  __device__ __forceinline__ void load(const Shared&, const Thread& th, int64_t t, Regs& regs) const {
    const int64_t kk0 = t * kBK + th.half * 16;
    const int64_t plane = g.OH * g.OW;
    // A: dz at the 16 taps kk0 .. kk0 + 15 of pixel m
    const E* dzb = elems(dz) + th.dz_base;
    const int64_t tap = kk0 / g.Kg;
    int64_t kl = kk0 - tap * g.Kg;
    int64_t r = tap / g.S, s = tap - r * g.S;
    int64_t off = th.m_ok ? dgrad_tap(g, th.ih, th.iw, r, s) : -1;
#pragma unroll
    for (int q = 0; q < 16; ++q) {
      regs.a[q] = (off >= 0 && kk0 + q < kd) ? __ldg(dzb + kl * plane + off) : E(0);
      ++kl;
      if constexpr (!kKgMult16) {
        if (kl == g.Kg) {  // next tap (r, s)
          kl = 0;
          if (++s == g.S) {
            s = 0;
            ++r;
          }
          off = th.m_ok ? dgrad_tap(g, th.ih, th.iw, r, s) : -1;
        }
      }
    }
    // B: wt[g, cl, kk0 .. kk0 + 15], 16-byte chunks (wholly inside or past the padded row: kdp % 8 == 0)
    const E* row = elems(wt) + th.wt_row;
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const int64_t kk = kk0 + c * kPerChunk;
      regs.b[c] = (th.b_ok && kk < kdp) ? __ldg(reinterpret_cast<const uint4*>(row + kk)) : make_uint4(0, 0, 0, 0);
    }
  }

  __device__ __forceinline__ void store(const Thread& th, const Regs& regs, E* As, E* Bs) const {
    store_row16(As + th.ml * kLd + th.half * 16, regs.a);
    uint4* brow = reinterpret_cast<uint4*>(Bs + th.ml * kLd + th.half * 16);
#pragma unroll
    for (int c = 0; c < kChunks; ++c) brow[c] = regs.b[c];
  }

  // dx[n, g*Cg + cl, ih, iw] = Cs[cl - n0][m - m0]: thread t writes pixel t % 64 of columns t / 64 + 2 i
  __device__ __forceinline__ void epilogue(const Shared&, const Thread& th, const float* Cs) const {
    if (!th.m_ok) return;
    const int64_t hw = g.H * g.W;
    for (int nl = th.half; nl < kBN; nl += kGemmThreads / kBM) {
      const int64_t cl = th.n0 + nl;
      if (cl < g.Cg) dx[th.out_base + cl * hw] = from_acc<scalar_t>(Cs[nl * kLdC + th.ml]);
    }
  }
};

// grad_input for layers with few input channels per group (Cg < kMinGemmDgradChannels, AlexNet
// conv1: 3 -> 96), where DgradOp's columns would be nearly all padding: a dense GEMM into the
// gradient of the im2col matrix (dcol), then col2im_kernel gathers it into dx. Both run per chunk
// of images n_begin <= n < n_begin + images.
//
// DcolOp, per group g = blockIdx.z:
//   dcol[m, col] = sum_{kl < Kg} A[m, kl] B[kl, col]
//   m = (n - n_begin)*OH*OW + oh*OW + ow < rows = images*OH*OW (GEMM rows: the chunk's output pixels)
//   col = (cl, r, s) < cols = Cg*R*S (GEMM columns, the weight's own order), kl < Kg (the reduction)
//   A[m, kl] = dz[n, g*Kg + kl, oh, ow]
//   B[kl, col] = w[g*Kg + kl, col]   (weight rows as they lie in memory)
// Every product is a real one (no zero taps), so the tensor cores do no wasted work but the tails.
// dcol is stored transposed and in fp32: dcolT[(g*Cg + cl, r, s)][m] = dcolT[(c*R + r)*S + s][m],
// rows of `rows` floats, so that the epilogue's consecutive threads write consecutive m and
// col2im's consecutive threads (consecutive iw) read runs of consecutive ow. fp32 rather than the
// input dtype: col2im adds up to ceil(R / (sh / gcd(sh, dh))) * ceil(S / (sw / gcd(sw, dw)))
// entries per input element (conv1: 3 * 3), and rounding each to 16 bits first would add that many
// roundings to dx; the price is twice the bytes of a 16-bit dcol (conv1 at batch 128: 562 MB
// written once, read once).
// Blocks: blockIdx.x = m_tile * col_tiles + col_tile (the column tiles of one 64-pixel row tile are
// neighbours, so they run together and dz is read from DRAM about once). Thread t loads row t % 64
// of both A and B (B's rows are its columns col) at the 16 reduction indices kl0 = 32 t' + (t / 64)
// * 16 .. + 15 of slice t': a warp reads 32 consecutive pixels of dz, 32 consecutive weight elements.
template <typename scalar_t>
struct DcolOp {
  using E = typename GemmTraits<scalar_t>::E;
  static constexpr int kLd = GemmTraits<scalar_t>::kLd;

  const scalar_t* dz;  // (N, K, OH, OW)
  const scalar_t* w;   // (K, Cg*R*S)
  float* dcol;         // (C*R*S, rows): dcolT
  ConvGeometry g;
  int64_t n_begin;     // first image of the chunk
  int64_t rows;        // images*OH*OW
  int64_t cols;        // Cg*R*S

  struct Shared {
    int unused;
  };
  struct Thread {
    int ml, half;     // row t % 64, half t / 64 of each slice
    bool m_ok, b_ok;  // pixel m < rows; column col = n0 + ml < cols
    int64_t n0;       // first column of the tile
    int64_t dz_off;   // (n*K + g*Kg)*OH*OW + oh*OW + ow: A[m, 0]
    int64_t w_off;    // g*Kg*cols + n0 + ml: B[0, col]
    int64_t out_off;  // (g*cols + n0)*rows + m: dcolT[g*cols + n0][m]
    int64_t slices;
  };
  struct Regs {
    E a[16];
    E b[16];
  };

  __device__ __forceinline__ void init(Shared&, Thread& th) const {
    const int tid = threadIdx.x;
    th.ml = tid % kBM;
    th.half = tid / kBM;
    const int64_t group = blockIdx.z;
    const int64_t col_tiles = ceil_div(cols, kBN), tile = blockIdx.x;
    const int64_t m_tile = tile / col_tiles;
    th.n0 = (tile - m_tile * col_tiles) * kBN;
    const int64_t plane = g.OH * g.OW;
    const int64_t m = m_tile * kBM + th.ml;
    th.m_ok = m < rows;
    const int64_t nl = th.m_ok ? m / plane : 0, pix = th.m_ok ? m - nl * plane : 0;
    th.dz_off = ((n_begin + nl) * g.K + group * g.Kg) * plane + pix;
    th.b_ok = th.n0 + th.ml < cols;
    th.w_off = group * g.Kg * cols + th.n0 + th.ml;
    th.out_off = (group * cols + th.n0) * rows + m;
    th.slices = ceil_div(g.Kg, kBK);
  }

  // A[m, kl0 .. kl0 + 15] and B[kl0 .. kl0 + 15, col], 0 past Kg (and past the tile's rows / columns)
  __device__ __forceinline__ void load(const Shared&, const Thread& th, int64_t t, Regs& regs) const {
    const int64_t kl0 = t * kBK + th.half * 16;
    const int64_t plane = g.OH * g.OW;
    const E* dzb = elems(dz);
    const E* wb = elems(w);
#pragma unroll
    for (int q = 0; q < 16; ++q) {
      const int64_t kl = kl0 + q;
      const bool k_ok = kl < g.Kg;
      regs.a[q] = (th.m_ok && k_ok) ? __ldg(dzb + th.dz_off + kl * plane) : E(0);
      regs.b[q] = (th.b_ok && k_ok) ? __ldg(wb + th.w_off + kl * cols) : E(0);
    }
  }

  __device__ __forceinline__ void store(const Thread& th, const Regs& regs, E* As, E* Bs) const {
    store_row16(As + th.ml * kLd + th.half * 16, regs.a);
    store_row16(Bs + th.ml * kLd + th.half * 16, regs.b);
  }

  // dcolT[g*cols + col][m] = Cs[col - n0][m - m0]: thread t writes pixel t % 64 of columns t / 64 + 2 i
  __device__ __forceinline__ void epilogue(const Shared&, const Thread& th, const float* Cs) const {
    if (!th.m_ok) return;
    for (int nl = th.half; nl < kBN; nl += kGemmThreads / kBM) {
      if (th.n0 + nl < cols) dcol[th.out_off + nl * rows] = Cs[nl * kLdC + th.ml];
    }
  }
};

// The kernel taps that reach one input row (or column) i: the taps t whose forward output
// o = (i + pad - t*dil) / stride is whole and inside [0, out). They are `count` consecutive
// members t = first + j*tap_step (j < count) of the progression of the solutions of t*dil ==
// i + pad (mod stride), tap_step = stride / gcd(stride, dil), with outputs o = out0 - j*out_step,
// out_step = dil / gcd (o falls as t grows, so the ones inside [0, out) are a contiguous run).
// int32: first < R, out0 < OH, count <= R, all below H + 2ph < 2^31 (check_gemm_limits); first
// and out0 are 0 when count is 0.
struct alignas(16) Col2imTaps {
  int first, out0, count, unused;
};

// taps[i] for the input rows i < H (ph, dh, sh, R, OH), then taps[H + j] for the columns j < W.
// col2im_kernel's precomputation: the search over every tap runs once per row and column
// (H + W threads), not once per input element.
__global__ void __launch_bounds__(kThreads) col2im_taps_kernel(Col2imTaps* __restrict__ taps, const ConvGeometry g) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < g.H + g.W;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const bool is_row = idx < g.H;
    const int64_t h = is_row ? idx + g.ph : idx - g.H + g.pw;  // i + pad
    const int64_t dil = is_row ? g.dh : g.dw, stride = is_row ? g.sh : g.sw;
    const int64_t ntaps = is_row ? g.R : g.S, out = is_row ? g.OH : g.OW;
    Col2imTaps result{0, 0, 0, 0};
    for (int64_t t = 0; t < ntaps; ++t) {
      const int64_t d = h - t * dil;
      if (d < 0) break;  // and every later tap
      if (d % stride != 0 || d / stride >= out) continue;
      if (result.count == 0) {
        result.first = static_cast<int>(t);
        result.out0 = static_cast<int>(d / stride);
      }
      ++result.count;
    }
    taps[idx] = result;
  }
}

// The distance in dcolT between two consecutive taps that reach one input coordinate along an
// axis: tap_step taps (tap_pitch elements each) forward and out_step outputs (out_pitch each) back,
// tap_step = stride / gcd(stride, dil), out_step = dil / gcd. 0 when tap_step >= ntaps: then at
// most one tap reaches a coordinate and the step is never taken.
int64_t col2im_step(int64_t stride, int64_t dil, int64_t ntaps, int64_t tap_pitch, int64_t out_pitch) {
  const int64_t d = std::gcd(stride, dil);
  if (stride / d >= ntaps) return 0;
  return (stride / d) * tap_pitch - (dil / d) * out_pitch;  // dil / d <= dil < 2^31 / (ntaps - 1)
}

// dx[n, c, ih, iw] for the chunk's images n = n_begin + nl (nl < images): the sum of dcolT[(c*R +
// r)*S + s][nl*OH*OW + oh*OW + ow] over the taps (r, s) that reach (ih, iw) (Col2imTaps of row ih
// and column iw), r ascending, then s ascending: a fixed order, no atomics; fp32, cast to
// scalar_t. row_step / col_step (col2im_step): the dcolT distance to the next r / s. No division
// in the loops. Grid: x over the pixels p = ih*W + iw of a plane (consecutive threads,
// consecutive iw), y strided over the planes (nl, c).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    col2im_kernel(const float* __restrict__ dcol, const Col2imTaps* __restrict__ taps, scalar_t* __restrict__ dx,
                  const ConvGeometry g, int64_t n_begin, int64_t images, int64_t rows, int64_t row_step,
                  int64_t col_step) {
  const int64_t hw = g.H * g.W;
  const int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (p >= hw) return;
  const int64_t ih = p / g.W, iw = p - ih * g.W;
  const Col2imTaps tr = taps[ih], tc = taps[g.H + iw];
  // dcolT's element of the first tap, past the plane's offset: row (r*S + s), column oh*OW + ow
  const int64_t first = (int64_t(tr.first) * g.S + tc.first) * rows + int64_t(tr.out0) * g.OW + tc.out0;
  for (int64_t pl = blockIdx.y; pl < images * g.C; pl += gridDim.y) {
    const int64_t nl = pl / g.C, c = pl - nl * g.C;
    const float* src = dcol + c * g.R * g.S * rows + nl * g.OH * g.OW + first;
    float sum = 0.0f;
    for (int i = 0; i < tr.count; ++i, src += row_step) {
      const float* q = src;
      for (int j = 0; j < tc.count; ++j, q += col_step) sum += *q;
    }
    dx[((n_begin + nl) * g.C + c) * hw + p] = from_acc<scalar_t>(sum);
  }
}

// grad_weight as a GEMM, per group and reduction split (blockIdx.z = split * G + group):
//   ws[split, g*Kg + k, col] = sum over j in the split's range of A[col, j] B[j, k]
//   col = (cl, r, s) < Cg*R*S (rows: a weight row's elements), k < Kg (columns),
//   j = (n, oh, ow) < N*OH*OW, split's range [split * chunk, min(J, (split + 1) * chunk))
//   A[col, j] = x[n, g*Cg + cl, oh*sh - ph + r*dh, ow*sw - pw + s*dw] (0 in the padding)
//   B[j, k]   = dz[n, g*Kg + k, oh, ow]
// (the weight's columns as GEMM rows: the epilogue's consecutive threads write consecutive
// weight elements). Thread t loads reduction index j = j0 + t % 32 (decomposed once per slice)
// of rows t / 32 + 4 i (i < 16) of both operands: a warp reads 32 consecutive output pixels.
// The 64 rows' (cl, r, s) are decomposed once per block into shared memory.
template <typename scalar_t>
struct WgradOp {
  using E = typename GemmTraits<scalar_t>::E;
  static constexpr int kLd = GemmTraits<scalar_t>::kLd;

  const scalar_t* x;   // (N, C, H, W)
  const scalar_t* dz;  // (N, K, OH, OW)
  float* ws;           // (splits, K, Cg*R*S) fp32 partials
  ConvGeometry g;
  int64_t chunk;       // reduction length per split, a multiple of 32
  int64_t cols;        // Cg*R*S
  int64_t wnumel;      // K*Cg*R*S

  struct alignas(16) RowInfo {  // one 16-byte shared load per element
    int64_t xoff;  // (g*Cg + cl)*H*W + r*dh*W + s*dw; -1 for a row past Cg*R*S
    int rdh;       // r*dh (host: H + 2 ph < 2^31)
    int sdw;       // s*dw
  };
  struct Shared {
    RowInfo row[kBM];  // of GEMM row col = m0 + i
  };
  struct Thread {
    int jl, rb, ml;               // column t % 32 and row base t / 32 of the loads; epilogue row t % 64
    int64_t group, split, m0, n0;
    int64_t j_begin, j_end, slices;
  };
  struct Regs {
    E a[16];
    E b[16];
  };

  __device__ __forceinline__ void init(Shared& sh, Thread& th) const {
    const int tid = threadIdx.x;
    th.jl = tid % kBK;
    th.rb = tid / kBK;
    th.ml = tid % kBM;
    th.group = blockIdx.z % g.G;
    th.split = blockIdx.z / g.G;
    th.m0 = int64_t(blockIdx.x) * kBM;
    th.n0 = int64_t(blockIdx.y) * kBN;
    const int64_t total = g.N * g.OH * g.OW;
    th.j_begin = th.split * chunk;
    th.j_end = th.j_begin + chunk < total ? th.j_begin + chunk : total;
    th.slices = th.j_end > th.j_begin ? ceil_div(th.j_end - th.j_begin, kBK) : 0;
    const int64_t rs = g.R * g.S;
    for (int i = tid; i < kBM; i += kGemmThreads) {
      const int64_t col = th.m0 + i;
      const int64_t cl = col / rs, tap = col - cl * rs;
      const int64_t r = tap / g.S, s = tap - r * g.S;
      RowInfo info;
      info.xoff = col < cols ? (th.group * g.Cg + cl) * g.H * g.W + r * g.dh * g.W + s * g.dw : -1;
      info.rdh = static_cast<int>(r * g.dh);
      info.sdw = static_cast<int>(s * g.dw);
      sh.row[i] = info;
    }
  }

  __device__ __forceinline__ void load(const Shared& sh, const Thread& th, int64_t t, Regs& regs) const {
    const int64_t plane = g.OH * g.OW;
    const int64_t j = th.j_begin + t * kBK + th.jl;
    const bool j_ok = j < th.j_end;
    const int64_t n = j_ok ? j / plane : 0, pix = j_ok ? j - n * plane : 0;
    const int64_t oh = pix / g.OW, ow = pix - oh * g.OW;
    const int64_t ihb = oh * g.sh - g.ph, iwb = ow * g.sw - g.pw;  // input pixel of tap (0, 0)
    const int64_t xbase = n * g.C * g.H * g.W + ihb * g.W + iwb;    // + xoff[row]: x's index
    const int64_t dbase = (n * g.K + th.group * g.Kg + th.n0) * plane + pix;  // + row * plane
    const int64_t krows = g.Kg - th.n0;
    const E* xb = elems(x);
    const E* dzb = elems(dz);
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const int row = th.rb + 4 * i;
      const RowInfo info = sh.row[row];
      E av = E(0);
      if (j_ok && info.xoff >= 0) {
        const int64_t ih = ihb + info.rdh, iw = iwb + info.sdw;
        if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) av = __ldg(xb + xbase + info.xoff);
      }
      regs.a[i] = av;
      regs.b[i] = (j_ok && row < krows) ? __ldg(dzb + dbase + row * plane) : E(0);
    }
  }

  __device__ __forceinline__ void store(const Thread& th, const Regs& regs, E* As, E* Bs) const {
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const int row = th.rb + 4 * i;
      As[row * kLd + th.jl] = regs.a[i];
      Bs[row * kLd + th.jl] = regs.b[i];
    }
  }

  // ws[split, g*Kg + k, col] = Cs[k - n0][col - m0]: thread t writes column t % 64 of rows t / 64 + 2 i
  __device__ __forceinline__ void epilogue(const Shared&, const Thread& th, const float* Cs) const {
    const int64_t col = th.m0 + th.ml;
    if (col >= cols) return;
    float* out = ws + th.split * wnumel + (th.group * g.Kg + th.n0) * cols + col;
    for (int nl = threadIdx.x / kBM; nl < kBN; nl += kGemmThreads / kBM) {
      if (th.n0 + nl < g.Kg) out[nl * cols] = Cs[nl * kLdC + th.ml];
    }
  }
};

// One 64 x 64 tile of a backward GEMM (Op: DgradOp, DcolOp or WgradOp): the reduction in 32-wide slices,
// double-buffered in shared memory through registers. Per slice t (one __syncthreads):
//   load slice t + 1 into registers (global loads in flight during the MMA)
//   MMA on buffer t % 2
//   store the registers into buffer (t + 1) % 2 (last read at slice t - 1, before the last barrier)
//   __syncthreads
// Shared memory: 4 x 64 x kLd elements (20480 B for 16-bit, 36864 B for float), the accumulators
// (17408 B) aliasing it after the loop, plus Op::Shared (<= 1 KB): static, under 48 KB.
template <typename scalar_t, typename Op>
__global__ void __launch_bounds__(kGemmThreads) backward_gemm_kernel(const Op op) {
  using Traits = GemmTraits<scalar_t>;
  using E = typename Traits::E;
  constexpr int kTile = kBM * Traits::kLd;  // elements of one operand buffer
  constexpr int kOperandBytes = 4 * kTile * int(sizeof(E));
  constexpr int kAccBytes = kBN * kLdC * int(sizeof(float));
  __shared__ __align__(128) unsigned char smem[kOperandBytes > kAccBytes ? kOperandBytes : kAccBytes];
  __shared__ typename Op::Shared op_shared;
  E* As = reinterpret_cast<E*>(smem);  // As + b * kTile: [m][kk]
  E* Bs = As + 2 * kTile;              // Bs + b * kTile: [n][kk]
  float* Cs = reinterpret_cast<float*>(smem);

  typename Op::Thread th;
  op.init(op_shared, th);
  __syncthreads();  // op_shared written
  typename Traits::Tile tile;
  tile.zero();
  typename Op::Regs regs;
  if (th.slices > 0) {
    op.load(op_shared, th, 0, regs);
    op.store(th, regs, As, Bs);
  }
  __syncthreads();
  for (int64_t t = 0; t < th.slices; ++t) {  // th.slices: the same in every thread of the block
    const int cur = static_cast<int>(t & 1);
    const bool more = t + 1 < th.slices;
    if (more) op.load(op_shared, th, t + 1, regs);
    tile.step(As + cur * kTile, Bs + cur * kTile);
    if (more) op.store(th, regs, As + (cur ^ 1) * kTile, Bs + (cur ^ 1) * kTile);
    __syncthreads();
  }
  tile.store(Cs);  // every read of As / Bs finished at the loop's last barrier
  __syncthreads();
  op.epilogue(op_shared, th, Cs);
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

// The GEMM kernels keep reduction lengths and slice counts in int and put groups and channel
// tiles on the grid's y and z axes (at most 65535 each).
void check_gemm_limits(const char* op, const ConvGeometry& g) {
  constexpr int64_t kMaxGridYZ = 65535;
  TORCH_CHECK(g.G <= kMaxGridYZ && ceil_div(g.Kg, kBN) <= kMaxGridYZ && ceil_div(g.Cg, kBN) <= kMaxGridYZ, op,
              ": too many groups (", g.G, ") or channels per group (", g.Cg, " in, ", g.Kg,
              " out) for the CUDA GEMM kernels");
  TORCH_CHECK(g.Cg * g.R * g.S < (int64_t(1) << 30) && g.Kg * g.R * g.S < (int64_t(1) << 30), op,
              ": the reduction (channels per group x kernel size) is too long for the CUDA GEMM kernels");
  TORCH_CHECK(ceil_div(g.N * g.OH * g.OW, kBM) < (int64_t(1) << 31) && ceil_div(g.N * g.H * g.W, kBM) < (int64_t(1) << 31),
              op, ": too many pixels for the CUDA GEMM kernels");
  TORCH_CHECK(g.H + 2 * g.ph < (int64_t(1) << 31) && g.W + 2 * g.pw < (int64_t(1) << 31), op,
              ": the padded input is too large for the CUDA GEMM kernels");
}

// The implicit GEMM launch: SIMT for float32 / float64, tensor cores (WMMA) for float16 / bfloat16
// (explicit specializations, so that no kernel is instantiated for a dtype it does not support).
template <typename scalar_t>
void launch_igemm(dim3 grid, cudaStream_t stream, const scalar_t* x, const scalar_t* w, const scalar_t* bias,
                  scalar_t* out, scalar_t* preact, const ConvGeometry& g, int /*device*/) {
  igemm_simt_kernel<scalar_t><<<grid, kGemmThreads, 0, stream>>>(x, w, bias, out, preact, g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void require_tensor_cores(const char* op, int device) {
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  TORCH_CHECK(major >= 8, op, ": float16/bfloat16 layers this size use tensor cores (WMMA) "
              "and need compute capability 8.0 or newer; this GPU is ", major, ".x");
}

// The WMMA forward streams the weight with cp.async when every weight row is a whole number of
// 16-byte chunks (Cg*R*S % 8 == 0) and the weight starts 16-byte aligned (AlexNet's conv2-5);
// otherwise (conv1: 3*11*11 = 363) it loads the weight through registers.
template <typename scalar_t>
void launch_igemm_wmma(dim3 grid, cudaStream_t stream, const scalar_t* x, const scalar_t* w, const scalar_t* bias,
                       scalar_t* out, scalar_t* preact, const ConvGeometry& g, int device) {
  require_tensor_cores("replab_fast.conv2d", device);
  const bool async_b = (g.Cg * g.R * g.S) % 8 == 0 && reinterpret_cast<std::uintptr_t>(w) % 16 == 0;
  if (async_b) {
    igemm_wmma_kernel<scalar_t, true><<<grid, kGemmThreads, 0, stream>>>(x, w, bias, out, preact, g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    igemm_wmma_kernel<scalar_t, false><<<grid, kGemmThreads, 0, stream>>>(x, w, bias, out, preact, g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
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
  const ConvForwardTensors t = prepare_conv2d_forward(g, x_in, weight_in, bias_in, save_preact);
  const at::Tensor &x = t.x, &weight = t.weight, &bias = t.bias, &out = t.out, &preact = t.preact;
  const bool keep_preact = t.keep_preact;
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
    check_gemm_limits("replab_fast.conv2d", g);
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

// ---- backward

enum class BackwardPath { Simple, Gemm };

// The GEMM backward for the layers the forward runs as a GEMM (float16 / bfloat16 / float32); the
// simple kernels for the direct kernel's tiny layers and for float64.
BackwardPath pick_backward_path(const ConvGeometry& g, at::ScalarType dtype) {
  if (dtype == at::kDouble) return BackwardPath::Simple;
  return pick_forward_path(g, sizeof(float)) == ForwardPath::Gemm ? BackwardPath::Gemm : BackwardPath::Simple;
}

int multiprocessor_count(int device) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return std::max(count, 1);
}

// The simple kernels (correct first): dz in fp32 (fp64) scratch, one block per bias or per weight
// row, one thread per input element.
template <typename scalar_t>
void backward_simple(const ConvGeometry& g, bool fused, const at::Tensor& grad_out, const at::Tensor& x,
                     const at::Tensor& weight, const at::Tensor& preact, at::Tensor& grad_x, at::Tensor& grad_w,
                     at::Tensor& grad_b, std::array<bool, 3> output_mask, cudaStream_t stream) {
  using acc_t = typename AccType<scalar_t>::type;
  const auto acc_dtype = std::is_same_v<acc_t, double> ? at::kDouble : at::kFloat;
  at::Tensor dz = at::empty({g.N, g.K, g.OH, g.OW}, x.options().dtype(acc_dtype));
  acc_t* dzp = dz.mutable_data_ptr<acc_t>();
  if (dz.numel() > 0) {
    epilogue_backward_kernel<scalar_t, acc_t><<<blocks_for(dz.numel(), kThreads), kThreads, 0, stream>>>(
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
}

// grad_weight: the split-K GEMM into fp32 partials, then their fixed-order sum. Splits: about 8
// blocks per SM in all, at least 512 reduction elements per block, at most 2^25 partial floats
// (128 MB), grid.z = G * splits <= 65535; then every split gets a non-empty range.
template <typename scalar_t>
void launch_grad_weight_gemm(const ConvGeometry& g, const scalar_t* x, const scalar_t* dz, at::Tensor& grad_w,
                             int sms, cudaStream_t stream) {
  const int64_t cols = g.Cg * g.R * g.S;
  const int64_t wnumel = g.K * cols;
  const int64_t total = g.N * g.OH * g.OW;  // > 0
  const int64_t tiles = ceil_div(cols, kBM) * ceil_div(g.Kg, kBN) * g.G;
  int64_t splits = ceil_div(int64_t(8) * sms, tiles);
  splits = std::min(splits, ceil_div(total, 512));
  splits = std::min(splits, std::max<int64_t>(1, (int64_t(1) << 25) / wnumel));
  splits = std::max<int64_t>(1, std::min(splits, 65535 / g.G));
  const int64_t chunk = ceil_div(ceil_div(total, splits), kBK) * kBK;
  splits = ceil_div(total, chunk);
  at::Tensor ws = at::empty({splits * wnumel}, grad_w.options().dtype(at::kFloat));
  const WgradOp<scalar_t> op{x, dz, ws.mutable_data_ptr<float>(), g, chunk, cols, wnumel};
  const dim3 grid(static_cast<unsigned int>(ceil_div(cols, kBM)), static_cast<unsigned int>(ceil_div(g.Kg, kBN)),
                  static_cast<unsigned int>(g.G * splits));
  backward_gemm_kernel<scalar_t, WgradOp<scalar_t>><<<grid, kGemmThreads, 0, stream>>>(op);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  splitk_reduce_kernel<scalar_t><<<blocks_for(wnumel, kThreads), kThreads, 0, stream>>>(
      ws.const_data_ptr<float>(), splits, wnumel, grad_w.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// grad_input as an implicit GEMM (DgradOp) needs enough input channels per group to fill its
// 64-wide column tiles: with fewer (AlexNet conv1: 3), nearly all of its work would be padding (3
// of 64 columns, and at stride 4 15 of 16 taps zero), so launch_grad_input_col2im runs instead.
constexpr int64_t kMinGemmDgradChannels = 16;

// The most fp32 elements of dcol per chunk of images (256 MB); a chunk holds at least one image.
constexpr int64_t kDcolMaxElements = int64_t(1) << 26;

// grad_input: pack the weight (pack_weight_dgrad_kernel), then the implicit GEMM.
template <typename scalar_t>
void launch_grad_input_gemm(const ConvGeometry& g, const scalar_t* dz, const at::Tensor& weight, at::Tensor& grad_x,
                            cudaStream_t stream) {
  const int64_t kd = g.R * g.S * g.Kg;
  const int64_t kdp = ceil_div(kd, 8) * 8;
  at::Tensor wt = at::empty({g.C * kdp}, weight.options());  // fresh allocation: 16-byte aligned rows
  pack_weight_dgrad_kernel<scalar_t><<<blocks_for(wt.numel(), kThreads), kThreads, 0, stream>>>(
      weight.const_data_ptr<scalar_t>(), wt.mutable_data_ptr<scalar_t>(), g, kdp);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const dim3 grid(static_cast<unsigned int>(ceil_div(g.N * g.H * g.W, kBM)),
                  static_cast<unsigned int>(ceil_div(g.Cg, kBN)), static_cast<unsigned int>(g.G));
  const scalar_t* wtp = wt.const_data_ptr<scalar_t>();
  scalar_t* dxp = grad_x.mutable_data_ptr<scalar_t>();
  if (g.Kg % 16 == 0) {
    const DgradOp<scalar_t, true> op{dz, wtp, dxp, g, kd, kdp};
    backward_gemm_kernel<scalar_t, DgradOp<scalar_t, true>><<<grid, kGemmThreads, 0, stream>>>(op);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    const DgradOp<scalar_t, false> op{dz, wtp, dxp, g, kd, kdp};
    backward_gemm_kernel<scalar_t, DgradOp<scalar_t, false>><<<grid, kGemmThreads, 0, stream>>>(op);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// grad_input for fewer than kMinGemmDgradChannels input channels per group: col2im_taps_kernel
// once, then per chunk of images the dcol GEMM (DcolOp) and col2im_kernel, which share one fp32
// workspace (stream order: a chunk's GEMM starts after the previous chunk's col2im).
template <typename scalar_t>
void launch_grad_input_col2im(const ConvGeometry& g, const scalar_t* dz, const at::Tensor& weight, at::Tensor& grad_x,
                              cudaStream_t stream) {
  const int64_t cols = g.Cg * g.R * g.S, plane = g.OH * g.OW, hw = g.H * g.W;
  const int64_t per_image = g.C * g.R * g.S * plane;  // dcol elements of one image (> 0)
  const int64_t max_chunk = std::clamp<int64_t>(kDcolMaxElements / per_image, 1, g.N);
  const int64_t chunk = ceil_div(g.N, ceil_div(g.N, max_chunk));  // chunks of equal size (but the last)
  const int64_t col_tiles = ceil_div(cols, kBN);
  TORCH_CHECK(ceil_div(chunk * plane, kBM) * col_tiles < (int64_t(1) << 31),
              "replab_fast.conv2d_backward: too many output pixels x kernel elements for the CUDA grad_input GEMM");
  at::Tensor ws = at::empty({chunk * per_image}, grad_x.options().dtype(at::kFloat));
  at::Tensor taps_buffer = at::empty({(g.H + g.W) * 4}, grad_x.options().dtype(at::kInt));  // 16-byte aligned
  auto* taps = reinterpret_cast<Col2imTaps*>(taps_buffer.mutable_data_ptr<int>());
  col2im_taps_kernel<<<blocks_for(g.H + g.W, kThreads), kThreads, 0, stream>>>(taps, g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const scalar_t* wp = weight.const_data_ptr<scalar_t>();
  float* dcol = ws.mutable_data_ptr<float>();
  scalar_t* dxp = grad_x.mutable_data_ptr<scalar_t>();
  for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
    const int64_t images = std::min(chunk, g.N - n0), rows = images * plane;
    const DcolOp<scalar_t> op{dz, wp, dcol, g, n0, rows, cols};
    const dim3 gemm_grid(static_cast<unsigned int>(ceil_div(rows, kBM) * col_tiles), 1, static_cast<unsigned int>(g.G));
    backward_gemm_kernel<scalar_t, DcolOp<scalar_t>><<<gemm_grid, kGemmThreads, 0, stream>>>(op);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t row_step = col2im_step(g.sh, g.dh, g.R, g.S * rows, g.OW);
    const int64_t col_step = col2im_step(g.sw, g.dw, g.S, rows, 1);
    const dim3 gather_grid(static_cast<unsigned int>(ceil_div(hw, kThreads)),
                           static_cast<unsigned int>(std::min<int64_t>(images * g.C, 65535)));
    col2im_kernel<scalar_t><<<gather_grid, kThreads, 0, stream>>>(dcol, taps, dxp, g, n0, images, rows, row_step,
                                                                   col_step);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// The GEMM backward. dz is stored in the input dtype: for float16 / bfloat16 it is rounded to 16
// bits before the tensor-core GEMMs, as PyTorch's (cuDNN's) backward of a float16 / bfloat16 model
// holds the gradient flowing into the convolution; every sum accumulates in fp32. With nothing
// fused, dz is grad_out itself.
template <typename scalar_t>
void backward_gemm_impl(const ConvGeometry& g, bool fused, const at::Tensor& grad_out, const at::Tensor& x,
                        const at::Tensor& weight, const at::Tensor& preact, at::Tensor& grad_x, at::Tensor& grad_w,
                        at::Tensor& grad_b, std::array<bool, 3> output_mask, cudaStream_t stream, int device) {
  const char* op = "replab_fast.conv2d_backward";
  if constexpr (GemmTraits<scalar_t>::kTensorCores) require_tensor_cores(op, device);
  check_gemm_limits(op, g);
  const int sms = multiprocessor_count(device);
  at::Tensor dz_buffer;
  const scalar_t* dz = grad_out.const_data_ptr<scalar_t>();
  if (fused) {
    dz_buffer = at::empty({g.N, g.K, g.OH, g.OW}, x.options());
    if (dz_buffer.numel() > 0) {
      epilogue_backward_kernel<scalar_t, scalar_t><<<blocks_for(dz_buffer.numel(), kThreads), kThreads, 0, stream>>>(
          grad_out.const_data_ptr<scalar_t>(), preact.const_data_ptr<scalar_t>(),
          dz_buffer.mutable_data_ptr<scalar_t>(), g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    dz = dz_buffer.const_data_ptr<scalar_t>();
  }
  if (output_mask[2]) {  // about 8 blocks per SM: parts of the batch per output channel
    const int64_t parts =
        std::clamp<int64_t>(ceil_div(int64_t(8) * sms, g.K), 1, std::max<int64_t>(1, std::min<int64_t>(g.N, 65535)));
    at::Tensor ws = at::empty({parts * g.K}, x.options().dtype(at::kFloat));
    grad_bias_partial_kernel<scalar_t>
        <<<dim3(static_cast<unsigned int>(g.K), static_cast<unsigned int>(parts)), kThreads, 0, stream>>>(
            dz, ws.mutable_data_ptr<float>(), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    splitk_reduce_kernel<scalar_t><<<blocks_for(g.K, kThreads), kThreads, 0, stream>>>(
        ws.const_data_ptr<float>(), parts, g.K, grad_b.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (output_mask[1]) {
    if (g.N * g.OH * g.OW == 0) {
      grad_w.zero_();
    } else {
      launch_grad_weight_gemm<scalar_t>(g, x.const_data_ptr<scalar_t>(), dz, grad_w, sms, stream);
    }
  }
  if (output_mask[0] && grad_x.numel() > 0) {
    if (g.Cg >= kMinGemmDgradChannels) {
      launch_grad_input_gemm<scalar_t>(g, dz, weight, grad_x, stream);
    } else {
      launch_grad_input_col2im<scalar_t>(g, dz, weight, grad_x, stream);
    }
  }
}

// Explicit specializations, so that no GEMM kernel is instantiated for float64.
template <typename scalar_t>
void backward_gemm(const ConvGeometry&, bool, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                   const at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, std::array<bool, 3>, cudaStream_t, int) {
  TORCH_INTERNAL_ASSERT(false, "replab_fast.conv2d_backward: no GEMM backward for this dtype");
}
template <>
void backward_gemm<c10::Half>(const ConvGeometry& g, bool fused, const at::Tensor& grad_out, const at::Tensor& x,
                              const at::Tensor& weight, const at::Tensor& preact, at::Tensor& grad_x,
                              at::Tensor& grad_w, at::Tensor& grad_b, std::array<bool, 3> output_mask,
                              cudaStream_t stream, int device) {
  backward_gemm_impl<c10::Half>(g, fused, grad_out, x, weight, preact, grad_x, grad_w, grad_b, output_mask, stream,
                                device);
}
template <>
void backward_gemm<c10::BFloat16>(const ConvGeometry& g, bool fused, const at::Tensor& grad_out, const at::Tensor& x,
                                  const at::Tensor& weight, const at::Tensor& preact, at::Tensor& grad_x,
                                  at::Tensor& grad_w, at::Tensor& grad_b, std::array<bool, 3> output_mask,
                                  cudaStream_t stream, int device) {
  backward_gemm_impl<c10::BFloat16>(g, fused, grad_out, x, weight, preact, grad_x, grad_w, grad_b, output_mask,
                                    stream, device);
}
template <>
void backward_gemm<float>(const ConvGeometry& g, bool fused, const at::Tensor& grad_out, const at::Tensor& x,
                          const at::Tensor& weight, const at::Tensor& preact, at::Tensor& grad_x, at::Tensor& grad_w,
                          at::Tensor& grad_b, std::array<bool, 3> output_mask, cudaStream_t stream, int device) {
  backward_gemm_impl<float>(g, fused, grad_out, x, weight, preact, grad_x, grad_w, grad_b, output_mask, stream,
                            device);
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
  at::Tensor grad_x = output_mask[0] ? at::empty_like(x) : at::empty({0}, x.options());
  at::Tensor grad_w = output_mask[1] ? at::empty_like(weight) : at::empty({0}, x.options());
  at::Tensor grad_b = output_mask[2] ? at::empty({g.K}, x.options()) : at::empty({0}, x.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const BackwardPath path = pick_backward_path(g, x.scalar_type());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "replab_fast_conv2d_backward_cuda", [&] {
    if (path == BackwardPath::Gemm) {
      backward_gemm<scalar_t>(g, fused, grad_out, x, weight, preact, grad_x, grad_w, grad_b, output_mask, stream,
                              x.get_device());
    } else {
      backward_simple<scalar_t>(g, fused, grad_out, x, weight, preact, grad_x, grad_w, grad_b, output_mask, stream);
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
