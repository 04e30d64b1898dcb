"""Each paper's metric, computed over a data split: error rate, reconstruction error per image,
perplexity and bits per character.

- Classification (LeNet-5, AlexNet, the LSTM classifier): ``error_rate`` (and ``accuracy``), the
  share of examples whose predicted class (``model.predict`` where the model has one, LeNet-5's
  RBF output being a penalty to minimize, else the argmax of the logits) is wrong. LeCun et al.
  1998 report test error rates.
- Reconstruction (the autoencoders): ``reconstruction_sse``, the squared error summed over an
  image's pixels and averaged over images (Hinton & Salakhutdinov 2006, Fig. 2's figure), and
  ``mse`` per pixel.
- Language modelling: ``perplexity`` exp(mean next-token loss) and, for byte- and character-level
  models, ``bits_per_char``: the loss in bits (nats / ln 2) per token, a token being a character.

``evaluate`` also returns the mean training loss of the split (``loss``, the model's own loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor, nn

__all__ = ["METRICS", "Metric", "evaluate", "predict_classes"]

Batch = tuple[tuple[Tensor, ...], Tensor]


@dataclass(frozen=True)
class Metric:
    name: str  # the key in metrics.jsonl and final.json
    higher_is_better: bool
    kind: str  # "classification" | "reconstruction" | "language"


METRICS = {
    "error_rate": Metric("error_rate", False, "classification"),
    "reconstruction_sse": Metric("reconstruction_sse", False, "reconstruction"),
    "perplexity": Metric("perplexity", False, "language"),
    "bits_per_char": Metric("bits_per_char", False, "language"),
}


def predict_classes(model: nn.Module, inputs: tuple[Tensor, ...]) -> Tensor:
    """The predicted class of each example (see the module docstring)."""
    predict = getattr(model, "predict", None)
    if callable(predict):
        return predict(*inputs)  # (B,)
    return model(*inputs).argmax(dim=-1)  # (B,)


def _reconstruction(model: nn.Module, inputs: tuple[Tensor, ...]) -> Tensor:
    return model(*inputs)  # the reconstruction, in the input's shape


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: Callable[[nn.Module, tuple, Tensor], Tensor], batches: Iterable[Batch],
             metric: Metric, *, max_batches: Optional[int] = None) -> dict[str, float]:  # fmt: skip
    """The mean loss and ``metric`` (with its companions) of ``model`` over ``batches``, in eval
    mode (restored afterwards). Every example counts once, whatever the batch sizes."""
    was_training = model.training
    model.eval()
    examples = tokens = 0
    loss_sum = wrong = sse = pixels = 0.0
    try:
        for i, (inputs, target) in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            n = target.shape[0]
            weight = target.numel() if metric.kind == "language" else n
            loss_sum += float(loss_fn(model, inputs, target)) * weight
            examples += n
            tokens += target.numel()
            if metric.kind == "classification":
                wrong += float((predict_classes(model, inputs) != target).sum())
            elif metric.kind == "reconstruction":
                diff = (_reconstruction(model, inputs).double() - target.double()).flatten(1)  # (B, pixels)
                sse += float(diff.pow(2).sum())
                pixels += diff.numel()
    finally:
        model.train(was_training)
    if examples == 0:
        raise ValueError("evaluate got no batches: the split is empty")
    if metric.kind == "language":
        loss = loss_sum / tokens
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bits_per_char": loss / math.log(2)}
    loss = loss_sum / examples
    if metric.kind == "classification":
        return {"loss": loss, "error_rate": wrong / examples, "accuracy": 1.0 - wrong / examples}
    return {"loss": loss, "reconstruction_sse": sse / examples, "mse": sse / pixels}
