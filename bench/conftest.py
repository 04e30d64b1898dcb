"""pytest configuration of the benchmark suite: options, the session context, ordering, metadata.

Options (each also read from an environment variable, so `make` can pass them through):
  --quick              the quick sweep set (REPLAB_BENCH_QUICK=1)
  --headline           the headline set (REPLAB_BENCH_HEADLINE=1): the quick set, with attention at
                       D = 64 and 128 and the conv at four layers; make gpu-check's stage d
  --bench-budget S     skip, with a stated reason, every case that would start after S seconds
                       (REPLAB_BENCH_BUDGET); the JSON is still written at the end
  --bench-jsonl PATH   also append each case to PATH as it finishes (REPLAB_BENCH_JSONL), so a run
                       killed before pytest-benchmark writes its JSON still leaves its numbers
  --bench-device DEV   cuda or cpu (REPLAB_BENCH_DEVICE; default: cuda when available)
  --bench-threads N    torch.set_num_threads(N) for the session (REPLAB_BENCH_THREADS; default: torch's)
"""

from __future__ import annotations

import gc
import os
from typing import Any, Optional

import pytest
import torch

from bench.ceilings import expected_copy_gbps
from bench.context import BenchContext, resolve_device
from bench.environment import environment

try:  # fail early and clearly: every case here needs pytest-benchmark's `benchmark` fixture
    import pytest_benchmark  # noqa: F401
except ImportError:  # pragma: no cover
    raise pytest.UsageError("bench/ needs pytest-benchmark: pip install -e '.[test]'") from None

_CTX_KEY = pytest.StashKey[BenchContext]()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("replab-bench", "replab_fast benchmarks")
    group.addoption("--quick", action="store_true", default=_env_flag("REPLAB_BENCH_QUICK"),
                    help="the quick sweep set (fits make gpu-check's 10-minute budget)")
    group.addoption("--headline", action="store_true", default=_env_flag("REPLAB_BENCH_HEADLINE"),
                    help="the headline set (the quick set; attention at D = 64 and 128, four conv layers)")
    group.addoption("--bench-budget", type=float, default=float(os.environ.get("REPLAB_BENCH_BUDGET") or 0) or None,
                    help="skip cases that would start after this many seconds")
    group.addoption("--bench-jsonl", default=os.environ.get("REPLAB_BENCH_JSONL") or None,
                    help="append every recorded case to this JSON-lines file as it finishes")
    group.addoption("--bench-device", default=os.environ.get("REPLAB_BENCH_DEVICE") or None,
                    help="cuda or cpu (default: cuda when available)")
    group.addoption("--bench-threads", type=int, default=int(os.environ.get("REPLAB_BENCH_THREADS") or 0) or None,
                    help="torch.set_num_threads for the session (CPU runs on a busy machine: 1 avoids "
                         "OpenMP threads spinning against other processes)")  # fmt: skip


@pytest.fixture(scope="session")
def bench_ctx(request: pytest.FixtureRequest) -> BenchContext:
    """The session's device, options, environment and measured ceilings."""
    config = request.config
    device = resolve_device(config)
    threads = config.getoption("--bench-threads")
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    ctx = BenchContext(
        device=device,
        quick=bool(config.getoption("--quick") or config.getoption("--headline")),
        budget_s=config.getoption("--bench-budget"),
        env=environment(device),
        jsonl_path=config.getoption("--bench-jsonl"),
    )
    config.stash[_CTX_KEY] = ctx
    ctx.ceilings  # measured first, once: every case's fraction of the ceiling divides by these
    return ctx


@pytest.fixture(autouse=True)
def _bench_case_guard(request: pytest.FixtureRequest, bench_ctx: BenchContext):
    """Skip cases past the time budget; free memory and compiled code after each case."""
    if bench_ctx.over_budget():
        pytest.skip(f"bench time budget of {bench_ctx.budget_s:.0f} s used up ({bench_ctx.elapsed():.0f} s elapsed)")
    yield
    # Each case compiles its own: dropping dynamo's caches keeps recompile limits and the
    # memory of earlier cases' models out of later cases.
    torch._dynamo.reset()
    gc.collect()
    if bench_ctx.is_cuda:
        torch.cuda.synchronize(bench_ctx.device)
        torch.cuda.empty_cache()


def _provider_of(item: pytest.Item) -> str:
    callspec = getattr(item, "callspec", None)
    return str(callspec.params.get("provider", "")) if callspec else ""


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the cases so that a time budget cuts the least: the ceilings and the stability check,
    then the model baselines without torch.compile, the op cases without it, the op cases with it,
    and last the compiled models (their compiles take the longest)."""

    def key(indexed: tuple[int, pytest.Item]) -> tuple[int, int]:
        index, item = indexed
        name = item.path.name
        compiled = _provider_of(item).startswith("compile")
        if name == "test_device.py":
            rank = 0
        elif name == "test_models.py":
            rank = 4 if compiled else 1
        else:  # op cases: test_ops_*.py and the kernels' own files
            rank = 3 if compiled else 2
        return (rank, index)

    items[:] = [item for _, item in sorted(enumerate(items), key=key)]


_SKIPS: list[dict[str, str]] = []  # filled by pytest_runtest_logreport, written into the JSON


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and report.when in ("setup", "call"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPS.append({"case": report.nodeid, "reason": str(reason).removeprefix("Skipped: ")})


def _ctx(config: pytest.Config) -> Optional[BenchContext]:
    return config.stash.get(_CTX_KEY, None)


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    ctx = _ctx(config)
    if ctx is None:
        return
    replab: dict[str, Any] = dict(ctx.env)
    ceilings = ctx.ceilings_measured
    if ceilings is not None:
        replab["ceilings"] = ceilings.as_dict()
        expected = expected_copy_gbps(ctx.env.get("gpu"))
        if expected:
            replab["ceilings"]["expected_copy_gbps"] = expected
    machine_info["replab"] = replab


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config: pytest.Config, benchmarks: Any, output_json: dict[str, Any]) -> None:
    ctx = _ctx(config)
    output_json["replab"] = {
        "quick": ctx.quick if ctx else None,
        "budget_s": ctx.budget_s if ctx else None,
        "elapsed_s": round(ctx.elapsed(), 1) if ctx else None,
        "device": ctx.device.type if ctx else None,
        "skipped": list(_SKIPS),
        "timing": "per-repetition CUDA events (perf_counter on a CPU); see bench/__init__.py",
    }
