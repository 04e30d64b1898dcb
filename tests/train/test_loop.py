"""The training loop (replab_fast/train/loop.py) on real offline data: every family trains from
the command line, resumes exactly, evaluates with its paper's metric, and fails clearly.

Shapes are small (a few steps, small batches) so that the file runs in well under a minute; one
intra-op thread (the ``one_thread`` fixture): these tiny models are faster so and do not fight a
loaded machine.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

import replab_fast
from replab_fast.cli import main
from replab_fast.train import checkpoint as ckpt
from replab_fast.train.loop import RunOptions, Trainer, train

# (model, extra CLI flags, the paper's metric): small configs of every family
FAMILIES = [
    ("lenet5-classic", [], "error_rate"),
    ("lenet5-modern", ["--batch-size", "16"], "error_rate"),
    ("autoencoder-deep", ["--config", "hidden_dims=(64, 32)", "--batch-size", "16"], "reconstruction_sse"),
    ("autoencoder-conv", ["--batch-size", "16"], "reconstruction_sse"),
    ("alexnet-10class", ["--config", "image_size=67", "--batch-size", "4"], "error_rate"),
    ("lstm-lm-small", ["--config", "hidden_size=32", "--config", "embed_dim=16", "--config", "seq_len=16"],
     "bits_per_char"),
    ("lstm-classifier-small", ["--config", "hidden_size=16", "--config", "embed_dim=8"], "error_rate"),
    ("llama-tiny", ["--config", "max_seq_len=16", "--config", "n_layers=1", "--batch-size", "4"], "perplexity"),
]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def lines(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("model,flags,metric", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_every_family_trains_from_the_command_line(tmp_path, capsys, model, flags, metric):
    out = tmp_path / "run"
    assert main(["train", model, "--steps", "6", "--out", str(out), "--no-progress", *flags]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 6 and metric in summary
    logged = lines(out)
    assert {"step", "split", "loss"} <= set(logged[0]) and logged[0]["split"] == "train"
    val = [r for r in logged if r["split"] == "val"]
    assert val and metric in val[-1] and val[-1]["step"] == 6
    weights = load_file(out / "checkpoint" / "model.safetensors")
    meta = ckpt.load_meta(out / "checkpoint")
    assert meta["model"] == model and meta["step"] == 6
    fresh = replab_fast.create_model(model, **{k: v for k, v in meta["config"].items()
                                               if k in _init_fields(model)})
    assert sorted(weights) == sorted(fresh.state_dict())  # the model's own state_dict keys
    assert (out / "curves.png").stat().st_size > 1000 and (out / "best" / "meta.json").exists()
    assert main(["eval", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "test" and result["metric"] == metric and result["value"] == result[metric]


def _init_fields(model):
    import dataclasses

    return {f.name for f in dataclasses.fields(replab_fast.get_spec(model).config_cls) if f.init}


@pytest.mark.parametrize("model,overrides", [
    ("lenet5-modern", {}),
    ("llama-tiny", {"max_seq_len": 16, "n_layers": 1}),
    ("lstm-lm-small", {"hidden_size": 32, "embed_dim": 16, "seq_len": 16, "dropout": 0.3}),  # dropout: the RNG
])
def test_a_stopped_and_resumed_run_logs_bitwise_the_same_losses(tmp_path, model, overrides):
    common = dict(model=model, steps=12, batch_size=8, progress=False, overrides=overrides)
    whole = train(RunOptions(out=tmp_path / "whole", **common))
    train(RunOptions(out=tmp_path / "parts", stop_at=5, **common))
    resumed = train(RunOptions(out=tmp_path / "parts", resume=True, **common))
    assert lines(tmp_path / "whole") == lines(tmp_path / "parts")  # every loss, to the last bit
    assert whole.metrics == resumed.metrics
    a, b = (load_file(tmp_path / d / "checkpoint" / "model.safetensors") for d in ("whole", "parts"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_alexnet_on_an_image_folder_with_loader_workers_resumes_exactly(tmp_path, capsys):
    from support import write_image_folder

    write_image_folder(tmp_path / "images" / "train", 8)
    write_image_folder(tmp_path / "images" / "val", 2, seed=1)
    common = dict(model="alexnet-10class", data=str(tmp_path / "images"), steps=6, batch_size=4, progress=False,
                  overrides={"image_size": 67}, workers=2)  # fmt: skip
    train(RunOptions(out=tmp_path / "whole", **common))
    train(RunOptions(out=tmp_path / "parts", stop_at=3, **common))  # the workers had drawn batches ahead
    train(RunOptions(out=tmp_path / "parts", resume=True, **common))
    assert lines(tmp_path / "whole") == lines(tmp_path / "parts")
    meta = ckpt.load_meta(tmp_path / "whole" / "checkpoint")
    assert meta["data"]["name"] == "image-folder" and meta["data"]["sizes"] == {"train": 23, "val": 1, "test": 6}
    assert main(["eval", str(tmp_path / "whole")]) == 0
    assert json.loads(capsys.readouterr().out)["data"] == "image-folder"


def test_resuming_after_more_steps_than_the_checkpoint_drops_the_later_lines(tmp_path):
    common = dict(model="lenet5-modern", steps=20, batch_size=8, progress=False)
    train(RunOptions(out=tmp_path / "run", stop_at=10, **common))
    with (tmp_path / "run" / "metrics.jsonl").open("a") as f:  # an interrupted run logged past its checkpoint
        f.write(json.dumps({"step": 15, "split": "train", "loss": 9.9}) + "\n")
    train(RunOptions(out=tmp_path / "run", resume=True, **common))
    steps = [r["step"] for r in lines(tmp_path / "run") if r["split"] == "train"]
    assert steps == sorted(set(steps)) and 9.9 not in [r["loss"] for r in lines(tmp_path / "run")]


def test_gradient_accumulation_gives_the_same_step(tmp_path):
    common = dict(model="lenet5-modern", steps=3, batch_size=8, progress=False)
    one = train(RunOptions(out=tmp_path / "one", **common))
    four = train(RunOptions(out=tmp_path / "four", grad_accum=4, **common))
    a, b = lines(tmp_path / "one"), lines(tmp_path / "four")
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
    assert one.metrics["loss"] == pytest.approx(four.metrics["loss"], rel=1e-4)


def test_bf16_autocast_trains(tmp_path):
    result = train(RunOptions(model="lenet5-modern", out=tmp_path / "bf16", steps=4, batch_size=8, amp="bf16",
                              progress=False))  # fmt: skip
    assert result.step == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in lines(tmp_path / "bf16"))


def test_an_interrupted_run_leaves_its_last_checkpoint_whole(tmp_path, monkeypatch, capsys):
    options = RunOptions(model="lenet5-modern", out=tmp_path / "run", steps=30, batch_size=8, progress=False)
    trainer = Trainer(options)
    trainer.recipe = trainer.recipe.replace(checkpoint_every=5)
    real_step = trainer.train_step

    def step(batch):
        if trainer.step == 12:
            raise KeyboardInterrupt
        return real_step(batch)

    monkeypatch.setattr(trainer, "train_step", step)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert "interrupted at step 12" in capsys.readouterr().err
    assert ckpt.load_meta(tmp_path / "run" / "checkpoint")["step"] == 10
    resumed = train(RunOptions(model="lenet5-modern", out=tmp_path / "run", steps=30, batch_size=8, progress=False,
                               resume=True))  # fmt: skip
    assert resumed.step == 30


@pytest.mark.parametrize("argv,message", [
    (["--steps", "10", "--stop-at", "11"], "--stop-at 11 is outside the planned run of 10 steps"),
    (["--lr", "-0.1"], "argument --lr: expected a positive number"),
    (["--batch-size", "100000"], "larger than the data"),
    (["--config", "no_such_field=1"], "no field"),
    (["--data", "mnist:/nonexistent/folder"], "MNIST"),
])
def test_bad_arguments_are_clear_errors(tmp_path, capsys, argv, message):
    try:
        code = main(["train", "lenet5-modern", "--out", str(tmp_path / "run"), "--no-progress", *argv])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_resuming_another_model_or_config_is_refused(tmp_path):
    out = tmp_path / "run"
    train(RunOptions(model="lenet5-modern", out=out, steps=2, batch_size=8, progress=False))
    with pytest.raises(ckpt.CheckpointError, match="another model"):
        train(RunOptions(model="lenet5-classic", out=out, steps=2, batch_size=8, progress=False, resume=True))
    with pytest.raises(ckpt.CheckpointError, match="another config .*n_classes"):
        train(RunOptions(model="lenet5-modern", out=out, steps=2, batch_size=8, progress=False, resume=True,
                         overrides={"n_classes": 12}))  # fmt: skip
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint at"):
        train(RunOptions(model="lenet5-modern", out=tmp_path / "empty", steps=2, progress=False, resume=True))


def test_generate_from_a_trained_language_model(tmp_path, capsys):
    out = tmp_path / "lm"
    flags = ["--config", "hidden_size=32", "--config", "embed_dim=16", "--config", "seq_len=16", "--no-progress"]
    assert main(["train", "lstm-lm-small", "--steps", "3", "--out", str(out), *flags]) == 0
    capsys.readouterr()
    texts = []
    for seed in (3, 3, 4):
        assert main(["generate", str(out), "--prompt", "import ", "--max-new-tokens", "40", "--seed", str(seed),
                     "--top-k", "50", "--top-p", "0.95"]) == 0  # fmt: skip
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] != texts[2]  # the same seed gives the same text
    assert all(t.startswith("import ") for t in texts)
    assert main(["generate", str(tmp_path / "nowhere"), "--prompt", "x"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
