"""The plan of `make gpu-check`: its stages, in order of value, each step a command.

    build (background, from the first second)   build.log
    a  machine   facts, copy bandwidth, bf16 matmul rate          machine.json
    b  smoke     each op once at a benchmark shape vs PyTorch     smoke.json
    c  tests     the GPU tests, sharded into parallel processes;  junit/<shard>.xml, logs/tests-<shard>.log
                 conv (smoke, tests, compute-sanitizer) once       smoke-conv.json, sanitizer/<tool>-<path>.log
                 the build is done
    d  headline  the headline op benchmarks                       bench.json (+ bench.partial.jsonl)
    e  sweep     the quick attention block-size sweep             sweep.json
    f  models    the model baselines                              bench-models.json

On a GPU machine (``gpu_plan``) the deadline is 570 s, inside the 10 minutes one command may run.
The rehearsal (``rehearsal_plan``, a machine without a GPU) runs the same stages with their CPU
counterparts: the same test files' CPU cases (Triton's interpreter, the C++ conv), the benchmarks
on the CPU (the GPU cases skip with their reason), the sweep recorded as skipped; its times are
scaled to a 14-minute deadline. ``reduced=True`` narrows every stage to a few cases (the test
suite's run of the rehearsal).

Nothing here runs anything: the plan is data, ``runner.Orchestrator`` carries it out.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

__all__ = ["Step", "Stage", "Plan", "Shard", "SHARDS", "SANITIZER_TOOLS", "gpu_plan", "rehearsal_plan"]

GPU_DEADLINE_S = 570.0
REHEARSAL_DEADLINE_S = 840.0


@dataclass
class Step:
    name: str
    argv: list[str]  # "{dir}" in an argument is the result folder; "{budget_s}" the seconds the step is given, less budget_margin_s
    log: str  # relative to the result folder
    timeout_s: float
    outputs: list[str] = field(default_factory=list)  # files it writes, relative to the result folder
    needs_build: bool = False  # waits for the build; skipped when the build failed
    waits_for_build: bool = False  # waits for the build, then runs whatever its outcome
    env: dict[str, str] = field(default_factory=dict)
    ok_codes: tuple[int, ...] = (0,)
    budget_margin_s: float = 0.0


@dataclass
class Stage:
    key: str  # "a" ... "f", the order of the summary
    title: str
    steps: list[Step]
    share_s: float  # at most this long (and never past the deadline less the plan's reserve)
    min_s: float = 10.0  # not started with less than this left
    parallel: int = 1
    skip_reason: str = ""  # recorded as skipped, with this reason (the rehearsal's CUDA-only stages)


@dataclass
class Plan:
    mode: str  # "gpu" or "rehearsal"
    repo: Path
    device_name: str
    commit: str
    started_utc: str
    deadline_s: float
    stages: list[Stage]
    build: Optional[Step]
    build_skip_reason: str = ""  # why there is no build step
    reserve_s: float = 35.0  # kept back at the end: a last step's SIGINT grace, the plots, the last copy into $OUT

    @property
    def build_stage(self) -> Stage:
        return Stage("build", "the extension, in the background", [], share_s=self.deadline_s)


@dataclass(frozen=True)
class Shard:
    name: str
    paths: tuple[str, ...]
    k: str = ""  # a -k that splits a file's tests between shards (its Triton compiles then run in parallel)
    needs_build: bool = False
    reduced_k: str = ""  # the -k of the reduced rehearsal ("" = left out of it)


_ATTENTION_MAIN = "test_attention_matches_reference"
_LSTM_MAIN = "test_layer_matches_reference or test_saturated_gates_stay_finite or test_long_sequence"
SHARDS = (
    Shard("attention", ("tests/kernels/test_attention.py",), k=_ATTENTION_MAIN),
    Shard("attention-rest", ("tests/kernels/test_attention.py",), k=f"not ({_ATTENTION_MAIN})"),
    Shard("rms_norm", ("tests/kernels/test_rms_norm.py",), reduced_k="test_rms_norm_matches_reference and rows3 and 127"),
    Shard("rope", ("tests/kernels/test_rope.py",)),
    Shard("lstm", ("tests/kernels/test_lstm_kernels.py",), k=_LSTM_MAIN),
    Shard("lstm-rest", ("tests/kernels/test_lstm_kernels.py",), k=f"not ({_LSTM_MAIN})"),
    Shard("swap", ("tests/nn/test_llama_swap.py", "tests/nn/test_lstm_swap.py")),
    Shard("conv2d", ("tests/kernels/test_conv2d.py", "tests/nn/test_conv_swap.py"), needs_build=True,
          reduced_k="test_parity_float32_cpu and case0"),
)  # fmt: skip
# The CUDA conv paths compute-sanitizer runs, one tiny layer each (bench/gpu_check/conv_paths.py).
SANITIZER_TOOLS = ("memcheck", "racecheck")
HEADLINE_BENCH = ("bench/test_device.py", "bench/test_attention.py", "bench/test_rms_norm.py", "bench/test_rope.py",
                  "bench/test_conv2d.py", "bench/test_lstm.py")  # fmt: skip


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _pytest(paths, marker: str, junit: str, k: str = "", per_test_timeout: int = 0) -> list[str]:
    argv = [sys.executable, "-m", "pytest", *paths, "-m", marker, "-q", "-rfE", "--tb=short",
            "-p", "no:cacheprovider", f"--junitxml={{dir}}/{junit}", "-o", "junit_family=xunit2"]  # fmt: skip
    if k:
        argv += ["-k", k]
    if per_test_timeout and _has("pytest_timeout"):
        argv += [f"--timeout={per_test_timeout}"]
    return argv


def _bench(paths, json_name: str, extra: list[str], k: str = "") -> list[str]:
    stem = json_name.removesuffix(".json")
    argv = [sys.executable, "-m", "pytest", *paths, "-q", "-rfE", "--tb=short", "-p", "no:cacheprovider",
            "--bench-budget", "{budget_s}", f"--benchmark-json={{dir}}/{json_name}",
            f"--bench-jsonl={{dir}}/{stem}.partial.jsonl",
            "--benchmark-columns=min,median,max,rounds", "--benchmark-sort=name", *extra]  # fmt: skip
    return argv + (["-k", k] if k else [])


def _py(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _shard_steps(device: str, reduced: bool, timeout_s: float) -> list[Step]:
    marker = "gpu" if device == "cuda" else "not gpu and not slow"
    steps = []
    for shard in SHARDS:
        if reduced and not shard.reduced_k:
            continue
        junit = f"junit/{shard.name}.xml"
        argv = _pytest(shard.paths, marker, junit, k=shard.reduced_k if reduced else shard.k, per_test_timeout=120)
        steps.append(Step(f"tests/{shard.name}", argv, f"logs/tests-{shard.name}.log", timeout_s, outputs=[junit],
                          needs_build=shard.needs_build))  # fmt: skip
    return steps


def _conv_smoke(smoke_args: list[str]) -> Step:
    return Step("smoke/conv2d", _py("bench.gpu_check.smoke", "--out", "{dir}/smoke-conv.json", "--ops", "conv2d",
                                    *smoke_args), "logs/smoke-conv.log", 120, outputs=["smoke-conv.json"],
                needs_build=True)  # fmt: skip


def _sanitizer_steps(device: str, reduced: bool, sanitizer: Optional[str]) -> list[Step]:
    """On CUDA, where compute-sanitizer exists: one run per tool and conv path, each its own process."""
    from bench.gpu_check.conv_paths import PATHS

    if device != "cuda" or sanitizer is None:
        return []
    steps = []
    for tool in SANITIZER_TOOLS:
        for path in list(PATHS)[: 1 if reduced else None]:
            argv = [sanitizer, f"--tool={tool}", "--error-exitcode=3", *_py("bench.gpu_check.conv_paths", path)]
            steps.append(Step(f"sanitizer/{tool}/{path}", argv, f"sanitizer/{tool}-{path}.log", 150, needs_build=True))
    return steps


def _stages(device: str, reduced: bool, sanitizer: Optional[str], cpu_parallel: int) -> list[Stage]:
    on_cuda = device == "cuda"
    size = "benchmark" if on_cuda else "small"
    smoke_args = ["--device", device, "--size", size]
    shard_timeout = 200 if on_cuda else 300
    shards = _shard_steps(device, reduced, shard_timeout)
    # the Triton shards first; once the build is done, the conv smoke, the conv shard, the sanitizer
    tests = ([s for s in shards if not s.needs_build] + [_conv_smoke(smoke_args)] + [s for s in shards if s.needs_build]
             + _sanitizer_steps(device, reduced, sanitizer))  # fmt: skip
    headline_k = "" if not reduced else "conv2d and lenet_c1 and forward and eager"
    models_k = "" if not reduced else "lenet5-classic-infer and eager"
    threads = [] if on_cuda else ["--bench-threads", "1"]
    bench_device = ["--bench-device", device]
    sweep_skip = "" if on_cuda else "the block-size sweep times compiled Triton kernels against SDPA's flash backend: CUDA only"
    return [
        Stage("a", "machine: facts, copy bandwidth, matmul rate",
              [Step("machine", _py("bench.gpu_check.facts", "--out", "{dir}/machine.json", "--device", device),
                    "logs/machine.log", 60, outputs=["machine.json"])], share_s=60, min_s=10),
        Stage("b", "smoke: each op once at a benchmark shape against PyTorch",
              [Step("smoke", _py("bench.gpu_check.smoke", "--out", "{dir}/smoke.json", "--ops", "attention,rms_norm,rope,lstm",
                                 *smoke_args), "logs/smoke.log", 150, outputs=["smoke.json"])],
              share_s=90 if on_cuda else 150, min_s=20),
        Stage("c", "tests: the GPU tests, sharded" if on_cuda else "tests: the CPU counterparts, sharded",
              tests, share_s=210 if on_cuda else 330, min_s=30, parallel=8 if on_cuda else cpu_parallel),
        Stage("d", "headline op benchmarks",
              [Step("bench/headline", _bench(HEADLINE_BENCH, "bench.json", ["--headline", *bench_device, *threads],
                                             k=headline_k), "logs/bench-headline.log", 150,
                    outputs=["bench.json"], waits_for_build=True, budget_margin_s=30)],
              share_s=150 if on_cuda else 120, min_s=30),
        Stage("e", "quick attention block-size sweep",
              [Step("sweep/attention", _py("bench.tune_attention", "--quick", "--json", "{dir}/sweep.json",
                                           "--budget", "{budget_s}"), "logs/sweep.log", 60,
                    outputs=["sweep.json"], budget_margin_s=10)],
              share_s=60, min_s=20, skip_reason=sweep_skip),
        Stage("f", "model baselines",
              [Step("bench/models", _bench(["bench/test_models.py"], "bench-models.json", ["--quick", *bench_device,
                                                                                        *threads], k=models_k),
                    "logs/bench-models.log", 150, outputs=["bench-models.json"], waits_for_build=True,
                    budget_margin_s=30)],
              share_s=150 if on_cuda else 120, min_s=30),
    ]  # fmt: skip


def build_is_current(repo: Path, device: str) -> Optional[str]:
    """Why the extension as built can be used (the build is then skipped), or None when it must be
    built: no library, another torch, no CUDA kernels on a CUDA machine, or csrc/ changed since.
    Read off _C_build.json without importing torch (setup.py writes it next to the library)."""
    package = repo / "replab_fast"
    if not list(package.glob("_C*.so")) and not list(package.glob("_C*.pyd")):
        return None
    try:
        info = json.loads((package / "_C_build.json").read_text())
        torch_version = importlib.metadata.version("torch")
    except (OSError, ValueError, importlib.metadata.PackageNotFoundError):
        return None
    spec = importlib.util.spec_from_file_location("_replab_sources_hash", package / "_sources_hash.py")
    hashing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hashing)
    if info.get("torch") != torch_version or (device == "cuda" and not info.get("with_cuda")):
        return None
    if info.get("sources_hash") != hashing.sources_hash(repo / "csrc"):
        return None
    return f"the extension as built is current (torch {torch_version}, csrc/ unchanged{', CUDA' if device == 'cuda' else ''})"


def build_step(device: str, timeout_s: float) -> Step:
    """``setup.py build_ext --inplace``: no pip, no index, no network; CUDA builds for sm_90 only."""
    env = {"MAX_JOBS": "8"}
    if device == "cuda":
        env["TORCH_CUDA_ARCH_LIST"] = "9.0"
    return Step("build", [sys.executable, "setup.py", "build_ext", "--inplace"], "build.log", timeout_s, env=env)


def gpu_plan(repo: Path, device_name: str, commit: str, started_utc: str, *, deadline_s: float = GPU_DEADLINE_S,
             sanitizer: Optional[str] = None, skip_build: bool = False, reduced: bool = False) -> Plan:
    build, why = _build_or_none(repo, "cuda", skip_build, 420)
    return Plan("gpu", repo, device_name, commit, started_utc, deadline_s,
                _stages("cuda", reduced, sanitizer, cpu_parallel=8), build, why)


def rehearsal_plan(repo: Path, commit: str, started_utc: str, *, deadline_s: float = REHEARSAL_DEADLINE_S,
                   skip_build: bool = False, reduced: bool = False, cpu_parallel: int = 2) -> Plan:
    build, why = _build_or_none(repo, "cpu", skip_build, 600)
    return Plan("rehearsal", repo, "CPU rehearsal", commit, started_utc, deadline_s,
                _stages("cpu", reduced, None, cpu_parallel), build, why)


def _build_or_none(repo: Path, device: str, skip_build: bool, timeout_s: float) -> tuple[Optional[Step], str]:
    if skip_build:
        return None, "--skip-build: the extension as it was built"
    current = build_is_current(repo, device)
    return (None, current) if current else (build_step(device, timeout_s), "")
