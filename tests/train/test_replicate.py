"""Replication runs (replab_fast/train/replicate.py, extras.py), end to end on short settings:
every file of results/<model>/ is written, final.json holds the figures, the extras run."""

import json

import pytest

from replab_fast.cli import main
from replab_fast.train import tradeoffs
from replab_fast.train import replicate as rp


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def short(name, **changes):
    return rp.Replication(**{**rp.REPLICATIONS[name].__dict__, **changes})


def test_a_classifier_replication_writes_every_file(tmp_path, monkeypatch):
    monkeypatch.setitem(rp.REPLICATIONS, "lenet5-modern", short("lenet5-modern", data="digits", steps=6))
    final = rp.replicate("lenet5-modern", results_root=tmp_path / "results", runs_root=tmp_path / "runs",
                         progress=False)  # fmt: skip
    out = tmp_path / "results" / "lenet5-modern"
    assert sorted(p.name for p in out.iterdir()) == ["command.txt", "curves.png", "final.json", "metrics.jsonl"]
    saved = json.loads((out / "final.json").read_text())
    assert saved["metric"] == "test_accuracy" and saved["split"] == "test" and saved["data"] == "digits"
    assert saved["value"] == pytest.approx(1 - saved["test"]["error_rate"])
    assert saved["meets_target"] == (saved["value"] >= 0.90) and final["value"] == saved["value"]
    assert saved["val"]["step"] == saved["best_step"] and "error_rate" in saved["val"]  # the best checkpoint's
    command = (out / "command.txt").read_text()
    assert command.startswith("replab-fast replicate lenet5-modern") and "# torch " in command
    assert not (out / "checkpoint").exists() and (tmp_path / "runs" / "lenet5-modern" / "best").exists()


def test_the_autoencoders_are_compared_with_pca(tmp_path, monkeypatch):
    monkeypatch.setitem(rp.REPLICATIONS, "autoencoder-2d", short("autoencoder-2d", data="digits", steps=6))
    monkeypatch.setitem(rp.REPLICATIONS, "autoencoder-linear",
                        short("autoencoder-linear", data="digits", steps=400))  # fmt: skip
    two_d = rp.replicate("autoencoder-2d", results_root=tmp_path, runs_root=tmp_path / "runs", progress=False)
    assert two_d["pca_components"] == 2 and two_d["pca_value"] > 0 and (tmp_path / "autoencoder-2d" / "codes.png").exists()
    assert two_d["meets_target"] == (two_d["value"] < two_d["pca_value"])
    linear = rp.replicate("autoencoder-linear", results_root=tmp_path, runs_root=tmp_path / "runs", progress=False)
    # the linear autoencoder approaches PCA's error from above (it cannot beat the best rank-2 map)
    assert linear["value"] >= 0.98 * linear["pca_value"]


def test_a_language_model_replication_samples_text_and_times_the_tradeoffs(tmp_path, monkeypatch):
    monkeypatch.setattr(tradeoffs, "TRADEOFF_STEPS", 3)
    monkeypatch.setitem(rp.REPLICATIONS, "llama-tiny", rp.Replication(
        "llama-tiny", "stdlib", 4, rp.Target("perplexity", ""), config={"max_seq_len": 24, "n_layers": 1},
        extras=("samples", "tradeoffs")))  # fmt: skip
    final = rp.replicate("llama-tiny", results_root=tmp_path, runs_root=tmp_path / "runs", progress=False)
    out = tmp_path / "llama-tiny"
    samples = (out / "samples.txt").read_text()
    assert samples.count("--- prompt") == 3 and "def " in samples
    table = (out / "tradeoffs.md").read_text()
    for row in ("| reference, float32, eager |", "bfloat16 autocast", "torch.compile", "| fast kernels, float32 |"):
        assert row in table
    assert "| run | CPU time per step | CPU loss | GPU time per step | GPU loss |" in table
    assert "ms (Triton interpreted) |" in table and table.count("| pending | pending |") == 4
    assert "pending: no GPU run yet" in table
    measured = json.loads((out / "tradeoffs-cpu.json").read_text())
    assert measured["device"] == "cpu" and len(measured["rows"]) == 4
    losses = [row["loss"] for row in measured["rows"].values()]
    assert losses[0] == pytest.approx(losses[2], rel=1e-4)  # compile computes the eager function
    assert losses[0] == pytest.approx(losses[3], rel=1e-3)  # so do the fast kernels
    assert final["tradeoffs"]["device"] == "cpu" and final["meets_target"] is None


def test_the_tradeoff_table_shows_each_device_measured(tmp_path):
    def measured(device, name, step_s, loss):
        rows = {label: {"step_s": step_s, "loss": loss} for label, _ in tradeoffs.ROWS}
        return {"model": "llama-cpu", "device": device, "device_name": name, "torch": "2.x", "steps": 12,
                "batch_size": 8, "rows": rows}  # fmt: skip

    (tmp_path / "tradeoffs-cpu.json").write_text(json.dumps(measured("cpu", "x86_64 CPU, 1 thread", 0.25, 5.5)))
    (tmp_path / "tradeoffs-cuda.json").write_text(json.dumps(measured("cuda", "NVIDIA H200", 0.002, 5.5)))
    table = tradeoffs.write_table(tmp_path).read_text()
    assert "| reference, float32, eager | 250.0 ms | 5.500000 | 2.0 ms | 5.500000 |" in table
    assert "| fast kernels, float32 | 250.0 ms (Triton interpreted) | 5.500000 | 2.0 ms | 5.500000 |" in table
    assert "GPU: NVIDIA H200, torch 2.x." in table and "pending" not in table


def test_tradeoffs_only_is_for_the_replications_with_a_table(capsys):
    assert main(["replicate", "lenet5-modern", "--tradeoffs-only"]) == 2
    assert "has no tradeoff table; the replications with one: llama-cpu" in capsys.readouterr().err


def test_the_command_lists_and_refuses_unknown_models(capsys):
    assert main(["replicate", "--list"]) == 0
    assert "replab-fast train lenet5-classic --data fashion-mnist" in capsys.readouterr().out
    assert main(["replicate", "no-such-model"]) == 2
    assert "no replication for no-such-model" in capsys.readouterr().err
