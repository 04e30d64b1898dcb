// The CUDA conv2d's implicit-GEMM forward: igemm_simt_kernel (float32, float64) and
// igemm_wmma_kernel (float16, bfloat16: WMMA tensor cores, the weight pipelined with cp.async),
// launched per layer by forward_gemm, with the pooling epilogue after them (overview in
// conv2d_cuda.cu).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>

#include <cstdint>

#include "conv2d.h"
#include "conv2d_cuda_common.cuh"
#include "conv2d_cuda_launch.h"

namespace replab_fast {
namespace {

// ------------------------------------------------------------------------------------------
// Forward: implicit GEMM

// x[n, c, ih, iw] or 0 outside the input (zero padding).
template <typename scalar_t>
__device__ __forceinline__ typename AccType<scalar_t>::type load_x(const scalar_t* __restrict__ x, const ConvGeometry& g,
                                                                   int64_t n, int64_t c, int64_t ih, int64_t iw) {
  using acc_t = typename AccType<scalar_t>::type;
  if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) return acc_t(0);
  return to_acc(x[((n * g.C + c) * g.H + ih) * g.W + iw]);
}

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
// cp.async, for the WMMA forward's weight pipeline (sm_80+; plain copies below)

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

// The implicit GEMM launch: SIMT for float32 / float64, tensor cores (WMMA) for float16 / bfloat16
// (explicit specializations, so that no kernel is instantiated for a dtype it does not support).
template <typename scalar_t>
void launch_igemm(dim3 grid, cudaStream_t stream, const scalar_t* x, const scalar_t* w, const scalar_t* bias,
                  scalar_t* out, scalar_t* preact, const ConvGeometry& g, int /*device*/) {
  igemm_simt_kernel<scalar_t><<<grid, kGemmThreads, 0, stream>>>(x, w, bias, out, preact, g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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

}  // namespace

// The GEMM forward of one layer: with pooling it writes z (to preact, or to a scratch tensor) and
// pool_epilogue_kernel follows (out_numel: the final outputs).
template <typename scalar_t>
void forward_gemm(const ConvGeometry& g, const at::Tensor& x, const scalar_t* xp, const scalar_t* wp,
                  const scalar_t* bp, scalar_t* op, scalar_t* pp, int64_t out_numel, cudaStream_t stream) {
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
  if (g.pool != PoolKind::None) launch_pool_epilogue<scalar_t>(zp, op, g, out_numel, stream);
}

template void forward_gemm<double>(const ConvGeometry&, const at::Tensor&, const double*, const double*, const double*,
                                   double*, double*, int64_t, cudaStream_t);
template void forward_gemm<float>(const ConvGeometry&, const at::Tensor&, const float*, const float*, const float*,
                                  float*, float*, int64_t, cudaStream_t);
template void forward_gemm<c10::Half>(const ConvGeometry&, const at::Tensor&, const c10::Half*, const c10::Half*,
                                      const c10::Half*, c10::Half*, c10::Half*, int64_t, cudaStream_t);
template void forward_gemm<c10::BFloat16>(const ConvGeometry&, const at::Tensor&, const c10::BFloat16*,
                                          const c10::BFloat16*, const c10::BFloat16*, c10::BFloat16*,
                                          c10::BFloat16*, int64_t, cudaStream_t);

}  // namespace replab_fast
