"""Conversion between this LLaMA (``replab_fast.models.llama``) and Hugging Face's
``LlamaForCausalLM``: state_dicts both ways and the configs, so an existing LLaMA-architecture
checkpoint loads here and one trained here loads there.

The two differ in names and in one layout: Meta's (and this) rotary embedding rotates the
interleaved pairs (x[2i], x[2i+1]) of each head, Hugging Face's rotates the halves (x[i],
x[i + D/2]). The same function results when each head's rows of wq and wk are reordered from
pairs to halves (what transformers' ``convert_llama_weights_to_hf`` does): row 2i of a head goes
to row i, row 2i+1 to row i + D/2. ``to_hf`` applies that permutation and ``from_hf`` its
inverse; everything else is a rename. transformers is not needed here (only for building the
model from the converted weights), so this module imports nothing of it.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .llama import LlamaConfig

__all__ = ["config_from_hf", "from_hf", "hf_config_kwargs", "to_hf"]

# ours -> Hugging Face's, per layer ({i} is the layer index); the embedding, final norm and head apart
_LAYER_NAMES = {
    "attention_norm.weight": "input_layernorm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}  # fmt: skip


def _pairs_to_halves(w: Tensor, n_heads: int) -> Tensor:
    """(n_heads * D, in) rows of each head reordered from pairs (2i, 2i+1) to halves (i, i + D/2)."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _halves_to_pairs(w: Tensor, n_heads: int) -> Tensor:
    """The inverse of ``_pairs_to_halves``."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def _names(config: LlamaConfig) -> dict[str, str]:
    names = dict(_TOP_NAMES)
    for i in range(config.n_layers):
        names.update({f"layers.{i}.{ours}": f"model.layers.{i}.{theirs}" for ours, theirs in _LAYER_NAMES.items()})
    return names


def _convert(state: dict[str, Tensor], names: dict[str, str], config: LlamaConfig, permute) -> dict[str, Tensor]:
    missing = sorted(set(names) - set(state))
    unexpected = sorted(set(state) - set(names))
    if missing or unexpected:
        raise ValueError(f"state_dict does not match a LLaMA of this config: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}")  # fmt: skip
    out = {}
    for source, target in names.items():
        w = state[source]
        if source.endswith(("attention.wq.weight", "self_attn.q_proj.weight")):
            w = permute(w, config.n_heads)
        elif source.endswith(("attention.wk.weight", "self_attn.k_proj.weight")):
            w = permute(w, config.n_kv_heads)
        out[target] = w.contiguous()
    return out


def to_hf(state: dict[str, Tensor], config: LlamaConfig) -> dict[str, Tensor]:
    """Our state_dict -> a ``LlamaForCausalLM`` state_dict (wq and wk permuted to halves)."""
    return _convert(state, _names(config), config, _pairs_to_halves)


def from_hf(state: dict[str, Tensor], config: LlamaConfig) -> dict[str, Tensor]:
    """A ``LlamaForCausalLM`` state_dict -> ours (wq and wk permuted back to pairs). A checkpoint
    with tied embeddings (no ``lm_head.weight``) gets the embedding as its output layer."""
    state = dict(state)
    state.setdefault("lm_head.weight", state.get("model.embed_tokens.weight"))
    state = {k: v for k, v in state.items() if v is not None and not k.endswith("rotary_emb.inv_freq")}
    theirs = {v: k for k, v in _names(config).items()}
    return _convert(state, theirs, config, _halves_to_pairs)


def hf_config_kwargs(config: LlamaConfig) -> dict[str, Any]:
    """The ``transformers.LlamaConfig`` arguments of the same architecture."""
    return dict(
        vocab_size=config.vocab_size, hidden_size=config.dim, intermediate_size=config.ffn_hidden_dim,
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads, head_dim=config.head_dim, rms_norm_eps=config.norm_eps,
        rope_theta=config.rope_theta, max_position_embeddings=config.max_seq_len, hidden_act="silu",
        attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
    )  # fmt: skip


def config_from_hf(hf_config: Any, **overrides: Any) -> LlamaConfig:
    """A LlamaConfig of the architecture of a ``transformers.LlamaConfig`` (or its dict).

    The SwiGLU hidden size is the Hugging Face config's ``intermediate_size`` exactly: ours is
    derived from dim, multiple_of and ffn_dim_multiplier (rounded up to a multiple of
    multiple_of), so ``multiple_of`` is set to that size itself, with a multiplier below 1 where it
    is smaller than 2/3 of 4 * dim.
    """
    get = hf_config.get if isinstance(hf_config, dict) else lambda k, d=None: getattr(hf_config, k, d)
    rope = get("rope_parameters") or {}
    theta = rope.get("rope_theta", get("rope_theta", 10000.0)) if isinstance(rope, dict) else get("rope_theta", 10000.0)
    hidden = get("intermediate_size")
    fields = dict(
        dim=get("hidden_size"), n_layers=get("num_hidden_layers"), n_heads=get("num_attention_heads"),
        n_kv_heads=get("num_key_value_heads") or get("num_attention_heads"), vocab_size=get("vocab_size"),
        norm_eps=get("rms_norm_eps"), rope_theta=float(theta), max_seq_len=get("max_position_embeddings"),
        multiple_of=hidden,
    )  # fmt: skip
    base = int(2 * 4 * fields["dim"] / 3)  # swiglu_hidden_dim before the multiplier and the rounding
    fields["ffn_dim_multiplier"] = hidden / base if hidden < base else None
    fields.update(overrides)
    config = LlamaConfig(**fields)
    if config.ffn_hidden_dim != hidden:
        raise ValueError(f"intermediate_size {hidden} cannot be expressed as this LLaMA's SwiGLU hidden size "
                         f"(got {config.ffn_hidden_dim})")  # fmt: skip
    head_dim = get("head_dim")
    if head_dim is not None and head_dim != config.head_dim:
        raise ValueError(f"head_dim {head_dim} differs from hidden_size / num_attention_heads = {config.head_dim}")
    return config
