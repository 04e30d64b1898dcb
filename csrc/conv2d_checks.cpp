// The argument checks of replab_fast.conv2d and conv2d_backward (every TORCH_CHECK of ranks,
// channels, groups, sizes, dtypes and devices, and the geometry they derive), and the forward's
// operand and output preparation, shared by the CPU and CUDA entry points.
#include <ATen/ATen.h>

#include <string>

#include "conv2d_checks.h"

namespace replab_fast {

Activation parse_activation(c10::string_view name) {
  if (name == "none") return Activation::None;
  if (name == "relu") return Activation::ReLU;
  if (name == "tanh") return Activation::Tanh;
  if (name == "scaled_tanh") return Activation::ScaledTanh;
  TORCH_CHECK(false, "replab_fast.conv2d: activation must be one of none, relu, tanh, scaled_tanh; got '",
              std::string(name), "'");
  return Activation::None;  // unreachable
}

PoolKind parse_pool(c10::string_view name) {
  if (name == "none") return PoolKind::None;
  if (name == "max") return PoolKind::Max;
  if (name == "avg") return PoolKind::Avg;
  TORCH_CHECK(false, "replab_fast.conv2d: pool must be one of none, max, avg; got '", std::string(name), "'");
  return PoolKind::None;  // unreachable
}

void check_dtype_for_device(const char* op, const at::Tensor& x) {
  auto dtype = x.scalar_type();
  if (x.is_cuda()) {
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kDouble, op,
                ": on CUDA the kernels support float16, bfloat16, float32 and float64; got ", dtype);
  } else {
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, op,
                ": on the CPU the kernels support float32 and float64; got ", dtype);
  }
}

static void check_pair(const char* op, const char* what, at::IntArrayRef v, int64_t minimum) {
  TORCH_CHECK(v.size() == 2, op, ": ", what, " must have 2 values (height, width), got ", v.size());
  TORCH_CHECK(v[0] >= minimum && v[1] >= minimum, op, ": ", what, " must be >= ", minimum, ", got ", v);
}

ConvGeometry check_conv2d_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                               c10::string_view activation, c10::string_view pool,
                               at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride) {
  TORCH_CHECK(x.dim() == 4, op, ": input must be 4-D (N, C, H, W), got ", x.dim(), "-D shape ", x.sizes());
  TORCH_CHECK(weight.dim() == 4, op, ": weight must be 4-D (out_channels, in_channels / groups, kH, kW), got ",
              weight.dim(), "-D shape ", weight.sizes());
  TORCH_CHECK(x.device() == weight.device(), op, ": input and weight must be on the same device, got ",
              x.device(), " and ", weight.device());
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), op, ": input and weight must have the same dtype, got ",
              x.scalar_type(), " and ", weight.scalar_type());
  check_dtype_for_device(op, x);
  TORCH_CHECK(groups >= 1, op, ": groups must be >= 1, got ", groups);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);

  ConvGeometry g{};
  g.N = x.size(0);
  g.C = x.size(1);
  g.H = x.size(2);
  g.W = x.size(3);
  g.K = weight.size(0);
  g.R = weight.size(2);
  g.S = weight.size(3);
  g.G = groups;
  TORCH_CHECK(g.C % groups == 0, op, ": groups (", groups, ") must divide the input channels (", g.C, ")");
  TORCH_CHECK(g.K % groups == 0, op, ": groups (", groups, ") must divide the output channels (", g.K, ")");
  TORCH_CHECK(g.K >= 1 && g.R >= 1 && g.S >= 1, op, ": weight must not be empty, got shape ", weight.sizes());
  g.Cg = g.C / groups;
  g.Kg = g.K / groups;
  TORCH_CHECK(weight.size(1) == g.Cg, op, ": weight expects ", weight.size(1) * groups,
              " input channels (weight.shape[1] = ", weight.size(1), " x groups = ", groups, "), input has ", g.C,
              " (shape ", x.sizes(), ")");
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK(b.dim() == 1 && b.size(0) == g.K, op, ": bias must have shape (", g.K, "), got ", b.sizes());
    TORCH_CHECK(b.device() == x.device(), op, ": bias must be on the input's device ", x.device(), ", got ",
                b.device());
    TORCH_CHECK(b.scalar_type() == x.scalar_type(), op, ": bias must have the input's dtype ", x.scalar_type(),
                ", got ", b.scalar_type());
  }
  g.sh = stride[0];
  g.sw = stride[1];
  g.ph = padding[0];
  g.pw = padding[1];
  g.dh = dilation[0];
  g.dw = dilation[1];
  const int64_t eff_r = g.dh * (g.R - 1) + 1, eff_s = g.dw * (g.S - 1) + 1;
  TORCH_CHECK(eff_r <= g.H + 2 * g.ph && eff_s <= g.W + 2 * g.pw, op, ": the kernel (", g.R, "x", g.S,
              ", dilated to ", eff_r, "x", eff_s, ") is larger than the padded input (", g.H + 2 * g.ph, "x",
              g.W + 2 * g.pw, ")");
  g.OH = (g.H + 2 * g.ph - eff_r) / g.sh + 1;
  g.OW = (g.W + 2 * g.pw - eff_s) / g.sw + 1;

  g.act = parse_activation(activation);
  g.pool = parse_pool(pool);
  if (g.pool == PoolKind::None) {
    g.pkh = g.pkw = g.psh = g.psw = 1;
    g.PH = g.OH;
    g.PW = g.OW;
  } else {
    check_pair(op, "pool_kernel", pool_kernel, 1);
    check_pair(op, "pool_stride", pool_stride, 1);
    g.pkh = pool_kernel[0];
    g.pkw = pool_kernel[1];
    g.psh = pool_stride[0];
    g.psw = pool_stride[1];
    TORCH_CHECK(g.pkh <= g.OH && g.pkw <= g.OW, op, ": the pooling window (", g.pkh, "x", g.pkw,
                ") is larger than the convolution's output (", g.OH, "x", g.OW, ")");
    g.PH = (g.OH - g.pkh) / g.psh + 1;
    g.PW = (g.OW - g.pkw) / g.psw + 1;
  }
  return g;
}

ConvForwardTensors prepare_conv2d_forward(const ConvGeometry& g, const at::Tensor& x, const at::Tensor& weight,
                                          const std::optional<at::Tensor>& bias, bool save_preact) {
  ConvForwardTensors t;
  t.x = x.contiguous();
  t.weight = weight.contiguous();
  t.bias = bias.has_value() ? bias->contiguous() : at::Tensor();
  t.keep_preact = save_preact && (g.act != Activation::None || g.pool != PoolKind::None);
  t.out = at::empty({g.N, g.K, g.PH, g.PW}, x.options());
  t.preact = t.keep_preact ? at::empty({g.N, g.K, g.OH, g.OW}, x.options()) : at::empty({0}, x.options());
  return t;
}

ConvGeometry check_conv2d_backward_args(const char* op, const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                        const at::Tensor& weight_in, const at::Tensor& preact_in,
                                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                        int64_t groups, c10::string_view activation, c10::string_view pool,
                                        at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride) {
  const ConvGeometry g = check_conv2d_args(op, x_in, weight_in, std::nullopt, stride, padding, dilation, groups,
                                           activation, pool, pool_kernel, pool_stride);
  TORCH_CHECK(grad_out_in.sizes() == at::IntArrayRef({g.N, g.K, g.PH, g.PW}), op, ": grad_out must have shape (",
              g.N, ", ", g.K, ", ", g.PH, ", ", g.PW, "), got ", grad_out_in.sizes());
  TORCH_CHECK(grad_out_in.scalar_type() == x_in.scalar_type() && grad_out_in.device() == x_in.device(), op,
              ": grad_out must have the input's dtype and device");
  if (g.act != Activation::None || g.pool != PoolKind::None) {
    TORCH_CHECK(preact_in.sizes() == at::IntArrayRef({g.N, g.K, g.OH, g.OW}), op,
                ": a fused activation or pooling needs the forward's preact of shape (", g.N, ", ", g.K, ", ", g.OH,
                ", ", g.OW, "), got ", preact_in.sizes(), " (was the forward run with save_preact=False?)");
    TORCH_CHECK(preact_in.scalar_type() == x_in.scalar_type() && preact_in.device() == x_in.device(), op,
                ": preact must have the input's dtype and device");
  }
  return g;
}

}  // namespace replab_fast
