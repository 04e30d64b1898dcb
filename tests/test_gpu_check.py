"""`make gpu-check` (bench/gpu_check/): the plan, the runner's deadlines and signals, the summary,
the smoke and conv-path checks, and a reduced CPU rehearsal of the whole orchestration."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from bench.gpu_check import plan as plans
from bench.gpu_check import runner, summary
from bench.gpu_check.plan import Plan, Stage, Step

ROOT = Path(__file__).resolve().parents[1]


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def _plan(stages, build=None, deadline=60.0) -> Plan:
    return Plan("rehearsal", ROOT, "test", "abc", "now", deadline, stages, build, "no build here", reserve_s=1.0)


def _run(tmp_path, stages, build=None, deadline=60.0):
    snapshots = []
    orch = runner.Orchestrator(_plan(stages, build, deadline), tmp_path, echo=lambda line: None,
                               publish=lambda: snapshots.append(sorted(p.name for p in tmp_path.iterdir())))  # fmt: skip
    rc = orch.run()
    return orch, rc, snapshots


# -- the runner -----------------------------------------------------------------------------


def test_stages_run_in_order_and_each_is_published_when_it_ends(tmp_path):
    first = Step("first", _py(f"open({str(tmp_path / 'first.txt')!r}, 'w').write('1')"), "logs/first.log", 30)
    second = Step("second", _py(f"open({str(tmp_path / 'second.txt')!r}, 'w').write('2')"), "logs/second.log", 30)
    orch, rc, snapshots = _run(tmp_path, [Stage("a", "one", [first], 30), Stage("b", "two", [second], 30)])
    assert rc == 0
    assert [s["key"] for s in orch.stages] == ["a", "b"]
    assert "first.txt" in snapshots[0] and "second.txt" not in snapshots[0]  # published before stage b ran
    assert "second.txt" in snapshots[1]
    status = json.loads((tmp_path / "status.json").read_text())
    assert [s["state"] for s in status["steps"]] == ["passed", "passed"]
    assert status["build"]["reason"] == "no build here"


def test_a_step_over_its_time_gets_sigint_and_keeps_what_it_wrote(tmp_path):
    marker = tmp_path / "interrupted.txt"
    code = f"""
        import time
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            open({str(marker)!r}, "w").write("SIGINT")
            raise SystemExit(130)
    """
    slow = Step("slow", _py(code), "logs/slow.log", 1.5)
    after = Step("after", _py("pass"), "logs/after.log", 30)
    orch, rc, _ = _run(tmp_path, [Stage("c", "slow", [slow], 30), Stage("d", "after", [after], 30)])
    assert rc == 1
    by_name = {r.name: r for r in orch.results}
    assert by_name["slow"].state == "timed out" and by_name["slow"].seconds < 10
    assert marker.read_text() == "SIGINT"  # SIGINT, not SIGTERM: the step could finish its reports
    assert by_name["after"].state == "passed"  # the next stage still ran


def test_a_pytest_shard_stopped_at_its_time_writes_its_junit_xml_and_tracebacks(tmp_path):
    """Even when the orchestrator itself was started with SIGINT ignored (a background job of a
    shell): the shard gets SIGINT back, stops, and still reports what it did."""
    import signal

    (tmp_path / "test_shard.py").write_text(textwrap.dedent("""
        import time
        def test_passes(): pass
        def test_fails(): assert 1 == 2
        def test_hangs(): time.sleep(60)
    """))
    argv = [sys.executable, "-m", "pytest", str(tmp_path / "test_shard.py"), "-q", "--tb=short", "-p", "no:cacheprovider",
            "--junitxml={dir}/junit/shard.xml"]  # fmt: skip
    shard = Step("tests/shard", argv, "logs/tests-shard.log", 6)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        orch, rc, _ = _run(tmp_path, [Stage("c", "tests", [shard], 30)])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert orch.results[0].state == "timed out"
    totals = summary.junit_totals(tmp_path / "junit" / "shard.xml")
    assert totals["passed"] == 1 and totals["failures"] == 1
    log = (tmp_path / "logs" / "tests-shard.log").read_text()
    assert "assert 1 == 2" in log and "KeyboardInterrupt" in log
    assert "test_shard.py:5" in summary.render(tmp_path)  # the summary says where it stopped


def test_a_step_that_ignores_sigint_is_killed(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "KILL_GRACE_S", 1.0)
    code = """
        import signal, time
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        time.sleep(60)
    """
    orch, rc, _ = _run(tmp_path, [Stage("c", "stubborn", [Step("stubborn", _py(code), "logs/s.log", 1.0)], 30)])
    assert orch.results[0].state == "timed out" and orch.results[0].seconds < 10


def test_steps_of_a_stage_run_in_parallel(tmp_path):
    steps = [Step(f"s{i}", _py("import time; time.sleep(1.5)"), f"logs/s{i}.log", 30) for i in range(3)]
    orch, rc, _ = _run(tmp_path, [Stage("c", "parallel", steps, 30, parallel=3)])
    assert rc == 0
    assert orch.stages[0]["seconds"] < 4.0  # three 1.5 s steps at once, not one after another


def test_a_failed_build_skips_what_needs_it_and_not_what_only_waits(tmp_path):
    build = Step("build", _py("import time, sys; time.sleep(0.5); sys.exit(1)"), "build.log", 30)
    needs = Step("conv", _py("pass"), "logs/conv.log", 30, needs_build=True)
    other = Step("triton", _py("pass"), "logs/triton.log", 30)
    waits = Step("bench", _py("pass"), "logs/bench.log", 30, waits_for_build=True)
    orch, rc, _ = _run(tmp_path, [Stage("c", "tests", [needs, other], 30, parallel=2), Stage("d", "bench", [waits], 30)],
                       build=build)  # fmt: skip
    by_name = {r.name: r for r in orch.results}
    assert by_name["build"].state == "failed"
    assert by_name["conv"].state == "skipped" and "build failed" in by_name["conv"].reason
    assert by_name["triton"].state == "passed" and by_name["bench"].state == "passed"


def test_a_stage_without_the_time_it_needs_is_recorded_as_not_reached(tmp_path):
    quick = Step("quick", _py("pass"), "logs/q.log", 30)
    late = Step("late", _py("pass"), "logs/late.log", 30)
    orch, rc, _ = _run(tmp_path, [Stage("a", "quick", [quick], 30), Stage("b", "late", [late], 30, min_s=50)],
                       deadline=20)  # fmt: skip
    assert orch.stages[1]["state"] == "not reached" and orch.results[-1].state == "not reached"
    assert rc == 1


def test_budget_and_folder_placeholders_are_filled_in(tmp_path):
    step = Step("args", _py("import sys; open(sys.argv[1], 'w').write(sys.argv[2])") + ["{dir}/args.txt", "{budget_s}"],
                "logs/args.log", 40, budget_margin_s=15)  # fmt: skip
    _run(tmp_path, [Stage("a", "args", [step], 40)])
    assert 23 <= int((tmp_path / "args.txt").read_text()) <= 25  # 40 s less the margin, less the time gone


# -- the plan -------------------------------------------------------------------------------


def _marker(argv: list[str]) -> str:
    """The -m of a pytest command line (the one after `python -m pytest`)."""
    return argv[len(argv) - 1 - argv[::-1].index("-m") + 1]


def test_the_gpu_plan_orders_its_stages_and_runs_only_gpu_tests(tmp_path):
    p = plans.gpu_plan(ROOT, "NVIDIA H200", "abc", "now", sanitizer="/usr/local/cuda/bin/compute-sanitizer")
    assert [s.key for s in p.stages] == ["a", "b", "c", "d", "e", "f"]
    assert p.deadline_s <= 570
    tests = [s for s in p.stages[2].steps if s.name.startswith("tests/")]
    assert {t.name for t in tests} == {f"tests/{shard.name}" for shard in plans.SHARDS}
    for t in tests:
        assert _marker(t.argv) == "gpu"
        assert any(a.startswith("--junitxml={dir}/junit/") for a in t.argv) and "--tb=short" in t.argv
    assert next(t for t in tests if t.name == "tests/conv2d").needs_build
    sanitized = [s for s in p.stages[2].steps if s.name.startswith("sanitizer/")]
    from bench.gpu_check.conv_paths import PATHS

    assert len(sanitized) == len(PATHS) * len(plans.SANITIZER_TOOLS) and all(s.needs_build for s in sanitized)
    if p.build is not None:  # this checkout has no CUDA build
        assert p.build.env["TORCH_CUDA_ARCH_LIST"] == "9.0" and "pip" not in " ".join(p.build.argv)
    headline = p.stages[3].steps[0].argv
    assert "--headline" in headline and "bench/test_attention.py" in headline and "bench/test_models.py" not in headline


def _collected(paths, marker: str, k: str = "") -> set[str]:
    argv = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *paths, "-m", marker]
    out = subprocess.run(argv + (["-k", k] if k else []), cwd=ROOT, capture_output=True, text=True, timeout=300).stdout
    return {line for line in out.splitlines() if "::" in line}


@pytest.mark.slow
def test_the_shards_split_each_file_without_losing_or_repeating_a_gpu_test():
    by_file: dict[tuple, list] = {}
    for shard in plans.SHARDS:
        by_file.setdefault(shard.paths, []).append(shard)
    for paths, shards in by_file.items():
        if len(shards) < 2:
            continue
        parts = [_collected(paths, "gpu", s.k) for s in shards]
        assert all(parts) and sum(len(p) for p in parts) == len(set().union(*parts)), paths  # disjoint
        assert set().union(*parts) == _collected(paths, "gpu"), paths  # complete


def test_the_rehearsal_runs_the_cpu_counterparts_and_skips_the_sweep():
    p = plans.rehearsal_plan(ROOT, "abc", "now")
    assert p.deadline_s <= 15 * 60
    tests = [s for s in p.stages[2].steps if s.name.startswith("tests/")]
    assert all(_marker(t.argv) == "not gpu and not slow" for t in tests)
    assert not [s for s in p.stages[2].steps if s.name.startswith("sanitizer/")]
    assert p.stages[4].skip_reason


def test_the_build_is_skipped_only_when_the_built_extension_is_current(tmp_path):
    import importlib.metadata

    from replab_fast._sources_hash import sources_hash

    package, csrc = tmp_path / "replab_fast", tmp_path / "csrc"
    package.mkdir()
    csrc.mkdir()
    (csrc / "op.cpp").write_text("int f() { return 1; }\n")
    (package / "_sources_hash.py").write_text((ROOT / "replab_fast" / "_sources_hash.py").read_text())
    assert plans.build_is_current(tmp_path, "cpu") is None  # nothing built
    (package / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    record = {"torch": importlib.metadata.version("torch"), "with_cuda": False, "sources_hash": sources_hash(csrc)}
    (package / "_C_build.json").write_text(json.dumps(record))
    assert "current" in plans.build_is_current(tmp_path, "cpu")
    assert plans.build_is_current(tmp_path, "cuda") is None  # no CUDA kernels in it
    (csrc / "op.cpp").write_text("int f() { return 2; }\n")
    assert plans.build_is_current(tmp_path, "cpu") is None  # the sources changed


class _Metafunc:
    def __init__(self, fixturenames, options):
        self.fixturenames = fixturenames
        self.config = type("Config", (), {"getoption": staticmethod(lambda name, default=None: options.get(name, default))})
        self.params: dict[str, tuple] = {}

    def parametrize(self, name, values, ids=None):
        self.params[name] = tuple(values)


def test_the_headline_set_holds_the_cases_the_gpu_check_reports(monkeypatch):
    import torch

    import bench.context
    import bench.test_attention as attention
    import bench.test_conv2d as conv

    monkeypatch.setattr(bench.context, "resolve_device", lambda config: torch.device("cuda"))
    monkeypatch.setattr(conv, "resolve_device", lambda config: torch.device("cuda"))
    options = {"--headline": True, "--quick": False}
    train = _Metafunc(["seq_len", "head_dim", "causal", "mode", "provider"], options)
    attention.pytest_generate_tests(train)
    assert train.params["seq_len"] == (4096,) and train.params["head_dim"] == (64, 128)
    assert train.params["causal"] == (True,) and train.params["mode"] == ("forward", "backward")
    assert {"sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "replab_fast"} <= set(train.params["provider"])
    decode = _Metafunc(["batch", "cache_len", "provider"], options)
    attention.pytest_generate_tests(decode)
    assert decode.params["cache_len"] == (32768,)
    layers = _Metafunc(["conv_case", "dtype", "mode", "provider"], options)
    conv.pytest_generate_tests(layers)
    assert layers.params["conv_case"] == conv.HEADLINE_CASES
    assert layers.params["dtype"] == ("bfloat16", "float32") and "eager-tf32" in layers.params["provider"]


# -- what the stages run --------------------------------------------------------------------


def test_smoke_fails_an_op_that_is_off_and_passes_the_real_one():
    import torch

    from bench.gpu_check import smoke

    case = smoke.rms_norm_case(torch.device("cpu"), "small")
    rows, ok = smoke.parity_rows(case)
    assert ok and rows and all(r["passed"] for r in rows)
    wrong = smoke.rms_norm_case(torch.device("cpu"), "small")
    real = wrong.ours
    wrong.ours = lambda x, w: (real(x, w)[0] * (1 + 1e-3),)
    rows, ok = smoke.parity_rows(wrong)
    assert not ok and not rows[0]["passed"]


def test_each_conv_path_layer_lands_on_the_kernel_it_names():
    from bench.gpu_check.conv_paths import PATHS, forward_path

    assert {name: forward_path(p) for name, p in PATHS.items()} == {
        "direct-fp32": "direct", "gemm-fp32": "gemm", "gemm-bf16": "gemm", "gemm-bf16-dcol": "gemm", "fp64-gemm": "gemm"}
    cgrs = {name: p.in_channels // p.groups * p.kernel**2 for name, p in PATHS.items()}
    assert cgrs["gemm-bf16"] % 8 == 0 and cgrs["gemm-bf16-dcol"] % 8 != 0  # cp.async pipeline vs registers
    assert PATHS["gemm-bf16-dcol"].in_channels < 16 <= PATHS["gemm-bf16"].in_channels  # DcolOp vs DgradOp


@pytest.mark.parametrize("path", ["direct-fp32", "gemm-fp32", "gemm-bf16-dcol", "fp64-gemm"])
def test_conv_paths_run_on_the_cpu_within_their_tolerance(path):
    import torch

    from bench.gpu_check.conv_paths import PATHS, TOLERANCE, dtype_on, run_path

    cpu = torch.device("cpu")
    assert run_path(path, cpu) <= TOLERANCE[dtype_on(PATHS[path], cpu)]


# -- the summary ----------------------------------------------------------------------------


def _junit(path: Path, failures: int) -> None:
    cases = "".join(f'<testcase classname="tests.kernels.test_x" name="test_{i}"><failure message="assert {i} == 0">'
                    f"trace</failure></testcase>" for i in range(failures))  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="{failures + 2}" '
                    f'failures="{failures}" errors="0" skipped="1" time="1.5">{cases}<testcase classname="c" name="ok"/>'
                    f"</testsuite></testsuites>")  # fmt: skip


def test_the_summary_renders_whatever_finished(tmp_path):
    _junit(tmp_path / "junit" / "attention.xml", failures=2)
    status = {"mode": "gpu", "device": "NVIDIA H200", "stages": [{"key": "c", "title": "tests", "state": "problems"}],
              "steps": [{"name": "tests/attention", "stage": "c", "state": "failed", "rc": 1, "seconds": 3.0,
                         "log": "logs/tests-attention.log"},
                        {"name": "tests/rope", "stage": "c", "state": "timed out", "rc": -9, "seconds": 200.0,
                         "log": "logs/tests-rope.log"}],
              "build": {"name": "build", "state": "passed", "seconds": 95.0, "log": "build.log"}}  # fmt: skip
    (tmp_path / "status.json").write_text(json.dumps(status))
    (tmp_path / "bench.json").write_text("{not json")
    text = summary.render(tmp_path)
    assert "machine.json: not written" in text and "smoke.json: not written" in text
    assert "| attention | 1 | 2 | 0 | 1 |" in text and "`tests.kernels.test_x::test_1`: assert 1 == 0" in text
    assert "| rope | - |" in text and "timed out" in text
    assert "bench.json: unreadable" in text and "sweep.json: not written" in text
    merged = summary.merged_junit(tmp_path)
    assert b'name="attention"' in merged


def test_without_a_gpu_the_command_says_so_and_names_the_rehearsal(tmp_path):
    import os

    env = dict(os.environ, PATH=str(tmp_path))  # no nvidia-smi on this PATH
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--results", str(tmp_path / "r")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "REHEARSAL=1" in proc.stderr
    assert not (tmp_path / "r").exists()


# -- the rehearsal, reduced -----------------------------------------------------------------


@pytest.mark.slow
def test_a_reduced_rehearsal_runs_every_stage_and_fills_out(tmp_path):
    out, results = tmp_path / "out", tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--rehearsal", "--reduced", "--skip-build",
                           "--deadline", "400", "--out", str(out), "--results", str(results)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "gpu_check.log", "junit.xml", "raw.tar.gz", "summary.md"]
    text = (out / "summary.md").read_text()
    headings = ["## a. Machine", "## b. Smoke", "## c. Tests", "## d. Headline", "## e. Attention", "## f. Model"]
    assert [text.index(h) for h in headings] == sorted(text.index(h) for h in headings)
    assert "CPU rehearsal" in text and "| rms_norm | 3 | 0 | 0 | 0 |" in text
    with tarfile.open(out / "raw.tar.gz") as tar:
        names = tar.getnames()
    folder = names[0].split("/")[0]
    for name in ("machine.json", "smoke.json", "smoke-conv.json", "junit/rms_norm.xml", "junit/conv2d.xml",
                 "bench.json", "bench-models.json", "status.json", "summary.md"):  # fmt: skip
        assert f"{folder}/{name}" in names, name
    status = json.loads((results / folder / "status.json").read_text())
    starts = [s["started_at_s"] for s in status["stages"]]
    assert [s["key"] for s in status["stages"]] == ["a", "b", "c", "d", "e", "f"] and starts == sorted(starts)
    smoke = json.loads((results / folder / "smoke.json").read_text())
    assert [e["op"] for e in smoke["ops"]] == ["attention", "rms_norm", "rope", "lstm"] and all(e["passed"] for e in smoke["ops"])
