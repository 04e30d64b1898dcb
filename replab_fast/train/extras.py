"""The comparisons a replication needs beyond the test metric: PCA for the autoencoders, the
2-D codes beside PCA's, samples from the language models, and LLaMA's tradeoff table.

- ``pca``: PCA with as many components as the code (scikit-learn, fitted on the training
  images as the autoencoder sees them) reconstructs the test images; its squared error per image
  (``pca_value``) is the figure Hinton & Salakhutdinov 2006 compare against.
- ``codes-2d``: the 784-...-2 autoencoder's codes of the test images beside PCA's first two
  components, coloured by class (the paper's Fig. 3), as ``codes.png``.
- ``samples``: text continued from three prompts at temperature 0.8, top-p 0.95, seed 0
  (``samples.txt``).
- ``tradeoffs``: LLaMA's tradeoff table (``tradeoffs.py``: reference against fast kernels, float32
  against bfloat16 autocast, eager against torch.compile; ``tradeoffs.md``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .inference import checkpoint_folder, generate_text, load_model
from .loop import Trainer

__all__ = ["run_extras"]

PROMPTS = ("def ", "import ", "class ")


def _images(dataset) -> tuple[torch.Tensor, np.ndarray]:
    """All inputs of an image split, (N, ...) float32, and their labels (N,)."""
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = dataset.labels.numpy() if getattr(dataset, "labels", None) is not None else np.zeros(len(x), dtype=int)
    return x, labels


def _pca(trainer: Trainer, model) -> dict[str, Any]:
    from sklearn.decomposition import PCA

    k = model.config.code_dim
    train_x, _ = _images(trainer.task.splits["train"])
    test_x, _ = _images(trainer.task.splits["test"])
    pca = PCA(n_components=k, svd_solver="full", random_state=0).fit(train_x.flatten(1).double().numpy())
    test_flat = test_x.flatten(1).double().numpy()
    recon = pca.inverse_transform(pca.transform(test_flat))
    sse = float(((recon - test_flat) ** 2).sum(axis=1).mean())
    return {"pca_value": sse, "pca_components": k, "pca_explained_variance": float(pca.explained_variance_ratio_.sum())}


def _codes_2d(trainer: Trainer, model, out: Path) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    test_x, labels = _images(trainer.task.splits["test"])
    train_x, _ = _images(trainer.task.splits["train"])
    with torch.no_grad():
        codes = model.encode(test_x.to(next(model.parameters()).device)).cpu().numpy()  # (N, 2)
    pca_codes = PCA(n_components=2, random_state=0).fit(train_x.flatten(1).numpy()).transform(test_x.flatten(1).numpy())
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, points, title in ((axes[0], pca_codes, "PCA: first two components"),
                              (axes[1], codes, "autoencoder 784-1000-500-250-2: the codes")):  # fmt: skip
        scatter = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=3, alpha=0.6)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(scatter, ax=axes, label="class")
    fig.suptitle(f"test images of {trainer.task.describe['name']}, coloured by class (cf. Hinton & Salakhutdinov "
                 "2006, Fig. 3)")  # fmt: skip
    save_compact_png(fig, out / "codes.png")
    plt.close(fig)
    return {"codes_picture": "codes.png"}


def save_compact_png(fig, path: Path, colors: int = 64) -> None:
    """``fig`` as a palette PNG of ``colors`` colours: a scatter of 10,000 points in a third of
    the bytes of matplotlib's RGBA file, the same picture to the eye."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=colors).save(path, optimize=True)


def _samples(run_dir: Path, out: Path, device) -> dict[str, Any]:
    model, _ = load_model(checkpoint_folder(run_dir, "best"), device=device)
    context = getattr(model.config, "max_seq_len", None)
    lines = []
    for prompt in PROMPTS:
        new = 200 if context is None else context - 8
        text = "".join(generate_text(run_dir, prompt, max_new_tokens=new, temperature=0.8, top_p=0.95, seed=0,
                                     which="best", device=device))  # fmt: skip
        lines.append(f"--- prompt {prompt!r}, temperature 0.8, top-p 0.95, seed 0 ---\n{prompt}{text}\n")
    (out / "samples.txt").write_text("\n".join(lines))
    return {"samples": "samples.txt"}


def run_extras(rep, trainer: Trainer, run_dir: Path, out: Path) -> dict[str, Any]:
    """The extras ``rep`` asks for, their figures for final.json (their files written to ``out``)."""
    figures: dict[str, Any] = {}
    model = None
    if {"pca", "codes-2d"} & set(rep.extras):
        model, _ = load_model(checkpoint_folder(run_dir, "best"), device=str(trainer.device))
    if "pca" in rep.extras:
        figures.update(_pca(trainer, model))
    if "codes-2d" in rep.extras:
        figures.update(_codes_2d(trainer, model, out))
    if "samples" in rep.extras:
        figures.update(_samples(run_dir, out, str(trainer.device)))
    if "tradeoffs" in rep.extras:
        from .tradeoffs import run_tradeoffs

        measured = run_tradeoffs(trainer.options, run_dir / "tradeoffs", out)
        figures["tradeoffs"] = {"table": "tradeoffs.md", "device": measured["device"], **measured["rows"]}
    return figures
