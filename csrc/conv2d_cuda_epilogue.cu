// The CUDA conv2d's elementwise epilogue kernels of the fused activation and pooling:
// pool_epilogue_kernel (y = pool(act(z)) after the GEMM forward) and epilogue_backward_kernel
// (dz = act'(z) * unpool(dy), the first step of every backward path), with their launchers.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>

#include <cstdint>

#include "conv2d.h"
#include "conv2d_cuda_common.cuh"
#include "conv2d_cuda_launch.h"

namespace replab_fast {
namespace {

// y = pool(act(z)) for the GEMM path with pooling: one thread per pooled output.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    pool_epilogue_kernel(const scalar_t* __restrict__ z, scalar_t* __restrict__ out, const ConvGeometry g) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t total = g.N * g.K * g.PH * g.PW;
  const acc_t inv_area = acc_t(1) / acc_t(g.pkh * g.pkw);
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const PlanePos pos = plane_position(idx, g.PH, g.PW);
    const int64_t px = pos.col, py = pos.row, nk = pos.plane;
    const scalar_t* zp = z + (nk * g.OH + py * g.psh) * g.OW + px * g.psw;
    acc_t result = acc_t(0);
    bool first = true;
    for (int64_t i = 0; i < g.pkh; ++i)
      for (int64_t j = 0; j < g.pkw; ++j) {
        const acc_t a = activation_forward<acc_t>(g.act, to_acc(zp[i * g.OW + j]));
        if (g.pool == PoolKind::Avg) {
          result += a;
        } else if (first || a > result || isnan(a)) {
          result = a;
        }
        first = false;
      }
    if (g.pool == PoolKind::Avg) result *= inv_area;
    out[idx] = from_acc<scalar_t>(result);
  }
}

// dz[n, k, oh, ow] = act'(z) * (sum of the pooled gradients that reach (oh, ow)), computed in
// fp32 (fp64 for float64) and stored as dz_t: the accumulation type for the simple kernels, the
// input dtype for the GEMM backward (see backward_gemm_impl).
template <typename scalar_t, typename dz_t>
__global__ void __launch_bounds__(kThreads)
    epilogue_backward_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ z, dz_t* __restrict__ dz,
                             const ConvGeometry g) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t total = g.N * g.K * g.OH * g.OW;
  const bool fused = g.act != Activation::None || g.pool != PoolKind::None;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    if (!fused) {
      dz[idx] = from_acc<dz_t>(to_acc(dy[idx]));
      continue;
    }
    const PlanePos pos = plane_position(idx, g.OH, g.OW);
    const int64_t ow = pos.col, oh = pos.row, nk = pos.plane;
    acc_t grad = acc_t(0);
    bool covered = g.pool == PoolKind::None;
    if (g.pool == PoolKind::None) {
      grad = to_acc(dy[idx]);
    } else {
      // pooled rows py with py * psh <= oh < py * psh + pkh (and likewise for columns)
      const int64_t py_lo = oh >= g.pkh ? (oh - g.pkh) / g.psh + 1 : 0;
      const int64_t py_hi = oh / g.psh < g.PH - 1 ? oh / g.psh : g.PH - 1;
      const int64_t px_lo = ow >= g.pkw ? (ow - g.pkw) / g.psw + 1 : 0;
      const int64_t px_hi = ow / g.psw < g.PW - 1 ? ow / g.psw : g.PW - 1;
      const acc_t inv_area = acc_t(1) / acc_t(g.pkh * g.pkw);
      for (int64_t py = py_lo; py <= py_hi; ++py) {
        for (int64_t px = px_lo; px <= px_hi; ++px) {
          covered = true;
          const acc_t g_out = to_acc(dy[(nk * g.PH + py) * g.PW + px]);
          if (g.pool == PoolKind::Avg) {
            grad += g_out * inv_area;
            continue;
          }
          // the window's first maximum (row-major), as F.max_pool2d picks it
          const scalar_t* zw = z + (nk * g.OH + py * g.psh) * g.OW + px * g.psw;
          int64_t best = 0;
          acc_t best_v = activation_forward<acc_t>(g.act, to_acc(zw[0]));
          for (int64_t i = 0; i < g.pkh; ++i)
            for (int64_t j = 0; j < g.pkw; ++j) {
              const acc_t v = activation_forward<acc_t>(g.act, to_acc(zw[i * g.OW + j]));
              if (v > best_v || isnan(v)) {  // F.max_pool2d's rule
                best_v = v;
                best = i * g.OW + j;
              }
            }
          if ((py * g.psh) * g.OW + px * g.psw + best == oh * g.OW + ow) grad += g_out;
        }
      }
    }
    // a conv output no pooling window covers gets no gradient (and its z may be unwritten)
    dz[idx] = from_acc<dz_t>(covered ? grad * activation_derivative<acc_t>(g.act, to_acc(z[idx])) : acc_t(0));
  }
}

}  // namespace

template <typename scalar_t>
void launch_pool_epilogue(const scalar_t* z, scalar_t* out, const ConvGeometry& g, int64_t out_numel,
                          cudaStream_t stream) {
  pool_epilogue_kernel<scalar_t><<<blocks_for(out_numel, kThreads), kThreads, 0, stream>>>(z, out, g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename dz_t>
void launch_epilogue_backward(const scalar_t* dy, const scalar_t* z, dz_t* dz, int64_t numel, const ConvGeometry& g,
                              cudaStream_t stream) {
  epilogue_backward_kernel<scalar_t, dz_t><<<blocks_for(numel, kThreads), kThreads, 0, stream>>>(dy, z, dz, g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template void launch_pool_epilogue<double>(const double*, double*, const ConvGeometry&, int64_t, cudaStream_t);
template void launch_pool_epilogue<float>(const float*, float*, const ConvGeometry&, int64_t, cudaStream_t);
template void launch_pool_epilogue<c10::Half>(const c10::Half*, c10::Half*, const ConvGeometry&, int64_t,
                                              cudaStream_t);
template void launch_pool_epilogue<c10::BFloat16>(const c10::BFloat16*, c10::BFloat16*, const ConvGeometry&, int64_t,
                                                  cudaStream_t);

// backward_simple: dz in the accumulation type (AccType)
#define REPLAB_INSTANTIATE_EPILOGUE_BACKWARD(scalar_t, dz_t)                                                  \
  template void launch_epilogue_backward<scalar_t, dz_t>(const scalar_t*, const scalar_t*, dz_t*, int64_t,  \
                                                         const ConvGeometry&, cudaStream_t);
REPLAB_INSTANTIATE_EPILOGUE_BACKWARD(double, double)
REPLAB_INSTANTIATE_EPILOGUE_BACKWARD(float, float)
REPLAB_INSTANTIATE_EPILOGUE_BACKWARD(c10::Half, float)
REPLAB_INSTANTIATE_EPILOGUE_BACKWARD(c10::BFloat16, float)
// backward_gemm: dz in the input dtype (float32's is the one above)
REPLAB_INSTANTIATE_EPILOGUE_BACKWARD(c10::Half, c10::Half)
REPLAB_INSTANTIATE_EPILOGUE_BACKWARD(c10::BFloat16, c10::BFloat16)
#undef REPLAB_INSTANTIATE_EPILOGUE_BACKWARD

}  // namespace replab_fast
