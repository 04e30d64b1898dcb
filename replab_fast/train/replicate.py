"""Replication runs: each paper's model trained on real data to completion, its figures beside
the paper's, written to ``results/<model>/``.

``replicate(name)`` trains the model by its recipe with the settings below (the data and the
steps a CPU affords), evaluates the best checkpoint (by the validation metric) on the test split,
runs the comparisons the paper's claim needs (``extras.py``: PCA for the autoencoders, the 2-D
codes beside PCA's, generated samples, LLaMA's tradeoff table), and writes:

    metrics.jsonl, curves.png   the run's log and curves
    final.json                  data, split, metric, value, the target and whether it is met, the comparisons
    command.txt                 the command that reproduces it, with the package, torch and data versions
    (and the extras' files: samples.txt, codes.png, tradeoffs.md)

Checkpoints stay in the run folder (``runs/replicate/<model>``), not in results/.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from .. import __version__
from .inference import evaluate_checkpoint
from .loop import RunOptions, Trainer

__all__ = ["REPLICATIONS", "Replication", "Target", "replicate", "results_table", "update_readme"]


@dataclass(frozen=True)
class Target:
    metric: str  # the figure in final.json ("test_accuracy", "reconstruction_sse", ...)
    goal: str  # ">=": at least threshold; "<=": at most; "<pca": below PCA's; "=pca": PCA's, within 2%; "": none
    threshold: Optional[float] = None
    reference: str = ""  # the paper's or the benchmark's figure, in words


@dataclass(frozen=True)
class Replication:
    model: str
    data: str  # the dataset (replab_fast.data)
    steps: int
    target: Target
    batch_size: Optional[int] = None  # None: the recipe's
    lr: Optional[float] = None
    config: dict[str, Any] = field(default_factory=dict)  # model config overrides
    extras: tuple[str, ...] = ()  # "pca", "codes-2d", "samples", "tradeoffs"
    data_note: str = ""  # where the data differ from the paper's

    def command(self) -> str:
        parts = [f"replab-fast train {self.model} --data {self.data} --steps {self.steps}"]
        parts += [f"--batch-size {self.batch_size}"] if self.batch_size else []
        parts += [f"--lr {self.lr}"] if self.lr else []
        parts += [f"--config {k}={v!r}" for k, v in self.config.items()]
        return " ".join(parts)


_FASHION = ("Fashion-MNIST (Xiao et al. 2017): 28x28 grey clothing images in 10 classes, the MNIST format; the "
            "paper trains on MNIST digits, which this machine does not have")  # fmt: skip
_FASHION_AE = _FASHION.replace("the paper trains on MNIST digits", "the paper's Fig. 2 uses MNIST digits")

# Measured on Python 3.11's standard library (the runs' data_source): the tail of the corpus by path.
_STDLIB_TEST_SPLIT = ("; the test split (the last 5% in path order) is html/ and http/ modules, a third of it "
                      "html/entities.py's table of character references, so its figure is higher than the "
                      "validation split's")

REPLICATIONS: dict[str, Replication] = {
    r.model: r
    for r in (
        Replication("lenet5-classic", "fashion-mnist", 20_000,
                    Target("test_accuracy", ">=", 0.88, "the paper: 0.95% test error on MNIST (Table / Fig. 9); "
                           "Fashion-MNIST's benchmark of small CNNs: 0.876 to 0.925 test accuracy"),
                    data_note=_FASHION),
        Replication("lenet5-modern", "fashion-mnist", 12_000,
                    Target("test_accuracy", ">=", 0.90, "Fashion-MNIST's benchmark of small CNNs: 0.876 to 0.925"),
                    data_note=_FASHION),
        Replication("autoencoder-deep", "fashion-mnist", 12_000,
                    Target("reconstruction_sse", "<pca", None, "the paper: the 784-1000-500-250-30 autoencoder "
                           "reconstructs MNIST better than 30-component PCA (Fig. 2)"),
                    extras=("pca",), data_note=_FASHION_AE),
        Replication("autoencoder-2d", "fashion-mnist", 12_000,
                    Target("reconstruction_sse", "<pca", None, "the paper's Fig. 3: 2-D codes that separate the "
                           "classes better than PCA's first two components"),
                    extras=("pca", "codes-2d"), data_note=_FASHION_AE),
        Replication("autoencoder-linear", "fashion-mnist", 6_000,
                    Target("reconstruction_sse", "=pca", None, "a linear autoencoder learns the principal subspace: "
                           "its error equals PCA's at the same code size"),
                    extras=("pca",), data_note=_FASHION_AE),
        Replication("autoencoder-conv", "fashion-mnist", 8_000,
                    Target("mse", "", None, "not in the paper; for context, a conv autoencoder of this kind "
                           "reaches a per-pixel MSE of about 0.0039 on MNIST at 32x32 (other data, other size)"),
                    data_note=_FASHION_AE),
        Replication("lstm-lm-small", "stdlib", 6_000,
                    Target("bits_per_char", "", None, "no paper figure on this corpus: Python source, byte level"),
                    extras=("samples",),
                    data_note="the Python standard library's source, bytes; the 1997 paper's tasks are synthetic"
                              + _STDLIB_TEST_SPLIT),
        Replication("lstm-classifier-small", "stdlib-packages", 3_000,
                    Target("test_accuracy", "", None, "no paper task: which of four stdlib packages a 32-byte "
                           "snippet comes from (chance: 0.25)"),
                    data_note="a task of this project's, offline and checkable"),
        Replication("llama-cpu", "stdlib", 4_000,
                    Target("perplexity", "", None, "no paper figure at this scale: LLaMA's recipe on the Python "
                           "standard library's source, BPE of 2048 ids"),
                    extras=("samples", "tradeoffs"),
                    data_note="the Python standard library's source; the paper trains on 1.4T tokens of web text"
                              + _STDLIB_TEST_SPLIT),
        Replication("alexnet-10class", "digits", 20,
                    Target("test_accuracy", "", None, "not trainable at 227x227 on a CPU in reasonable time: a "
                           "20-step smoke run; the GPU recipe is `replab-fast train alexnet`"),
                    config={"image_size": 67}, data_note="the digits, resized: a smoke run, not a replication"),
    )
}


def _figure(metric: str, results: dict[str, float]) -> float:
    if metric == "test_accuracy":
        return results["accuracy"]
    return results[metric]


def _meets(target: Target, value: float, extras: dict[str, Any]) -> Optional[bool]:
    if target.goal == ">=":
        return value >= target.threshold
    if target.goal == "<=":
        return value <= target.threshold
    if target.goal == "<pca":
        return value < extras["pca_value"]
    if target.goal == "=pca":
        return abs(value - extras["pca_value"]) <= 0.02 * extras["pca_value"]
    return None


def _versions() -> dict[str, str]:
    versions = {"replab_fast": __version__, "torch": torch.__version__, "python": platform.python_version()}
    try:
        deb = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "dataset-fashion-mnist"], capture_output=True,
                             text=True, timeout=10)  # fmt: skip
        if deb.returncode == 0:
            versions["dataset-fashion-mnist"] = deb.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return versions


def best_validation(metrics: Path, step: int) -> dict[str, Any]:
    """The validation line that ``metrics.jsonl`` logged at ``step`` (the best checkpoint's)."""
    lines = [json.loads(line) for line in Path(metrics).read_text().splitlines() if line.strip()]
    found = [line for line in lines if line.get("split") == "val" and line.get("step") == step]
    if not found:
        raise ValueError(f"{metrics} logged no validation at step {step}, the best checkpoint's")
    return {k: v for k, v in found[-1].items() if k != "split"}


def _run_options(rep: Replication, run_dir: Path, device: Optional[str], progress: bool) -> RunOptions:
    return RunOptions(model=rep.model, out=run_dir, data=rep.data, steps=rep.steps, batch_size=rep.batch_size,
                      lr=rep.lr, overrides=dict(rep.config), device=device, progress=progress)  # fmt: skip


def replicate(name: str, *, results_root: Path = Path("results"), runs_root: Path = Path("runs/replicate"),
              device: Optional[str] = None, progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Train ``name`` by its replication settings and write results/<name>/ (see the module docstring)."""
    from .extras import run_extras

    try:
        rep = REPLICATIONS[name]
    except KeyError:
        raise KeyError(f"no replication for {name!r}; replications: {', '.join(REPLICATIONS)}") from None
    run_dir, out = Path(runs_root) / name, Path(results_root) / name
    options = _run_options(rep, run_dir, device, progress)
    start = time.time()
    trainer = Trainer(options)
    trainer.run()
    train_time = time.time() - start
    test = evaluate_checkpoint(run_dir, split="test", which="best", device=device)
    out.mkdir(parents=True, exist_ok=True)
    extras = run_extras(rep, trainer, run_dir, out)
    value = _figure(rep.target.metric, test)
    final = {
        "model": name, "data": trainer.task.describe["name"], "data_source": trainer.task.describe["source"],
        "data_note": rep.data_note, "split": "test", "metric": rep.target.metric, "value": value,
        "target": {"goal": rep.target.goal, "threshold": rep.target.threshold, "reference": rep.target.reference},
        "meets_target": _meets(rep.target, value, extras), "test": test,
        "val": best_validation(run_dir / "metrics.jsonl", test["step"]), "best_step": test["step"],
        "steps": rep.steps, "train_time_s": round(train_time, 1), "device": str(trainer.device), **extras,
    }  # fmt: skip
    (out / "final.json").write_text(json.dumps(final, indent=2, default=str) + "\n")
    for file in ("metrics.jsonl", "curves.png"):
        shutil.copy2(run_dir / file, out / file)
    versions = _versions()
    (out / "command.txt").write_text(
        f"replab-fast replicate {name}\n# the same run: {rep.command()}\n"
        + "".join(f"# {k} {v}\n" for k, v in versions.items()) + f"# {sys.platform}, {platform.machine()}\n"
    )
    return final


def card_for(name: str, cards_folder: Path) -> Optional[str]:
    """The model card that shows ``name``'s results: its own (``<name>.md`` in ``cards_folder``), else
    the first card of its family in registry order (alexnet-10class's on alexnet's), else None."""
    from ..models.registry import get_spec, list_models

    cards = [model for model in list_models() if (Path(cards_folder) / f"{model}.md").is_file()]
    if name in cards:
        return name
    family = get_spec(name).family
    return next((card for card in cards if get_spec(card).family == family), None)


def replicate_tradeoffs(name: str, *, results_root: Path = Path("results"), runs_root: Path = Path("runs/replicate"),
                        device: Optional[str] = None) -> Path:  # fmt: skip
    """Measure ``name``'s tradeoff table on ``device`` alone (no training run) and rewrite
    results/<name>/tradeoffs.md; returns its path."""
    from .tradeoffs import run_tradeoffs

    rep = REPLICATIONS.get(name)
    if rep is None or "tradeoffs" not in rep.extras:
        having = [n for n, r in REPLICATIONS.items() if "tradeoffs" in r.extras]
        raise ValueError(f"{name!r} has no tradeoff table; the replications with one: {', '.join(having)}")
    options = _run_options(rep, Path(runs_root) / name, device, progress=False)
    run_tradeoffs(options, Path(runs_root) / name / "tradeoffs", Path(results_root) / name)
    return Path(results_root) / name / "tradeoffs.md"


RESULTS_BEGIN, RESULTS_END = "<!-- results:begin -->", "<!-- results:end -->"


def _cell(final: dict[str, Any]) -> str:
    value = final["value"]
    text = f"{value:.4f}" if isinstance(value, float) else str(value)
    if "pca_value" in final:
        text += f" (PCA: {final['pca_value']:.4f})"
    return text


def _validation(final: dict[str, Any]) -> str:
    """The test figure's metric on the validation split at the best checkpoint (accuracy = 1 - error)."""
    val = final.get("val") or {}
    value = val.get(final["metric"]) if final["metric"] != "test_accuracy" else val.get("accuracy")
    return "-" if value is None else f"{value:.4f}"


def results_table(results_root: Path = Path("results")) -> str:
    """The README's results table, from every results/<model>/final.json (in REPLICATIONS' order)."""
    rows = ["| model | data | metric (test) | ours | validation | target | met | the paper's or the benchmark's figure "
            "| reproduce |", "|---|---|---|---:|---:|---|---|---|---|"]  # fmt: skip
    for name in REPLICATIONS:
        path = Path(results_root) / name / "final.json"
        if not path.is_file():
            continue
        final = json.loads(path.read_text())
        target = final["target"]
        goal = {"": "-", ">=": f">= {target['threshold']}", "<=": f"<= {target['threshold']}", "<pca": "below PCA",
                "=pca": "PCA's, within 2%"}[target["goal"]]  # fmt: skip
        met = {True: "yes", False: "**no**", None: "-"}[final["meets_target"]]
        shown_on = card_for(name, Path(results_root).resolve().parent / "docs" / "models")
        card = f"[{name}](docs/models/{shown_on}.md)" if shown_on else name
        rows.append(f"| {card} | {final['data']} | {final['metric']} | {_cell(final)} | {_validation(final)} | {goal} | {met} | "
                    f"{target['reference']} | `replab-fast replicate {name}` |")  # fmt: skip
    if len(rows) == 2:
        return "No replication result is committed yet: `make replicate` writes them.\n"
    return "\n".join(rows) + "\n"


def update_readme(readme: Path = Path("README.md"), results_root: Path = Path("results")) -> bool:
    """Rewrite the README's results table between its markers; True if it changed."""
    text = Path(readme).read_text()
    begin, end = text.find(RESULTS_BEGIN), text.find(RESULTS_END)
    if begin < 0 or end < begin:
        raise ValueError(f"{readme} has no {RESULTS_BEGIN} ... {RESULTS_END} markers")
    new = text[: begin + len(RESULTS_BEGIN)] + "\n" + results_table(results_root) + text[end:]
    if new != text:
        Path(readme).write_text(new)
    return new != text
