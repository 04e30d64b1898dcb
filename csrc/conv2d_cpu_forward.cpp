// The CPU conv2d forward (float32, float64): per (image, group) a GEMM of our own over im2col or
// wide rows, then the epilogue (bias, activation, pooling) per plane.
//
// Each task takes one (image, group), or a block of its output channels when there are fewer
// (image, group) pairs than threads to keep busy: im2col into a per-thread buffer (none for
// stride-1 unpadded layers: "wide rows"), then a GEMM written here (the inner loop over pixels,
// four output channels per pass, or over output channels when a layer has fewer pixels than
// channels), then the epilogue (bias, activation, pooling) per plane. float32 tanh is our own
// branchless FastTanh (conv2d_cpu.h), so that the epilogue loops vectorize.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "conv2d.h"
#include "conv2d_checks.h"
#include "conv2d_cpu.h"

namespace replab_fast {
namespace {

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

}  // namespace

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

}  // namespace replab_fast
