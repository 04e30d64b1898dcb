"""Replication runs (replab_fast/train/replicate.py, extras.py), end to end on short settings:
every file of results/<model>/ is written, final.json holds the figures, the extras run."""

import json

import pytest

from replab_fast.cli import main
from replab_fast.train import extras
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
    monkeypatch.setattr(extras, "TRADEOFF_STEPS", 3)
    monkeypatch.setitem(rp.REPLICATIONS, "llama-tiny", rp.Replication(
        "llama-tiny", "stdlib", 4, rp.Target("perplexity", ""), config={"max_seq_len": 24, "n_layers": 1},
        extras=("samples", "tradeoffs")))  # fmt: skip
    final = rp.replicate("llama-tiny", results_root=tmp_path, runs_root=tmp_path / "runs", progress=False)
    out = tmp_path / "llama-tiny"
    samples = (out / "samples.txt").read_text()
    assert samples.count("--- prompt") == 3 and "def " in samples
    table = (out / "tradeoffs.md").read_text()
    for row in ("reference, float32, eager", "bfloat16 autocast", "torch.compile", "fast kernels"):
        assert row in table
    assert set(final["tradeoffs"]) and final["meets_target"] is None


def test_the_command_lists_and_refuses_unknown_models(capsys):
    assert main(["replicate", "--list"]) == 0
    assert "replab-fast train lenet5-classic --data fashion-mnist" in capsys.readouterr().out
    assert main(["replicate", "no-such-model"]) == 2
    assert "no replication for no-such-model" in capsys.readouterr().err
