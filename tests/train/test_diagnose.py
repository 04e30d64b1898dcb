"""replab-fast diagnose: it passes on sound small models, and each of its checks fails on a model
broken the way the check is meant to catch."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import replab_fast
from replab_fast.cli import main
from replab_fast.models.lenet import LeNet5
from replab_fast.train import diagnose as diag
from replab_fast.train import gauntlet
from replab_fast.train.diagnose_report import Check
from replab_fast.train.init_rules import expected_init

FAST = ["--steps", "40", "--sweep-steps", "4"]


def _run(capsys, *args):
    code = main(["diagnose", *args])
    return code, capsys.readouterr()


def test_lenet5_modern_passes_and_writes_its_report_and_plot(one_thread, tmp_path, capsys):
    code, printed = _run(capsys, "lenet5-modern", *FAST, "--out", str(tmp_path))
    assert code == 0, printed.out
    assert "PASS: all 5 checks passed" in printed.out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] and list(report["checks"]) == ["overfit", "gradients", "init", "activations", "lr_sweep"]
    runs = report["checks"]["overfit"]["results"]
    assert [r["examples"] for r in runs] == [1, 10, 100] and runs[1]["correct"] == 10
    sweep = report["checks"]["lr_sweep"]["results"]
    assert [p["lr"] for p in sweep["points"]] == pytest.approx([10 ** (-5 + i / 2) for i in range(9)])
    assert sweep["best_lr"] in [p["lr"] for p in sweep["points"]]
    assert (tmp_path / "lr_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_llama_tiny_passes(one_thread, tmp_path, capsys):
    config = ["--config", "max_seq_len=8", "--config", "n_layers=1"]
    code, printed = _run(capsys, "llama-tiny", *config, "--steps", "150", "--sweep-steps", "4", "--out", str(tmp_path))
    assert code == 0, printed.out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["setup"]["overrides"] == {"max_seq_len": 8, "n_layers": 1}
    assert report["setup"]["data"] == "stdlib"
    assert (tmp_path / "lr_sweep.png").exists()


def test_a_constant_output_fails_overfitting_and_exits_1(one_thread, tmp_path, capsys, monkeypatch):
    forward = LeNet5.forward
    monkeypatch.setattr(LeNet5, "forward", lambda self, x: forward(self, x) * 0.0)  # logits: always 0
    code, printed = _run(capsys, "lenet5-modern", "--steps", "10", "--sweep-steps", "2", "--out", str(tmp_path))
    assert code == 1
    assert "FAIL: overfit, gradients, lr_sweep" in printed.out  # the children's outputs are sound
    assert "the model cannot memorize one example" in printed.out
    report = json.loads((tmp_path / "report.json").read_text())
    assert not report["passed"] and report["checks"]["overfit"]["results"][0]["ratio"] == pytest.approx(1.0)


def test_unknown_model_and_bad_config_are_argument_errors(capsys):
    code, printed = _run(capsys, "no-such-model")
    assert code == 2 and "unknown model 'no-such-model'; known models:" in printed.err
    assert "lenet5-modern" in printed.err
    code, printed = _run(capsys, "lenet5-modern", "--config", "no_such_field=1")
    assert code == 2 and "no_such_field" in printed.err
    with pytest.raises(SystemExit) as exit_:
        main(["diagnose", "lenet5-modern", "--steps", "0"])
    assert exit_.value.code == 2


# ---- each check on a broken model -----------------------------------------------------------


@pytest.fixture(scope="module")
def subject():
    torch.set_num_threads(1)
    return diag.prepare(diag.DiagnoseOptions("lenet5-modern", sweep_steps=2))


def _with(subject, model):
    return dataclasses.replace(subject, model=model)


class DetachedLinear(nn.Linear):
    """A linear layer whose weight does not reach the loss."""

    def forward(self, x):
        return F.linear(x, self.weight.detach(), self.bias)


def test_a_parameter_detached_from_the_loss_fails_the_gradient_check_by_name(one_thread, subject):
    assert diag.check_gradients(subject).passed
    model = replab_fast.create_model("lenet5-modern")
    model.classifier.output = DetachedLinear(84, 10)
    check = diag.check_gradients(_with(subject, model))
    assert not check.passed
    problems = [(p.parameter, p.problem) for p in check.data]
    assert problems == [("classifier.output.weight", "no gradient: detached from the loss")]
    assert "no gradient reaches classifier.output.weight" in check.advice[0]


def test_a_wrongly_scaled_init_fails_the_init_check(one_thread, subject):
    assert diag.check_init(subject).passed
    model = replab_fast.create_model("lenet5-modern")
    with torch.no_grad():
        model.features.c3.weight.mul_(10)  # ten times He's std
        model.classifier.f6.bias.fill_(0.5)  # He's biases are 0
    check = diag.check_init(_with(subject, model))
    flagged = {s.parameter: s for s in check.data if s.flagged}
    assert not check.passed and set(flagged) == {"features.c3.weight", "classifier.f6.bias"}
    assert flagged["features.c3.weight"].ratio == pytest.approx(10, rel=0.1)
    assert "not the constant 0" in flagged["classifier.f6.bias"].problem


def test_vanishing_activations_are_flagged(one_thread, subject):
    assert diag.check_activations(subject).passed
    model = replab_fast.create_model("lenet5-modern")
    with torch.no_grad():
        model.features.c1.weight.mul_(1e-6)
    check = diag.check_activations(_with(subject, model))
    assert not check.passed and "features.c1" in [s.module for s in check.data if s.flagged]


def test_the_sweep_marks_diverged_runs_and_picks_the_best_finite_lr(one_thread):
    class Drift(nn.Module):  # the loss falls as w grows, and is NaN from w = 1 on
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

    def loss(model, inputs, target):
        return torch.where(model.w < 1, 2 - model.w, torch.tensor(math.nan))

    batches = [((torch.zeros(1),), torch.zeros(1))] * 40
    points = gauntlet.lr_sweep(Drift(), loss, batches, gauntlet.learning_rates())
    diverged = [p.lr for p in points if p.diverged]
    assert diverged == pytest.approx([10 ** -1.5, 0.1])  # Adam moves w by lr a step: 40 x 0.0316 > 1
    check = Check.of_sweep(points, 2.0, steps=40, batch=1)
    assert check.passed and check.data["best_lr"] == pytest.approx(0.01)
    assert sum("diverged" in row for row in check.table) == 2


def test_a_sweep_where_nothing_trains_fails(one_thread):
    def constant_loss(model, inputs, target):
        return model.weight.sum() * 0 + 1

    points = gauntlet.lr_sweep(nn.Linear(1, 1), constant_loss, [((), torch.zeros(1))] * 2, [1e-3, 1e-2])
    check = Check.of_sweep(points, 1.0, steps=2, batch=1)
    assert not check.passed and "no learning rate" in check.advice[0]


# ---- the init rules against the models ------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in replab_fast.list_models() if replab_fast.get_spec(n).overfit])
def test_every_trainable_model_is_initialized_as_its_file_documents(one_thread, name):
    torch.manual_seed(0)
    model = replab_fast.create_model(name, **dict(replab_fast.get_spec(name).overfit.overrides))
    scales = gauntlet.parameter_scales(model, expected_init(model))
    assert all(s.expected_std is not None for s in scales), [s.parameter for s in scales if s.expected_std is None]
    assert [s.problem for s in scales if s.flagged] == []


def test_a_model_of_torch_layers_is_checked_against_torch_defaults():
    model = nn.Sequential(nn.Embedding(50, 32), nn.LayerNorm(32), nn.Linear(32, 200), nn.Conv1d(4, 8, 3))
    rules = expected_init(model)
    assert set(rules) == {name for name, _ in model.named_parameters()}
    assert rules["2.weight"].std == pytest.approx(1 / math.sqrt(3 * 32)) and rules["1.weight"].constant == 1.0
    assert not any(s.flagged for s in gauntlet.parameter_scales(model, rules))


def test_the_reconstruction_floor_is_the_entropy_of_soft_targets_or_what_a_linear_code_cannot_hold():
    grey = torch.full((2, 4), 0.5)
    conv = replab_fast.create_model("autoencoder-conv")
    assert diag.reconstruction_floor(conv, grey) == pytest.approx(math.log(2))
    assert diag.reconstruction_floor(conv, torch.tensor([[0.0, 1.0]])) == 0.0
    linear = replab_fast.create_model("autoencoder-linear")  # 1024 -> 2 -> 1024
    points = torch.randn(10, 1024, generator=torch.Generator().manual_seed(0))
    assert diag.reconstruction_floor(linear, points[:3]) == pytest.approx(0.0, abs=1e-9)  # 3 points: a plane
    assert 0.5 < diag.reconstruction_floor(linear, points) < 1.0  # 7 of 9 directions of unit variance are lost
