// The CUDA conv2d's host launchers that one of its .cu files calls in another: declarations, each
// defined in the .cu named and explicitly instantiated there for the dtypes the entry points'
// dispatch uses (float64, float32, float16, bfloat16, or those of them that reach it).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cuda_runtime_api.h>

#include <array>
#include <cstdint>

#include "conv2d.h"

namespace replab_fast {

// conv2d_cuda_direct.cu: direct_fused_kernel over the out_numel final outputs.
template <typename scalar_t>
void launch_direct_fused(const ConvGeometry& g, const scalar_t* xp, const scalar_t* wp, const scalar_t* bp,
                         scalar_t* op, scalar_t* pp, int64_t out_numel, cudaStream_t stream);

// conv2d_cuda_direct.cu: the simple backward (the direct kernel's layers, and float64).
template <typename scalar_t>
void backward_simple(const ConvGeometry& g, bool fused, const at::Tensor& grad_out, const at::Tensor& x,
                     const at::Tensor& weight, const at::Tensor& preact, at::Tensor& grad_x, at::Tensor& grad_w,
                     at::Tensor& grad_b, std::array<bool, 3> output_mask, cudaStream_t stream);

// conv2d_cuda_igemm_fwd.cu: the implicit-GEMM forward (then the pooling epilogue, when pooling).
template <typename scalar_t>
void forward_gemm(const ConvGeometry& g, const at::Tensor& x, const scalar_t* xp, const scalar_t* wp,
                  const scalar_t* bp, scalar_t* op, scalar_t* pp, int64_t out_numel, cudaStream_t stream);

// conv2d_cuda_epilogue.cu: pool_epilogue_kernel, out (out_numel elements) = pool(act(z)).
template <typename scalar_t>
void launch_pool_epilogue(const scalar_t* z, scalar_t* out, const ConvGeometry& g, int64_t out_numel,
                          cudaStream_t stream);

// conv2d_cuda_epilogue.cu: epilogue_backward_kernel, dz (numel > 0 elements) = act'(z) * unpool(dy)
// (dz_t: the accumulation type for backward_simple, scalar_t for backward_gemm).
template <typename scalar_t, typename dz_t>
void launch_epilogue_backward(const scalar_t* dy, const scalar_t* z, dz_t* dz, int64_t numel, const ConvGeometry& g,
                              cudaStream_t stream);

// conv2d_cuda_igemm_dgrad.cu: grad_input of the GEMM backward (float16, bfloat16, float32), dz in
// the input dtype: as an implicit GEMM (Cg >= kMinGemmDgradChannels), or as dcol and col2im.
template <typename scalar_t>
void launch_grad_input_gemm(const ConvGeometry& g, const scalar_t* dz, const at::Tensor& weight, at::Tensor& grad_x,
                            cudaStream_t stream);
template <typename scalar_t>
void launch_grad_input_col2im(const ConvGeometry& g, const scalar_t* dz, const at::Tensor& weight, at::Tensor& grad_x,
                              cudaStream_t stream);

// conv2d_cuda_igemm_bwd.cu: the GEMM backward, for float16, bfloat16 and float32 (explicit
// specializations); the primary template, which asserts, is instantiated for float64 only to
// complete the dispatch (pick_backward_path never sends float64 there).
template <typename scalar_t>
void backward_gemm(const ConvGeometry& g, bool fused, const at::Tensor& grad_out, const at::Tensor& x,
                   const at::Tensor& weight, const at::Tensor& preact, at::Tensor& grad_x, at::Tensor& grad_w,
                   at::Tensor& grad_b, std::array<bool, 3> output_mask, cudaStream_t stream, int device);
template <>
void backward_gemm<c10::Half>(const ConvGeometry& g, bool fused, const at::Tensor& grad_out, const at::Tensor& x,
                              const at::Tensor& weight, const at::Tensor& preact, at::Tensor& grad_x,
                              at::Tensor& grad_w, at::Tensor& grad_b, std::array<bool, 3> output_mask,
                              cudaStream_t stream, int device);
template <>
void backward_gemm<c10::BFloat16>(const ConvGeometry& g, bool fused, const at::Tensor& grad_out, const at::Tensor& x,
                                  const at::Tensor& weight, const at::Tensor& preact, at::Tensor& grad_x,
                                  at::Tensor& grad_w, at::Tensor& grad_b, std::array<bool, 3> output_mask,
                                  cudaStream_t stream, int device);
template <>
void backward_gemm<float>(const ConvGeometry& g, bool fused, const at::Tensor& grad_out, const at::Tensor& x,
                          const at::Tensor& weight, const at::Tensor& preact, at::Tensor& grad_x, at::Tensor& grad_w,
                          at::Tensor& grad_b, std::array<bool, 3> output_mask, cudaStream_t stream, int device);

}  // namespace replab_fast
