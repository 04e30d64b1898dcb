// The CUDA conv2d's direct kernels: direct_fused_kernel for tiny layers (conv + bias + activation
// + pooling in one launch) and the simple backward kernels (grad_bias, grad_weight, grad_input)
// that its layers and float64 use, with their launchers (overview in conv2d_cuda.cu).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>

#include <array>
#include <cstdint>
#include <type_traits>

#include "conv2d.h"
#include "conv2d_cuda_common.cuh"
#include "conv2d_cuda_launch.h"

namespace replab_fast {
namespace {

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
// Backward: the simple kernels

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

}  // namespace

// direct_fused_kernel, every weight staged in shared memory (acc_t), one thread per final output.
template <typename scalar_t>
void launch_direct_fused(const ConvGeometry& g, const scalar_t* xp, const scalar_t* wp, const scalar_t* bp,
                         scalar_t* op, scalar_t* pp, int64_t out_numel, cudaStream_t stream) {
  using acc_t = typename AccType<scalar_t>::type;
  const size_t smem = size_t(g.K * g.Cg * g.R * g.S) * sizeof(acc_t);
  direct_fused_kernel<scalar_t><<<blocks_for(out_numel, kThreads), kThreads, smem, stream>>>(xp, wp, bp, op, pp, g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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
    launch_epilogue_backward<scalar_t, acc_t>(grad_out.const_data_ptr<scalar_t>(),
                                              fused ? preact.const_data_ptr<scalar_t>() : nullptr, dzp, dz.numel(), g,
                                              stream);
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

template void launch_direct_fused<double>(const ConvGeometry&, const double*, const double*, const double*, double*,
                                          double*, int64_t, cudaStream_t);
template void launch_direct_fused<float>(const ConvGeometry&, const float*, const float*, const float*, float*, float*,
                                         int64_t, cudaStream_t);
template void launch_direct_fused<c10::Half>(const ConvGeometry&, const c10::Half*, const c10::Half*,
                                             const c10::Half*, c10::Half*, c10::Half*, int64_t, cudaStream_t);
template void launch_direct_fused<c10::BFloat16>(const ConvGeometry&, const c10::BFloat16*, const c10::BFloat16*,
                                                 const c10::BFloat16*, c10::BFloat16*, c10::BFloat16*, int64_t,
                                                 cudaStream_t);

#define REPLAB_INSTANTIATE_BACKWARD_SIMPLE(scalar_t)                                                              \
  template void backward_simple<scalar_t>(const ConvGeometry&, bool, const at::Tensor&, const at::Tensor&,      \
                                          const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&,       \
                                          at::Tensor&, std::array<bool, 3>, cudaStream_t);
REPLAB_INSTANTIATE_BACKWARD_SIMPLE(double)
REPLAB_INSTANTIATE_BACKWARD_SIMPLE(float)
REPLAB_INSTANTIATE_BACKWARD_SIMPLE(c10::Half)
REPLAB_INSTANTIATE_BACKWARD_SIMPLE(c10::BFloat16)
#undef REPLAB_INSTANTIATE_BACKWARD_SIMPLE

}  // namespace replab_fast
