// replab_fast::conv2d: schema (TORCH_LIBRARY, once), argument checks, CPU kernels
// (TORCH_LIBRARY_IMPL(replab_fast, CPU, ...)). The CUDA kernels are in conv2d_cuda.cu.
//
// The layout follows pytorch/extension-cpp: the schema is defined here once, each backend
// registers its implementation, and the Python side (replab_fast/kernels/conv2d.py) adds the
// fake (meta) implementation and the autograd formula with torch.library.register_fake /
// register_autograd. The namespace is replab_fast, shared with the Triton ops that Python
// registers as fragments (custom_op / triton_op); this file holds the namespace's only
// TORCH_LIBRARY block.
//
// Ops (math in conv2d.h):
//   conv2d(x, weight, bias?, stride, padding, dilation, groups, activation, pool, pool_kernel,
//          pool_stride, save_preact) -> (out, preact)
//     out = pool(act(conv(x, weight) + bias)); preact = conv(x, weight) + bias when save_preact
//     and an activation or pooling is fused (the backward needs it), else an empty tensor (0,).
//   conv2d_backward(grad_out, x, weight, preact, stride, padding, dilation, groups, activation,
//                   pool, pool_kernel, pool_stride, output_mask) -> (grad_x, grad_weight, grad_bias)
//     The gradients through the pooling (max: to the first maximum of each window in row-major
//     order, recomputed from preact; avg: evenly), the activation and the convolution. A
//     gradient not asked for in output_mask is returned as an empty tensor (0,).
//
// CPU kernels: float32 and float64, our own loops (no BLAS, oneDNN or at::conv2d), parallel with
// at::parallel_for. Each forward task takes one (image, group), or a block of its output
// channels when there are fewer (image, group) pairs than threads to keep busy: im2col into a
// per-thread buffer (none for stride-1 unpadded layers: "wide rows"), then a GEMM written here
// (the inner loop over pixels, four output channels per pass, or over output channels when a
// layer has fewer pixels than channels), then the epilogue (bias, activation, pooling) per
// plane. float32 tanh is our own branchless FastTanh, so that the epilogue loops vectorize.
// The backward works on wide rows, or on blocks of images whose im2col rows stack (so that a
// layer with one output pixel, LeNet-5's C5, still fills register tiles): grad_x as
// dcol = dz^T W then col2im, grad_weight as dz col^T summed over fixed chunks of images (each
// chunk its own accumulator, added in order). With a single image the backward's loops run
// directly on the tensors, parallel over (image, input channel) for grad_x and (output channel,
// input channel) for grad_weight. Every task owns what it writes: no atomics, deterministic
// results. grad_weight and grad_bias accumulate in double for float32 (grad_weight's register
// tiles sum at most 64 rows in float32 first).
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <vector>

#include "conv2d.h"

// The hot CPU loops are compiled for AVX-512 (x86-64-v4), AVX2 + FMA (x86-64-v3) and the baseline,
// and the loader picks the widest the CPU has (GCC's target_clones, an ifunc): the extension
// stays portable across x86-64 machines while the loops use the vector width there is.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define REPLAB_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define REPLAB_CPU_CLONES
#endif

// The build stamps a hash of csrc/'s sources (setup.py); replab_fast/_extension.py compares it
// with the sources it finds next to the package to refuse a stale build.
#ifndef REPLAB_SOURCES_HASH
#define REPLAB_SOURCES_HASH 0
#endif
#ifndef REPLAB_WITH_CUDA
#define REPLAB_WITH_CUDA 0
#endif

extern "C" {
// An empty Python module: importing replab_fast._C loads this library, which runs the
// TORCH_LIBRARY static initializers below. Two constants describe the build.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "replab_fast's C++/CUDA extension: registers torch.ops.replab_fast.conv2d*",  // doc
      -1,       // no per-interpreter state
      nullptr,  // methods
      nullptr,  // slots
      nullptr,  // traverse
      nullptr,  // clear
      nullptr,  // free
  };
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  if (PyModule_AddObject(module, "SOURCES_HASH", PyLong_FromUnsignedLongLong(REPLAB_SOURCES_HASH)) < 0 ||
      PyModule_AddIntConstant(module, "WITH_CUDA", REPLAB_WITH_CUDA) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}

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

namespace {

// The output columns ow in [lo, hi) whose input column ow * stride + offset lies in [0, size).
inline void valid_range(int64_t offset, int64_t stride, int64_t size, int64_t out_size, int64_t& lo, int64_t& hi) {
  lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  hi = (size - 1 - offset) < 0 ? 0 : (size - 1 - offset) / stride + 1;
  hi = std::min(hi, out_size);
  if (hi < lo) hi = lo;
}

// tanh(x) for float32 with no branches, so that a loop over it vectorizes (std::tanh is a
// scalar libm call, several times slower than the convolution it follows in LeNet-5's C3).
// With a = |x| (clamped to 9, where tanh rounds to 1; a NaN passes through) and sign(x) put back:
//   a < 0.55:  the odd Taylor series a + a^3 P(a^2) to a^19 (each term about 8x smaller)
//   otherwise: e = expm1(2a), tanh(a) = e / (e + 2), where 2a = n ln2 + f with |f| <= ln2 / 2,
//              expm1(2a) = 2^n expm1(f) + (2^n - 1) and expm1(f) a degree-8 Taylor polynomial;
//              the rounding error of e + 2 is recovered exactly (Fast2Sum) and divided out.
// Both are computed and one selected. Within 1.21 ulp of the exact tanh over every float
// (tests/kernels/test_conv2d.py checks it over a sweep of float32 bit patterns).
struct FastTanh {
  float operator()(float x) const {
    const float a_abs = std::fabs(x);
    const float a = a_abs > 9.0f ? 9.0f : a_abs;
    // Small: a + a^3 P(a^2), the Taylor coefficients of tanh.
    const float s = a * a;
    float q = -443861162.0f / 1856156927625.0f;
    q = q * s + 6404582.0f / 10854718875.0f;
    q = q * s - 929569.0f / 638512875.0f;
    q = q * s + 21844.0f / 6081075.0f;
    q = q * s - 1382.0f / 155925.0f;
    q = q * s + 62.0f / 2835.0f;
    q = q * s - 17.0f / 315.0f;
    q = q * s + 2.0f / 15.0f;
    q = q * s - 1.0f / 3.0f;
    const float small = a + a * s * q;
    // Large: e / (e + 2) with e = expm1(2a).
    const float t = 2.0f * a;
    const int32_t n = static_cast<int32_t>(t * 1.44269504088896341f + 0.5f);  // round(t / ln2), t >= 0
    const float nf = static_cast<float>(n);
    const float f = (t - nf * 0.693145751953125f) - nf * 1.42860682030941723212e-6f;  // ln2 in two parts
    float p = 1.0f / 40320.0f;
    p = p * f + 1.0f / 5040.0f;
    p = p * f + 1.0f / 720.0f;
    p = p * f + 1.0f / 120.0f;
    p = p * f + 1.0f / 24.0f;
    p = p * f + 1.0f / 6.0f;
    p = p * f + 0.5f;
    p = p * f * f + f;  // expm1(f)
    const int32_t scale_bits = (n + 127) << 23;
    float scale;  // 2^n, n in [0, 26]
    std::memcpy(&scale, &scale_bits, sizeof(scale));
    const float e = scale * p + (scale - 1.0f);
    const float d = e + 2.0f;
    const float d_err_big = (e - d) + 2.0f, d_err_small = (2.0f - d) + e;
    const float d_err = e > 2.0f ? d_err_big : d_err_small;  // e + 2 - d, exactly
    const float ratio = e / d;
    const float large = ratio - ratio * (d_err / d);
    return std::copysign(a < 0.55f ? small : large, x);
  }
  double operator()(double x) const { return std::tanh(x); }  // float64 is the accuracy path
};

// a = act(z) in place over n elements; the switch is outside the loop so that it vectorizes.
template <typename scalar_t, Activation A>
REPLAB_CPU_CLONES void activate(scalar_t* __restrict__ z, int64_t n) {
  for (int64_t i = 0; i < n; ++i) z[i] = activation_forward<scalar_t>(A, z[i], FastTanh());
}

template <typename scalar_t>
void activate(Activation act, scalar_t* z, int64_t n) {
  switch (act) {
    case Activation::ReLU:
      return activate<scalar_t, Activation::ReLU>(z, n);
    case Activation::Tanh:
      return activate<scalar_t, Activation::Tanh>(z, n);
    case Activation::ScaledTanh:
      return activate<scalar_t, Activation::ScaledTanh>(z, n);
    default:
      return;
  }
}

// dz *= act'(z) over n elements, the switch outside the loop (as in activate).
template <typename scalar_t, Activation A>
REPLAB_CPU_CLONES void scale_by_derivative(scalar_t* __restrict__ dz, const scalar_t* __restrict__ z, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dz[i] *= activation_derivative<scalar_t>(A, z[i], FastTanh());
}

template <typename scalar_t>
void scale_by_derivative(Activation act, scalar_t* dz, const scalar_t* z, int64_t n) {
  switch (act) {
    case Activation::ReLU:
      return scale_by_derivative<scalar_t, Activation::ReLU>(dz, z, n);
    case Activation::Tanh:
      return scale_by_derivative<scalar_t, Activation::Tanh>(dz, z, n);
    case Activation::ScaledTanh:
      return scale_by_derivative<scalar_t, Activation::ScaledTanh>(dz, z, n);
    default:
      return;
  }
}

// Max or average over each pooling window of a (OH * OW) into out (PH * PW). Max: NaN wins, as in
// F.max_pool2d (the first maximum otherwise; only the value is needed here).
template <typename scalar_t, PoolKind PK>
REPLAB_CPU_CLONES void pool_plane(const ConvGeometry& g, const scalar_t* __restrict__ a, scalar_t* __restrict__ out) {
  const scalar_t inv_area = scalar_t(1) / scalar_t(g.pkh * g.pkw);
  if (g.pkh == 2 && g.pkw == 2 && g.psh == 2 && g.psw == 2) {  // LeNet-5's pools, unrolled
    for (int64_t ph = 0; ph < g.PH; ++ph) {
      const scalar_t* r0 = a + (2 * ph) * g.OW;
      const scalar_t* r1 = r0 + g.OW;
      scalar_t* orow = out + ph * g.PW;
      for (int64_t pw = 0; pw < g.PW; ++pw) {
        const scalar_t v0 = r0[2 * pw], v1 = r0[2 * pw + 1], v2 = r1[2 * pw], v3 = r1[2 * pw + 1];
        if (PK == PoolKind::Max) {
          scalar_t m = v0;
          m = (v1 > m || std::isnan(v1)) ? v1 : m;
          m = (v2 > m || std::isnan(v2)) ? v2 : m;
          m = (v3 > m || std::isnan(v3)) ? v3 : m;
          orow[pw] = m;
        } else {
          orow[pw] = (v0 + v1 + v2 + v3) * inv_area;
        }
      }
    }
    return;
  }
  for (int64_t ph = 0; ph < g.PH; ++ph) {
    const scalar_t* rows = a + (ph * g.psh) * g.OW;
    scalar_t* orow = out + ph * g.PW;
    for (int64_t pw = 0; pw < g.PW; ++pw) {
      const scalar_t* win = rows + pw * g.psw;
      scalar_t acc = PK == PoolKind::Max ? win[0] : scalar_t(0);
      for (int64_t i = 0; i < g.pkh; ++i) {
        const scalar_t* wrow = win + i * g.OW;
        for (int64_t j = 0; j < g.pkw; ++j) {
          const scalar_t v = wrow[j];
          if (PK == PoolKind::Max) {
            acc = (v > acc || std::isnan(v)) ? v : acc;
          } else {
            acc += v;
          }
        }
      }
      orow[pw] = PK == PoolKind::Max ? acc : acc * inv_area;
    }
  }
}

// a = act(z) in place, then pool a into out (PH * PW); without pooling out is a itself.
template <typename scalar_t>
void epilogue_plane(const ConvGeometry& g, scalar_t* z, scalar_t* out) {
  const int64_t plane = g.OH * g.OW;
  if (g.pool == PoolKind::None) {
    std::copy(z, z + plane, out);
    activate<scalar_t>(g.act, out, plane);
    return;
  }
  activate<scalar_t>(g.act, z, plane);
  if (g.pool == PoolKind::Max) {
    pool_plane<scalar_t, PoolKind::Max>(g, z, out);
  } else {
    pool_plane<scalar_t, PoolKind::Avg>(g, z, out);
  }
}

// im2col of one (n, group): the Cg*R*S x OH*OW matrix of the input values each output pixel
// multiplies, zeros where a tap falls in the padding. Layout [crs][p] (transposed = false) or
// [p][crs] (transposed = true), crs = (cl * R + r) * S + s (the weight's own order), p = oh * OW + ow.
template <typename scalar_t>
REPLAB_CPU_CLONES void im2col(const ConvGeometry& g, const scalar_t* x, int64_t n, int64_t group, scalar_t* col, bool transposed) {
  const int64_t P = g.OH * g.OW, CRS = g.Cg * g.R * g.S;
  for (int64_t cl = 0; cl < g.Cg; ++cl) {
    const scalar_t* xplane = x + (n * g.C + group * g.Cg + cl) * g.H * g.W;
    for (int64_t r = 0; r < g.R; ++r) {
      for (int64_t s = 0; s < g.S; ++s) {
        const int64_t crs = (cl * g.R + r) * g.S + s;
        const int64_t col_off = s * g.dw - g.pw;
        int64_t ow_lo, ow_hi;
        valid_range(col_off, g.sw, g.W, g.OW, ow_lo, ow_hi);
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          const int64_t ih = oh * g.sh - g.ph + r * g.dh;
          const bool row_ok = ih >= 0 && ih < g.H;
          const int64_t lo = row_ok ? ow_lo : g.OW, hi = row_ok ? ow_hi : g.OW;
          const scalar_t* xrow = xplane + (row_ok ? ih : 0) * g.W + col_off;
          if (!transposed) {
            scalar_t* __restrict__ dst = col + crs * P + oh * g.OW;
            for (int64_t ow = 0; ow < lo; ++ow) dst[ow] = scalar_t(0);
            if (g.sw == 1) {
              for (int64_t ow = lo; ow < hi; ++ow) dst[ow] = xrow[ow];
            } else {
              for (int64_t ow = lo; ow < hi; ++ow) dst[ow] = xrow[ow * g.sw];
            }
            for (int64_t ow = std::max(hi, lo); ow < g.OW; ++ow) dst[ow] = scalar_t(0);
          } else {
            scalar_t* dst = col + (oh * g.OW) * CRS + crs;
            for (int64_t ow = 0; ow < lo; ++ow) dst[ow * CRS] = scalar_t(0);
            for (int64_t ow = lo; ow < hi; ++ow) dst[ow * CRS] = xrow[ow * g.sw];
            for (int64_t ow = std::max(hi, lo); ow < g.OW; ++ow) dst[ow * CRS] = scalar_t(0);
          }
        }
      }
    }
  }
}

// Stride 1 without padding (every LeNet-5 layer) needs no im2col: over "wide" output rows (the
// conv computed at every column ow < W of the input width, the last W - OW of each row thrown
// away), the taps of (c, r, s) are one contiguous slice of the input plane starting at
// r * dh * W + s * dw, and pixel p = oh * W + ow of every slice is the tap for output (oh, ow).
// Pw = (OH - 1) * W + OW wide pixels keep every read inside the plane.
inline bool wide_rows_apply(const ConvGeometry& g) {
  return g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0 && g.OH * g.OW >= g.Kg;
}

inline int64_t wide_pixels(const ConvGeometry& g) { return (g.OH - 1) * g.W + g.OW; }

// A register tile of the wide-row GEMM: 4 output channels x 16 wide pixels kept in registers
// over the whole reduction (c, r, s), one 16-wide load of the input and four weight broadcasts
// per tap; `np` < 16 only at the end of the rows.
template <typename scalar_t>
inline void wide_tile(const scalar_t* __restrict__ xg, const int64_t* __restrict__ offsets, int64_t CRS,
                      const scalar_t* __restrict__ w0, const scalar_t* b4, int64_t nk, int64_t p0, int64_t np,
                      scalar_t* __restrict__ zw, int64_t Pw) {
  constexpr int kP = 16;
  scalar_t acc[4][kP];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < kP; ++j) acc[i][j] = i < nk ? b4[i] : scalar_t(0);
  if (np == kP) {
    for (int64_t crs = 0; crs < CRS; ++crs) {
      const scalar_t* src = xg + offsets[crs] + p0;
      scalar_t v[kP];
      for (int j = 0; j < kP; ++j) v[j] = src[j];
      for (int i = 0; i < 4; ++i) {
        const scalar_t a = i < nk ? w0[i * CRS + crs] : scalar_t(0);
        for (int j = 0; j < kP; ++j) acc[i][j] += a * v[j];
      }
    }
  } else {
    for (int64_t crs = 0; crs < CRS; ++crs) {
      const scalar_t* src = xg + offsets[crs] + p0;
      for (int64_t i = 0; i < nk; ++i) {
        const scalar_t a = w0[i * CRS + crs];
        for (int64_t j = 0; j < np; ++j) acc[i][j] += a * src[j];
      }
    }
  }
  for (int64_t i = 0; i < nk; ++i)
    for (int64_t j = 0; j < np; ++j) zw[i * Pw + p0 + j] = acc[i][j];
}

// Rows [k_lo, k_hi) of z [Kg][OH * OW] (bias included) of one (n, group), through zw [Kg][Pw].
template <typename scalar_t>
REPLAB_CPU_CLONES void conv_group_wide(const ConvGeometry& g, const scalar_t* x, const scalar_t* w,
                                       const scalar_t* bias, int64_t n, int64_t group, int64_t k_lo, int64_t k_hi,
                                       const int64_t* offsets, scalar_t* zw, scalar_t* z) {
  const int64_t Pw = wide_pixels(g), P = g.OH * g.OW, CRS = g.Cg * g.R * g.S, Kg = g.Kg;
  const scalar_t* xg = x + (n * g.C + group * g.Cg) * g.H * g.W;
  for (int64_t kl = k_lo; kl < k_hi; kl += 4) {
    const int64_t nk = std::min<int64_t>(4, k_hi - kl);
    scalar_t b4[4] = {0, 0, 0, 0};
    for (int64_t i = 0; i < nk; ++i) b4[i] = bias ? bias[group * Kg + kl + i] : scalar_t(0);
    const scalar_t* w0 = w + (group * Kg + kl) * CRS;
    for (int64_t p0 = 0; p0 < Pw; p0 += 16)
      wide_tile<scalar_t>(xg, offsets, CRS, w0, b4, nk, p0, std::min<int64_t>(16, Pw - p0), zw + kl * Pw, Pw);
  }
  for (int64_t k = k_lo; k < k_hi; ++k)
    for (int64_t oh = 0; oh < g.OH; ++oh)
      std::copy(zw + k * Pw + oh * g.W, zw + k * Pw + oh * g.W + g.OW, z + k * P + oh * g.OW);
}

// The input offset of every tap (c, r, s) within a group's planes, for the wide-row kernels.
inline std::vector<int64_t> wide_offsets(const ConvGeometry& g) {
  std::vector<int64_t> offsets(g.Cg * g.R * g.S);
  for (int64_t cl = 0; cl < g.Cg; ++cl)
    for (int64_t r = 0; r < g.R; ++r)
      for (int64_t s = 0; s < g.S; ++s) offsets[(cl * g.R + r) * g.S + s] = cl * g.H * g.W + r * g.dh * g.W + s * g.dw;
  return offsets;
}

// dzw [Kg][Pw]: the group's dz planes of image n spread onto wide rows, zeros in the thrown-away columns.
template <typename scalar_t>
void widen_dz(const ConvGeometry& g, const scalar_t* dz_n, int64_t group, scalar_t* dzw) {
  const int64_t Pw = wide_pixels(g), P = g.OH * g.OW;
  std::fill(dzw, dzw + g.Kg * Pw, scalar_t(0));
  for (int64_t kl = 0; kl < g.Kg; ++kl) {
    const scalar_t* d = dz_n + (group * g.Kg + kl) * P;
    for (int64_t oh = 0; oh < g.OH; ++oh) std::copy(d + oh * g.OW, d + (oh + 1) * g.OW, dzw + kl * Pw + oh * g.W);
  }
}

// 32-byte vectors of GCC's vector extension (AVX registers in the x86-64-v3/v4 clones, pairs of
// SSE registers in the baseline one).
template <typename T>
struct Vec32 {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int lanes = 32 / sizeof(T);
};

// grad_weight's share of one (image, group) on wide rows: acc[k, crs] += dzw[k] . x-slice(c, r, s).
// Register tiles of 4 channels x 4 taps (16 vector accumulators), a vector of pixels per step,
// summed in the input dtype over the image's Pw pixels, then added to the acc_t (double for
// float32) accumulator.
template <typename scalar_t, typename acc_t>
REPLAB_CPU_CLONES void wgrad_image_group_wide(const ConvGeometry& g, const scalar_t* x, const scalar_t* dzw,
                                              const int64_t* offsets, int64_t n, int64_t group, acc_t* acc) {
  using V = typename Vec32<scalar_t>::type;
  constexpr int kL = Vec32<scalar_t>::lanes;
  const int64_t Pw = wide_pixels(g), CRS = g.Cg * g.R * g.S;
  const int64_t Pv = Pw - Pw % kL;
  const scalar_t* xg = x + (n * g.C + group * g.Cg) * g.H * g.W;
  for (int64_t k0 = 0; k0 < g.Kg; k0 += 4) {
    const int64_t nk = std::min<int64_t>(4, g.Kg - k0);
    const scalar_t* d[4];
    for (int i = 0; i < 4; ++i) d[i] = dzw + (k0 + (i < nk ? i : 0)) * Pw;
    for (int64_t c0 = 0; c0 < CRS; c0 += 4) {
      const int64_t nc = std::min<int64_t>(4, CRS - c0);
      const scalar_t* src[4];
      for (int c = 0; c < 4; ++c) src[c] = xg + offsets[c0 + (c < nc ? c : 0)];
      V t[4][4];
      for (int i = 0; i < 4; ++i)
        for (int c = 0; c < 4; ++c) t[i][c] = V{} ;
      for (int64_t p0 = 0; p0 < Pv; p0 += kL) {
        V dv[4], sv[4];
        for (int i = 0; i < 4; ++i) std::memcpy(&dv[i], d[i] + p0, sizeof(V));
        for (int c = 0; c < 4; ++c) std::memcpy(&sv[c], src[c] + p0, sizeof(V));
        for (int i = 0; i < 4; ++i)
          for (int c = 0; c < 4; ++c) t[i][c] += dv[i] * sv[c];
      }
      for (int64_t i = 0; i < nk; ++i) {
        acc_t* ak = acc + (group * g.Kg + k0 + i) * CRS + c0;
        for (int64_t c = 0; c < nc; ++c) {
          acc_t sum = 0;
          for (int j = 0; j < kL; ++j) sum += static_cast<acc_t>(t[i][c][j]);
          for (int64_t p = Pv; p < Pw; ++p) sum += static_cast<acc_t>(d[i][p]) * static_cast<acc_t>(src[c][p]);
          ak[c] += sum;
        }
      }
    }
  }
}

// grad_x of one (image, group) on wide rows: dx-slice(c, r, s) += sum_k w[k, crs] * dzw[k] (dx
// zeroed here), 32 pixels of a slice in registers while the group's channels are summed.
template <typename scalar_t>
REPLAB_CPU_CLONES void dgrad_image_group_wide(const ConvGeometry& g, const scalar_t* w, const scalar_t* dzw,
                                              const int64_t* offsets, int64_t group, scalar_t* dx_group) {
  constexpr int kP = 32;
  const int64_t Pw = wide_pixels(g), CRS = g.Cg * g.R * g.S;
  std::fill(dx_group, dx_group + g.Cg * g.H * g.W, scalar_t(0));
  const scalar_t* wg = w + group * g.Kg * CRS;
  for (int64_t crs = 0; crs < CRS; ++crs) {
    scalar_t* dst = dx_group + offsets[crs];
    for (int64_t p0 = 0; p0 < Pw; p0 += kP) {
      const int64_t np = std::min<int64_t>(kP, Pw - p0);
      if (np == kP) {  // two accumulator sets (even and odd channels): twice the independent FMA chains
        scalar_t a[kP], b[kP];
        for (int j = 0; j < kP; ++j) {
          a[j] = dst[p0 + j];
          b[j] = scalar_t(0);
        }
        int64_t kl = 0;
        for (; kl + 2 <= g.Kg; kl += 2) {
          const scalar_t wa = wg[kl * CRS + crs], wb = wg[(kl + 1) * CRS + crs];
          const scalar_t* da = dzw + kl * Pw + p0;
          const scalar_t* db = da + Pw;
          for (int j = 0; j < kP; ++j) {
            a[j] += wa * da[j];
            b[j] += wb * db[j];
          }
        }
        if (kl < g.Kg) {
          const scalar_t wa = wg[kl * CRS + crs];
          const scalar_t* da = dzw + kl * Pw + p0;
          for (int j = 0; j < kP; ++j) a[j] += wa * da[j];
        }
        for (int j = 0; j < kP; ++j) dst[p0 + j] = a[j] + b[j];
      } else {
        for (int64_t kl = 0; kl < g.Kg; ++kl) {
          const scalar_t wv = wg[kl * CRS + crs];
          const scalar_t* dk = dzw + kl * Pw + p0;
          for (int64_t j = 0; j < np; ++j) dst[p0 + j] += wv * dk[j];
        }
      }
    }
  }
}

// Conv planes [k_lo, k_hi) (bias included) of one (n, group) into rows of z [Kg][P], as a GEMM of
// our own: z = W_group (Kg x CRS) * col (CRS x P). With more pixels than channels the inner loop
// runs over pixels (four output channels per pass over col), otherwise over channels (through
// the transposed weight wT [G][CRS][Kg]); both are plain loops the compiler vectorizes.
template <typename scalar_t>
REPLAB_CPU_CLONES void conv_group_gemm(const ConvGeometry& g, const scalar_t* x, const scalar_t* w, const scalar_t* wT,
                                       const scalar_t* bias, int64_t n, int64_t group, int64_t k_lo, int64_t k_hi,
                                       scalar_t* col, scalar_t* zT, scalar_t* z) {
  const int64_t P = g.OH * g.OW, CRS = g.Cg * g.R * g.S, Kg = g.Kg;
  if (P >= Kg) {
    im2col(g, x, n, group, col, /*transposed=*/false);
    for (int64_t kl = k_lo; kl < k_hi; ++kl)
      std::fill(z + kl * P, z + (kl + 1) * P, bias ? bias[group * Kg + kl] : scalar_t(0));
    int64_t kl = k_lo;
    for (; kl + 4 <= k_hi; kl += 4) {
      const scalar_t* w0 = w + (group * Kg + kl) * CRS;
      scalar_t* __restrict__ z0 = z + kl * P;
      scalar_t* __restrict__ z1 = z0 + P;
      scalar_t* __restrict__ z2 = z1 + P;
      scalar_t* __restrict__ z3 = z2 + P;
      for (int64_t crs = 0; crs < CRS; ++crs) {
        const scalar_t a0 = w0[crs], a1 = w0[CRS + crs], a2 = w0[2 * CRS + crs], a3 = w0[3 * CRS + crs];
        const scalar_t* __restrict__ c = col + crs * P;
        for (int64_t p = 0; p < P; ++p) {
          const scalar_t v = c[p];
          z0[p] += a0 * v;
          z1[p] += a1 * v;
          z2[p] += a2 * v;
          z3[p] += a3 * v;
        }
      }
    }
    for (; kl < k_hi; ++kl) {
      const scalar_t* wk = w + (group * Kg + kl) * CRS;
      scalar_t* __restrict__ zk = z + kl * P;
      for (int64_t crs = 0; crs < CRS; ++crs) {
        const scalar_t a = wk[crs];
        const scalar_t* __restrict__ c = col + crs * P;
        for (int64_t p = 0; p < P; ++p) zk[p] += a * c[p];
      }
    }
    return;
  }
  im2col(g, x, n, group, col, /*transposed=*/true);
  const scalar_t* wg = wT + group * CRS * Kg;
  for (int64_t p = 0; p < P; ++p) {
    scalar_t* zp = zT + p * Kg;
    for (int64_t kl = k_lo; kl < k_hi; ++kl) zp[kl] = bias ? bias[group * Kg + kl] : scalar_t(0);
    const scalar_t* c = col + p * CRS;
    for (int64_t crs = 0; crs < CRS; ++crs) {
      const scalar_t v = c[crs];
      const scalar_t* wr = wg + crs * Kg;
      for (int64_t kl = k_lo; kl < k_hi; ++kl) zp[kl] += v * wr[kl];
    }
  }
  for (int64_t kl = k_lo; kl < k_hi; ++kl)
    for (int64_t p = 0; p < P; ++p) z[kl * P + p] = zT[p * Kg + kl];
}

// Into how many blocks of output channels the forward splits each (image, group): one when the
// pairs alone give every thread two tasks, else enough blocks of at least 4 channels for that.
inline int64_t channel_blocks(int64_t pairs, int64_t Kg, int64_t threads) {
  const int64_t wanted = 2 * threads;
  if (pairs == 0 || pairs >= wanted) return 1;
  const int64_t per_pair = (wanted + pairs - 1) / pairs;
  return std::max<int64_t>(1, std::min(per_pair, Kg / 4));
}

std::tuple<at::Tensor, at::Tensor> conv2d_cpu(const at::Tensor& x_in, const at::Tensor& weight_in,
                                              const std::optional<at::Tensor>& bias_in, at::IntArrayRef stride,
                                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                              c10::string_view activation, c10::string_view pool,
                                              at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride,
                                              bool save_preact) {
  TORCH_CHECK(x_in.device().is_cpu(), "replab_fast.conv2d: the CPU kernel got an input on ", x_in.device());
  const ConvGeometry g = check_conv2d_args("replab_fast.conv2d", x_in, weight_in, bias_in, stride, padding, dilation,
                                           groups, activation, pool, pool_kernel, pool_stride);
  const ConvForwardTensors t = prepare_conv2d_forward(g, x_in, weight_in, bias_in, save_preact);
  const at::Tensor &x = t.x, &weight = t.weight, &bias = t.bias, &out = t.out, &preact = t.preact;
  const bool keep_preact = t.keep_preact;

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "replab_fast_conv2d_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    scalar_t* pp = keep_preact ? preact.mutable_data_ptr<scalar_t>() : nullptr;
    const int64_t plane = g.OH * g.OW, out_plane = g.PH * g.PW;
    const int64_t CRS = g.Cg * g.R * g.S;
    std::vector<scalar_t> wT;  // [G][CRS][Kg], for layers with fewer pixels than channels
    if (plane < g.Kg) {
      wT.resize(g.G * CRS * g.Kg);
      for (int64_t grp = 0; grp < g.G; ++grp)
        for (int64_t kl = 0; kl < g.Kg; ++kl)
          for (int64_t crs = 0; crs < CRS; ++crs)
            wT[(grp * CRS + crs) * g.Kg + kl] = wp[(grp * g.Kg + kl) * CRS + crs];
    }
    const bool wide = wide_rows_apply(g);
    const std::vector<int64_t> offsets = wide ? wide_offsets(g) : std::vector<int64_t>();
    // Tasks: (image, group, block of output channels). The channels are split only when there are
    // too few (image, group) pairs to keep every thread busy (a batch of one): each block then
    // repeats the (cheap) im2col of its image.
    const int64_t blocks = channel_blocks(g.N * g.G, g.Kg, at::get_num_threads());
    const int64_t block_size = (g.Kg + blocks - 1) / blocks;
    at::parallel_for(0, g.N * g.G * blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> col(wide ? g.Kg * wide_pixels(g) : CRS * plane), z(g.Kg * plane),
          zT(plane < g.Kg ? g.Kg * plane : 0);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / (g.G * blocks), grp = (task / blocks) % g.G, block = task % blocks;
        const int64_t k_lo = std::min(g.Kg, block * block_size), k_hi = std::min(g.Kg, k_lo + block_size);
        if (wide) {
          conv_group_wide<scalar_t>(g, xp, wp, bp, n, grp, k_lo, k_hi, offsets.data(), col.data(), z.data());
        } else {
          conv_group_gemm<scalar_t>(g, xp, wp, wT.data(), bp, n, grp, k_lo, k_hi, col.data(), zT.data(), z.data());
        }
        for (int64_t kl = k_lo; kl < k_hi; ++kl) {
          const int64_t idx = n * g.K + grp * g.Kg + kl;
          scalar_t* zk = z.data() + kl * plane;
          if (pp) std::copy(zk, zk + plane, pp + idx * plane);
          epilogue_plane<scalar_t>(g, zk, op + idx * out_plane);
        }
      }
    });
  });
  return {out, preact};
}

// dz = d loss / d z for one (n, k) plane, from dy (PH * PW) and z (OH * OW); a is scratch.
template <typename scalar_t>
void epilogue_backward_plane(const ConvGeometry& g, const scalar_t* dy, const scalar_t* z, scalar_t* a,
                             scalar_t* dz) {
  const int64_t plane = g.OH * g.OW;
  if (g.pool == PoolKind::None) {
    std::copy(dy, dy + plane, dz);
  } else {
    std::fill(dz, dz + plane, scalar_t(0));
    if (g.pool == PoolKind::Max) {  // the forward's a = act(z), to find each window's maximum
      std::copy(z, z + plane, a);
      activate<scalar_t>(g.act, a, plane);
    }
    const scalar_t inv_area = scalar_t(1) / scalar_t(g.pkh * g.pkw);
    for (int64_t ph = 0; ph < g.PH; ++ph) {
      for (int64_t pw = 0; pw < g.PW; ++pw) {
        const int64_t base = (ph * g.psh) * g.OW + pw * g.psw;
        const scalar_t grad = dy[ph * g.PW + pw];
        if (g.pool == PoolKind::Max) {
          int64_t best = base;
          scalar_t best_v = a[base];
          for (int64_t i = 0; i < g.pkh; ++i)
            for (int64_t j = 0; j < g.pkw; ++j) {
              const int64_t pos = base + i * g.OW + j;
              const scalar_t v = a[pos];
              if (v > best_v || std::isnan(v)) {
                best_v = v;
                best = pos;
              }
            }
          dz[best] += grad;
        } else {
          const scalar_t share = grad * inv_area;
          for (int64_t i = 0; i < g.pkh; ++i)
            for (int64_t j = 0; j < g.pkw; ++j) dz[base + i * g.OW + j] += share;
        }
      }
    }
  }
  scale_by_derivative<scalar_t>(g.act, dz, z, plane);
}

// The im2col backward works on blocks of B consecutive images of one group, whose P = OH * OW
// pixels each stack into Q = B * P rows (image i's pixel p is row i * P + p): enough rows for
// register tiles even when a layer has a single output pixel (LeNet-5's C5).
constexpr int64_t kBlockRows = 64;

inline int64_t images_per_block(const ConvGeometry& g) {
  return std::max<int64_t>(1, kBlockRows / std::max<int64_t>(1, g.OH * g.OW));
}

// dzb [Kg][Q]: the group's dz planes of images n0 .. n0 + B - 1 side by side.
template <typename scalar_t>
void gather_dz_block(const ConvGeometry& g, const scalar_t* dz, int64_t n0, int64_t B, int64_t group, scalar_t* dzb) {
  const int64_t P = g.OH * g.OW, Q = B * P;
  for (int64_t kl = 0; kl < g.Kg; ++kl)
    for (int64_t i = 0; i < B; ++i) {
      const scalar_t* src = dz + ((n0 + i) * g.K + group * g.Kg + kl) * P;
      std::copy(src, src + P, dzb + kl * Q + i * P);
    }
}

// colb [Q][CRS]: the transposed im2col of the block's images, stacked.
template <typename scalar_t>
void im2col_block(const ConvGeometry& g, const scalar_t* x, int64_t n0, int64_t B, int64_t group, scalar_t* colb) {
  const int64_t P = g.OH * g.OW, CRS = g.Cg * g.R * g.S;
  for (int64_t i = 0; i < B; ++i) im2col(g, x, n0 + i, group, colb + i * P * CRS, /*transposed=*/true);
}

// grad_weight's share of one block: acc[k, crs] += sum_q dzb[k, q] colb[q, crs]. Register tiles
// of 4 channels x 16 taps, summed in the input dtype over at most kBlockRows rows, then added to
// the acc_t (double for float32) accumulator.
template <typename scalar_t, typename acc_t>
REPLAB_CPU_CLONES void wgrad_block(const ConvGeometry& g, const scalar_t* dzb, const scalar_t* colb, int64_t Q,
                                   int64_t group, acc_t* acc) {
  constexpr int kC = 16;
  const int64_t CRS = g.Cg * g.R * g.S;
  for (int64_t k0 = 0; k0 < g.Kg; k0 += 4) {
    const int64_t nk = std::min<int64_t>(4, g.Kg - k0);
    for (int64_t c0 = 0; c0 < CRS; c0 += kC) {
      const int64_t nc = std::min<int64_t>(kC, CRS - c0);
      for (int64_t q0 = 0; q0 < Q; q0 += kBlockRows) {
        const int64_t q_end = std::min(Q, q0 + kBlockRows);
        scalar_t t[4][kC] = {};
        for (int64_t q = q0; q < q_end; ++q) {
          const scalar_t* src = colb + q * CRS + c0;
          scalar_t v[kC];
          for (int j = 0; j < kC; ++j) v[j] = j < nc ? src[j] : scalar_t(0);
          for (int i = 0; i < 4; ++i) {
            const scalar_t a = i < nk ? dzb[(k0 + i) * Q + q] : scalar_t(0);
            for (int j = 0; j < kC; ++j) t[i][j] += a * v[j];
          }
        }
        for (int64_t i = 0; i < nk; ++i) {
          acc_t* ak = acc + (group * g.Kg + k0 + i) * CRS + c0;
          for (int64_t j = 0; j < nc; ++j) ak[j] += static_cast<acc_t>(t[i][j]);
        }
      }
    }
  }
}

// dcolb[q, crs] = sum over the group's k of dzb[k, q] * w[k, crs] (grad_x before col2im): register
// tiles of 4 rows x 16 taps over the group's channels.
template <typename scalar_t>
REPLAB_CPU_CLONES void dcol_block(const ConvGeometry& g, const scalar_t* w, const scalar_t* dzb, int64_t Q,
                                  int64_t group, scalar_t* dcolb) {
  constexpr int kC = 16;
  const int64_t CRS = g.Cg * g.R * g.S;
  const scalar_t* wg = w + group * g.Kg * CRS;
  for (int64_t q0 = 0; q0 < Q; q0 += 4) {
    const int64_t nq = std::min<int64_t>(4, Q - q0);
    for (int64_t c0 = 0; c0 < CRS; c0 += kC) {
      const int64_t nc = std::min<int64_t>(kC, CRS - c0);
      scalar_t t[4][kC] = {};
      for (int64_t kl = 0; kl < g.Kg; ++kl) {
        const scalar_t* wrow = wg + kl * CRS + c0;
        scalar_t v[kC];
        for (int j = 0; j < kC; ++j) v[j] = j < nc ? wrow[j] : scalar_t(0);
        for (int i = 0; i < 4; ++i) {
          const scalar_t a = i < nq ? dzb[kl * Q + q0 + i] : scalar_t(0);
          for (int j = 0; j < kC; ++j) t[i][j] += a * v[j];
        }
      }
      for (int64_t i = 0; i < nq; ++i)
        for (int64_t j = 0; j < nc; ++j) dcolb[(q0 + i) * CRS + c0 + j] = t[i][j];
    }
  }
}

// dx (the group's Cg input planes of one image, zeroed here) = col2im(dcol [P][CRS]).
template <typename scalar_t>
void col2im(const ConvGeometry& g, const scalar_t* dcol, scalar_t* dx) {
  const int64_t in_plane = g.H * g.W, CRS = g.Cg * g.R * g.S;
  std::fill(dx, dx + g.Cg * in_plane, scalar_t(0));
  for (int64_t cl = 0; cl < g.Cg; ++cl) {
    for (int64_t r = 0; r < g.R; ++r) {
      for (int64_t s = 0; s < g.S; ++s) {
        const int64_t crs = (cl * g.R + r) * g.S + s;
        const int64_t col_off = s * g.dw - g.pw;
        int64_t ow_lo, ow_hi;
        valid_range(col_off, g.sw, g.W, g.OW, ow_lo, ow_hi);
        int64_t oh_lo, oh_hi;
        valid_range(r * g.dh - g.ph, g.sh, g.H, g.OH, oh_lo, oh_hi);
        for (int64_t oh = oh_lo; oh < oh_hi; ++oh) {
          scalar_t* dxrow = dx + cl * in_plane + (oh * g.sh + r * g.dh - g.ph) * g.W;
          const scalar_t* dc = dcol + (oh * g.OW) * CRS + crs;
          for (int64_t ow = ow_lo; ow < ow_hi; ++ow) dxrow[ow * g.sw + col_off] += dc[ow * CRS];
        }
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& weight_in, const at::Tensor& preact_in,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    c10::string_view activation, c10::string_view pool, at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride,
    std::array<bool, 3> output_mask) {
  const char* op = "replab_fast.conv2d_backward";
  TORCH_CHECK(x_in.device().is_cpu(), op, ": the CPU kernel got an input on ", x_in.device());
  const ConvGeometry g = check_conv2d_backward_args(op, grad_out_in, x_in, weight_in, preact_in, stride, padding,
                                                    dilation, groups, activation, pool, pool_kernel, pool_stride);
  const bool fused = g.act != Activation::None || g.pool != PoolKind::None;
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor preact = fused ? preact_in.contiguous() : preact_in;

  at::Tensor dz = fused ? at::empty({g.N, g.K, g.OH, g.OW}, x.options()) : grad_out;
  at::Tensor grad_x = output_mask[0] ? at::empty_like(x) : at::empty({0}, x.options());
  at::Tensor grad_w = output_mask[1] ? at::empty_like(weight) : at::empty({0}, x.options());
  at::Tensor grad_b = output_mask[2] ? at::empty({g.K}, x.options()) : at::empty({0}, x.options());

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "replab_fast_conv2d_backward_cpu", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/false>;  // double for float and double
    const int64_t plane = g.OH * g.OW, out_plane = g.PH * g.PW, in_plane = g.H * g.W;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    if (fused) {
      const scalar_t* dyp = grad_out.const_data_ptr<scalar_t>();
      const scalar_t* zp = preact.const_data_ptr<scalar_t>();
      scalar_t* dzp = dz.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, g.N * g.K, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> scratch(plane);
        for (int64_t idx = begin; idx < end; ++idx) {
          epilogue_backward_plane<scalar_t>(g, dyp + idx * out_plane, zp + idx * plane, scratch.data(),
                                            dzp + idx * plane);
        }
      });
    }
    const scalar_t* dzp = dz.const_data_ptr<scalar_t>();

    if (output_mask[2]) {  // grad_bias[k] = sum over n, oh, ow of dz
      scalar_t* gbp = grad_b.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, g.K, 1, [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) {
          acc_t acc = 0;
          for (int64_t n = 0; n < g.N; ++n) {
            const scalar_t* d = dzp + (n * g.K + k) * plane;
            for (int64_t i = 0; i < plane; ++i) acc += d[i];
          }
          gbp[k] = static_cast<scalar_t>(acc);
        }
      });
    }

    // From two images on: im2col per (image, group), then our GEMM loops; below, direct loops
    // parallel over channels (a batch of one has nothing else to spread over the threads).
    const bool use_col = g.N >= 2;
    const int64_t CRS = g.Cg * g.R * g.S;

    if (output_mask[1] && use_col) {  // grad_w[k, crs] = sum_n sum_p dz[n, k, p] * col_n[p, crs]
      scalar_t* gwp = grad_w.mutable_data_ptr<scalar_t>();
      // Fixed chunks of images, each with its own accumulator, summed in order: the result does
      // not depend on the number of threads.
      const int64_t chunks = std::min<int64_t>(g.N, 16);
      std::vector<acc_t> partial(chunks * g.K * CRS, acc_t(0));
      const bool wide = wide_rows_apply(g);
      const std::vector<int64_t> offsets = wide ? wide_offsets(g) : std::vector<int64_t>();
      const int64_t block = images_per_block(g);
      at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> colT(wide ? g.Kg * wide_pixels(g) : block * plane * CRS);
        std::vector<scalar_t> dzb(wide ? 0 : g.Kg * block * plane);
        for (int64_t ch = begin; ch < end; ++ch) {
          acc_t* acc = partial.data() + ch * g.K * CRS;
          const int64_t n_lo = ch * g.N / chunks, n_hi = (ch + 1) * g.N / chunks;
          if (wide) {
            for (int64_t n = n_lo; n < n_hi; ++n) {
              for (int64_t grp = 0; grp < g.G; ++grp) {
                widen_dz(g, dzp + n * g.K * plane, grp, colT.data());
                wgrad_image_group_wide<scalar_t, acc_t>(g, xp, colT.data(), offsets.data(), n, grp, acc);
              }
            }
            continue;
          }
          for (int64_t n0 = n_lo; n0 < n_hi; n0 += block) {
            const int64_t B = std::min(block, n_hi - n0);
            for (int64_t grp = 0; grp < g.G; ++grp) {
              im2col_block(g, xp, n0, B, grp, colT.data());
              gather_dz_block(g, dzp, n0, B, grp, dzb.data());
              wgrad_block<scalar_t, acc_t>(g, dzb.data(), colT.data(), B * plane, grp, acc);
            }
          }
        }
      });
      at::parallel_for(0, g.K * CRS, 1024, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          acc_t sum = 0;
          for (int64_t ch = 0; ch < chunks; ++ch) sum += partial[ch * g.K * CRS + i];
          gwp[i] = static_cast<scalar_t>(sum);
        }
      });
    }

    if (output_mask[0] && use_col) {  // dcol[p, crs] = sum_k dz[n, k, p] * w[k, crs], then col2im
      scalar_t* gxp = grad_x.mutable_data_ptr<scalar_t>();
      const bool wide = wide_rows_apply(g);
      const std::vector<int64_t> offsets = wide ? wide_offsets(g) : std::vector<int64_t>();
      if (wide) {
        at::parallel_for(0, g.N * g.G, 1, [&](int64_t begin, int64_t end) {
          std::vector<scalar_t> dzw(g.Kg * wide_pixels(g));
          for (int64_t task = begin; task < end; ++task) {
            const int64_t n = task / g.G, grp = task % g.G;
            widen_dz(g, dzp + n * g.K * plane, grp, dzw.data());
            dgrad_image_group_wide<scalar_t>(g, wp, dzw.data(), offsets.data(), grp, gxp + (n * g.C + grp * g.Cg) * in_plane);
          }
        });
      } else {  // tasks: (block of images, group), blocks small enough to give every thread two
        const int64_t per_thread = std::max<int64_t>(1, g.N / (2 * at::get_num_threads()));
        const int64_t block = std::min(images_per_block(g), per_thread), blocks = (g.N + block - 1) / block;
        at::parallel_for(0, blocks * g.G, 1, [&](int64_t begin, int64_t end) {
          std::vector<scalar_t> dzb(g.Kg * block * plane), dcolb(block * plane * CRS);
          for (int64_t task = begin; task < end; ++task) {
            const int64_t n0 = (task / g.G) * block, grp = task % g.G, B = std::min(block, g.N - n0);
            gather_dz_block(g, dzp, n0, B, grp, dzb.data());
            dcol_block<scalar_t>(g, wp, dzb.data(), B * plane, grp, dcolb.data());
            for (int64_t i = 0; i < B; ++i)
              col2im(g, dcolb.data() + i * plane * CRS, gxp + ((n0 + i) * g.C + grp * g.Cg) * in_plane);
          }
        });
      }
    }

    if (output_mask[1] && !use_col) {  // grad_w[k, cl, r, s] = sum_n sum_{oh, ow} dz[n, k, oh, ow] * x[n, c, ih, iw]
      scalar_t* gwp = grad_w.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, g.K * g.Cg, 1, [&](int64_t begin, int64_t end) {
        std::vector<acc_t> acc(g.R * g.S);
        for (int64_t idx = begin; idx < end; ++idx) {
          const int64_t k = idx / g.Cg, cl = idx % g.Cg;
          const int64_t c = (k / g.Kg) * g.Cg + cl;
          std::fill(acc.begin(), acc.end(), acc_t(0));
          for (int64_t n = 0; n < g.N; ++n) {
            const scalar_t* d = dzp + (n * g.K + k) * plane;
            const scalar_t* xplane = xp + (n * g.C + c) * in_plane;
            for (int64_t r = 0; r < g.R; ++r) {
              int64_t oh_lo, oh_hi;
              valid_range(r * g.dh - g.ph, g.sh, g.H, g.OH, oh_lo, oh_hi);
              for (int64_t s = 0; s < g.S; ++s) {
                const int64_t col_off = s * g.dw - g.pw;
                int64_t ow_lo, ow_hi;
                valid_range(col_off, g.sw, g.W, g.OW, ow_lo, ow_hi);
                acc_t sum = 0;
                for (int64_t oh = oh_lo; oh < oh_hi; ++oh) {
                  const scalar_t* xrow = xplane + (oh * g.sh + r * g.dh - g.ph) * g.W;
                  const scalar_t* drow = d + oh * g.OW;
                  for (int64_t ow = ow_lo; ow < ow_hi; ++ow)
                    sum += static_cast<acc_t>(drow[ow]) * static_cast<acc_t>(xrow[ow * g.sw + col_off]);
                }
                acc[r * g.S + s] += sum;
              }
            }
          }
          scalar_t* dst = gwp + idx * g.R * g.S;
          for (int64_t i = 0; i < g.R * g.S; ++i) dst[i] = static_cast<scalar_t>(acc[i]);
        }
      });
    }

    if (output_mask[0] && !use_col) {  // grad_x[n, c, ih, iw] = sum over k in c's group, r, s of w * dz (scattered)
      scalar_t* gxp = grad_x.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
        for (int64_t idx = begin; idx < end; ++idx) {
          const int64_t n = idx / g.C, c = idx % g.C;
          const int64_t group = c / g.Cg, cl = c % g.Cg;
          scalar_t* dx = gxp + idx * in_plane;
          std::fill(dx, dx + in_plane, scalar_t(0));
          for (int64_t kl = 0; kl < g.Kg; ++kl) {
            const int64_t k = group * g.Kg + kl;
            const scalar_t* d = dzp + (n * g.K + k) * plane;
            const scalar_t* wk = wp + (k * g.Cg + cl) * g.R * g.S;
            for (int64_t r = 0; r < g.R; ++r) {
              int64_t oh_lo, oh_hi;
              valid_range(r * g.dh - g.ph, g.sh, g.H, g.OH, oh_lo, oh_hi);
              for (int64_t s = 0; s < g.S; ++s) {
                const scalar_t wv = wk[r * g.S + s];
                const int64_t col_off = s * g.dw - g.pw;
                int64_t ow_lo, ow_hi;
                valid_range(col_off, g.sw, g.W, g.OW, ow_lo, ow_hi);
                for (int64_t oh = oh_lo; oh < oh_hi; ++oh) {
                  scalar_t* dxrow = dx + (oh * g.sh + r * g.dh - g.ph) * g.W;
                  const scalar_t* drow = d + oh * g.OW;
                  if (g.sw == 1) {
                    scalar_t* dxs = dxrow + col_off;
                    for (int64_t ow = ow_lo; ow < ow_hi; ++ow) dxs[ow] += wv * drow[ow];
                  } else {
                    for (int64_t ow = ow_lo; ow < ow_hi; ++ow) dxrow[ow * g.sw + col_off] += wv * drow[ow];
                  }
                }
              }
            }
          }
        }
      });
    }
  });
  return {grad_x, grad_w, grad_b};
}

}  // namespace

// The namespace's one TORCH_LIBRARY block (the Triton ops of replab_fast/kernels/ are
// registered from Python into the same namespace as fragments).
TORCH_LIBRARY(replab_fast, m) {
  m.def(
      "conv2d(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, int groups, "
      "str activation, str pool, int[2] pool_kernel, int[2] pool_stride, bool save_preact) -> (Tensor, Tensor)");
  m.def(
      "conv2d_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor preact, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups, str activation, str pool, int[2] pool_kernel, int[2] pool_stride, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(replab_fast, CPU, m) {
  m.impl("conv2d", &conv2d_cpu);
  m.impl("conv2d_backward", &conv2d_backward_cpu);
}

}  // namespace replab_fast
