"""Op-level benchmark of the fused convolution: every provider side by side, through
bench/op_cases.py.

Cases: one reference conv layer with what follows it in the model, as an ``nn.Sequential`` of the
reference modules, at several batch sizes:
  LeNet-5 (modern: conv, ReLU, 2x2 max-pool; classic C3: Table I partial conv, scaled tanh)
    lenet_c1   1 -> 6, 5x5, 32x32 in, + ReLU + max-pool 2/2
    lenet_c3   6 -> 16, 5x5, 14x14 in, + ReLU + max-pool 2/2
    lenet_c5   16 -> 120, 5x5, 5x5 in, + ReLU
    lenet_c3_partial  Table I C3 (60 of 96 kernels), + scaled tanh (classic)
    at batch 1, 64 and 1024;
  AlexNet (227x227 input, two-GPU groups), each conv + ReLU, conv5 also + max-pool 3/2
    alex_conv1 3 -> 96, 11x11 /4;  alex_conv2 96 -> 256, 5x5 p2 g2;  alex_conv3 256 -> 384, 3x3 p1;
    alex_conv4 384 -> 384, 3x3 p1 g2;  alex_conv5 384 -> 256, 3x3 p1 g2 + max-pool 3/2
    at batch 1 and 128.
dtypes float32 and bfloat16 (CUDA; the CPU runs float32), modes forward and full (forward +
backward). --quick takes 7 layers; --headline (make gpu-check's stage d) LeNet's C1 and C3 at
batch 1024 and AlexNet's conv2 and conv5 at batch 128. Providers:
  eager        the reference chain in eager mode: cuDNN's conv (oneDNN's on a CPU), then the
               activation, then the pooling, each its own kernel
  eager-tf32   float32 on CUDA only: the same with cuDNN's default TF32 convolutions. TF32 rounds
               the operands to 10 mantissa bits; every other provider, ours included, runs float32
               cases in true fp32 (torch.backends.cudnn.allow_tf32 = False around each case, and
               recorded as ``cudnn_allow_tf32``), so they compare like for like
  compile      the same chain under torch.compile (on a CPU only with REPLAB_BENCH_CPU_COMPILE=1:
               cold compiles are slow on a small CPU)
  replab_fast  the chain with ``replab_fast.accelerate`` swapped in: ``ConvSequential``, one
               ``replab_fast.ops.conv2d`` per layer with the activation and pooling fused

Bytes (the fewest each mode must move, elements of size s): forward reads x, the weight and the
bias and writes the (pooled) output; full adds the backward's reads of dy, x and the weight and
its writes of dx, dweight and dbias. FLOPs: 2 N K OH OW (C/g) R S forward, three times that for
full. Both are recorded; the floor is the larger of bytes / copy rate and FLOPs / matmul rate.

Targets (read off a GPU run, never asserted): LeNet-5's fused layers at batch 1024 at least
2x faster than eager; AlexNet's layers in bfloat16 at least 0.7x eager (cuDNN, tensor cores); on
a CPU, within 3x of eager at the LeNet shapes. GPU verification pending: no GPU run is committed.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import pytest
import torch
from torch import nn

from bench.context import BenchContext, headline, resolve_device
from bench.op_cases import bench_op
from bench.providers import fast_drop_in, require
from replab_fast.models.lenet import C3_TABLE, PartialConv2d, ScaledTanh

PROVIDERS = ("eager", "eager-tf32", "compile", "replab_fast")
MODES = ("forward", "full")


@dataclass(frozen=True)
class Layer:
    name: str
    family: str  # "lenet" or "alexnet"
    in_shape: tuple[int, int, int]  # (C, H, W) of one input
    build: Callable[[], nn.Sequential]  # the reference modules, on the CPU in float32

    def conv(self, seq: nn.Sequential) -> nn.Module:
        return seq[0]


def _lenet(c_in, c_out, pool=True):
    def build():
        mods = [nn.Conv2d(c_in, c_out, 5), nn.ReLU()] + ([nn.MaxPool2d(2)] if pool else [])
        return nn.Sequential(*mods)

    return build


def _alex(c_in, c_out, k, stride=1, padding=0, groups=1, pool=False):
    def build():
        mods = [nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, groups=groups), nn.ReLU()]
        return nn.Sequential(*(mods + ([nn.MaxPool2d(3, 2)] if pool else [])))

    return build


LAYERS = {
    layer.name: layer
    for layer in [
        Layer("lenet_c1", "lenet", (1, 32, 32), _lenet(1, 6)),
        Layer("lenet_c3", "lenet", (6, 14, 14), _lenet(6, 16)),
        Layer("lenet_c5", "lenet", (16, 5, 5), _lenet(16, 120, pool=False)),
        Layer("lenet_c3_partial", "lenet", (6, 14, 14), lambda: nn.Sequential(PartialConv2d(C3_TABLE, 5), ScaledTanh())),
        Layer("alex_conv1", "alexnet", (3, 227, 227), _alex(3, 96, 11, stride=4)),
        Layer("alex_conv2", "alexnet", (96, 27, 27), _alex(96, 256, 5, padding=2, groups=2)),
        Layer("alex_conv3", "alexnet", (256, 13, 13), _alex(256, 384, 3, padding=1)),
        Layer("alex_conv4", "alexnet", (384, 13, 13), _alex(384, 384, 3, padding=1, groups=2)),
        Layer("alex_conv5", "alexnet", (384, 13, 13), _alex(384, 256, 3, padding=1, groups=2, pool=True)),
    ]
}  # fmt: skip
BATCHES = {"lenet": (1, 64, 1024), "alexnet": (1, 128)}
QUICK_BATCHES = {"lenet": (64, 1024), "alexnet": (128,)}
QUICK_LAYERS = ("lenet_c1", "lenet_c3", "lenet_c5", "alex_conv1", "alex_conv2", "alex_conv3", "alex_conv5")
HEADLINE_CASES = (("lenet_c1", 1024), ("lenet_c3", 1024), ("alex_conv2", 128), ("alex_conv5", 128))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "conv_case" not in metafunc.fixturenames:
        return
    quick = bool(metafunc.config.getoption("--quick", default=False))
    on_cuda = resolve_device(metafunc.config).type == "cuda"
    if on_cuda and headline(metafunc.config):
        cases = list(HEADLINE_CASES)
    else:
        cases = []
        for layer in LAYERS.values():
            if on_cuda and quick and layer.name not in QUICK_LAYERS:
                continue
            if not on_cuda and layer.family != "lenet":
                cases.append((layer.name, BATCHES[layer.family][-1]))  # listed once, skipped with the reason
                continue
            batches = (QUICK_BATCHES if (quick and on_cuda) else BATCHES)[layer.family]
            cases += [(layer.name, b) for b in batches]
    metafunc.parametrize("conv_case", cases, ids=[f"{n}-b{b}" for n, b in cases])
    metafunc.parametrize("dtype", ("bfloat16", "float32") if on_cuda else ("float32",))
    metafunc.parametrize("mode", MODES)
    metafunc.parametrize("provider", PROVIDERS)


def conv_numbers(seq: nn.Sequential, in_shape, batch: int, mode: str, elem: int) -> tuple[int, int]:
    """(fewest bytes, FLOPs) of the layer in ``mode``."""
    seq = seq.to("meta")
    y = seq(torch.empty(batch, *in_shape, device="meta"))
    conv = seq[0]
    weight = conv.dense_weight() if isinstance(conv, PartialConv2d) else conv.weight
    K, cg, R, S = weight.shape
    z_numel = seq[0](torch.empty(batch, *in_shape, device="meta")).numel()  # conv output (N, K, OH, OW)
    x_numel = batch * in_shape[0] * in_shape[1] * in_shape[2]
    w_numel = weight.numel()
    fwd_bytes = (x_numel + w_numel + K + y.numel()) * elem
    flops = 2 * z_numel * cg * R * S
    if mode == "forward":
        return fwd_bytes, flops
    bwd_bytes = (y.numel() + x_numel + w_numel + x_numel + w_numel + K) * elem
    return fwd_bytes + bwd_bytes, 3 * flops


def test_conv2d(benchmark, bench_ctx: BenchContext, conv_case, dtype: str, mode: str, provider: str) -> None:
    device = bench_ctx.device
    name, batch = conv_case
    layer = LAYERS[name]
    if not bench_ctx.is_cuda and layer.family != "lenet":
        pytest.skip("AlexNet-sized layers are GPU cases; on a CPU only the LeNet-5 layers run (the 3x target)")
    if provider == "compile" and not bench_ctx.is_cuda and os.environ.get("REPLAB_BENCH_CPU_COMPILE") != "1":
        pytest.skip("torch.compile on a CPU: cold compiles are slow here; REPLAB_BENCH_CPU_COMPILE=1 runs it")
    require(provider, device)
    if provider == "eager-tf32" and dtype != "float32":
        pytest.skip("eager-tf32 is the float32 cases' TF32 column; this case is " + dtype)
    torch_dtype = getattr(torch, dtype)
    tf32 = provider == "eager-tf32"

    torch.manual_seed(0)
    reference = layer.build().to(device=device, dtype=torch_dtype)
    if provider in ("eager", "eager-tf32"):
        module = reference
        fn = module
    elif provider == "compile":
        module = reference
        fn = torch.compile(module)
    elif provider == "replab_fast":
        module, reason = fast_drop_in(reference)
        if module is None:
            pytest.skip(reason)
        fn = module
    else:  # pragma: no cover - PROVIDERS lists them all
        raise AssertionError(provider)

    def make_inputs(seed: int):
        g = torch.Generator(device=device).manual_seed(1000 + seed)
        x = torch.randn(batch, *layer.in_shape, generator=g, device=device).to(torch_dtype)
        return (x.requires_grad_(True),)

    elem = torch.empty((), dtype=torch_dtype).element_size()
    bytes_moved, flops = conv_numbers(layer.build(), layer.in_shape, batch, mode, elem)
    bench_op(
        benchmark, bench_ctx, case=f"conv2d/{name}/{dtype}/{mode}/b{batch}", provider=provider, mode=mode, fn=fn,
        make_inputs=make_inputs, params=list(module.parameters()), bytes_moved=bytes_moved, flops=flops,
        shape=[batch, *layer.in_shape], dtype=dtype,
        sweep={"name": f"conv2d {name} {dtype} {mode}", "x_name": "batch", "x": batch},
        extra={"layer": name, "fused": [type(m).__name__ for m in module.children()], "cudnn_allow_tf32": tf32},
        context=lambda: cudnn_tf32(tf32),
    )  # fmt: skip


@contextlib.contextmanager
def cudnn_tf32(allow: bool) -> Iterator[None]:
    """cuDNN's convolutions with TF32 allowed or not, for the duration of a case."""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved
