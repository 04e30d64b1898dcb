"""Sampling the next token, and the decoding loop the language models share.

The sampling rules (litgpt's order): from the logits of the last position, keep the ``top_k``
most likely tokens, divide by the ``temperature``, keep the smallest set of tokens whose
probabilities add up to ``top_p`` (nucleus sampling; always at least the most likely one), and
draw from what is left. Temperature 0 is greedy (argmax; top-k and top-p do not change it). A
seeded ``torch.Generator`` makes the same seed give the same tokens.

``decode`` runs the loop for any model that can take one step: it samples a token from the
current logits, yields it, and asks the model's ``step`` for the next logits (LLaMA's step
writes the token's keys and values into its KV cache; the LSTM's carries (h, c)). Sequences
that produced the end-of-text token stop: they get ``eos_id`` from then on, and the loop ends
when every sequence has stopped or ``max_new_tokens`` were drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor

__all__ = ["Sampling", "collect", "decode", "sample"]


@dataclass(frozen=True)
class Sampling:
    """How the next token is drawn (see the module docstring for the order)."""

    temperature: float = 0.0  # 0: greedy; otherwise softmax(logits / temperature)
    top_k: Optional[int] = None  # keep the k most likely tokens (None: all)
    top_p: Optional[float] = None  # keep the smallest set with probability >= top_p (None or 1: all)

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0.0 or t == float("inf"):
            raise ValueError(f"temperature must be a finite number >= 0, got {t!r}")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {k!r}")
        p = self.top_p
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1] or None, got {p!r}")


def _keep_top_k(logits: Tensor, k: int) -> Tensor:
    """logits (B, V) with all but the k largest of each row set to -inf (ties at the k-th kept)."""
    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def _keep_top_p(logits: Tensor, p: float) -> Tensor:
    """logits (B, V) with every token outside the nucleus set to -inf: the nucleus is the most
    likely tokens, in order, up to and including the first whose cumulative probability reaches
    p (so at least one token is always kept)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits, dim=-1)  # (B, V)
    outside = (probs.cumsum(dim=-1) - probs) >= p  # the mass before this token already reaches p
    outside[:, 0] = False
    remove = torch.zeros_like(outside).scatter(-1, order, outside)  # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


def sample(logits: Tensor, sampling: Sampling = Sampling(), generator: Optional[torch.Generator] = None) -> Tensor:
    """logits (B, V) -> next token ids (B,), int64, by the rules of ``sampling``.

    ``generator`` (on the logits' device) makes the draw reproducible.
    """
    if logits.dim() != 2:
        raise ValueError(f"sample expects logits of shape (B, V), got {tuple(logits.shape)}")
    if sampling.temperature == 0.0:
        return logits.argmax(dim=-1)  # (B,)
    logits = logits.float()  # (B, V)
    if sampling.top_k is not None:
        logits = _keep_top_k(logits, sampling.top_k)
    logits = logits / sampling.temperature
    if sampling.top_p is not None and sampling.top_p < 1.0:
        logits = _keep_top_p(logits, sampling.top_p)
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B,)


def decode(
    logits: Tensor,
    step: Callable[[Tensor, int], Tensor],
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    *,
    generator: Optional[torch.Generator] = None,
    eos_id: Optional[int] = None,
) -> Iterator[Tensor]:
    """Yield up to ``max_new_tokens`` next tokens (B,) each, starting from ``logits`` (B, V), the
    logits after the prompt.

    ``step(tokens, i)`` feeds the i-th new tokens (B,) to the model and returns the logits (B, V)
    for the next position; it is not called after the last token. With ``eos_id``, a sequence that
    produced it gets ``eos_id`` from then on, and decoding stops once every sequence has.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    finished = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)  # (B,)
    for i in range(max_new_tokens):
        tokens = sample(logits, sampling, generator)  # (B,)
        if eos_id is not None:
            tokens = tokens.masked_fill(finished, eos_id)
            finished = finished | (tokens == eos_id)
        yield tokens
        if i + 1 == max_new_tokens or (eos_id is not None and bool(finished.all())):
            return
        logits = step(tokens, i)  # (B, V)


def collect(prompt: Tensor, tokens: Iterator[Tensor]) -> Tensor:
    """The prompt (B, T0) followed by the streamed tokens (each (B,)): ids (B, T0 + n), int64."""
    new = list(tokens)
    return torch.cat([prompt.long(), torch.stack(new, dim=1)], dim=1) if new else prompt.long().clone()
