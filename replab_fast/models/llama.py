"""LLaMA: a decoder-only transformer with pre-RMSNorm, SwiGLU and rotary embeddings.

Paper: Touvron, Lavril, Izacard, Martinet, Lachaux, Lacroix, Roziere, Goyal, Hambro, Azhar,
Rodriguez, Joulin, Grave, Lample. "LLaMA: Open and Efficient Foundation Language Models",
arXiv:2302.13971, 2023. Written after Meta's reference code (github.com/facebookresearch/llama,
``llama/model.py``), with the same parameter names, so its checkpoints load with no renaming.

Paper vs code
-------------
- Architecture as in Section 2.2 of the paper: pre-normalization with RMSNorm (Zhang & Sennrich
  2019), SwiGLU feed-forward (Shazeer 2020) with hidden size 2/3 * 4d, rotary position embeddings
  (Su et al. 2021), no biases, untied input and output embeddings. The exact rules the paper leaves
  out come from Meta's code: the hidden size is ``int(2 * 4 * dim / 3)``, optionally scaled by
  ``ffn_dim_multiplier``, rounded up to a multiple of ``multiple_of`` (256 for 7B/13B, giving 11008
  and 13824); RMSNorm is computed in fp32 and cast back to the input dtype before the weight multiply
  (``norm(x.float()).type_as(x) * weight``); ``norm_eps`` is 1e-6 as in Meta's released params.json.
- RoPE pairs the INTERLEAVED components (x[2i], x[2i+1]) of each head and rotates them by the angle
  ``pos * theta^(-2i/D)``, theta = 10000, as Meta's complex-number code does. We write it with real
  arithmetic (``apply_rope``); Meta's complex form (``apply_rope_complex``) and the HF/GPT-NeoX
  rotate-half form (``apply_rope_rotate_half``, which pairs x[i] with x[i + D/2] and matches the
  interleaved form only after permuting the rows of wq/wk) are kept as references.
- The rope tables cover ``max_seq_len`` positions (Meta precomputes ``2 * max_seq_len``). They are
  non-persistent fp32 buffers: they follow ``.to(device)``; ``.to(bfloat16)`` casts them too, as it
  casts every float buffer (apply_rope still computes in fp32). Build with ``dtype=`` to keep them fp32.
- Grouped-query attention (``n_kv_heads < n_heads``, from Llama 2) is supported because the kernels
  this model serves as the reference for must support it; LLaMA 1 presets use ``n_kv_heads = n_heads``.
- Attention computes scores, softmax and the weighted sum in fp32 and returns the query dtype (Meta
  computes the scores in the model dtype and only the softmax in fp32): the reference should be the
  more accurate side of a parity test.
- The KV cache is allocated on demand by ``setup_kv_cache`` (Meta allocates it in ``Attention.__init__``
  for every model, training included), as non-persistent buffers, so training never pays for it.
  The causal mask is aligned to the end of the keys, so a chunk of T queries at ``start_pos`` sees keys
  ``[0, start_pos + i]``: full forward, chunked prefill and token-by-token decoding give the same logits.
- Initialization: the paper is silent (and Meta released no training code). We use the GPT-2-style
  init that common LLaMA reimplementations use: every linear and embedding weight is drawn from
  N(0, 0.02^2), every RMSNorm weight is 1 (no residual-branch rescaling).
- Logits are returned in at least fp32 (Meta: ``.float()``); a float64 model keeps float64 logits, so
  the float64 parity references of the test suite are not rounded to fp32.
- Training loss (the paper's language-modelling objective): next-token cross-entropy, logits at
  positions [0, T-1) against tokens [1, T).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..generation import Sampling, collect, decode
from .config import PresetConfig
from .registry import Family, OverfitRecipe

__all__ = [
    "LlamaConfig",
    "Llama",
    "TransformerBlock",
    "Attention",
    "FeedForward",
    "RMSNorm",
    "precompute_rope",
    "precompute_freqs_cis",
    "apply_rope",
    "apply_rope_complex",
    "apply_rope_rotate_half",
    "repeat_kv",
    "attention_ref",
    "swiglu_hidden_dim",
]


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


def swiglu_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: Optional[float] = None) -> int:
    """Meta's SwiGLU hidden size: 2/3 of 4*dim, optionally scaled, rounded up to ``multiple_of``."""
    hidden = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@dataclass
class LlamaConfig(PresetConfig):
    dim: int = 4096  # model (residual stream) width d
    n_layers: int = 32  # number of transformer blocks
    n_heads: int = 32  # query heads per attention layer
    n_kv_heads: Optional[int] = None  # key/value heads (grouped-query attention); None -> n_heads
    vocab_size: int = 32000  # tokenizer vocabulary (SentencePiece BPE, 32k in the paper)
    multiple_of: int = 256  # the SwiGLU hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: Optional[float] = None  # optional scale of the SwiGLU hidden size
    norm_eps: float = 1e-6  # RMSNorm epsilon (1e-6 in Meta's LLaMA params.json)
    rope_theta: float = 10000.0  # RoPE base: pair i of a head turns by pos * theta^(-2i/head_dim)
    max_seq_len: int = 2048  # longest sequence (context length 2048 in the paper); rope table length
    max_batch_size: int = 32  # default batch capacity of the KV cache (inference only)

    head_dim: int = field(init=False)  # derived: dim // n_heads
    ffn_hidden_dim: int = field(init=False)  # derived: SwiGLU hidden size (see swiglu_hidden_dim)

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # CPU-test size: GQA on (4 query heads share 2 kv heads); forward+backward in milliseconds.
        "tiny": dict(
            dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=16,
            norm_eps=1e-5, max_seq_len=64, max_batch_size=8,
        ),
        # CPU-trainable size (~1.2M parameters): trained on the standard library's source with a
        # BPE tokenizer of 2048 ids (replab-fast replicate llama-cpu).
        "cpu": dict(
            dim=128, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=2048, multiple_of=32,
            norm_eps=1e-5, max_seq_len=128, max_batch_size=16,
        ),
        # Benchmark size (~60M parameters): LLaMA proportions with the real 32k vocabulary.
        "small": dict(
            dim=512, n_layers=8, n_heads=8, vocab_size=32000, multiple_of=256,
            norm_eps=1e-6, max_seq_len=1024, max_batch_size=32,
        ),
        # Meta's released LLaMA-7B and LLaMA-13B (params.json, vocab 32000).
        "7B": dict(dim=4096, n_layers=32, n_heads=32, vocab_size=32000, multiple_of=256, norm_eps=1e-6),
        "13B": dict(dim=5120, n_layers=40, n_heads=40, vocab_size=32000, multiple_of=256, norm_eps=1e-6),
    }

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
                     "max_seq_len", "max_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LlamaConfig.{name} must be a positive integer, got {value!r}")
        if self.dim % self.n_heads != 0:
            raise ValueError(
                f"LlamaConfig.dim ({self.dim}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(
                f"LlamaConfig.n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads})"
            )
        self.head_dim = self.dim // self.n_heads
        if self.head_dim % 2 != 0:
            raise ValueError(
                f"LlamaConfig head_dim = dim // n_heads = {self.head_dim} must be even (RoPE rotates pairs)"
            )
        if self.ffn_dim_multiplier is not None and not self.ffn_dim_multiplier > 0:
            raise ValueError(f"LlamaConfig.ffn_dim_multiplier must be > 0 or None, got {self.ffn_dim_multiplier}")
        if not self.norm_eps > 0:
            raise ValueError(f"LlamaConfig.norm_eps must be > 0, got {self.norm_eps}")
        if not self.rope_theta > 0:
            raise ValueError(f"LlamaConfig.rope_theta must be > 0, got {self.rope_theta}")
        self.ffn_hidden_dim = swiglu_hidden_dim(self.dim, self.multiple_of, self.ffn_dim_multiplier)


# --------------------------------------------------------------------------------------------
# Reference functions (the swap points for fast kernels)
# --------------------------------------------------------------------------------------------


def _rope_angles(head_dim: int, max_seq_len: int, theta: float, device) -> Tensor:
    # Meta: freqs = 1 / theta^(2i/D) for i < D/2, angle = outer(pos, freqs), all in fp32.
    exponents = torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim
    inv_freq = 1.0 / (theta**exponents)  # (D/2,)
    positions = torch.arange(max_seq_len, device=device, dtype=torch.float32)  # (S,)
    return torch.outer(positions, inv_freq)  # (S, D/2)


def precompute_rope(
    head_dim: int, max_seq_len: int, theta: float = 10000.0, *, device=None
) -> tuple[Tensor, Tensor]:
    """cos and sin of the RoPE angles ``pos * theta^(-2i/head_dim)``, each (max_seq_len, head_dim // 2), fp32."""
    angles = _rope_angles(head_dim, max_seq_len, theta, device)  # (S, D/2)
    return torch.cos(angles), torch.sin(angles)


def precompute_freqs_cis(head_dim: int, max_seq_len: int, theta: float = 10000.0, *, device=None) -> Tensor:
    """Meta's complex form of the same table: exp(i * angle), (max_seq_len, head_dim // 2), complex64."""
    angles = _rope_angles(head_dim, max_seq_len, theta, device)  # (S, D/2)
    return torch.polar(torch.ones_like(angles), angles)  # (S, D/2) complex64


def _check_rope_args(x: Tensor, cos: Tensor, sin: Tensor) -> None:
    if x.dim() != 4 or x.shape[-1] % 2 != 0:
        raise ValueError(f"rope expects x of shape (B, T, H, D) with even D, got {tuple(x.shape)}")
    expected = (x.shape[1], x.shape[3] // 2)
    if tuple(cos.shape) != expected or tuple(sin.shape) != expected:
        raise ValueError(
            f"rope expects cos and sin of shape (T, D/2) = {expected}, got {tuple(cos.shape)} and {tuple(sin.shape)}"
        )


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding, Meta's interleaved-pair convention, with real arithmetic.

    x: (B, T, H, D); cos, sin: (T, D/2), already taken at the tokens' positions. Pair
    (x[2i], x[2i+1]) is rotated by the angle whose cos/sin are cos[:, i], sin[:, i].
    Computed in fp32 (float64 stays float64), returned in x's dtype.
    """
    _check_rope_args(x, cos, sin)
    compute_dtype = torch.promote_types(x.dtype, torch.float32)
    pairs = x.to(compute_dtype).unflatten(-1, (-1, 2))  # (B, T, H, D/2, 2)
    x_even, x_odd = pairs.unbind(-1)  # (B, T, H, D/2) each
    cos = cos.to(compute_dtype)[None, :, None, :]  # (1, T, 1, D/2)
    sin = sin.to(compute_dtype)[None, :, None, :]  # (1, T, 1, D/2)
    rotated_even = x_even * cos - x_odd * sin  # (B, T, H, D/2)
    rotated_odd = x_even * sin + x_odd * cos  # (B, T, H, D/2)
    return torch.stack((rotated_even, rotated_odd), dim=-1).flatten(-2).to(x.dtype)  # (B, T, H, D)


def apply_rope_complex(x: Tensor, freqs_cis: Tensor) -> Tensor:
    """Meta's original RoPE: view pairs as complex numbers and multiply by exp(i * angle).

    x: (B, T, H, D); freqs_cis: (T, D/2) complex. Returns x's dtype.
    """
    if x.dim() != 4 or tuple(freqs_cis.shape) != (x.shape[1], x.shape[3] // 2):
        raise ValueError(
            f"apply_rope_complex expects x (B, T, H, D) and freqs_cis (T, D/2), got {tuple(x.shape)} and "
            f"{tuple(freqs_cis.shape)}"
        )
    x_complex = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (B, T, H, D/2)
    freqs_cis = freqs_cis[None, :, None, :]  # (1, T, 1, D/2)
    return torch.view_as_real(x_complex * freqs_cis).flatten(3).type_as(x)  # (B, T, H, D)


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)  # (..., D/2) each
    return torch.cat((-x2, x1), dim=-1)  # (..., D)


def apply_rope_rotate_half(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """HF / GPT-NeoX RoPE: pair x[i] with x[i + D/2] (the two halves), same angles.

    x: (B, T, H, D); cos, sin: (T, D/2). Equals ``apply_rope`` on x whose head dimension was
    permuted from interleaved pairs to halves. Computed in fp32, returned in x's dtype.
    """
    _check_rope_args(x, cos, sin)
    compute_dtype = torch.promote_types(x.dtype, torch.float32)
    xc = x.to(compute_dtype)  # (B, T, H, D)
    cos = torch.cat((cos, cos), dim=-1).to(compute_dtype)[None, :, None, :]  # (1, T, 1, D)
    sin = torch.cat((sin, sin), dim=-1).to(compute_dtype)[None, :, None, :]  # (1, T, 1, D)
    return (xc * cos + _rotate_half(xc) * sin).to(x.dtype)  # (B, T, H, D)


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, S, Hk, D) -> (B, S, Hk * n_rep, D): query head h reads kv head h // n_rep (Meta's repeat_kv)."""
    if n_rep == 1:
        return x
    B, S, Hk, D = x.shape
    return x[:, :, :, None, :].expand(B, S, Hk, n_rep, D).reshape(B, S, Hk * n_rep, D)


def attention_ref(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = True, scale: Optional[float] = None) -> Tensor:
    """Softmax attention, grouped-query, causal mask aligned to the end of the keys.

    q: (B, T, Hq, D); k, v: (B, S, Hk, D) with Hk dividing Hq. With ``causal``, query i attends to
    keys j <= i + S - T (so T queries are the last T positions of the S keys; T <= S required).
    Scores, softmax and the weighted sum are computed in fp32 (float64 stays float64).
    Returns (B, T, Hq, D) in q's dtype. ``scale`` defaults to 1/sqrt(D).
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"attention_ref expects q (B, T, Hq, D), k and v (B, S, Hk, D), got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    B, T, Hq, D = q.shape
    S, Hk = k.shape[1], k.shape[2]
    if k.shape != v.shape or k.shape[0] != B or k.shape[3] != D:
        raise ValueError(
            f"attention_ref expects k and v of shape ({B}, S, Hk, {D}), got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if Hq % Hk != 0:
        raise ValueError(f"attention_ref: kv heads ({Hk}) must divide query heads ({Hq})")
    if causal and T > S:
        raise ValueError(f"attention_ref: causal attention needs T <= S, got T={T} queries and S={S} keys")
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    compute_dtype = torch.promote_types(q.dtype, torch.float32)
    qh = q.to(compute_dtype).transpose(1, 2)  # (B, Hq, T, D)
    kh = repeat_kv(k.to(compute_dtype), Hq // Hk).transpose(1, 2)  # (B, Hq, S, D)
    vh = repeat_kv(v.to(compute_dtype), Hq // Hk).transpose(1, 2)  # (B, Hq, S, D)
    scores = (qh @ kh.transpose(-2, -1)) * scale  # (B, Hq, T, S)
    if causal:
        allowed = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)  # (T, S)
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # (B, Hq, T, S)
    out = probs @ vh  # (B, Hq, T, D)
    return out.transpose(1, 2).to(q.dtype)  # (B, T, Hq, D)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, normalized in fp32 and cast back to x's dtype (as Meta)."""

    def __init__(self, dim: int, eps: float = 1e-6, *, device=None, dtype=None) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim, device=device, dtype=dtype))  # (dim,)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def _norm(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)  # (..., dim)

    def forward(self, x: Tensor) -> Tensor:
        compute_dtype = torch.promote_types(x.dtype, torch.float32)
        return self._norm(x.to(compute_dtype)).type_as(x) * self.weight  # (..., dim)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class Attention(nn.Module):
    """Multi-head (grouped-query) self-attention with RoPE and an optional KV cache.

    Fast kernels replace ``rotate`` (RoPE) and ``attend`` (the attention core) in a subclass.
    """

    def __init__(self, config: LlamaConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.head_dim
        self.wq = nn.Linear(config.dim, config.n_heads * config.head_dim, bias=False, **factory)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False, **factory)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False, **factory)
        self.wo = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False, **factory)
        # KV cache, (max_batch_size, max_seq_len, n_kv_heads, head_dim); allocated by setup_cache.
        self.register_buffer("cache_k", None, persistent=False)
        self.register_buffer("cache_v", None, persistent=False)

    def setup_cache(self, max_batch_size: int, max_seq_len: int, *, dtype: torch.dtype, device) -> None:
        shape = (max_batch_size, max_seq_len, self.n_kv_heads, self.head_dim)
        self.cache_k = torch.zeros(shape, dtype=dtype, device=device)  # (Bmax, Smax, Hk, D)
        self.cache_v = torch.zeros(shape, dtype=dtype, device=device)  # (Bmax, Smax, Hk, D)

    def drop_cache(self) -> None:
        self.cache_k = None
        self.cache_v = None

    def extra_repr(self) -> str:
        return f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}"

    def rotate(self, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """RoPE on queries (B, T, Hq, D) and keys (B, T, Hk, D); cos, sin: (T, D/2)."""
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
        """Attention core: q (B, T, Hq, D), k and v (B, S, Hk, D) -> (B, T, Hq, D)."""
        return attention_ref(q, k, v, causal=causal)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, start_pos: Optional[int] = None) -> Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, Hq, D)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, Hk, D)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, Hk, D)
        q, k = self.rotate(q, k, cos, sin)
        if start_pos is not None:
            # Decoding: store this chunk's keys/values, attend to every position so far.
            end = start_pos + T
            self.cache_k[:B, start_pos:end] = k.to(self.cache_k.dtype)
            self.cache_v[:B, start_pos:end] = v.to(self.cache_v.dtype)
            k = self.cache_k[:B, :end]  # (B, start_pos + T, Hk, D)
            v = self.cache_v[:B, :end]  # (B, start_pos + T, Hk, D)
        out = self.attend(q, k, v, causal=True)  # (B, T, Hq, D)
        return self.wo(out.reshape(B, T, self.n_heads * self.head_dim))  # (B, T, dim)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int, *, device=None, dtype=None) -> None:
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.w1 = nn.Linear(dim, hidden_dim, bias=False, **factory)  # gate
        self.w2 = nn.Linear(hidden_dim, dim, bias=False, **factory)  # down projection
        self.w3 = nn.Linear(dim, hidden_dim, bias=False, **factory)  # up projection

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # (..., dim)

    def extra_repr(self) -> str:
        return f"dim={self.w1.in_features}, hidden_dim={self.w1.out_features}"


class TransformerBlock(nn.Module):
    """Pre-norm block: h = x + attention(norm(x)); out = h + feed_forward(norm(h))."""

    def __init__(self, layer_id: int, config: LlamaConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.layer_id = layer_id
        self.attention_norm = RMSNorm(config.dim, config.norm_eps, **factory)
        self.attention = Attention(config, **factory)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps, **factory)
        self.feed_forward = FeedForward(config.dim, config.ffn_hidden_dim, **factory)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, start_pos: Optional[int] = None) -> Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, start_pos)  # (B, T, dim)
        return h + self.feed_forward(self.ffn_norm(h))  # (B, T, dim)


class Llama(nn.Module):
    """LLaMA language model: tokens (B, T) -> next-token logits (B, T, vocab_size)."""

    def __init__(self, config: LlamaConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim, **factory)
        self.layers = nn.ModuleList(TransformerBlock(i, config, **factory) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps, **factory)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False, **factory)
        # RoPE tables, fp32, (max_seq_len, head_dim // 2); filled by reset_parameters.
        table_shape = (config.max_seq_len, config.head_dim // 2)
        self.register_buffer("rope_cos", torch.empty(table_shape, device=device, dtype=torch.float32), persistent=False)
        self.register_buffer("rope_sin", torch.empty(table_shape, device=device, dtype=torch.float32), persistent=False)
        self.reset_parameters()

    # ---- initialization -------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """N(0, 0.02^2) for every linear and embedding weight, ones for RMSNorm (the paper is silent)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, RMSNorm):
                module.reset_parameters()
        cos, sin = precompute_rope(
            self.config.head_dim, self.config.max_seq_len, self.config.rope_theta, device=self.rope_cos.device
        )
        self.rope_cos = cos  # (max_seq_len, head_dim // 2)
        self.rope_sin = sin  # (max_seq_len, head_dim // 2)

    # ---- KV cache ---------------------------------------------------------------------------

    def setup_kv_cache(
        self,
        max_batch_size: Optional[int] = None,
        max_seq_len: Optional[int] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        """Allocate (zeroed) per-layer KV caches of shape (max_batch_size, max_seq_len, n_kv_heads, head_dim).

        Defaults: the config's max_batch_size and max_seq_len, the model's parameter dtype.
        The caches are non-persistent buffers: they follow ``.to()`` and are not in the state_dict.
        """
        max_batch_size = self.config.max_batch_size if max_batch_size is None else max_batch_size
        max_seq_len = self.config.max_seq_len if max_seq_len is None else max_seq_len
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"setup_kv_cache: max_batch_size must be a positive integer, got {max_batch_size!r}")
        if not isinstance(max_seq_len, int) or not 1 <= max_seq_len <= self.config.max_seq_len:
            raise ValueError(
                f"setup_kv_cache: max_seq_len must be in [1, {self.config.max_seq_len}] (the config's "
                f"max_seq_len), got {max_seq_len!r}"
            )
        weight = self.tok_embeddings.weight
        dtype = weight.dtype if dtype is None else dtype
        for layer in self.layers:
            layer.attention.setup_cache(max_batch_size, max_seq_len, dtype=dtype, device=weight.device)

    def drop_kv_cache(self) -> None:
        """Free the KV caches."""
        for layer in self.layers:
            layer.attention.drop_cache()

    @property
    def kv_cache_shape(self) -> Optional[tuple[int, ...]]:
        """(max_batch_size, max_seq_len, n_kv_heads, head_dim) of the caches, None when not set up."""
        cache = self.layers[0].attention.cache_k
        return None if cache is None else tuple(cache.shape)

    # ---- forward ----------------------------------------------------------------------------

    def _validate_tokens(self, tokens: Tensor, start_pos: Optional[int]) -> None:
        if not isinstance(tokens, Tensor) or tokens.dim() != 2:
            shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"Llama expects tokens of shape (B, T), got {shape}")
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise ValueError(f"Llama expects integer token ids (torch.long), got dtype {tokens.dtype}")
        B, T = tokens.shape
        if T < 1:
            raise ValueError(f"Llama expects at least one token per sequence, got tokens of shape {(B, T)}")
        weights = self.tok_embeddings.weight.device
        if tokens.device != weights:
            raise ValueError(
                f"Llama got tokens on {tokens.device} but its weights are on {weights}; put both on one device, "
                f"e.g. tokens.to({str(weights)!r})"
            )
        vocab = self.config.vocab_size
        if tokens.numel() > 0 and tokens.device.type != "meta" and not torch.compiler.is_compiling():
            low, high = int(tokens.min()), int(tokens.max())
            if low < 0 or high >= vocab:
                raise ValueError(f"Llama expects token ids in [0, {vocab}), got ids in [{low}, {high}]")
        if start_pos is None:
            if T > self.config.max_seq_len:
                raise ValueError(
                    f"Llama expects sequences of at most max_seq_len={self.config.max_seq_len} tokens, got T={T}"
                )
            return
        if not isinstance(start_pos, int) or isinstance(start_pos, bool) or start_pos < 0:
            raise ValueError(f"Llama expects start_pos to be None or a non-negative int, got {start_pos!r}")
        cache_shape = self.kv_cache_shape
        if cache_shape is None:
            raise ValueError("Llama decoding with start_pos needs a KV cache: call model.setup_kv_cache() first")
        cache_batch, cache_len = cache_shape[0], cache_shape[1]
        if B > cache_batch:
            raise ValueError(f"Llama KV cache holds batches of at most {cache_batch}, got batch size B={B}")
        if start_pos + T > cache_len:
            raise ValueError(
                f"Llama KV cache holds {cache_len} positions, got start_pos + T = {start_pos} + {T} = {start_pos + T}"
            )

    def forward(self, tokens: Tensor, *, start_pos: Optional[int] = None) -> Tensor:
        """tokens (B, T) -> logits (B, T, vocab_size), fp32 (float64 for a float64 model).

        ``start_pos=None``: causal forward over the whole sequence (training); the cache is untouched.
        ``start_pos=int``: incremental decoding (inference, use under ``torch.no_grad()``): the tokens
        sit at positions [start_pos, start_pos + T); their keys/values are written to the KV cache and
        attention reads the cached positions [0, start_pos + T).
        """
        self._validate_tokens(tokens, start_pos)
        B, T = tokens.shape
        offset = 0 if start_pos is None else start_pos
        cos = self.rope_cos[offset : offset + T]  # (T, head_dim // 2)
        sin = self.rope_sin[offset : offset + T]  # (T, head_dim // 2)
        h = self.tok_embeddings(tokens)  # (B, T, dim)
        for layer in self.layers:
            h = layer(h, cos, sin, start_pos)  # (B, T, dim)
        logits = self.output(self.norm(h))  # (B, T, vocab)
        return logits.to(torch.promote_types(logits.dtype, torch.float32))  # (B, T, vocab)

    # ---- generation -------------------------------------------------------------------------

    @torch.no_grad()
    def stream(
        self,
        prompt: Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
        eos_id: Optional[int] = None,
    ) -> Iterator[Tensor]:
        """Continue ``prompt`` (B, T0): yield each new token (B,) as it is drawn. Prefill, then
        KV-cache decoding, one token at a time; the sampling rules are ``replab_fast.generation``'s
        (temperature 0 is greedy; top-k, then temperature, then top-p; ``generator`` on the
        model's device). With ``eos_id`` a sequence stops at that token (it repeats from then on)
        and the stream ends when every sequence has stopped. Sets up the KV cache when it is
        missing or too small.
        """
        self._validate_tokens(prompt, None)
        sampling = Sampling(temperature, top_k, top_p)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"generate: max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
        B, T0 = prompt.shape
        total = T0 + max_new_tokens
        if total > self.config.max_seq_len:
            raise ValueError(
                f"generate: prompt length + max_new_tokens = {T0} + {max_new_tokens} = {total} exceeds "
                f"max_seq_len={self.config.max_seq_len}"
            )
        if max_new_tokens == 0:
            return
        cache_shape = self.kv_cache_shape
        if cache_shape is None or cache_shape[0] < B or cache_shape[1] < total:
            self.setup_kv_cache(max_batch_size=B, max_seq_len=total)
        logits = self(prompt, start_pos=0)[:, -1]  # (B, vocab)

        def step(tokens: Tensor, i: int) -> Tensor:
            return self(tokens[:, None], start_pos=T0 + i)[:, -1]  # (B, vocab)

        yield from decode(logits, step, max_new_tokens, sampling, generator=generator, eos_id=eos_id)

    @torch.no_grad()
    def generate(self, prompt: Tensor, max_new_tokens: int, **sampling) -> Tensor:
        """Continue ``prompt`` (B, T0) by up to ``max_new_tokens``: the token ids (B, T0 + n), n the
        number drawn (``max_new_tokens``, or fewer when every sequence reached ``eos_id``).
        Options as :meth:`stream`. Decode the ids with the tokenizer the model was trained with."""
        return collect(prompt, self.stream(prompt, max_new_tokens, **sampling))


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

_BATCH_SEQ_LEN = 64  # tokens per sequence in a random batch (capped by max_seq_len)


def make_batch(model: Llama, batch_size: int, *, generator: torch.Generator):
    """Random token sequences (B, min(max_seq_len, 64)); the target is the same tokens (shifted in the loss)."""
    config = model.config
    seq_len = min(config.max_seq_len, _BATCH_SEQ_LEN)
    tokens = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=generator)  # (B, T)
    tokens = tokens.to(model.tok_embeddings.weight.device)
    return (tokens,), tokens


def next_token_loss(model: Llama, inputs: tuple[Tensor, ...], target: Tensor) -> Tensor:
    """Cross-entropy of logits at positions [0, T-1) against the tokens at [1, T)."""
    logits = model(*inputs)  # (B, T, vocab)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target[:, 1:].reshape(-1))


FAMILY = Family("llama", "Touvron et al. 2023", LlamaConfig, Llama, make_batch, next_token_loss)

SPECS = (
    FAMILY.preset(
        "llama-tiny", "tiny", "LLaMA, CPU-test size (dim 64, 2 layers, 4 heads / 2 kv heads, vocab 256)",
        demo=True,
        overfit=OverfitRecipe(batch_size=4, steps=40, lr=1e-2, below=0.1),  # verified: ~0.002-0.006x at 30 steps
    ),
    FAMILY.preset(
        "llama-cpu", "cpu",
        "LLaMA, CPU-trainable size (dim 128, 4 layers, 4 heads / 2 kv heads, BPE vocab 2048, 128-token context)",
        # measured: 7.66 -> 0.038 in 60 steps at lr 2e-3; lr 1e-2 (llama-tiny's) stalls near 2.0 at this size
        overfit=OverfitRecipe(batch_size=4, steps=60, lr=2e-3, below=0.1),
    ),
    FAMILY.preset(
        "llama-small", "small", "LLaMA, benchmark size (~60M parameters: dim 512, 8 layers, 8 heads, vocab 32000)",
        overfit=None,  # ~60M parameters with a 32k vocabulary: too slow to train in a CPU test
    ),
    FAMILY.preset(
        "llama-7b", "7B", "LLaMA-7B (dim 4096, 32 layers, 32 heads, vocab 32000)", paper_param_count=6_738_415_616,
    ),
    FAMILY.preset(
        "llama-13b", "13B", "LLaMA-13B (dim 5120, 40 layers, 40 heads, vocab 32000)",
        paper_param_count=13_015_864_320,
    ),
)  # fmt: skip
