"""Tests of replab_fast.bench_report on small synthetic pytest-benchmark JSON files (no GPU, fast).

The table tests need nothing beyond the package; the plot test is skipped without matplotlib; the
README tests that depend on "committed" build a throw-away git repository (skipped without git).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from replab_fast import bench_report as br
from replab_fast.cli import main

GPU = "NVIDIA H100 80GB HBM3"
ENV = {"device": "cuda", "gpu": GPU, "torch": "2.11.0+cu130", "triton": "3.6.0", "cuda": "13.0", "cudnn": 91000,
       "python": "3.12.3", "cpu": "x", "cpu_count": 16, "torch_threads": 16}  # fmt: skip
CEIL = {"ceiling_copy_gbps": 3000.0, "ceiling_matmul_tflops": 750.0, "ceiling_matmul_dtype": "bfloat16"}


def _entry(section, case, provider, median_s, **info):
    extra = {"section": section, "case": case, "provider": provider, "mode": info.pop("mode", "forward"),
             "median_s": median_s, "p20_s": median_s * 0.99, "p80_s": median_s * 1.02, "timer": "cuda-events",
             **ENV, **CEIL, **info}  # fmt: skip
    return {
        "group": case,
        "name": f"test_x[{case}-{provider}]",
        "fullname": f"bench/test_x.py::test_x[{case}-{provider}]",
        "param": f"{case}-{provider}",
        "params": {"provider": provider},
        "extra_info": extra,
        "options": {},
        "stats": {"median": median_s, "min": median_s * 0.98, "max": median_s * 1.1, "rounds": 50},
    }


def _bench_json(gpu: bool = True, when: str = "2026-11-21T09:30:00+00:00") -> dict:
    env = dict(ENV) if gpu else {**ENV, "device": "cpu", "gpu": None, "cuda": None}
    entries = [
        _entry("device", "ceiling/copy", "torch", 2e-3 / 3.0, bytes=2 * 2**30, gbps=3000.0, frac_ceiling=1.0,
               bound="memory", expected_copy_gbps=3000.0 if gpu else None),
        _entry("device", "stability/copy-1GiB", "torch", 7.1e-4, stability_diff=0.004, median_first_s=7.1e-4,
               median_second_s=7.13e-4),
        _entry("ops", "rms_norm/bfloat16/forward/8192x4096", "eager", 400e-6, gbps=335.0, frac_ceiling=0.11,
               bound="memory", peak_mem_bytes=3 * 2**27,
               sweep={"name": "rms_norm bfloat16 forward", "x_name": "hidden", "x": 4096}),
        _entry("ops", "rms_norm/bfloat16/forward/8192x4096", "torch", 100e-6, gbps=1342.0, frac_ceiling=0.45,
               bound="memory", sweep={"name": "rms_norm bfloat16 forward", "x_name": "hidden", "x": 4096}),
        _entry("ops", "rms_norm/bfloat16/forward/8192x4096", "compile", 80e-6, gbps=1678.0, frac_ceiling=0.56,
               bound="memory", sweep={"name": "rms_norm bfloat16 forward", "x_name": "hidden", "x": 4096}),
        _entry("ops", "rms_norm/bfloat16/forward/8192x1024", "eager", 120e-6, gbps=280.0, frac_ceiling=0.09,
               bound="memory", sweep={"name": "rms_norm bfloat16 forward", "x_name": "hidden", "x": 1024}),
        _entry("models", "model/llama-small/train/B8xT1024", "eager", 0.25, mode="full", items=8192,
               unit="tokens", throughput=8192 / 0.25, flops=10**15, tflops=4.0, frac_ceiling=0.0053, bound="compute"),
        _entry("models", "model/llama-small/train/B8xT1024", "compile", 0.2, mode="full", items=8192,
               unit="tokens", throughput=8192 / 0.2),
    ]  # fmt: skip
    for e in entries:
        e["extra_info"].update({k: v for k, v in env.items()})
    return {
        "machine_info": {"node": "gpu", "replab": {**env, "ceilings": {"copy_gbps": 3000.0, "matmul_tflops": 750.0,
                                                                      "matmul_dtype": "bfloat16"}}},
        "commit_info": {},
        "benchmarks": entries,
        "datetime": when,
        "version": "5.1.0",
        "replab": {"quick": True, "elapsed_s": 300.0, "budget_s": 400, "skipped": [
            {"case": "bench/test_ops_reference.py::test_rms_norm[bfloat16-1024-forward-liger]",
             "reason": "provider 'liger': liger_kernel is not installed"}]},
    }  # fmt: skip


@pytest.fixture
def run_json(tmp_path: Path) -> Path:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(_bench_json()))
    return path


def test_ratio_is_median_over_the_fastest_other_provider(run_json):
    run = br.load(run_json)
    ratios = br.ratios_to_best_peer(run.rows)
    case = "rms_norm/bfloat16/forward/8192x4096"
    assert ratios[(case, "eager")] == pytest.approx(400 / 80)
    assert ratios[(case, "torch")] == pytest.approx(100 / 80)
    assert ratios[(case, "compile")] == pytest.approx(80 / 100)  # the fastest: against the runner-up
    assert ratios[("rms_norm/bfloat16/forward/8192x1024", "eager")] is None  # alone in its case


def test_markdown_names_gpu_date_versions_and_every_case_provider(run_json):
    run = br.load(run_json)
    assert run.gpu == GPU and run.date == "2026-11-21"
    md = br.render_markdown(run)
    assert md.startswith(f"# Benchmark report: {GPU}, 2026-11-21")
    assert "torch 2.11.0+cu130" in md and "triton 3.6.0" in md and "CUDA 13.0" in md
    assert "copy 3,000 GB/s" in md and "bfloat16 matmul 750 TFLOP/s" in md
    for row in run.rows:
        assert row.case in md
    line = next(ln for ln in md.splitlines() if "| compile |" in ln and "µs" in ln)
    assert "80 µs" in line and "**0.80×**" in line and "56.0% mem" in line and "1,678 GB/s" in line
    eager = next(ln for ln in md.splitlines() if ln.startswith("| rms_norm/bfloat16/forward/8192x4096 | eager"))
    assert "5.00×" in eager and "384 MiB" in eager  # peak memory
    assert "32,768 tokens/s" in md  # a model's throughput
    assert "## Ops" in md and "## Model baselines" in md and "## Device ceilings and stability" in md


def test_checks_pass_and_fail_against_the_acceptance(run_json, tmp_path):
    md = br.render_markdown(br.load(run_json))
    assert "+0.0%, PASS (within 15%)" in md
    assert "0.40% apart, PASS (< 3%)" in md
    data = _bench_json()
    data["machine_info"]["replab"]["ceilings"]["copy_gbps"] = 2000.0
    data["benchmarks"][1]["extra_info"]["stability_diff"] = 0.05
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    md = br.render_markdown(br.load(bad))
    assert "-33.3%, FAIL" in md and "5.00% apart, FAIL" in md


def test_cpu_run_says_gpu_verification_pending(tmp_path):
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps(_bench_json(gpu=False)))
    run = br.load(path)
    assert run.gpu is None
    md = br.render_markdown(run)
    assert "GPU verification pending" in md and md.startswith("# Benchmark report: CPU")


def test_skipped_cases_are_listed_with_their_reason(run_json):
    md = br.render_markdown(br.load(run_json))
    assert "## Skipped (1)" in md and "liger_kernel is not installed" in md


def test_plain_pytest_benchmark_json_renders_from_stats(tmp_path):
    data = {"machine_info": {}, "benchmarks": [{"group": None, "name": "test_a", "param": None, "extra_info": {},
                                                "stats": {"median": 0.002}}], "datetime": "2026-01-02T00:00:00"}  # fmt: skip
    path = tmp_path / "plain.json"
    path.write_text(json.dumps(data))
    md = br.render_markdown(br.load(path))
    assert "| test_a | test_a | 2 ms |" in md


def test_jsonl_partial_run_loads(tmp_path):
    path = tmp_path / "bench.partial.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in _bench_json()["benchmarks"]) + "\n")
    run = br.load(path)
    assert len(run.rows) == 8 and run.gpu == GPU
    assert "rms_norm/bfloat16/forward/8192x4096" in br.render_markdown(run)


def test_gzipped_json_loads(tmp_path):
    import gzip

    path = tmp_path / "bench.json.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps(_bench_json()))
    run = br.load(path)
    assert run.gpu == GPU and len(run.rows) == 8


def test_not_a_benchmark_file_is_a_clear_error(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a pytest-benchmark JSON"):
        br.load(path)


def test_cli_prints_and_writes_the_table(run_json, tmp_path, capsys):
    assert main(["bench-report", str(run_json)]) == 0
    assert f"# Benchmark report: {GPU}" in capsys.readouterr().out
    out = tmp_path / "sub" / "report.md"
    assert main(["bench-report", str(run_json), "-o", str(out)]) == 0
    assert out.read_text().startswith("# Benchmark report")


def test_cli_errors(tmp_path, capsys):
    assert main(["bench-report", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["bench-report"]) == 2
    assert "needs a PATH" in capsys.readouterr().err


def test_plots_are_drawn_per_sweep(run_json, tmp_path):
    pytest.importorskip("matplotlib")
    written = br.render_plots(br.load(run_json), tmp_path / "plots")
    assert [p.name for p in written] == ["sweeps.png"]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_sweep_draws_nothing_and_needs_no_matplotlib(tmp_path):
    data = _bench_json()
    for e in data["benchmarks"]:
        e["extra_info"].pop("sweep", None)
    path = tmp_path / "nosweep.json"
    path.write_text(json.dumps(data))
    assert br.render_plots(br.load(path), tmp_path) == []


README = "# x\n\n## Performance\n\n<!-- perf:begin -->\nold text\n<!-- perf:end -->\n\n## After\n"


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    if shutil.which("git") is None:
        pytest.skip("needs git: 'committed' means tracked by git")
    _git(tmp_path, "init", "-q")
    (tmp_path / "README.md").write_text(README)
    (tmp_path / "bench" / "results").mkdir(parents=True)
    return tmp_path


def _add_result(repo: Path, name: str, data: dict, *, stage: bool) -> Path:
    folder = repo / "bench" / "results" / name
    folder.mkdir(parents=True)
    (folder / "bench.json").write_text(json.dumps(data))
    (folder / "report.md").write_text("# report\n")
    if stage:
        _git(repo, "add", str(folder.relative_to(repo)))
    return folder


def test_readme_without_a_committed_gpu_result_quotes_nothing(repo):
    _add_result(repo, "h100_2026-11-21_0930", _bench_json(), stage=False)  # written, not committed
    _add_result(repo, "cpu_2026-11-22", _bench_json(gpu=False, when="2026-11-22T00:00:00+00:00"), stage=True)
    assert br.update_readme(repo / "README.md", repo / "bench" / "results")
    text = (repo / "README.md").read_text()
    section = text.split("<!-- perf:begin -->")[1].split("<!-- perf:end -->")[0]
    assert "No GPU benchmark result is committed yet" in section and "GPU verification pending" in section
    quoted = section.replace("H100", "").replace("H200", "")  # names, not numbers
    assert not any(ch.isdigit() for ch in quoted)
    assert text.endswith("<!-- perf:end -->\n\n## After\n") and "old text" not in text


def test_readme_uses_the_newest_committed_gpu_result(repo):
    _add_result(repo, "h100_2026-11-20_0900", _bench_json(when="2026-11-20T09:00:00+00:00"), stage=True)
    newer = _bench_json(when="2026-11-21T09:30:00+00:00")
    newer["machine_info"]["replab"]["gpu"] = "NVIDIA H200"
    for e in newer["benchmarks"]:
        e["extra_info"]["gpu"] = "NVIDIA H200"
    _add_result(repo, "h200_2026-11-21_0930", newer, stage=True)
    _add_result(repo, "h200_2026-11-23_0930", _bench_json(when="2026-11-23T09:30:00+00:00"), stage=False)
    assert main(["bench-report", "--readme", str(repo / "README.md"), "--results", str(repo / "bench" / "results")]) == 0
    section = (repo / "README.md").read_text().split("<!-- perf:begin -->")[1].split("<!-- perf:end -->")[0]
    assert "**NVIDIA H200**, 2026-11-21" in section
    assert "bench/results/h200_2026-11-21_0930/bench.json" in section
    assert "bench/results/h200_2026-11-21_0930/report.md" in section
    assert "| model/llama-small/train/B8xT1024 |" in section and "**40,960 tokens/s**" in section
    assert "2026-11-23" not in section  # not committed
    # A second run changes nothing.
    assert not br.update_readme(repo / "README.md", repo / "bench" / "results")


def test_readme_without_markers_is_an_error(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert main(["bench-report", "--readme", str(readme), "--results", str(tmp_path)]) == 2
    assert "perf:begin" in capsys.readouterr().err


def test_a_gpu_check_folder_is_one_run_its_ops_and_its_models(repo):
    """make gpu-check writes the op benchmarks to bench.json and the model baselines to
    bench-models.json: the README reads the folder as one run."""
    data = _bench_json()
    ops = dict(data, benchmarks=[e for e in data["benchmarks"] if e["extra_info"]["section"] != "models"])
    models = dict(data, benchmarks=[e for e in data["benchmarks"] if e["extra_info"]["section"] == "models"],
                  replab={"skipped": [{"case": "bench/test_models.py::x", "reason": "model reason"}]})  # fmt: skip
    folder = _add_result(repo, "h100_2026-11-21_0930", ops, stage=False)
    (folder / "bench-models.json").write_text(json.dumps(models))
    _git(repo, "add", str(folder.relative_to(repo)))
    run = br.newest_result(repo / "bench" / "results")
    assert {r.section for r in run.rows} == {"device", "ops", "models"}
    assert run.path.name == "bench.json" and len(run.skipped()) == 2
    assert br.update_readme(repo / "README.md", repo / "bench" / "results")
    section = (repo / "README.md").read_text().split("<!-- perf:begin -->")[1]
    assert "| model/llama-small/train/B8xT1024 |" in section and "rms_norm/bfloat16/forward/8192x4096" in section
