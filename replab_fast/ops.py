"""The public functional API over replab_fast's kernels.

Each function calls a ``torch.library`` op in the ``replab_fast`` namespace (``torch.ops.replab_fast.*``),
registered with autograd and a fake implementation: it works in eager mode, under
``torch.compile`` without graph breaks, and with ``torch.library.opcheck``. CUDA tensors run the
compiled Triton kernels; CPU tensors run the same kernels through Triton's interpreter (slow,
for tests and small runs), with nothing to set.

Importing this module registers the Triton ops (and so imports triton) where Triton can run;
where it cannot, the import still works and each Triton op raises ImportError saying why
(``replab_fast.kernels.unavailable_reason()``). ``conv2d`` loads the C++/CUDA extension at its
first call.
"""

import math
from typing import Optional

from torch import Tensor
from torch import ops as _torch_ops

from .kernels import unavailable_reason

__all__ = ["attention", "conv2d", "lstm", "lstm_cell", "rms_norm", "rms_norm_residual", "rope"]

_TRITON_UNAVAILABLE = unavailable_reason()  # None where the Triton kernels can run
if _TRITON_UNAVAILABLE is None:
    from .kernels.attention import op as _attention  # noqa: F401  (registers replab_fast::attention*)
    from .kernels.lstm import op as _lstm  # noqa: F401  (registers replab_fast::lstm*)
    from .kernels.rms_norm import op as _rms_norm  # noqa: F401  (registers replab_fast::rms_norm*)
    from .kernels.rope import op as _rope  # noqa: F401  (registers replab_fast::rope*)


def _require_triton(op: str) -> None:
    if _TRITON_UNAVAILABLE is not None:
        raise ImportError(f"replab_fast.ops.{op} needs the Triton kernels, which cannot run here: {_TRITON_UNAVAILABLE}")


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """RMSNorm over the last dimension: ``x / sqrt(mean(x^2, -1) + eps) * weight``.

    Args:
        x: (..., N), any leading shape (including no rows), float16 / bfloat16 / float32 / float64.
            Strided views are read in place when their leading dimensions collapse to one row
            stride, otherwise copied once.
        weight: (N,), a floating dtype, on x's device.
        eps: added to the mean square, >= 0.

    Returns:
        y (..., N), contiguous, of dtype ``promote_types(x.dtype, weight.dtype)`` (x's dtype when
        they match), computed in fp32 (fp64 for float64), like ``replab_fast.models.llama.RMSNorm``.
        Differentiable in x and weight; the dweight reduction uses per-program partial sums.
    """
    _require_triton("rms_norm")
    return _torch_ops.replab_fast.rms_norm(x, weight, float(eps))


def rms_norm_residual(x: Tensor, residual: Tensor, weight: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Fused residual add + RMSNorm, one pass: ``h = x + residual; y = rms_norm(h, weight, eps)``.

    Args:
        x, residual: (..., N), one shape and one dtype (float16 / bfloat16 / float32 / float64).
        weight: (N,), a floating dtype, on x's device.
        eps: added to the mean square, >= 0.

    Returns:
        (y, h): y as in :func:`rms_norm`; h = x + residual in x's dtype (rounded exactly as
        ``x + residual`` is), both contiguous of x's shape. Differentiable in x, residual and
        weight; gradients flowing into both y and h (the residual stream) are combined in one pass.
    """
    _require_triton("rms_norm_residual")
    return _torch_ops.replab_fast.rms_norm_residual(x, residual, weight, float(eps))


def rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, *, interleaved: bool = True) -> tuple[Tensor, Tensor]:
    """Rotary position embedding of queries and keys, one kernel launch for both.

    Args:
        q: (B, T, Hq, D) queries; D even, up to 1024.
        k: (B, T, Hk, D) keys, Hk dividing Hq (grouped-query attention); q's dtype.
        cos, sin: (T', D/2) with T' >= T, one dtype: row t holds the angles of token t, so pass the
            tables taken at the tokens' positions (``cos_table[start_pos : start_pos + T]`` when
            decoding with a KV cache). They get no gradient.
        interleaved: True rotates the pairs (x[2i], x[2i+1]) (Meta's LLaMA, the reference model);
            False the pairs (x[i], x[i + D/2]) (rotate-half, HF / GPT-NeoX).

    Returns:
        (q_rot, k_rot), new contiguous tensors of q's and k's shapes and dtype (float16 / bfloat16 /
        float32 / float64), computed in fp32 (fp64 for float64). The backward is the rotation by
        the negative angles.
    """
    _require_triton("rope")
    return _torch_ops.replab_fast.rope(q, k, cos, sin, bool(interleaved))


def attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = True, scale: Optional[float] = None) -> Tensor:
    """Fused softmax attention (FlashAttention-2 forward and backward, flash-decoding for few queries).

    Args:
        q: (B, T, Hq, D) queries; D from 16 to 256 (any, not only powers of two).
        k, v: (B, S, Hk, D) keys and values, Hk dividing Hq (grouped- and multi-query attention:
            query head h reads KV head h // (Hq / Hk); K/V are never repeated in memory).
            q, k, v are read through their strides (e.g. (B, H, T, D) storage transposed to
            (B, T, H, D), or slices of a fused projection); only a strided last dimension is copied.
        causal: mask aligned to the end of the keys: query i sees keys j <= i + S - T (the T
            queries are the last T positions of the S keys, e.g. a new chunk against a KV cache);
            needs T <= S.
        scale: the softmax scale, default 1 / sqrt(D).

    Returns:
        (B, T, Hq, D), contiguous, q's dtype (float16 / bfloat16 / float32 / float64; q, k, v share
        it). Online softmax in fp32 (fp64 for float64), never a T x S matrix in memory; fp16/bf16
        products accumulate in fp32 with P rounded to the input dtype (as FlashAttention does);
        float32 runs 3xTF32 products on CUDA (about fp32 accuracy, not plain TF32's ~1e-3) and fp32
        on the CPU; float64 runs in float64. Differentiable in q, k and v (FlashAttention-2
        recomputation from the saved logsumexp; dk/dv reduced over each KV group's query heads).
        With T * Hq / Hk <= 64 (decoding) the keys are split across programs and combined
        (flash-decoding). Same function as ``replab_fast.models.llama.attention_ref``.
    """
    if scale is None:
        # 1 / sqrt(D). A head dim the kernels do not take (D = 0 among them) gets a placeholder
        # here, so that the op's own check reports it ("head dims from 16 to 256 ...").
        D = q.shape[-1] if isinstance(q, Tensor) and q.dim() > 0 else 0
        scale = 1.0 / math.sqrt(D) if D > 0 else 1.0
    _require_triton("attention")
    return _torch_ops.replab_fast.attention(q, k, v, bool(causal), float(scale))[0]


def lstm_cell(
    x: Tensor, h: Tensor, c: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor, bias_hh: Tensor
) -> tuple[Tensor, Tensor]:
    """One LSTM step of one layer, its pointwise part fused: ``(h', c')`` from ``(x, h, c)``.

    Args:
        x: (B, input_size); h, c: (B, H); weight_ih: (4H, input_size); weight_hh: (4H, H);
            bias_ih, bias_hh: (4H,); gate rows in torch.nn.LSTM's order i, f, g, o. One dtype for
            all (float16 / bfloat16 / float32 / float64), one device.

    Returns:
        (h', c'), each (B, H), contiguous, in the inputs' dtype: the two projections by torch
        (cuBLAS on CUDA), then one kernel for the gates, c' = f c + i g and h' = o tanh(c'),
        computed in fp32 (fp64 for float64), sigmoid and tanh stable at any input. Differentiable in
        every input (one pointwise backward kernel, then GEMMs); the forward saves the activated
        gates. Same function as ``replab_fast.models.lstm.lstm_cell``.
    """
    _require_triton("lstm_cell")
    h_next, c_next, _ = _torch_ops.replab_fast.lstm_cell(x, h, c, weight_ih, weight_hh, bias_ih, bias_hh)
    return h_next, c_next


def lstm(
    x: Tensor, h0: Tensor, c0: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor, bias_hh: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer over a whole sequence: ``(y, h_n, c_n)`` from x and the initial state.

    Args:
        x: (T, B, input_size), T >= 1, time-major (read through a copy when its (T, B) dims do not
            flatten to rows); h0, c0: (B, H); weights and biases as for :func:`lstm_cell`. One
            dtype for all (float16 / bfloat16 / float32 / float64), one device.

    Returns:
        y (T, B, H) (every h_t), h_n and c_n (B, H), contiguous, in the inputs' dtype. The input
        projection of all steps is one GEMM; the recurrence is one persistent kernel launch for
        H <= 256 (each program owns a tile of batch rows for all T steps, keeping the state in
        fp32) and a GEMM plus a fused pointwise kernel per step above. Differentiable in every
        input, backward through time in kernels as well. A layer of ``replab_fast.models.lstm.LSTM``;
        the package docstring of ``replab_fast.kernels.lstm`` gives the design and its limits.
    """
    _require_triton("lstm")
    y, h_n, c_n, _, _ = _torch_ops.replab_fast.lstm(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh)
    return y, h_n, c_n


def conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride=1,
    padding: "int | tuple[int, int] | str" = 0,
    dilation=1,
    groups: int = 1,
    activation: Optional[str] = None,
    pool: Optional[tuple] = None,
) -> Tensor:
    """Fused convolution + activation + pooling (C++/CUDA extension, ``torch.ops.replab_fast.conv2d``).

    ``y = pool(act(conv2d(x, weight, bias, stride, padding, dilation, groups)))`` in one op.

    Args:
        x: (N, C, H, W); CPU: float32 / float64; CUDA: float16 / bfloat16 / float32 (fp32
            accumulation) / float64. Any strides.
        weight: (K, C / groups, R, S), x's dtype and device; bias: (K,) or None.
        stride, dilation: int or (height, width); groups divides C and K.
        padding: int, (height, width), "valid" or "same" (stride 1), as torch.nn.functional.conv2d.
        activation: None, "relu", "tanh" or "scaled_tanh" (LeNet-5's 1.7159 * tanh(2x/3)).
        pool: None, ("max", k, s) or ("avg", k, s), k and s ints or pairs; no padding, floor mode.

    Returns:
        (N, K, PH, PW) in x's dtype. Differentiable in x, weight and bias (backward written in
        csrc/ too). The extension is loaded at the first call (``replab_fast.kernels.conv2d.op``):
        a missing or stale build raises ImportError with the command that builds it.
    """
    from .kernels.conv2d import op as _conv2d  # loads replab_fast._C (not at import of ops: Triton ops need no build)

    return _conv2d.conv2d(x, weight, bias, stride, padding, dilation, groups, activation, pool)
