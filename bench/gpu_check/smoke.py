"""Stage b of `make gpu-check`: each op once at a benchmark shape, against its PyTorch counterpart.

    python -m bench.gpu_check.smoke --out smoke.json [--ops attention,rms_norm,rope,lstm,conv2d]
                                    [--device cuda|cpu] [--size benchmark|small]

For each op: one forward and one backward (a seeded random upstream gradient) of our op, of its
PyTorch counterpart at the same dtype, and of the reference in higher precision (float32 on
CUDA, with TF32 off; float64 on a CPU). Every output and every input gradient of ours must meet
the parity rule (``replab_fast.parity``): its error against the exact run at most twice the
counterpart's own error plus a small floor. Then each side is timed, forward and forward +
backward, over a few repetitions: a first look, not a benchmark of record (stage d's are).

The counterparts: attention F.scaled_dot_product_attention (SDPA's own backend choice);
RMSNorm F.rms_norm; RoPE the reference's torch ops (PyTorch has no fused RoPE); LSTM
torch.nn.LSTM (cuDNN) with the same weights; conv F.conv2d (cuDNN), ReLU and max-pool.

``--size benchmark`` (CUDA) uses a shape of the benchmark suite; ``small`` (the CPU rehearsal)
a tiny one, through Triton's interpreter and the C++ conv. smoke.json is rewritten after each
op, so a fault in one (a CUDA error poisons the rest of the process) leaves the earlier ones.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from replab_fast import parity
from replab_fast.timing import TimingPolicy, measure

OPS = ("attention", "rms_norm", "rope", "lstm", "conv2d")
TIMED = TimingPolicy(warmup_ms=0, rep_ms=0, min_reps=5, max_reps=5, head_start=False, rotate=False)
Fn = Callable[..., Sequence[Tensor]]


@dataclass
class Case:
    op: str
    shape: str  # what the inputs are, in words
    counterpart: str  # the PyTorch function ours is compared with
    inputs: list[Tensor]  # at the dtype under test; the differentiable ones require grad
    ours: Fn
    torch_fn: Fn
    exact: Fn  # the reference, called on the inputs upcast
    exact_dtype: torch.dtype


def _rand(shape, dtype, device, seed: int, scale: float = 1.0, grad: bool = True) -> Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, device=device, dtype=torch.float32)).to(dtype).requires_grad_(grad)


def _dtypes(size: str) -> tuple[torch.dtype, torch.dtype]:
    """(dtype under test, exact dtype)."""
    if size == "benchmark":
        return torch.bfloat16, torch.float32
    return torch.float32, torch.float64


def attention_case(device, size) -> Case:
    from replab_fast import ops
    from replab_fast.models.llama import attention_ref

    dtype, exact = _dtypes(size)
    B, T, H, D = (4, 4096, 16, 128) if size == "benchmark" else (1, 48, 2, 32)
    q, k, v = (_rand((B, T, H, D), dtype, device, seed) for seed in (1, 2, 3))

    def sdpa(q, k, v):
        return (F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True).transpose(1, 2),)  # fmt: skip

    return Case("attention", f"causal, q k v ({B}, {T}, {H}, {D})", "F.scaled_dot_product_attention", [q, k, v],
                lambda q, k, v: (ops.attention(q, k, v, causal=True),), sdpa,
                lambda q, k, v: (attention_ref(q, k, v, causal=True),), exact)  # fmt: skip


def rms_norm_case(device, size) -> Case:
    from replab_fast import ops
    from replab_fast.kernels.rms_norm.reference import rms_norm_ref

    dtype, exact = _dtypes(size)
    M, N = (8192, 4096) if size == "benchmark" else (33, 96)
    x, w = _rand((M, N), dtype, device, 1), _rand((N,), dtype, device, 2, scale=0.5)
    return Case("rms_norm", f"x ({M}, {N})", "F.rms_norm", [x, w], lambda x, w: (ops.rms_norm(x, w, 1e-6),),
                lambda x, w: (F.rms_norm(x, (N,), w, 1e-6),), lambda x, w: (rms_norm_ref(x, w, 1e-6),), exact)  # fmt: skip


def rope_case(device, size) -> Case:
    from replab_fast import ops
    from replab_fast.kernels.rope.reference import rope_ref
    from replab_fast.models.llama import precompute_rope

    dtype, exact = _dtypes(size)
    B, T, Hq, Hk, D = (4, 4096, 32, 8, 128) if size == "benchmark" else (2, 17, 4, 2, 32)
    q, k = _rand((B, T, Hq, D), dtype, device, 1), _rand((B, T, Hk, D), dtype, device, 2)
    cos, sin = precompute_rope(D, T, device=device)

    def at(t: Tensor, like: Tensor) -> Tensor:
        return t.to(like.dtype)

    return Case("rope", f"q ({B}, {T}, {Hq}, {D}), k ({B}, {T}, {Hk}, {D})", "the reference's torch ops", [q, k],
                lambda q, k: ops.rope(q, k, at(cos, q), at(sin, q)),
                lambda q, k: rope_ref(q, k, at(cos, q), at(sin, q)),
                lambda q, k: rope_ref(q, k, at(cos, q), at(sin, q)), exact)  # fmt: skip


def lstm_case(device, size) -> Case:
    from replab_fast import ops
    from replab_fast.kernels.lstm.reference import lstm_layer_ref

    dtype, exact = _dtypes(size)
    T, B, H = (32, 64, 256) if size == "benchmark" else (5, 3, 16)
    s = H**-0.5
    x = _rand((T, B, H), dtype, device, 1)
    h0, c0 = _rand((B, H), dtype, device, 2), _rand((B, H), dtype, device, 3)
    w_ih, w_hh = _rand((4 * H, H), dtype, device, 4, s), _rand((4 * H, H), dtype, device, 5, s)
    b_ih, b_hh = _rand((4 * H,), dtype, device, 6, s), _rand((4 * H,), dtype, device, 7, s)
    module = torch.nn.LSTM(H, H, device=device, dtype=dtype)

    def cudnn(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        params = {"weight_ih_l0": w_ih, "weight_hh_l0": w_hh, "bias_ih_l0": b_ih, "bias_hh_l0": b_hh}
        y, (h_n, c_n) = torch.func.functional_call(module, params, (x, (h0[None], c0[None])))
        return y, h_n[0], c_n[0]

    def reference(*args):
        return lstm_layer_ref(*args)

    inputs = [x, h0, c0, w_ih, w_hh, b_ih, b_hh]
    counterpart, name = cudnn, "torch.nn.LSTM"
    try:  # cuDNN's RNN may refuse a dtype (bfloat16 on some versions): then the reference's torch ops
        with torch.no_grad():
            cudnn(*[t.detach() for t in inputs])
    except RuntimeError as err:
        counterpart, name = reference, f"the reference's torch ops (torch.nn.LSTM refused {dtype}: {str(err)[:120]})"
    return Case("lstm", f"x ({T}, {B}, {H}), one layer", name, inputs, ops.lstm, counterpart, reference, exact)


def conv2d_case(device, size) -> Case:
    from replab_fast import ops

    dtype, exact = _dtypes(size)
    if size == "benchmark":  # AlexNet's conv5: 384 -> 256, 3x3, pad 1, 2 groups, ReLU, max-pool 3/2
        N, C, HW, K, R, pad, groups, pool = 128, 384, 13, 256, 3, 1, 2, (3, 2)
    else:  # LeNet-5's C1: 1 -> 6, 5x5, ReLU, max-pool 2/2
        N, C, HW, K, R, pad, groups, pool = 16, 1, 32, 6, 5, 0, 1, (2, 2)
    x = _rand((N, C, HW, HW), dtype, device, 1)
    w = _rand((K, C // groups, R, R), dtype, device, 2, (C // groups * R * R) ** -0.5)
    b = _rand((K,), dtype, device, 3, 0.1)

    def chain(x, w, b):
        return (F.max_pool2d(F.relu(F.conv2d(x, w, b, padding=pad, groups=groups)), *pool),)

    def fused(x, w, b):
        return (ops.conv2d(x, w, b, padding=pad, groups=groups, activation="relu", pool=("max", *pool)),)

    return Case("conv2d", f"x ({N}, {C}, {HW}, {HW}), w ({K}, {C // groups}, {R}, {R}), groups {groups}, ReLU, "
                f"max-pool {pool[0]}/{pool[1]}", "F.conv2d + relu + max_pool2d", [x, w, b], fused, chain, chain,
                exact)  # fmt: skip


CASES = {"attention": attention_case, "rms_norm": rms_norm_case, "rope": rope_case, "lstm": lstm_case,
         "conv2d": conv2d_case}  # fmt: skip


@contextlib.contextmanager
def no_tf32():
    """The exact run in true fp32 (cuDNN's convolutions default to TF32)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def forward_backward(fn: Fn, inputs: list[Tensor], seed: int) -> tuple[list[Tensor], list[Optional[Tensor]]]:
    outputs = list(fn(*inputs))
    grads_out = [torch.randn(o.shape, generator=torch.Generator(device=o.device).manual_seed(seed + i),
                             device=o.device, dtype=torch.float32).to(o.dtype) for i, o in enumerate(outputs)]  # fmt: skip
    wrt = [t for t in inputs if t.requires_grad]
    grads = torch.autograd.grad(outputs, wrt, grads_out, allow_unused=True)
    return [o.detach() for o in outputs], list(grads)


def parity_rows(case: Case) -> tuple[list[dict], bool]:
    ours = forward_backward(case.ours, case.inputs, 100)
    theirs = forward_backward(case.torch_fn, case.inputs, 100)
    upcast = [t.detach().to(case.exact_dtype).requires_grad_(t.requires_grad) for t in case.inputs]
    with no_tf32():
        exact = forward_backward(case.exact, upcast, 100)
    rows, ok = [], True
    names = [f"output {i}" for i in range(len(ours[0]))] + [f"grad of input {i}" for i in range(len(ours[1]))]
    for name, fast, ref, ex in zip(names, ours[0] + ours[1], theirs[0] + theirs[1], exact[0] + exact[1]):
        if fast is None or ex is None:
            continue
        check = parity.check(name, fast, ref, ex)
        rows.append({"tensor": name, "error": check.error, "torch_error": check.reference_error,
                     "allowed": check.bound, "passed": check.passed})  # fmt: skip
        ok = ok and check.passed
    return rows, ok


def timings(case: Case, device: torch.device) -> dict[str, float]:
    out = {}
    detached = [t.detach() for t in case.inputs]
    for side, fn in (("ours", case.ours), ("torch", case.torch_fn)):
        with torch.no_grad():
            out[f"{side}_forward_ms"] = measure([lambda: fn(*detached)], device, TIMED).median * 1e3
        out[f"{side}_full_ms"] = measure([lambda: forward_backward(fn, case.inputs, 7)], device, TIMED).median * 1e3
    return out


def run_op(op: str, device: torch.device, size: str) -> dict:
    entry: dict = {"op": op, "device": device.type, "size": size}
    try:
        case = CASES[op](device, size)
        entry.update(shape=case.shape, dtype=str(case.inputs[0].dtype).removeprefix("torch."),
                     counterpart=case.counterpart, exact_dtype=str(case.exact_dtype).removeprefix("torch."))  # fmt: skip
        entry["parity"], entry["passed"] = parity_rows(case)
        entry.update(timings(case, device))
    except Exception as err:  # recorded, and the next op runs (unless CUDA is poisoned)
        entry.update(passed=False, error=f"{type(err).__name__}: {err}".strip()[:2000],
                     traceback=traceback.format_exc(limit=6)[-4000:])  # fmt: skip
    return entry


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=("benchmark", "small"), default=None,
                        help="benchmark (the default on CUDA) or small (the default on a CPU)")  # fmt: skip
    args = parser.parse_args(argv)
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = sorted(set(ops) - set(OPS))
    if unknown:
        parser.error(f"unknown op(s) {', '.join(unknown)}; known: {', '.join(OPS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("smoke: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    size = args.size or ("benchmark" if device.type == "cuda" else "small")
    entries = []
    for op in ops:
        entries.append(run_op(op, device, size))
        e = entries[-1]
        verdict = "ok" if e.get("passed") else f"FAILED{': ' + e['error'] if 'error' in e else ''}"
        times = (f" ours {e['ours_full_ms']:.3f} ms, torch {e['torch_full_ms']:.3f} ms (forward + backward)"
                 if "ours_full_ms" in e else "")  # fmt: skip
        print(f"smoke {op}: {verdict}{times}", flush=True)
        Path(args.out).write_text(json.dumps({"device": device.type, "size": size, "ops": entries}, indent=1))
    return 0 if all(e.get("passed") for e in entries) else 1


if __name__ == "__main__":
    sys.exit(main())
