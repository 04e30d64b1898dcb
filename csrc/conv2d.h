// The geometry of one fused convolution (ConvGeometry) and its activation math, written once for
// the CPU kernels (conv2d_cpu_*.cpp) and the CUDA kernels (conv2d_cuda_*.cu).
//
// The op (see conv2d.cpp for the schema) computes, for NCHW x (N, C, H, W) and weight
// (K, C/groups, R, S):
//
//   z[n, k, oh, ow] = bias[k] + sum_{c in group(k), r, s} w[k, c, r, s] * x[n, c, oh*sh - ph + r*dh, ow*sw - pw + s*dw]
//   a = act(z)                      (none, relu, tanh, scaled_tanh = 1.7159 * tanh(2/3 z))
//   y = pool(a)                     (none, max or avg over a pkh x pkw window with stride psh x psw,
//                                    no padding, floor mode, as F.max_pool2d / F.avg_pool2d)
//
// and, when asked to, also returns z ("preact"): the backward recomputes a and the max-pool
// argmax from z instead of saving them (one saved tensor, the size of the conv output).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define REPLAB_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define REPLAB_HOST_DEVICE inline
#endif

namespace replab_fast {

enum class Activation : int { None = 0, ReLU = 1, Tanh = 2, ScaledTanh = 3 };
enum class PoolKind : int { None = 0, Max = 1, Avg = 2 };

// LeCun et al. 1998, Appendix A: f(a) = A tanh(S a).
constexpr double kScaledTanhA = 1.7159;
constexpr double kScaledTanhS = 2.0 / 3.0;

struct ConvGeometry {
  int64_t N, C, H, W;     // input
  int64_t K, R, S;        // output channels, kernel height and width
  int64_t G;              // groups
  int64_t Cg, Kg;         // input and output channels per group
  int64_t sh, sw, ph, pw, dh, dw;  // stride, padding, dilation
  int64_t OH, OW;         // conv output (= preact) height and width
  PoolKind pool;
  int64_t pkh, pkw, psh, psw;  // pooling window and stride (1 when pool is None)
  int64_t PH, PW;         // final output height and width (OH, OW without pooling)
  Activation act;
};

// tanh as the activations call it: the standard library's (CUDA's tanhf / tanh on the device).
// The CPU kernels pass their own vectorizable float tanh instead (conv2d_cpu.h, FastTanh).
struct StdTanh {
  template <typename T>
  REPLAB_HOST_DEVICE T operator()(T z) const {
    using std::tanh;
    return tanh(z);
  }
};

template <typename T, typename TanhFn = StdTanh>
REPLAB_HOST_DEVICE T activation_forward(Activation act, T z, TanhFn tanh_fn = TanhFn()) {
  switch (act) {
    case Activation::ReLU:
      return z > T(0) ? z : T(0);
    case Activation::Tanh:
      return tanh_fn(z);
    case Activation::ScaledTanh:
      return T(kScaledTanhA) * tanh_fn(T(kScaledTanhS) * z);
    default:
      return z;
  }
}

// d act(z) / dz. ReLU: 0 at z == 0, as torch's threshold_backward (grad * (out > 0)).
template <typename T, typename TanhFn = StdTanh>
REPLAB_HOST_DEVICE T activation_derivative(Activation act, T z, TanhFn tanh_fn = TanhFn()) {
  switch (act) {
    case Activation::ReLU:
      return z > T(0) ? T(1) : T(0);
    case Activation::Tanh: {
      const T t = tanh_fn(z);
      return T(1) - t * t;
    }
    case Activation::ScaledTanh: {
      const T t = tanh_fn(T(kScaledTanhS) * z);
      return T(kScaledTanhA) * T(kScaledTanhS) * (T(1) - t * t);
    }
    default:
      return T(1);
  }
}

}  // namespace replab_fast
