// The CUDA conv2d's GEMM backward (float16 / bfloat16 on tensor cores, float32 SIMT): backward_gemm
// runs dz, grad_bias (block sums), grad_weight (a split-K GEMM, WgradOp) and grad_input
// (conv2d_cuda_igemm_dgrad.cu), every reduction in a fixed order (overview in conv2d_cuda.cu).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <array>
#include <cstdint>

#include "conv2d.h"
#include "conv2d_cuda_common.cuh"
#include "conv2d_cuda_igemm_bwd.cuh"
#include "conv2d_cuda_launch.h"

namespace replab_fast {
namespace {

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

// ------------------------------------------------------------------------------------------
// Host side

int multiprocessor_count(int device) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return std::max(count, 1);
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
      launch_epilogue_backward<scalar_t, scalar_t>(grad_out.const_data_ptr<scalar_t>(),
                                                   preact.const_data_ptr<scalar_t>(),
                                                   dz_buffer.mutable_data_ptr<scalar_t>(), dz_buffer.numel(), g,
                                                   stream);
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

}  // namespace

// Explicit specializations, so that no GEMM kernel is instantiated for float64 (declared in
// conv2d_cuda_launch.h).
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

template void backward_gemm<double>(const ConvGeometry&, bool, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                    const at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, std::array<bool, 3>,
                                    cudaStream_t, int);

}  // namespace replab_fast
