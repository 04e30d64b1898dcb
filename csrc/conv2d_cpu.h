// The CPU conv2d's shared pieces: its two entry points (registered in conv2d.cpp) and the helpers
// both the forward (conv2d_cpu_forward.cpp) and the backward (conv2d_cpu_backward.cpp) use.
//
// CPU kernels: float32 and float64, our own loops (no BLAS, oneDNN or at::conv2d), parallel with
// at::parallel_for. Here: REPLAB_CPU_CLONES, valid_range, FastTanh, activate, im2col and the
// wide-row helpers.
//
// The helpers have internal linkage (an unnamed namespace), as when the CPU code was one file:
// each of the two translation units compiles its own copy, so that the target_clones functions
// keep their clones and ifunc resolvers local to it (none is exported from _C or merged across
// files).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
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

namespace replab_fast {

// The op's CPU implementations, registered with TORCH_LIBRARY_IMPL(replab_fast, CPU, ...) in
// conv2d.cpp (schemas there).
std::tuple<at::Tensor, at::Tensor> conv2d_cpu(const at::Tensor& x_in, const at::Tensor& weight_in,
                                              const std::optional<at::Tensor>& bias_in, at::IntArrayRef stride,
                                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                              c10::string_view activation, c10::string_view pool,
                                              at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride,
                                              bool save_preact);  // conv2d_cpu_forward.cpp
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& weight_in, const at::Tensor& preact_in,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    c10::string_view activation, c10::string_view pool, at::IntArrayRef pool_kernel, at::IntArrayRef pool_stride,
    std::array<bool, 3> output_mask);  // conv2d_cpu_backward.cpp

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

// The input offset of every tap (c, r, s) within a group's planes, for the wide-row kernels.
inline std::vector<int64_t> wide_offsets(const ConvGeometry& g) {
  std::vector<int64_t> offsets(g.Cg * g.R * g.S);
  for (int64_t cl = 0; cl < g.Cg; ++cl)
    for (int64_t r = 0; r < g.R; ++r)
      for (int64_t s = 0; s < g.S; ++s) offsets[(cl * g.R + r) * g.S + s] = cl * g.H * g.W + r * g.dh * g.W + s * g.dw;
  return offsets;
}

}  // namespace
}  // namespace replab_fast
