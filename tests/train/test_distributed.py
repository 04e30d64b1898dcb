"""Data-parallel training on a CPU: 2 processes with gloo, launched by torchrun
(replab_fast/train/distributed.py). Two processes follow the one-process loss curve, resume
exactly, write checkpoints one process loads, and a failing rank ends the run with its error.

Tolerance: every step's loss within 1e-5 relative of the one-process run: the same examples and
the same update, only the gradient sum is split in two and all-reduced (a different summation
order, a few float32 ulp per step).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist

import replab_fast

WORKER = Path(__file__).with_name("distributed_worker.py")
PACKAGE_ROOT = Path(replab_fast.__file__).resolve().parents[1]
RTOL = 1e-5

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available in this torch build")  # fmt: skip


def run(spec: dict, nproc: int, *, expect_ok: bool = True) -> subprocess.CompletedProcess:
    # The workers import the replab_fast under test (this checkout), whatever else is installed.
    path = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), json.dumps(spec)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               str(WORKER), json.dumps(spec)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    if expect_ok:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def train_losses(out: Path) -> list[float]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if r["split"] == "train"]


def assert_same_curve(a: list[float], b: list[float]) -> None:
    assert len(a) == len(b) and a
    for step, (x, y) in enumerate(zip(a, b), start=1):
        assert abs(x - y) <= RTOL * abs(y), f"step {step}: {x} vs {y}"


CASES = [
    ("lenet5-modern", {}, "ddp", 2),  # with gradient accumulation: DDP syncs on the last micro-batch only
    ("llama-tiny", {"max_seq_len": 16, "n_layers": 2}, "ddp", 1),
    ("llama-tiny", {"max_seq_len": 16, "n_layers": 2}, "fsdp", 2),
]


@pytest.mark.parametrize("model,overrides,strategy,grad_accum", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_two_processes_follow_the_one_process_curve(tmp_path, model, overrides, strategy, grad_accum):
    spec = dict(model=model, steps=6, batch_size=8, overrides=overrides, grad_accum=grad_accum)
    run({**spec, "out": str(tmp_path / "one")}, 1)
    run({**spec, "out": str(tmp_path / "two"), "strategy": strategy}, 2)
    assert_same_curve(train_losses(tmp_path / "two"), train_losses(tmp_path / "one"))
    assert not (tmp_path / "two" / "metrics.jsonl").read_text().count("\n") > 6 + 1  # rank 0 alone logs


def test_a_distributed_run_resumes_distributed_and_loads_in_one_process(tmp_path):
    spec = dict(model="llama-tiny", steps=8, batch_size=8, overrides={"max_seq_len": 16, "n_layers": 2},
                strategy="fsdp")  # fmt: skip
    run({**spec, "out": str(tmp_path / "whole")}, 2)
    run({**spec, "out": str(tmp_path / "parts"), "stop_at": 3}, 2)
    run({**spec, "out": str(tmp_path / "parts"), "resume": True}, 2)
    assert train_losses(tmp_path / "parts") == train_losses(tmp_path / "whole")  # bitwise
    from replab_fast.train.inference import evaluate_checkpoint

    result = evaluate_checkpoint(tmp_path / "parts", split="val")  # the full state dict, in this one process
    assert result["model"] == "llama-tiny" and result["step"] == 8


def test_a_failing_rank_ends_the_run_with_its_error(tmp_path):
    spec = dict(model="lenet5-modern", steps=20, batch_size=8, out=str(tmp_path / "run"), fail_rank=1, fail_step=3)
    start = time.monotonic()
    result = run(spec, 2, expect_ok=False)
    assert result.returncode != 0
    assert "rank 1 fails at step 3 on purpose" in result.stdout + result.stderr
    assert time.monotonic() - start < 200  # ended, not hung until the process group's timeout


def test_a_strategy_without_torchrun_is_a_clear_error(tmp_path, capsys):
    from replab_fast.cli import main

    assert main(["train", "lenet5-modern", "--strategy", "ddp", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "needs several processes: launch with `torchrun" in capsys.readouterr().err
