"""The README says what is true today: its tables come from the registries, its code runs, its
benchmark section quotes only committed results."""

import re
import subprocess
from pathlib import Path

import pytest
import torch

import replab_fast
from replab_fast import bench_report
from replab_fast.models.registry import count_parameters

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def test_readme_lists_every_model_with_its_parameter_count():
    text = README.read_text()
    for name in replab_fast.list_models():
        count = count_parameters(replab_fast.create_model(name, device="meta"))
        assert f"| `{name}` | {replab_fast.get_spec(name).paper} | {count:,} |" in text, name


def test_readme_names_the_test_command_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "make test" in README.read_text()


def test_the_kernel_table_is_the_registered_kernels():
    rows = re.findall(r"^\| `([a-z0-9_]+)` \|", section("Fast kernels"), flags=re.M)
    assert sorted(rows) == replab_fast.registered_kernels()


def test_no_kernel_is_claimed_that_is_not_registered():
    intro = README.read_text().split("\n## ")[0]
    kernels = replab_fast.registered_kernels()
    if not any("lstm" in k for k in kernels):
        assert "LSTM cell" not in intro and "LSTM kernel" not in intro
        assert "lstm" not in section("Fast kernels").lower()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", section("Use"), flags=re.S)


def test_the_use_example_runs_and_generate_returns_ids_it_decodes(capsys):
    blocks = python_blocks()
    assert blocks, "the Use section has a python example"
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md (Use)", "exec"), namespace)
    ids = namespace["ids"]
    assert ids.dtype == torch.long and ids.shape == (1, 4 + 8)  # ids, not text
    assert bytes(ids[0, :4].tolist()) == b"def "
    assert isinstance(namespace["model"], replab_fast.models.llama.Llama)  # restored
    printed = capsys.readouterr().out
    assert "swapped" in printed or "kept" in printed  # the report


def test_the_performance_section_is_the_newest_committed_result():
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: which results are committed is unknown")
    text = README.read_text()
    current = text.split(bench_report.README_BEGIN)[1].split(bench_report.README_END)[0]
    run = bench_report.newest_result(ROOT / "bench" / "results", committed_only=True)
    assert current == "\n" + bench_report.render_readme_section(run, repo_root=ROOT)
    if run is None:
        assert "No GPU benchmark result is committed yet" in text
        assert "No run is committed under `bench/results/` yet" in section("Benchmarks")


def test_every_path_in_the_layout_exists():
    block = section("Layout").split("```")[1]
    parents: list[str] = []
    missing = []
    for line in block.splitlines():
        stripped = line.strip()
        if not stripped or "<" in stripped.split()[0]:
            continue
        indent = (len(line) - len(line.lstrip())) // 2
        name = stripped.split()[0].rstrip(",")
        if not re.fullmatch(r"[\w.\-]+/?", name) or not ("/" in name or "." in name):
            continue
        parents = parents[:indent]
        path = "".join(parents) + name
        if not (ROOT / path).exists():
            missing.append(path)
        if name.endswith("/"):
            parents.append(name)
    assert not missing, f"the README's Layout names paths that do not exist: {missing}"


def test_every_picture_the_readme_shows_is_committed():
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README.read_text())
    assert pictures, "the README shows no picture"
    for path in pictures:
        assert (ROOT / path).is_file() and (ROOT / path).stat().st_size > 1000, path


def test_the_results_table_is_the_committed_results():
    from replab_fast.train.replicate import RESULTS_BEGIN, RESULTS_END, results_table

    text = README.read_text()
    current = text.split(RESULTS_BEGIN)[1].split(RESULTS_END)[0]
    assert current == "\n" + results_table(ROOT / "results")
