"""End-to-end baselines of every reference model: the numbers the fast kernels must beat.

For every model family in the registry:
  - train: one training step (forward, loss, backward, optimizer step), items/s;
  - infer: one inference forward (eval mode, inference_mode), items/s;
and for models with a KV cache (LLaMA):
  - prefill: the prompt's forward that fills the cache, tokens/s;
  - decode: K single-token steps with the cache (greedy, argmax fed back), tokens/s.

Providers: "eager" (the reference), "compile" (the reference under torch.compile, default
mode), "torch" (PyTorch's own fused module swapped in, same weights, where one exists: cuDNN's
LSTM for the LSTM family) and "replab_fast" (the reference with every applicable fast kernel
swapped in by ``replab_fast.accelerate``; skipped with the swap report's reason while none applies).

Sizes: realistic on a GPU (LeNet batch 1024, AlexNet 128 at 227x227, Zaremba's medium LSTM LM
64 x 128, llama-small 8 x 1024 ...), training in mixed precision (fp32 weights, bf16 autocast),
inference in bf16 autocast (LLaMA: bf16 weights; the LSTM: fp32 throughout); tiny and fp32 on a CPU so `make bench`
ends in minutes. On a CPU torch.compile runs only for the families marked ``cpu_compile``
(cold compiles of the others take minutes on a small CPU); REPLAB_BENCH_CPU_COMPILE=1 runs all.

Timing: steady state, repetitions back to back, each between two CUDA events (see
bench/__init__.py); the host's share of a step is part of what is measured.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import pytest
import torch
from torch import Tensor, nn

from bench.context import BenchContext, resolve_device
from bench.counting import count_flops, peak_memory
from bench.providers import fast_drop_in, require
from bench.records import record
from replab_fast.models.registry import create_model, get_spec, list_models
from replab_fast.timing import first_call, measure

PROVIDERS = ("eager", "compile", "torch", "replab_fast")
FAMILY_PRIORITY = ["llama", "lstm", "alexnet", "lenet5", "conv-autoencoder", "autoencoder"]


@dataclass(frozen=True)
class FamilyBench:
    """How one model family is benchmarked."""

    model_gpu: str  # registry name benchmarked on a GPU
    model_cpu: str  # registry name benchmarked on a CPU (small)
    batch_gpu: int
    batch_cpu: int
    unit: str  # "images", "samples" or "tokens"
    seq_gpu: Optional[int] = None  # tokens per sequence (token models)
    seq_cpu: Optional[int] = None
    optimizer: str = "sgd"  # "sgd" (momentum 0.9, the CNN papers) or "adamw" (LLaMA)
    amp_gpu: bool = True  # GPU: bf16 autocast (mixed precision); False: fp32
    infer_weights_bf16: bool = False  # GPU inference with bf16 weights instead of bf16 autocast
    cpu_compile: bool = False  # run the compile provider on a CPU too (it compiles quickly)
    compile_quick: bool = True  # run the compile provider in the quick set (False: it compiles for minutes)
    # KV-cache cases (models with setup_kv_cache): decode batch sizes, prompt length, new tokens.
    decode_batches_gpu: tuple[int, ...] = ()
    decode_batches_cpu: tuple[int, ...] = ()
    decode_prompt_gpu: int = 512
    decode_prompt_cpu: int = 32
    decode_steps_gpu: int = 64
    decode_steps_cpu: int = 16
    extra_gpu_batches: tuple[int, ...] = field(default=())  # full set only: more training batch sizes


FAMILIES: dict[str, FamilyBench] = {
    "lenet5": FamilyBench("lenet5-classic", "lenet5-classic", 1024, 64, "images", cpu_compile=True),
    "autoencoder": FamilyBench("autoencoder-deep", "autoencoder-deep", 1024, 64, "images"),
    "conv-autoencoder": FamilyBench("autoencoder-conv", "autoencoder-conv", 512, 32, "images"),
    "alexnet": FamilyBench("alexnet", "alexnet", 128, 2, "images"),
    # Zaremba et al.'s medium LM (2 x 650, 10k vocab) on a GPU; the reference steps through time in
    # Python, so its compile unrolls 2 x 128 cells: full set only (minutes of compile time).
    # fp32 on the GPU too: cuDNN's LSTM takes bf16 only from cuDNN 9.13 on, and the baseline must run.
    "lstm": FamilyBench("lstm-lm-medium", "lstm-lm-small", 64, 8, "tokens", seq_gpu=128, seq_cpu=32,
                        compile_quick=False, amp_gpu=False),
    "llama": FamilyBench(
        "llama-small", "llama-tiny", 8, 4, "tokens", seq_gpu=1024, seq_cpu=64, optimizer="adamw",
        infer_weights_bf16=True, decode_batches_gpu=(1, 8), decode_batches_cpu=(1, 4),
        extra_gpu_batches=(4, 16),
    ),
}  # fmt: skip


def _demo_model(family: str) -> str:
    names = list_models(family)
    return next((n for n in names if get_spec(n).demo), names[0])


def _family_bench(family: str) -> FamilyBench:
    """The family's entry, or a generic one (its demo preset) for a family added since."""
    if family in FAMILIES:
        return FAMILIES[family]
    demo = _demo_model(family)
    return FamilyBench(demo, demo, 64, 8, "samples")


@dataclass(frozen=True)
class ModelCase:
    model: str  # registry name
    family: str
    phase: str  # "train" | "infer" | "prefill" | "decode"
    batch: int
    seq: Optional[int]  # tokens per sequence (token models), prompt length for decode
    steps: int = 1  # decode: new tokens per repetition

    @property
    def id(self) -> str:
        shape = f"B{self.batch}" + (f"xT{self.seq}" if self.seq else "") + (f"+{self.steps}" if self.phase == "decode" else "")
        return f"{self.model}/{self.phase}/{shape}"


def model_cases(device: torch.device, quick: bool) -> list[ModelCase]:
    gpu = device.type == "cuda"
    families: list[str] = []
    for name in list_models():
        fam = get_spec(name).family
        if fam not in families:
            families.append(fam)
    # The families the kernels target first, so a time budget cuts the others' compiled cases.
    families.sort(key=lambda f: FAMILY_PRIORITY.index(f) if f in FAMILY_PRIORITY else len(FAMILY_PRIORITY))
    cases: list[ModelCase] = []
    for fam in families:
        fb = _family_bench(fam)
        model = fb.model_gpu if gpu else fb.model_cpu
        batch = fb.batch_gpu if gpu else fb.batch_cpu
        seq = fb.seq_gpu if gpu else fb.seq_cpu
        cases.append(ModelCase(model, fam, "train", batch, seq))
        cases.append(ModelCase(model, fam, "infer", batch, seq))
        if gpu and not quick:
            cases += [ModelCase(model, fam, "train", b, seq) for b in fb.extra_gpu_batches]
        if fb.decode_batches_gpu or fb.decode_batches_cpu:
            cases.append(ModelCase(model, fam, "prefill", batch, seq))
            prompt = fb.decode_prompt_gpu if gpu else fb.decode_prompt_cpu
            steps = fb.decode_steps_gpu if gpu else fb.decode_steps_cpu
            for b in fb.decode_batches_gpu if gpu else fb.decode_batches_cpu:
                cases.append(ModelCase(model, fam, "decode", b, prompt, steps))
    return cases


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "model_case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    device = resolve_device(config)
    quick = bool(config.getoption("--quick", default=False))
    cases = model_cases(device, quick)
    pairs = [(c, p) for c in cases for p in PROVIDERS if p != "torch" or c.family in TORCH_SWAPS]
    metafunc.parametrize(
        "model_case,provider", [(c.id, p) for c, p in pairs], ids=[f"{c.id.replace('/', '-')}-{p}" for c, p in pairs]
    )
    _CASES.update({c.id: c for c in cases})


_CASES: dict[str, ModelCase] = {}
_FLOPS: dict[str, Optional[int]] = {}  # case id -> FLOPs per repetition (counted once, on eager)

# --------------------------------------------------------------------------------------------
# Building a case
# --------------------------------------------------------------------------------------------


def _cudnn_lstm(model: nn.Module) -> nn.Module:
    """The LSTM language model with its from-scratch LSTM replaced by torch.nn.LSTM (cuDNN on a
    GPU), same weights: the reference LSTM keeps torch.nn.LSTM's parameter names and gate order."""
    ref = model.lstm
    fused = nn.LSTM(ref.input_size, ref.hidden_size, ref.num_layers, batch_first=ref.batch_first,
                    dropout=ref.dropout, device=next(ref.parameters()).device, dtype=next(ref.parameters()).dtype)  # fmt: skip
    fused.load_state_dict(ref.state_dict())
    model.lstm = fused
    return model


# "torch" provider at model level: the reference with PyTorch's own fused module swapped in, for
# the families where one exists (cuDNN LSTM). Each takes a copy of the model and returns it changed.
TORCH_SWAPS: dict[str, Callable[[nn.Module], nn.Module]] = {"lstm": _cudnn_lstm}


def _batch(spec, model: nn.Module, case: ModelCase, gen: torch.Generator) -> tuple[tuple[Tensor, ...], Tensor]:
    """A random batch of the case's size: the spec's own batch, with token sequences resized."""
    inputs, target = spec.make_batch(model, case.batch, generator=gen)
    tokens = inputs[0] if inputs else None
    if case.seq and isinstance(tokens, Tensor) and tokens.dim() == 2 and not tokens.dtype.is_floating_point:
        if tokens.shape[1] != case.seq:
            vocab = model.config.vocab_size
            new = torch.randint(0, vocab, (case.batch, case.seq), generator=gen).to(tokens.device)  # (B, T)
            if target is tokens or (target.shape == tokens.shape and torch.equal(target, tokens)):
                target = new  # language models: the target is the tokens, shifted in the loss
            else:
                raise NotImplementedError(
                    f"{case.model}: cannot resize a batch whose target is not its tokens; add a sizing rule"
                )
            inputs = (new, *inputs[1:])
    return inputs, target


def _items(case: ModelCase, inputs: tuple[Tensor, ...]) -> float:
    if case.phase == "decode":
        return float(case.batch * case.steps)
    x = inputs[0]
    if not x.dtype.is_floating_point and x.dim() == 2:  # token ids (B, T)
        return float(x.numel())
    return float(x.shape[0])


def _amp(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _optimizer(name: str, params) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9)


def _graph_breaks() -> Optional[int]:
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover
        return None
    return int(sum(counters["graph_break"].values()))


@dataclass
class Built:
    step: Callable[[], Any]  # one repetition
    eager_step: Callable[[], Any]  # the same repetition on the eager reference (FLOP counting)
    inputs: tuple[Tensor, ...]
    precision: str
    notes: dict[str, Any]


def _build(case: ModelCase, provider: str, ctx: BenchContext) -> Built:
    device = ctx.device
    fb = _family_bench(case.family)
    spec = get_spec(case.model)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    gpu = device.type == "cuda"
    notes: dict[str, Any] = {"model": case.model, "family": case.family, "phase": case.phase}

    bf16_weights = gpu and case.phase != "train" and fb.infer_weights_bf16
    overrides: dict[str, Any] = {}
    if case.seq and case.phase in ("train", "infer") and "seq_len" in {f.name for f in dataclasses.fields(spec.config_cls)}:
        overrides["seq_len"] = case.seq  # models whose make_batch draws config.seq_len tokens (LSTM LMs)
    model = create_model(case.model, device=device, dtype=torch.bfloat16 if bf16_weights else None, **overrides)
    precision = "bf16" if bf16_weights else ("amp-bf16" if gpu and fb.amp_gpu else "fp32")
    reference = model
    if provider == "torch":
        model = TORCH_SWAPS[case.family](copy.deepcopy(model))
        notes["torch_swap"] = TORCH_SWAPS[case.family].__name__
    if provider == "replab_fast":
        fast, reason = fast_drop_in(model)
        if fast is None:
            pytest.skip(reason)
        model = fast
        notes["kernels"] = fast.replab_report.kernels()
    amp = (lambda: _amp(device)) if precision == "amp-bf16" else contextlib.nullcontext

    if case.phase == "train":
        model.train()
        reference.train()
        inputs, target = _batch(spec, model, case, gen)
        opt = _optimizer(fb.optimizer, model.parameters())
        notes["optimizer"] = fb.optimizer

        def loss_of(m: nn.Module) -> Callable[[], Tensor]:
            def f(inputs_: tuple[Tensor, ...], target_: Tensor) -> Tensor:
                return spec.loss(m, inputs_, target_)

            return f

        loss_fn = loss_of(model)
        if provider == "compile":
            # Compile the model's forward *and* the loss together: some families' loss methods call
            # the module themselves, which a compiled wrapper of the module alone would bypass.
            loss_fn = torch.compile(loss_fn)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with amp():
                loss = loss_fn(inputs, target)
            loss.backward()
            opt.step()

        ref_loss = loss_of(reference)

        def eager_step() -> None:
            with amp():
                loss = ref_loss(inputs, target)
            loss.backward()
            reference.zero_grad(set_to_none=True)

        return Built(step, eager_step, inputs, precision, notes)

    model.eval()
    reference.eval()
    fwd: Callable[..., Any] = torch.compile(model) if provider == "compile" else model

    if case.phase == "infer":
        inputs, _ = _batch(spec, model, case, gen)

        def infer() -> None:
            with torch.inference_mode(), amp():
                fwd(*inputs)

        def eager_infer() -> None:
            with torch.inference_mode(), amp():
                reference(*inputs)

        return Built(infer, eager_infer, inputs, precision, notes)

    # KV-cache phases (LLaMA): prefill the prompt, or decode `steps` tokens after a prompt.
    if not hasattr(model, "setup_kv_cache"):
        raise NotImplementedError(f"{case.model} has no KV cache; phase {case.phase} does not apply")
    if provider == "compile" and ctx.quick:
        pytest.skip("quick set: torch.compile of the KV-cache phases runs in the full set only")
    vocab = model.config.vocab_size
    prompt_len = case.seq
    total = prompt_len + (case.steps if case.phase == "decode" else 0)
    for m in {id(model): model, id(reference): reference}.values():  # the reference too: FLOP counting
        m.setup_kv_cache(max_batch_size=case.batch, max_seq_len=total)
    prompt = torch.randint(0, vocab, (case.batch, prompt_len), generator=gen).to(device)  # (B, T)
    notes.update(prompt_len=prompt_len, kv_cache=list(model.kv_cache_shape or ()))

    if case.phase == "prefill":

        def prefill() -> None:
            with torch.inference_mode():
                fwd(prompt, start_pos=0)

        def eager_prefill() -> None:
            with torch.inference_mode():
                reference(prompt, start_pos=0)

        return Built(prefill, eager_prefill, (prompt,), precision, notes)

    with torch.inference_mode():
        first_token = model(prompt, start_pos=0)[:, -1].argmax(-1, keepdim=True)  # (B, 1): fills the cache

    def decode_with(m: Callable[..., Any]) -> Callable[[], None]:
        def decode() -> None:
            with torch.inference_mode():
                tok = first_token
                for i in range(case.steps):
                    logits = m(tok, start_pos=prompt_len + i)  # (B, 1, vocab)
                    tok = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)

        return decode

    notes["new_tokens"] = case.steps
    return Built(decode_with(fwd), decode_with(reference), (prompt,), precision, notes)


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


def test_model(benchmark, bench_ctx: BenchContext, model_case: str, provider: str) -> None:
    case = _CASES[model_case]
    device = bench_ctx.device
    require(provider, device)
    fb = _family_bench(case.family)
    if provider == "compile" and device.type != "cuda" and not fb.cpu_compile and not os.environ.get(
        "REPLAB_BENCH_CPU_COMPILE"
    ):
        pytest.skip(
            f"torch.compile of {case.model} on a CPU: its cold compile takes minutes on a small CPU "
            "(set REPLAB_BENCH_CPU_COMPILE=1 to run it)"
        )
    if provider == "compile" and device.type == "cuda" and bench_ctx.quick and not fb.compile_quick:
        pytest.skip(f"quick set: torch.compile of {case.model} takes minutes to compile; it runs in the full set")
    if provider == "replab_fast" and device.type != "cuda":
        pytest.skip(
            "replab_fast on a CPU: its Triton kernels run in Triton's interpreter there, which says nothing "
            "about speed (C++ CPU paths are benchmarked per op)"
        )
    built = _build(case, provider, bench_ctx)
    if case.family not in FAMILIES:  # generic sizes until someone adds a FamilyBench entry
        built.notes["generic_sizes"] = True
    if provider == "compile":
        try:
            from torch._dynamo.utils import counters

            counters.clear()
        except ImportError:  # pragma: no cover
            pass
    first_s = first_call(built.step, device)
    if provider == "compile":
        built.notes["graph_breaks"] = _graph_breaks()
    peak = peak_memory(built.step, device)
    policy = bench_ctx.policy("model", benchmark)
    timing = measure([built.step], device, policy, cache="none", first_call_s=first_s)

    if case.id not in _FLOPS:
        flops = count_flops(built.eager_step)
        _FLOPS[case.id] = flops or None  # 0 means the counter saw no matmul/conv (e.g. a cuDNN RNN)
    items = _items(case, built.inputs)
    mode = "full" if case.phase == "train" else "forward"
    shape = [case.batch] + ([case.seq] if case.seq else [])
    sweep = None
    if case.phase == "decode":
        sweep = {"name": f"{case.model} decode tokens/s", "x_name": "batch", "x": case.batch}
    elif case.phase == "train" and (fb.extra_gpu_batches and device.type == "cuda"):
        sweep = {"name": f"{case.model} train tokens/s" if fb.unit == "tokens" else f"{case.model} train {fb.unit}/s",
                 "x_name": "batch", "x": case.batch}  # fmt: skip
    record(
        benchmark, bench_ctx, timing, section="models", case=f"model/{case.id}", provider=provider, mode=mode,
        shape=shape, dtype=built.precision, flops=_FLOPS[case.id], items=items, unit=fb.unit if case.phase in
        ("train", "infer") else "tokens", peak=peak, sweep=sweep, extra=built.notes,
    )  # fmt: skip
