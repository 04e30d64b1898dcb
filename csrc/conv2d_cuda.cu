// replab_fast::conv2d and conv2d_backward on CUDA: the two entry points, the kernel path picked per
// layer (pick_forward_path, pick_backward_path), and TORCH_LIBRARY_IMPL(replab_fast, CUDA, ...).
// The schema lives in conv2d.cpp, the argument checks in conv2d_checks.cpp; the math is in conv2d.h.
//
// GPU verification pending: these files compile for sm_80 and sm_90 with warnings as errors
// (`make cuda-compile-check`, run by CI without a GPU); they have not yet run on a GPU. (The index
// math of the GEMM kernels was checked on the CPU only, by running the CUDA source, then one file,
// under an emulation of CUDA threads, WMMA and cp.async against PyTorch in float64; that is no
// substitute for a GPU run.)
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
//
// Files:
//   conv2d_cuda.cu              the entry points, the path picks, the registration (this file)
//   conv2d_cuda_direct.cu       direct_fused_kernel; the simple backward (backward_simple)
//   conv2d_cuda_igemm_fwd.cu    igemm_simt_kernel, igemm_wmma_kernel (forward_gemm)
//   conv2d_cuda_epilogue.cu     pool_epilogue_kernel, epilogue_backward_kernel
//   conv2d_cuda_igemm_bwd.cu    the GEMM backward (backward_gemm): grad_bias, grad_weight (WgradOp)
//   conv2d_cuda_igemm_dgrad.cu  its grad_input: DgradOp, DcolOp and col2im
//   conv2d_cuda_igemm_bwd.cuh   backward_gemm_kernel, the main loop of the backward GEMMs
//   conv2d_cuda_common.cuh      the device building blocks several .cu files share
//   conv2d_cuda_launch.h        the launchers one .cu file calls in another
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <tuple>

#include "conv2d.h"
#include "conv2d_checks.h"
#include "conv2d_cuda_common.cuh"
#include "conv2d_cuda_launch.h"

namespace replab_fast {
namespace {

enum class ForwardPath { Direct, Gemm };

// The direct kernel for tiny layers (every weight fits in 32 KB of shared memory and a conv
// output sums at most 256 products: LeNet's C1 and C3), the implicit GEMM otherwise.
ForwardPath pick_forward_path(const ConvGeometry& g, size_t acc_size) {
  const int64_t weights = g.K * g.Cg * g.R * g.S;
  if (weights * int64_t(acc_size) <= 32 * 1024 && g.Cg * g.R * g.S <= 256) return ForwardPath::Direct;
  return ForwardPath::Gemm;
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
      launch_direct_fused<scalar_t>(g, xp, wp, bp, op, pp, out.numel(), stream);
      return;
    }
    forward_gemm<scalar_t>(g, x, xp, wp, bp, op, pp, out.numel(), stream);
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
