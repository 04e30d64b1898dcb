// The CUDA conv2d's grad_input on the GEMM backward path: an implicit GEMM (DgradOp over the packed
// weight) with 16 or more input channels per group, else a dense GEMM into the im2col gradient
// (DcolOp) per chunk of images, then col2im; their launchers (overview in conv2d_cuda.cu).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdint>
#include <numeric>

#include "conv2d.h"
#include "conv2d_cuda_common.cuh"
#include "conv2d_cuda_igemm_bwd.cuh"
#include "conv2d_cuda_launch.h"

namespace replab_fast {
namespace {

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

// The most fp32 elements of dcol per chunk of images (256 MB); a chunk holds at least one image.
constexpr int64_t kDcolMaxElements = int64_t(1) << 26;

}  // namespace

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

#define REPLAB_INSTANTIATE_GRAD_INPUT(scalar_t)                                                                     \
  template void launch_grad_input_gemm<scalar_t>(const ConvGeometry&, const scalar_t*, const at::Tensor&,          \
                                                 at::Tensor&, cudaStream_t);                                        \
  template void launch_grad_input_col2im<scalar_t>(const ConvGeometry&, const scalar_t*, const at::Tensor&,        \
                                                   at::Tensor&, cudaStream_t);
REPLAB_INSTANTIATE_GRAD_INPUT(float)
REPLAB_INSTANTIATE_GRAD_INPUT(c10::Half)
REPLAB_INSTANTIATE_GRAD_INPUT(c10::BFloat16)
#undef REPLAB_INSTANTIATE_GRAD_INPUT

}  // namespace replab_fast
