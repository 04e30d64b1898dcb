// The CPU conv2d backward (float32, float64): dz through the fused pooling and activation, then
// grad_bias, grad_weight and grad_input from dz.
//
// The backward works on wide rows, or on blocks of images whose im2col rows stack (so that a
// layer with one output pixel, LeNet-5's C5, still fills register tiles): grad_x as
// dcol = dz^T W then col2im, grad_weight as dz col^T summed over fixed chunks of images (each
// chunk its own accumulator, added in order). With a single image the backward's loops run
// directly on the tensors, parallel over (image, input channel) for grad_x and (output channel,
// input channel) for grad_weight. Every task owns what it writes: no atomics, deterministic
// results. grad_weight and grad_bias accumulate in double for float32 (grad_weight's register
// tiles sum at most 64 rows in float32 first).
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "conv2d.h"
#include "conv2d_checks.h"
#include "conv2d_cpu.h"

namespace replab_fast {
namespace {

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


// The steps of conv2d_backward_cpu, each over raw pointers of contiguous tensors (dz: N x K x OH x OW).

// dz = d loss / d z of every (n, k) plane, from grad_out (dy) and preact (z): the backward of the
// fused pooling and activation.
template <typename scalar_t>
void epilogue_backward(const ConvGeometry& g, const scalar_t* dyp, const scalar_t* zp, scalar_t* dzp) {
  const int64_t plane = g.OH * g.OW, out_plane = g.PH * g.PW;
  at::parallel_for(0, g.N * g.K, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> scratch(plane);
    for (int64_t idx = begin; idx < end; ++idx) {
      epilogue_backward_plane<scalar_t>(g, dyp + idx * out_plane, zp + idx * plane, scratch.data(),
                                        dzp + idx * plane);
    }
  });
}

// grad_bias[k] = sum over n, oh, ow of dz
template <typename scalar_t, typename acc_t>
void grad_bias(const ConvGeometry& g, const scalar_t* dzp, scalar_t* gbp) {
  const int64_t plane = g.OH * g.OW;
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

// From two images on (im2col per (image, group), then our GEMM loops):
// grad_w[k, crs] = sum_n sum_p dz[n, k, p] * col_n[p, crs]
template <typename scalar_t, typename acc_t>
void grad_weight_gemm(const ConvGeometry& g, const scalar_t* xp, const scalar_t* dzp, scalar_t* gwp) {
  const int64_t plane = g.OH * g.OW, CRS = g.Cg * g.R * g.S;
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

// From two images on: dcol[p, crs] = sum_k dz[n, k, p] * w[k, crs], then col2im
template <typename scalar_t>
void grad_input_gemm(const ConvGeometry& g, const scalar_t* wp, const scalar_t* dzp, scalar_t* gxp) {
  const int64_t plane = g.OH * g.OW, in_plane = g.H * g.W, CRS = g.Cg * g.R * g.S;
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

// A batch of one (no images to spread over the threads), parallel over (output, input channel):
// grad_w[k, cl, r, s] = sum_n sum_{oh, ow} dz[n, k, oh, ow] * x[n, c, ih, iw]
template <typename scalar_t, typename acc_t>
void grad_weight_direct(const ConvGeometry& g, const scalar_t* xp, const scalar_t* dzp, scalar_t* gwp) {
  const int64_t plane = g.OH * g.OW, in_plane = g.H * g.W;
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

// A batch of one, parallel over (image, input channel):
// grad_x[n, c, ih, iw] = sum over k in c's group, r, s of w * dz (scattered)
template <typename scalar_t>
void grad_input_direct(const ConvGeometry& g, const scalar_t* wp, const scalar_t* dzp, scalar_t* gxp) {
  const int64_t plane = g.OH * g.OW, in_plane = g.H * g.W;
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

}  // namespace

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
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    if (fused) {
      epilogue_backward<scalar_t>(g, grad_out.const_data_ptr<scalar_t>(), preact.const_data_ptr<scalar_t>(),
                                  dz.mutable_data_ptr<scalar_t>());
    }
    const scalar_t* dzp = dz.const_data_ptr<scalar_t>();
    if (output_mask[2]) grad_bias<scalar_t, acc_t>(g, dzp, grad_b.mutable_data_ptr<scalar_t>());
    // From two images on: im2col per (image, group), then our GEMM loops; below, direct loops
    // parallel over channels (a batch of one has nothing else to spread over the threads).
    const bool use_col = g.N >= 2;
    if (output_mask[1] && use_col) grad_weight_gemm<scalar_t, acc_t>(g, xp, dzp, grad_w.mutable_data_ptr<scalar_t>());
    if (output_mask[0] && use_col) grad_input_gemm<scalar_t>(g, wp, dzp, grad_x.mutable_data_ptr<scalar_t>());
    if (output_mask[1] && !use_col)
      grad_weight_direct<scalar_t, acc_t>(g, xp, dzp, grad_w.mutable_data_ptr<scalar_t>());
    if (output_mask[0] && !use_col) grad_input_direct<scalar_t>(g, wp, dzp, grad_x.mutable_data_ptr<scalar_t>());
  });
  return {grad_x, grad_w, grad_b};
}

}  // namespace replab_fast
