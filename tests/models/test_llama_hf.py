"""Conversion between our LLaMA and Hugging Face's LlamaForCausalLM (replab_fast/models/llama_hf.py):
the same logits from the same weights, both ways. transformers is a test extra."""

import pytest
import torch

from replab_fast.models.llama import Llama, LlamaConfig
from replab_fast.models.llama_hf import config_from_hf, from_hf, hf_config_kwargs, to_hf

transformers = pytest.importorskip("transformers", reason="transformers (a test extra) is not installed")


def random_hf_model(seed=0, **overrides):
    torch.manual_seed(seed)
    kwargs = dict(vocab_size=97, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=48, rope_theta=5000.0)
    kwargs.update(overrides)
    config = transformers.LlamaConfig(**kwargs)
    config._attn_implementation = "eager"
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms away from 1, so a swapped norm shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
    return model


def tokens(vocab, shape=(2, 13), seed=1):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("overrides", [{}, dict(num_key_value_heads=4), dict(intermediate_size=200)],
                         ids=["gqa", "mha", "wide-ffn"])
def test_a_hugging_face_llama_loads_here_with_the_same_logits(overrides):
    hf = random_hf_model(**overrides)
    config = config_from_hf(hf.config)
    assert config.ffn_hidden_dim == hf.config.intermediate_size and config.n_kv_heads == hf.config.num_key_value_heads
    ours = Llama(config).eval()
    ours.load_state_dict(from_hf(hf.state_dict(), config))
    toks = tokens(config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(ours(toks), hf(toks).logits, rtol=1e-5, atol=1e-5)


def test_ours_loads_there_and_the_round_trip_is_exact():
    torch.manual_seed(3)
    config = LlamaConfig.from_name("tiny", vocab_size=101, max_seq_len=40)
    ours = Llama(config).eval()
    hf_config = transformers.LlamaConfig(**hf_config_kwargs(config))
    hf_config._attn_implementation = "eager"
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    hf.load_state_dict(to_hf(ours.state_dict(), config))
    toks = tokens(101)
    with torch.no_grad():
        torch.testing.assert_close(hf(toks).logits, ours(toks), rtol=1e-5, atol=1e-5)
    back = from_hf(to_hf(ours.state_dict(), config), config)
    for key, value in ours.state_dict().items():
        assert torch.equal(back[key], value), key


def test_without_the_permutation_the_logits_differ():
    """The wq/wk permutation is what makes the two rotary layouts agree (the test can fail)."""
    hf = random_hf_model(seed=4)
    config = config_from_hf(hf.config)
    state = from_hf(hf.state_dict(), config)
    state = {k: v for k, v in state.items()}
    for i in range(config.n_layers):  # undo the permutation by loading HF's rows as they are
        state[f"layers.{i}.attention.wq.weight"] = hf.state_dict()[f"model.layers.{i}.self_attn.q_proj.weight"]
        state[f"layers.{i}.attention.wk.weight"] = hf.state_dict()[f"model.layers.{i}.self_attn.k_proj.weight"]
    ours = Llama(config).eval()
    ours.load_state_dict(state)
    toks = tokens(config.vocab_size)
    with torch.no_grad():
        assert (ours(toks) - hf(toks).logits).abs().max() > 1e-3


def test_tied_embeddings_and_bad_state_dicts():
    hf = random_hf_model(seed=5, tie_word_embeddings=True)
    config = config_from_hf(hf.config)
    state = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    ours = Llama(config).eval()
    ours.load_state_dict(from_hf(state, config))
    assert torch.equal(ours.output.weight, hf.model.embed_tokens.weight)
    with pytest.raises(ValueError, match="missing .*model.norm.weight"):
        from_hf({k: v for k, v in state.items() if k != "model.norm.weight"}, config)
    with pytest.raises(ValueError, match="unexpected .*extra"):
        to_hf({**Llama(config).state_dict(), "extra": torch.zeros(1)}, config)
