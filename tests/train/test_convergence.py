"""Convergence parity: a short training run with the fast kernels swapped in follows the reference
run's loss curve, step by step, from the same seed and the same batches.

On a CPU the Triton kernels run through the interpreter (``interpret=True``): the same kernels the
GPU compiles. Tolerance: the losses of every step within 1e-4 relative. Both runs are float32;
the kernels reorder sums (a few ulp per op), and over these few steps the difference stays
near 1e-7 relative. What it catches, measured by breaking the conv kernel's backward by hand
(one output channel's weight gradient zeroed): LeNet-5's curves move by ~1e-3 within 8 steps;
the conv autoencoder's by only ~2e-7 (its encoder's gradient matters little in 8 steps), and a
gradient scaled by a constant is invisible under Adam. The kernels' gradients themselves are
checked exactly, op by op, in tests/kernels and tests/nn; this is the whole-run check on top.
"""

import pytest

from replab_fast.train.loop import RunOptions, Trainer

RTOL = 1e-4

# (model, config overrides, steps, batch): every family with a fast kernel, sized for the interpreter
CASES = [
    ("lenet5-classic", {}, 8, 16),
    ("lenet5-modern", {}, 8, 16),
    ("autoencoder-conv", {}, 8, 16),
    ("alexnet-10class", {"image_size": 67, "dropout": 0.0}, 4, 4),
    ("llama-tiny", {"max_seq_len": 16, "n_layers": 1}, 5, 4),
    ("lstm-lm-small", {"hidden_size": 24, "embed_dim": 16, "seq_len": 12}, 3, 4),
    ("lstm-classifier-small", {"hidden_size": 20, "embed_dim": 8, "seq_len": 12}, 3, 4),
]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def losses(tmp_path, name, model, overrides, steps, batch, fast):
    options = RunOptions(model=model, out=tmp_path / name, steps=steps, batch_size=batch, progress=False,
                         overrides=overrides, fast=fast, interpret=fast)  # fmt: skip
    trainer = Trainer(options)
    trainer.recipe = trainer.recipe.replace(log_every=1, eval_every=steps, checkpoint_every=steps)
    kernels = trainer.model.replab_report.kernels() if fast else []
    curve = []
    real_step = trainer.train_step
    trainer.train_step = lambda batch: curve.append(real_step(batch)) or curve[-1]
    trainer.run()
    return curve, kernels


@pytest.mark.parametrize("model,overrides,steps,batch", CASES, ids=[c[0] for c in CASES])
def test_the_fast_kernels_follow_the_reference_loss_curve(tmp_path, model, overrides, steps, batch):
    reference, _ = losses(tmp_path, "reference", model, overrides, steps, batch, fast=False)
    fast, kernels = losses(tmp_path, "fast", model, overrides, steps, batch, fast=True)
    assert kernels, f"no fast kernel was swapped into {model}"
    assert len(fast) == len(reference) == steps
    for step, (a, b) in enumerate(zip(fast, reference), start=1):
        assert abs(a - b) <= RTOL * abs(b), f"step {step}: fast {a:.8g} vs reference {b:.8g} ({kernels})"
