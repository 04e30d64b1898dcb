// The argument checks of replab_fast.conv2d and conv2d_backward, and the forward's operands and
// outputs, shared by the CPU and CUDA entry points (definitions in conv2d_checks.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <optional>

#include "conv2d.h"

namespace replab_fast {

Activation parse_activation(c10::string_view name);
PoolKind parse_pool(c10::string_view name);

// Every TORCH_CHECK of the op's arguments (ranks, channels, groups, sizes, dtypes, devices);
// returns the geometry. `op` names the op in the messages.
ConvGeometry check_conv2d_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                               c10::string_view activation, c10::string_view pool,
                               at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride);

// check_conv2d_args, plus grad_out's shape, dtype and device and, for a fused activation or
// pooling, the forward's saved pre-activation (preact).
ConvGeometry check_conv2d_backward_args(const char* op, const at::Tensor& grad_out, const at::Tensor& x,
                                        const at::Tensor& weight, const at::Tensor& preact,
                                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                        int64_t groups, c10::string_view activation, c10::string_view pool,
                                        at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride);

// The forward's operands, contiguous, and its outputs, allocated: out (N, K, PH, PW) and preact
// (N, K, OH, OW) when save_preact and an activation or pooling is fused, else an empty (0,)
// tensor. Shared by the CPU and CUDA entry points (after check_conv2d_args).
struct ConvForwardTensors {
  at::Tensor x, weight, bias;  // bias undefined when absent
  at::Tensor out, preact;
  bool keep_preact;
};
ConvForwardTensors prepare_conv2d_forward(const ConvGeometry& g, const at::Tensor& x, const at::Tensor& weight,
                                          const std::optional<at::Tensor>& bias, bool save_preact);

// dtype rules per device type, shared by the CPU and CUDA entry points.
void check_dtype_for_device(const char* op, const at::Tensor& x);

}  // namespace replab_fast
