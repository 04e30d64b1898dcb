import torch

import replab_fast
from replab_fast.cli import main
from replab_fast.demo import RELATIVE_TOLERANCE, DemoRow, _parity, demo_models, summary


def test_models_table_lists_every_model_with_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in replab_fast.list_models():
        assert name in out
    assert "60,965,224" in out and "6,738,415,616" in out and "60,000" in out


def test_demo_runs_every_family_on_cpu_and_passes(capsys):
    assert main(["demo", "--device", "cpu", "--iters", "1"]) == 0
    out = capsys.readouterr().out
    for name in demo_models():
        assert name in out
    assert out.strip().splitlines()[-1].startswith("demo: PASS")


def test_demo_unknown_model_is_an_error(capsys):
    assert main(["demo", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


def test_parity_rule_allows_twice_the_references_own_error():
    exact = {"output": torch.tensor([1.0, -2.0], dtype=torch.float64)}
    ref = {"output": exact["output"] + 1e-3}
    within = {"output": exact["output"] - 2e-3}
    beyond = {"output": exact["output"] + 2e-3 + 5 * RELATIVE_TOLERANCE * 2.0}
    assert _parity(within, ref, exact)[2] == []
    assert _parity(beyond, ref, exact)[2] == ["output"]


def test_demo_fails_on_a_fast_path_outside_tolerance():
    good = DemoRow("a", 1, ["k"], 0.0, 0.0, reference_ms=1.0, fast_ms=1.0)
    bad = DemoRow("b", 1, ["k"], 1.0, 0.0, reference_ms=1.0, fast_ms=1.0, outside_tolerance=["output"])
    assert good.passed and not bad.passed
    assert summary([good, bad]).startswith("demo: FAIL (b)")
