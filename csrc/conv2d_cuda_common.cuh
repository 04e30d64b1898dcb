// The CUDA conv2d's device building blocks that several of its .cu files use: accumulation types,
// launch and tile sizes, index helpers, the GEMM tiles (WMMA, SIMT) and their per-dtype traits, the
// block sum, and the host checks of the GEMM paths.
//
// No relocatable device code (-rdc): what two translation units share is defined here, inline or
// as a template, with internal linkage (an unnamed namespace), so that each .cu compiles its own
// copy, as when the CUDA code was one file. Kernels stay in the .cu that launches them (the one
// kernel template two .cu files instantiate, backward_gemm_kernel, is in conv2d_cuda_igemm_bwd.cuh).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>

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

// ------------------------------------------------------------------------------------------
// Building blocks of the GEMM kernels (the WMMA forward and the backward GEMMs)
//
// Each GEMM block computes a 64 x 64 tile C[m][n] = sum_kk A[m][kk] B[kk][n] with 128 threads, in
// 32-wide reduction slices staged in shared memory as As[m][kk] (A row-major) and Bs[n][kk]
// (B column-major): the reduction is contiguous in both, rows are padded to kLd elements
// (16-byte aligned rows, 32-byte aligned 16-row blocks for WMMA). After the main loop the
// accumulators go to shared memory column-major, Cs[n][m] with pitch kLdC, so that an epilogue
// whose consecutive threads take consecutive m reads it without bank conflicts.

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

// The sum of v over the block's threads (blockDim.x a power of two; shared: blockDim.x
// elements), returned to every thread.
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

// The GEMM kernels keep reduction lengths and slice counts in int and put groups and channel
// tiles on the grid's y and z axes (at most 65535 each).
inline void check_gemm_limits(const char* op, const ConvGeometry& g) {
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

inline void require_tensor_cores(const char* op, int device) {
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  TORCH_CHECK(major >= 8, op, ": float16/bfloat16 layers this size use tensor cores (WMMA) "
              "and need compute capability 8.0 or newer; this GPU is ", major, ".x");
}

}  // namespace
}  // namespace replab_fast
