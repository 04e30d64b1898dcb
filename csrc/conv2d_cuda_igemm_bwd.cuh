// The main loop of the CUDA conv2d's backward GEMMs, backward_gemm_kernel, generic over the Op
// that loads, stages and stores one GEMM (WgradOp in conv2d_cuda_igemm_bwd.cu, DgradOp and DcolOp
// in conv2d_cuda_igemm_dgrad.cu). A kernel template, so that each of the two .cu files
// instantiates it for its own Ops (internal linkage, no relocatable device code) next to the
// launchers that launch it.
#pragma once

#include "conv2d_cuda_common.cuh"

namespace replab_fast {
namespace {

// An Op has the types Shared (block-wide, written by init), Thread (per thread, with `slices`, the
// number of reduction slices, the same in every thread of the block) and Regs (one slice's loads),
// and init(Shared&, Thread&), load(const Shared&, const Thread&, t, Regs&), store(const Thread&,
// const Regs&, E* As, E* Bs) and epilogue(const Shared&, const Thread&, const float* Cs).
//
// One 64 x 64 tile of a backward GEMM (Op: DgradOp, DcolOp or WgradOp): the reduction in 32-wide slices,
// double-buffered in shared memory through registers. Per slice t (one __syncthreads):
//   load slice t + 1 into registers (global loads in flight during the MMA)
//   MMA on buffer t % 2
//   store the registers into buffer (t + 1) % 2 (last read at slice t - 1, before the last barrier)
//   __syncthreads
// Shared memory: 4 x 64 x kLd elements (20480 B for 16-bit, 36864 B for float), the accumulators
// (17408 B) aliasing it after the loop, plus Op::Shared (<= 1 KB): static, under 48 KB.
template <typename scalar_t, typename Op>
__global__ void __launch_bounds__(kGemmThreads) backward_gemm_kernel(const Op op) {
  using Traits = GemmTraits<scalar_t>;
  using E = typename Traits::E;
  constexpr int kTile = kBM * Traits::kLd;  // elements of one operand buffer
  constexpr int kOperandBytes = 4 * kTile * int(sizeof(E));
  constexpr int kAccBytes = kBN * kLdC * int(sizeof(float));
  __shared__ __align__(128) unsigned char smem[kOperandBytes > kAccBytes ? kOperandBytes : kAccBytes];
  __shared__ typename Op::Shared op_shared;
  E* As = reinterpret_cast<E*>(smem);  // As + b * kTile: [m][kk]
  E* Bs = As + 2 * kTile;              // Bs + b * kTile: [n][kk]
  float* Cs = reinterpret_cast<float*>(smem);

  typename Op::Thread th;
  op.init(op_shared, th);
  __syncthreads();  // op_shared written
  typename Traits::Tile tile;
  tile.zero();
  typename Op::Regs regs;
  if (th.slices > 0) {
    op.load(op_shared, th, 0, regs);
    op.store(th, regs, As, Bs);
  }
  __syncthreads();
  for (int64_t t = 0; t < th.slices; ++t) {  // th.slices: the same in every thread of the block
    const int cur = static_cast<int>(t & 1);
    const bool more = t + 1 < th.slices;
    if (more) op.load(op_shared, th, t + 1, regs);
    tile.step(As + cur * kTile, Bs + cur * kTile);
    if (more) op.store(th, regs, As + (cur ^ 1) * kTile, Bs + (cur ^ 1) * kTile);
    __syncthreads();
  }
  tile.store(Cs);  // every read of As / Bs finished at the loop's last barrier
  __syncthreads();
  op.epilogue(op_shared, th, Cs);
}

}  // namespace
}  // namespace replab_fast
