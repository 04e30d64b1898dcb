"""The LSTM as Triton kernels: one fused cell step, and a whole layer over T steps, forward and backward.

Math (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000; the reference is
``replab_fast.models.lstm``: ``lstm_cell`` and ``LSTM``), per step t with the gates in
torch.nn.LSTM's order (rows [i; f; g; o] of the (4H, .) weights):

    a      = x_t W_ih^T + h_{t-1} W_hh^T + b_ih + b_hh        (B, 4H) pre-activations, fp32 accumulation
    i, f, o = sigmoid(a_i), sigmoid(a_f), sigmoid(a_o);  g = tanh(a_g)
    c_t    = f c_{t-1} + i g;   h_t = o tanh(c_t)             state in fp32 (fp64 for fp64)

Backward, from dh_t (the output's gradient plus the recurrent one, dA_{t+1} W_hh) and dc_t:

    dc   = dc_t + dh_t o (1 - tanh^2 c_t)          dc_{t-1} = dc f
    da_i = dc g i (1 - i);  da_f = dc c_{t-1} f (1 - f);  da_g = dc i (1 - g^2);  da_o = dh_t tanh(c_t) o (1 - o)
    dh_{t-1} (recurrent part) = dA_t W_hh;  dx = dA W_ih;  dW_ih = dA^T x;  dW_hh = dA^T h_prev;  db = sum dA

Numerics. sigmoid(x) = 1 / (1 + z) or z / (1 + z) with z = exp(-|x|), tanh(x) = sign(x) (1 - z) /
(1 + z) with z = exp(-2|x|): z never overflows, so no inf or NaN at any |x| (1e4 included) in any
dtype. fp16 / bf16 inputs compute and carry h's and c's recurrence in fp32 (the products of the
tensor-core dots accumulate in fp32; the state c stays fp32 across steps, h is rounded to the
input dtype once per step, where the next step's dot reads it); fp32 runs 3xTF32 dots on CUDA
(about fp32 accuracy), fp64 computes in fp64. Element offsets into (T, B, 4H) tensors are formed
in int64 (``_row_offsets``): T * B * 4H passes 2^31 at, e.g., T = 2048, B = 256, H = 1024.

What the forward saves: the activated gates (T, B, 4H) in the input dtype, every cell state c_t
(T, B, H) in the state dtype (fp32 for 16-bit inputs), and the output y (the h_t, which the dW_hh
GEMM reads as h_{t-1}); tanh(c_t) is recomputed. ``lstm_cell`` saves its gates and returns c'.

The paths (``launch.lstm_config``; a layer's input projection is always one GEMM over all T
steps, by torch: cuBLAS on CUDA; the four gates of a tile of units travel as one gate tile, see
``kernel.py``):

- **persistent** (H padded to a power of two HP <= ``PERSISTENT_MAX_HIDDEN``: 256 for every
  dtype): one launch runs all T steps. Triton has no grid-wide barrier, so a step, which needs
  all of h_{t-1}, cannot be split across programs; instead each program owns a tile of
  BLOCK_B = 16 batch rows (tl.dot's minimum M, compiled; the batch is padded to it) with all H of
  their units and all of W_hh, and walks every step on its own: nothing it reads was written by
  another program. So B sets the number of programs, cdiv(B, 16) (B = 256: 16 of the 132 SMs),
  and every program reads all of W_hh every step.
  - resident (on CUDA: HP <= 128 for fp16 / bf16, HP <= 32 for fp32; in the interpreter every
    persistent case): W_hh^T, one (HP, 4 HP) block, is loaded once (128 KB at HP = 128 in bf16;
    the compiled kernel keeps it in shared memory) and h, c are carried in registers: a step
    reads x_t W_ih^T and writes h_t, c_t and the gates, nothing else. (fp32 at HP = 64 would fit,
    144 KB for its 3xTF32 operands, but spills ~300 bytes per thread with triton 3.6.)
  - streamed (HP = 256 for fp16 / bf16, 64 to 256 for fp32): per step, each tile of 64 units
    (fp32: 16) reduces h_{t-1} against W_hh in chunks of 64 (fp32: 32); W_hh comes from L2
    (512 KB in bf16 at H = 256: it fits L2, not one SM), h_{t-1} is read back from the output y
    written at step t-1 and c_{t-1} from the saved states, after a CTA barrier
    (``tl.debug_barrier``) that orders the program's own stores of one step before its loads of
    the next. Launched with num_stages = 1: no software pipelining may move a load of step t
    above that barrier (the tests check for no cp.async).
  The recurrent products of 16-bit inputs run on the tensor cores as mma.sync (mma v2): an M of
  16 batch rows is under wgmma's 64. (Computing the transposed products, W_hh h^T with M = 4 HP,
  would open wgmma; not done: GPU timing first.)
- **per step** (HP > 256: H = 512, 1024): per step a GEMM h_{t-1} W_hh^T by torch (cuBLAS spreads
  W_hh over every SM) and one fused pointwise kernel (``kernel._lstm_cell_fwd_kernel``). Reading
  a W_hh of 2 MB (H = 512, bf16) or 8 MB (H = 1024) from L2 every step on the one SM a persistent
  program has is slower than a GEMM over all SMs; what would win there (W_hh split across SMs,
  exchanging h every step) needs the grid barrier Triton does not have.
- backward: the same path as the forward. Persistent: one launch walks t = T-1 .. 0 (resident:
  dh, dc and W_hh on chip; streamed: dA_{t+1} read back after the barrier, dc in a (B, H) fp32
  buffer). Per step: the fused pointwise backward kernel, then dA_t W_hh by torch. In both, the
  weight gradients, dx and db are then GEMMs (and a sum) over all T * B rows at once.

GPU verification pending: no speed is claimed (bench/test_lstm.py measures against cuDNN). What
ptxas makes of the kernels for sm_90 is checked without a GPU by the tests
(``test_compiled_path_builds_for_hopper``, at the benchmarks' sizes: no register spills with
triton 3.9 and at most 24 bytes per thread with 3.6, shared memory within 227 KB, mma.sync for
the 16-bit products).

The package: ``kernel.py`` (the cell's device functions and the per-step pointwise kernels),
``persistent.py`` (the whole-layer kernels), ``launch.py`` (host launchers and the config table),
``op.py`` (the ``torch.library`` ops ``replab_fast::lstm_cell``, ``::lstm`` and their backward ops,
with fake implementations and autograd), ``reference.py`` (a layer of the reference model as a
function). This ``__init__`` imports no triton: it says what the kernels support and why they
cannot run a module.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import SUPPORTED_DTYPES, triton_unusable_reason

__all__ = ["PERSISTENT_MAX_HIDDEN", "SUPPORTED_DTYPES", "state_dtype", "unusable_reason"]

# The widest padded H the persistent kernels take, per dtype (above it: the per-step path).
PERSISTENT_MAX_HIDDEN = {torch.float16: 256, torch.bfloat16: 256, torch.float32: 256, torch.float64: 256}


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute and keep the cell state in: fp64 for fp64, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def unusable_reason(module: nn.Module) -> Optional[str]:
    """Why the LSTM kernels cannot run ``module`` (the reference ``LSTM``), or None: Triton must
    run here (``triton_unusable_reason``) and every parameter must share one dtype."""
    reason = triton_unusable_reason(module)
    if reason is not None:
        return reason
    dtypes = {p.dtype for p in module.parameters()}
    if len(dtypes) > 1:
        names = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
        return f"the LSTM kernels take parameters of one dtype, got {names}"
    return None
