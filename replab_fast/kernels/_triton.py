"""What the kernel files share: one Triton kernel launched compiled on CUDA and interpreted on CPU.

Why this module exists
----------------------
``triton.jit`` picks, once and for the whole process, between a compiled kernel
(``JITFunction``) and Triton's interpreter (``InterpretedFunction``, numpy on the host): it
reads ``TRITON_INTERPRET`` (``triton.knobs.runtime.interpret``) when the decorator runs, in
triton 3.6 as in 3.9. Setting that variable at import would be a global side effect and would
send CUDA tensors through the interpreter too. So the kernels are ordinary ``@triton.jit``
functions, and for CPU tensors ``interpreted(kernel)`` builds (once) a second handle,
``InterpretedFunction(kernel.fn)``, on the same Python source: the same kernel, run by the
interpreter. ``launch`` picks the handle from the tensors' device. The user sets nothing.

Rules the kernels follow for this to work (checked on triton 3.6's and 3.9's sources):

- Call only ``triton.language`` builtins (``tl.load``, ``tl.reduce``, ``tl.full``, ...), never a
  library function that is itself ``@triton.jit`` (``tl.sum``, ``tl.zeros``, ``tl.cdiv``,
  ``tl.interleave``): those were decorated at import as compiled handles, which the interpreter
  cannot call. Sums are written ``tl.reduce(x, axis, tl.standard._sum_combine)``, which is what
  ``tl.sum`` does for a float input, and which the interpreter recognises and runs as ``np.sum``.
- Loops over run-time bounds go through ``block_loop`` (a ``range`` loop compiled, a ``while``
  loop interpreted): triton 3.6's interpreter turns a ``range()`` bound into an int with
  ``int(array)``, which numpy >= 2.4 refuses for its 1-element arrays (3.9 squeezes first).
  ``range`` over constexprs is fine; a plain ``while`` loop is fine where nothing is to be
  pipelined.
- No nested ``def`` in a kernel (the interpreter re-parses the source from the last ``def``).
- Dtype choices through constexpr flags (``IS_FP64``), not dtype-valued kernel arguments.
- Device functions shared by kernels are declared with ``device_function`` (a ``JITFunction``
  the interpreter can also call), not ``triton.jit``.
- Outputs are stored through ``cast_for_store(x, dtype, INTERPRETED)``: the interpreter's
  float32 -> bfloat16 cast truncates (``_convert_float`` with no rounding mode, triton 3.6 and
  3.9) where compiled code rounds to nearest even, so under the interpreter (the kernel's
  ``INTERPRETED`` constexpr) bfloat16 is rounded with integer operations, as torch rounds.
- A first interpreted launch adds the interpreter module's names to the kernel module's globals
  (``FunctionRewriter._compile_and_exec``, both versions); this is Triton's behaviour, it only
  adds names the module does not have, and it happens at the first CPU launch, not at import.

Op registration
---------------
``register_op`` makes each host launcher a ``torch.library.triton_op``: on CUDA, Inductor sees
the Triton kernels themselves (``wrap_triton``) and launches them from its generated code. A
``triton_op``'s implementation doubles as its fake (meta) implementation and is traced under
``torch.compile``, which works for ``wrap_triton``-ed compiled kernels but not for the
interpreter (an interpreted kernel would read fake tensors, and a traced call would drop out of
the graph; older torch also rejects ``wrap_triton(InterpretedFunction)``). So on CPU the
triton_op forwards to a private, opaque ``custom_op`` (``<ns>::_<name>_interpreted``, same schema,
its own fake) that runs the interpreter: eager, ``torch.compile`` (no graph break: the custom op
stays one node) and ``opcheck`` all work on both devices.
"""

import contextlib
import contextvars
import functools
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

__all__ = [
    "block_loop",
    "device_function",
    "cast_for_store",
    "interpreted",
    "runs_interpreted",
    "launch",
    "num_sms",
    "next_power_of_2",
    "cdiv",
    "check_device",
    "register_op",
    "Launch",
    "record_launches",
    "compile_for_cuda",
]

_INTERPRETED: dict[int, InterpretedFunction] = {}  # id(kernel.fn) -> its interpreted handle


def _interpret_everywhere() -> bool:
    """TRITON_INTERPRET=1 for the whole process: triton.jit itself returned interpreted kernels."""
    knobs = getattr(triton, "knobs", None)
    runtime = getattr(knobs, "runtime", None)
    if runtime is not None and hasattr(runtime, "interpret"):
        return bool(runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"  # triton < 3.4 has no knobs module


def runs_interpreted(device: torch.device) -> bool:
    """Whether kernels on ``device`` run through Triton's interpreter (CPU) or compiled (CUDA)."""
    if _RECORDING.get() is not None:
        return False  # record_launches: choose everything as for a CUDA device
    return device.type != "cuda" or _interpret_everywhere()


def interpreted(kernel: Any) -> InterpretedFunction:
    """The interpreter's handle on a ``@triton.jit`` kernel's source (built once, then cached)."""
    if isinstance(kernel, InterpretedFunction):  # TRITON_INTERPRET=1 was set before import
        return kernel
    handle = _INTERPRETED.get(id(kernel.fn))
    if handle is None:
        handle = _INTERPRETED[id(kernel.fn)] = InterpretedFunction(kernel.fn)
    return handle


class _DeviceFunction(JITFunction):
    """A ``@triton.jit`` device function that an interpreted kernel can call too.

    Compiled kernels see a ``JITFunction`` (and never call ``__call__``); under the interpreter
    the call runs the function's interpreted handle, as it would with TRITON_INTERPRET=1.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return interpreted(self)(*args, **kwargs)


def device_function(fn: Callable[..., Any]) -> Any:
    """``triton.jit`` for device functions (not kernels) that kernels call under both modes."""
    if _interpret_everywhere():
        return triton.jit(fn)
    return _DeviceFunction(fn)


@device_function
def cast_for_store(x, dtype: tl.constexpr, INTERPRETED: tl.constexpr):
    """``x.to(dtype)`` rounding to nearest even, in compiled code and under the interpreter alike."""
    if INTERPRETED and dtype == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest even (NaN stays NaN)
        return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(dtype)


@device_function
def block_loop(STEP: tl.constexpr, state, args, lo, hi, BLOCK: tl.constexpr, FLAGS: tl.constexpr,
               INTERPRETED: tl.constexpr):  # fmt: skip
    """``state = STEP(state, args, start, FLAGS)`` for start = lo, lo + BLOCK, ... below hi; returns
    the final state. ``STEP`` is a device function; ``state`` and ``args`` are tuples (the loop's
    carried values and its loop-invariant inputs), ``FLAGS`` a tuple of constexprs for the step.

    The one place a kernel's loop over run-time bounds is written. Compiled, it is a ``range``
    loop, which Triton software-pipelines (``num_stages``: the loads of the next blocks overlap
    the current block's products; a ``while`` loop it does not pipeline). Interpreted, a
    ``while`` loop: triton 3.6's interpreter turns a ``range`` bound into an int with
    ``int(array)``, which numpy >= 2.4 refuses for its 1-element arrays (3.9 squeezes first)."""
    if INTERPRETED:
        start = lo
        while start < hi:
            state = STEP(state, args, start, FLAGS)
            start += BLOCK
    else:
        for start in range(lo, hi, BLOCK):
            state = STEP(state, args, start, FLAGS)
    return state


def launch(kernel: Any, grid: Sequence[Any], device: torch.device, *args: Any, **kwargs: Any) -> None:
    """``kernel[grid](*args, **kwargs)``, compiled (through ``wrap_triton``) on CUDA, interpreted on CPU.

    ``kwargs`` holds the constexprs and the launch options (``num_warps``, ``num_stages``); the
    interpreter ignores the launch options.
    """
    grid = tuple(grid)
    recording = _RECORDING.get()
    if recording is not None:
        recording.launches.append(Launch(kernel, grid, args, kwargs))
        return
    if runs_interpreted(device):
        interpreted(kernel)[grid](*args, **kwargs)
    else:
        torch.library.wrap_triton(kernel)[grid](*args, **kwargs)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (132 on an H100 SXM); 1 for the interpreter."""
    recording = _RECORDING.get()
    if recording is not None:
        return recording.sm_count
    if runs_interpreted(device):
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _sm_count(index)


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def cdiv(a: Any, b: int) -> Any:
    return (a + b - 1) // b


def check_device(op: str, **tensors: Tensor) -> torch.device:
    """All ``tensors`` on one device, CUDA or CPU; returns it. Errors name the op and the tensors."""
    items = list(tensors.items())
    name0, t0 = items[0]
    for name, t in items[1:]:
        if t.device != t0.device:
            raise ValueError(
                f"{op}: {name0} is on {t0.device} but {name} is on {t.device}; move them to one device"
            )
    if t0.device.type not in ("cuda", "cpu"):
        raise ValueError(
            f"{op}: the Triton kernels run on CUDA devices (compiled) and on the CPU (interpreted), "
            f"got tensors on {t0.device}"
        )
    return t0.device


def _first_device(args: Sequence[Any]) -> torch.device:
    for a in args:
        if isinstance(a, Tensor):
            return a.device
    raise TypeError("a replab_fast op needs at least one tensor argument")


def register_op(qualname: str, impl: Callable[..., Any], fake: Callable[..., Any]) -> Any:
    """Register ``impl`` (a host launcher, type-annotated) as the triton_op ``qualname``.

    On CUDA the op runs ``impl`` (its kernels compiled, visible to ``torch.compile``); elsewhere it
    calls ``<ns>::_<name>_interpreted``, an opaque custom op with ``impl``'s schema whose fake is
    ``fake`` (it must validate like ``impl`` and allocate the same outputs). Returns the triton_op's
    ``CustomOpDef``, on which the caller registers autograd.
    """
    namespace, name = qualname.split("::")
    interp_name = f"_{name}_interpreted"

    def run_interpreted(*args: Any) -> Any:
        return impl(*args)

    functools.update_wrapper(run_interpreted, impl)  # impl's signature -> the same inferred schema
    interp_def = torch.library.custom_op(f"{namespace}::{interp_name}", run_interpreted, mutates_args=())
    interp_def.register_fake(fake)

    def dispatch(*args: Any) -> Any:
        if runs_interpreted(_first_device(args)):
            return getattr(getattr(torch.ops, namespace), interp_name).default(*args)
        return impl(*args)

    functools.update_wrapper(dispatch, impl)
    return torch.library.triton_op(qualname, dispatch, mutates_args=())


# --------------------------------------------------------------------------------------------
# Compiling the CUDA path without a GPU (tests): record the launches, compile them for sm_90
# --------------------------------------------------------------------------------------------


@dataclass
class Launch:
    kernel: Any  # the @triton.jit kernel
    grid: tuple  # the launch grid
    args: tuple  # positional arguments (tensors, ints, floats)
    kwargs: dict  # constexprs and launch options (num_warps, ...)


@dataclass
class _Recording:
    sm_count: int
    launches: list


_RECORDING: contextvars.ContextVar[Optional[_Recording]] = contextvars.ContextVar(
    "replab_record_launches", default=None
)


@contextlib.contextmanager
def record_launches(sm_count: int = 132) -> Iterator[list]:
    """Inside, launchers choose block sizes as for a CUDA device with ``sm_count`` SMs (132: an
    H100 SXM) and record their launches (a list of ``Launch``) instead of running them. With
    ``compile_for_cuda`` this checks, on a machine without a GPU, that the compiled path builds.
    Outputs allocated inside are left unwritten."""
    recording = _Recording(sm_count, [])
    token = _RECORDING.set(recording)
    try:
        yield recording.launches
    finally:
        _RECORDING.reset(token)


_SIGNATURE_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


def compile_for_cuda(launch_: Launch, capability: int = 90) -> Any:
    """Compile a recorded launch ahead of time for ``sm_<capability>`` (no GPU needed; Triton's
    bundled ptxas). Specializes like a real launch: 16-byte aligned tensors, integers equal to 1
    as constants, integers divisible by 16 marked so. Returns triton's CompiledKernel (``.asm``
    holds "ttir", "ttgir", "llir", "ptx", "cubin")."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel, kwargs = launch_.kernel, dict(launch_.kwargs)
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
    options.setdefault("enable_fp_fusion", True)  # triton's default through 3.9 (3.9 warns when left unset)
    signature: dict[str, str] = {}
    constexprs: dict[str, Any] = {}
    attrs: dict[tuple, list] = {}
    for i, (name, value) in enumerate(zip(kernel.arg_names, launch_.args)):
        if isinstance(value, Tensor):
            signature[name] = "*" + _SIGNATURE_TYPES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            if value == 1:
                signature[name], constexprs[name] = "constexpr", 1
            else:
                signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
                if value % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"compile_for_cuda: argument {name} of type {type(value).__name__}")
    for name in kernel.arg_names[len(launch_.args):]:
        signature[name], constexprs[name] = "constexpr", kwargs[name]
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)
