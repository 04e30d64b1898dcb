"""The LLaMA drop-ins (replab_fast/nn/llama.py, replab_fast/nn/rms_norm.py) in the whole model.

The swapped model (``replab_fast.accelerate``: every TransformerBlock with the fused residual-add +
RMSNorm, a fast attention_norm, and an Attention with the RoPE kernel and the fused attention
kernel inside; the final RMSNorm) must compute the reference model's function with the same
weights, in training (full sequence) and in KV-cache generation (prefill, chunks, and single
tokens through the flash-decoding path).

Tolerances.
- float64 (the kernels then compute in fp64): logits and every parameter gradient within
  1e-10 * scale (scale = max(1, max |reference|)): the two sides differ only in summation order.
- float32: logits within 1e-5 * scale and every parameter gradient within 1e-5 * scale of the
  tensor's own magnitude (the reference model's own fp32-vs-fp64 error on this model is of
  order 1e-6 relative; a wrong rope pair or a missing residual moves the logits by >1e-2).
- A 5-step SGD run from one seed: losses within 1e-5 relative of the reference's, step by step.
- bfloat16 under CPU autocast: the 2x rule on the logits against the float64 model.
The CPU runs the kernels through Triton's interpreter: small shapes, a few seconds per test.
"""

import copy

import pytest
import torch

import replab_fast
from replab_fast import nn as fast_nn
from replab_fast.models import llama as reference
from replab_fast.swap import swapped_kernels
from support import DEVICES

FAST_CLASSES = (fast_nn.RMSNorm, fast_nn.Attention, fast_nn.TransformerBlock)


def tiny(device="cpu", dtype=torch.float32, seed=0, std=0.1):
    """llama-tiny with weights drawn wider than the init, so a wrong rope or mask shows in the logits."""
    torch.manual_seed(seed)
    model = reference.Llama(reference.LlamaConfig.from_name("tiny"), dtype=dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))  # never all ones
            else:
                p.normal_(0.0, std)
    return model.to(device)


def tokens(B=2, T=12, device="cpu", seed=1):
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed)).to(device)


def close(name, fast, ref, rel):
    scale = max(1.0, ref.abs().max().item())
    err = (fast.double() - ref.double()).abs().max().item()
    assert err <= rel * scale, f"{name}: error {err:.3g} > {rel:g} x {scale:.3g}"


def logits_and_grads(model, toks):
    model.zero_grad(set_to_none=True)
    logits = model(toks)
    g = torch.Generator().manual_seed(7)
    dlogits = torch.randn(logits.shape, generator=g, dtype=torch.float64).to(logits)
    logits.backward(dlogits)
    return logits.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


# --------------------------------------------------------------------------------------------
# What is swapped
# --------------------------------------------------------------------------------------------


def test_accelerate_swaps_blocks_their_children_and_final_norm():
    model = tiny()
    params = [id(p) for p in model.parameters()]
    keys = list(model.state_dict())
    assert replab_fast.accelerate(model, interpret=True) is model
    report = model.replab_report
    per_block = [("", ("fused_add_rms_norm",)), (".attention_norm", ("rms_norm",)),
                 (".attention", ("rope", "attention")), (".ffn_norm", ("rms_norm",))]  # fmt: skip
    expected = [(f"layers.{i}{suffix}", k) for i in range(2) for suffix, k in per_block] + [("norm", ("rms_norm",))]
    assert [(e.path, e.kernels) for e in report.swapped] == expected
    assert not report.skipped and not any(e.reason for e in report.entries)
    assert "layers.0.attention [Attention]: swapped (rope, attention)" in str(report)
    assert swapped_kernels(model) == ["attention", "fused_add_rms_norm", "rms_norm", "rope"]
    assert report.kernels() == ["attention", "fused_add_rms_norm", "rms_norm", "rope"]
    for block in model.layers:
        assert type(block) is fast_nn.TransformerBlock
        assert type(block.attention_norm) is fast_nn.RMSNorm
        assert type(block.attention) is fast_nn.Attention
        assert type(block.ffn_norm) is fast_nn.RMSNorm  # the fused kernel reads its weight and eps
    assert type(model.norm) is fast_nn.RMSNorm
    assert [id(p) for p in model.parameters()] == params
    assert list(model.state_dict()) == keys


def test_rms_norm_drop_in_alone():
    torch.manual_seed(0)
    ref = reference.RMSNorm(48, eps=1e-5)
    with torch.no_grad():
        ref.weight.normal_(1.0, 0.2)
    fast = fast_nn.RMSNorm.from_reference(ref)
    assert fast.weight is ref.weight
    assert list(fast.state_dict()) == ["weight"]
    assert "replab_fast.ops.rms_norm" in repr(fast)
    x = torch.randn(3, 7, 48)
    close("rms_norm", fast(x), ref(x.double()).float(), 2e-6)
    swapped = replab_fast.accelerate(ref, interpret=True)  # the model itself is the reference module
    assert type(swapped) is fast_nn.RMSNorm and swapped.weight is ref.weight
    assert replab_fast.restore(swapped) is ref


@pytest.mark.parametrize(
    "flags",
    [dict(), dict(rope=False), dict(attention=False), dict(rms_norm=False), dict(fused_add_rms_norm=False),
     dict(rope=False, attention=False), dict(rope=False, attention=False, rms_norm=False, fused_add_rms_norm=False)],
)  # fmt: skip
def test_each_kernel_turns_off_on_its_own(flags):
    model = tiny()
    toks = tokens(T=6)
    expected = model(toks)
    replab_fast.accelerate(model, **flags, interpret=True)
    on = lambda kernel: flags.get(kernel, True)  # noqa: E731
    for block in model.layers:
        assert (type(block) is fast_nn.TransformerBlock) == on("fused_add_rms_norm")
        assert (type(block.attention) is fast_nn.Attention) == (on("rope") or on("attention"))
        if type(block.attention) is fast_nn.Attention:
            assert block.attention.kernels == tuple(k for k in ("rope", "attention") if on(k))
        assert (type(block.attention_norm) is fast_nn.RMSNorm) == on("rms_norm")
        assert (type(block.ffn_norm) is fast_nn.RMSNorm) == on("rms_norm")
    assert (type(model.norm) is fast_nn.RMSNorm) == on("rms_norm")
    for kernel in flags:
        assert f"{kernel} disabled by the caller" in str(model.replab_report)
    close(f"logits {flags}", model(toks), expected, 1e-5)
    replab_fast.restore(model)
    assert not any(isinstance(m, FAST_CLASSES) for m in model.modules())


def test_accelerate_twice_says_already_accelerated_and_changes_nothing():
    model = tiny()
    replab_fast.accelerate(model, interpret=True)
    modules, report = list(model.modules()), model.replab_report
    with pytest.warns(UserWarning, match="already accelerated.*restore"):
        assert replab_fast.accelerate(model, interpret=True, rope=False) is model
    assert list(model.modules()) == modules and model.replab_report is report
    replab_fast.restore(model)
    assert not any(isinstance(m, FAST_CLASSES) for m in model.modules())


def test_on_a_cpu_a_plain_accelerate_swaps_no_interpreted_kernel():
    """Off CUDA the Triton kernels only run through the interpreter: swapped only when asked."""
    model = tiny()
    assert replab_fast.accelerate(model) is model
    assert not model.replab_report.swapped and not any(isinstance(m, FAST_CLASSES) for m in model.modules())
    kept = model.replab_report.skipped
    assert {e.reference for e in kept} == {"TransformerBlock", "RMSNorm", "Attention"}
    for entry in kept:
        assert "Triton kernels run on a CPU only through the interpreter (slow); pass interpret=True to check parity" in entry.reason
    replab_fast.restore(model)
    replab_fast.accelerate(model, interpret=True)  # nothing was swapped: a second call may swap
    assert model.replab_report.kernels() == ["attention", "fused_add_rms_norm", "rms_norm", "rope"]


def test_check_says_why_when_triton_is_missing(monkeypatch):
    import replab_fast.kernels

    monkeypatch.setattr(replab_fast.kernels, "unavailable_reason", lambda: "Triton is not installed (pip install triton; Linux only)")
    model = tiny()
    replab_fast.accelerate(model, interpret=True)
    assert not model.replab_report.swapped
    assert "fused_add_rms_norm: Triton is not installed" in str(model.replab_report)
    assert "rms_norm: Triton is not installed" in str(model.replab_report)


def test_rope_and_attention_are_used_as_enabled(monkeypatch):
    """The Attention drop-in calls exactly the ops of the kernels it was built with."""
    from replab_fast import ops

    calls = {"rope": 0, "attention": 0}
    for name in calls:
        real = getattr(ops, name)

        def counting(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(ops, name, counting)
    for flags, expected in [(dict(), (2, 2)), (dict(rope=False), (0, 2)), (dict(attention=False), (2, 0))]:
        calls.update(rope=0, attention=0)
        model = replab_fast.accelerate(tiny(), **flags, interpret=True)
        model(tokens(T=4))
        assert (calls["rope"], calls["attention"]) == expected, flags  # one call per layer
        left_out = [e.reason for e in model.replab_report.swapped if e.path.endswith("attention")]
        assert left_out == ["; ".join(f"{k} disabled by the caller" for k in flags)] * 2


def test_attention_check_gives_its_reason():
    """A head dim the attention kernels do not take: the drop-in still carries rope, and says why."""
    config = reference.LlamaConfig(dim=48, n_layers=1, n_heads=6, n_kv_heads=2, vocab_size=32, multiple_of=16,
                                   max_seq_len=16)  # fmt: skip
    torch.manual_seed(0)
    model = reference.Llama(config)  # head dim 8
    toks = tokens(T=5)
    with torch.no_grad():
        expected = model(toks % 32)
    replab_fast.accelerate(model, interpret=True)
    entry = next(e for e in model.replab_report.swapped if e.path == "layers.0.attention")
    assert entry.kernels == ("rope",)
    assert entry.reason == "attention: head dim 8 unsupported (the attention kernels take 16 to 256)"
    assert "swapped (rope); left out: attention: head dim 8 unsupported" in str(model.replab_report)
    with torch.no_grad():
        close("logits", model(toks % 32), expected, 1e-5)


def test_attend_promotes_a_float32_cache_under_autocast():
    """bfloat16 queries against a float32 KV cache (autocast generation): computed in float32, as
    the reference computes, and returned in the queries' dtype."""
    ref = reference.Attention(reference.LlamaConfig.from_name("tiny"))
    fast = fast_nn.Attention.from_reference(ref)
    g = torch.Generator().manual_seed(8)
    q = torch.randn(2, 1, 4, 16, generator=g).bfloat16()
    k, v = torch.randn(2, 2, 9, 2, 16, generator=g).unbind(0)
    out = fast.attend(q, k, v, causal=True)
    expected = ref.attend(q, k, v, causal=True)
    assert out.dtype == expected.dtype == torch.bfloat16
    close("attend", out, expected, 2 ** -8)  # the same fp32 result, rounded once to bfloat16


def test_meta_model_is_not_swapped():
    with torch.device("meta"):
        model = reference.Llama(reference.LlamaConfig.from_name("tiny"))
    replab_fast.accelerate(model, interpret=True)
    assert not model.replab_report.swapped
    assert "is on meta" in str(model.replab_report)


# --------------------------------------------------------------------------------------------
# Parity: logits, every parameter gradient, training, decoding
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("T", [12, 40])  # 40 tokens x 2 heads per KV head > 64 rows: the FlashAttention-2
# forward kernel; 12: the few-rows (flash-decoding) forward. Same backward kernels.
@pytest.mark.parametrize("dtype,rel_logits,rel_grads", [(torch.float64, 1e-10, 1e-10), (torch.float32, 1e-5, 1e-5)])
def test_swapped_model_matches_reference(dtype, rel_logits, rel_grads, T, device):
    ref = tiny(device, dtype)
    fast = replab_fast.accelerate(copy.deepcopy(ref), interpret=True)
    toks = tokens(T=T, device=device)
    ref_logits, ref_grads = logits_and_grads(ref, toks)
    fast_logits, fast_grads = logits_and_grads(fast, toks)
    close("logits", fast_logits, ref_logits, rel_logits)
    assert fast_grads.keys() == ref_grads.keys()
    for name, g in ref_grads.items():
        assert g.abs().max() > 0, f"{name} got no gradient"
        scale = g.abs().max().item()
        err = (fast_grads[name].double() - g.double()).abs().max().item()
        assert err <= rel_grads * max(scale, 1e-3), f"grad {name}: error {err:.3g} vs magnitude {scale:.3g}"


def test_bfloat16_autocast_follows_the_2x_rule():
    ref = tiny()
    fast = replab_fast.accelerate(copy.deepcopy(ref), interpret=True)
    toks = tokens()
    with torch.no_grad():
        exact = copy.deepcopy(ref).double()(toks)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref_low = ref(toks)
            fast_low = fast(toks)
    ref_err = (ref_low.double() - exact).abs().max().item()
    fast_err = (fast_low.double() - exact).abs().max().item()
    assert fast_err <= 2 * ref_err + 1e-3, (fast_err, ref_err)


def test_short_training_run_follows_the_reference():
    spec = replab_fast.get_spec("llama-tiny")
    losses = {}
    for which in ("reference", "fast"):
        model = tiny(seed=3, std=0.02)
        if which == "fast":
            replab_fast.accelerate(model, interpret=True)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        toks = tokens(B=2, T=16, seed=4)
        curve = []
        for _ in range(5):
            optimizer.zero_grad(set_to_none=True)
            loss = spec.loss(model, (toks,), toks)
            loss.backward()
            optimizer.step()
            curve.append(loss.item())
        losses[which] = curve
    assert losses["fast"][-1] < losses["fast"][0]  # it trains
    for step, (a, b) in enumerate(zip(losses["fast"], losses["reference"])):
        assert abs(a - b) <= 1e-5 * abs(b), f"step {step}: {a} vs {b}"


@pytest.mark.parametrize("device", DEVICES)
def test_kv_cache_generation_matches_reference(device):
    ref = tiny(device)
    fast = replab_fast.accelerate(copy.deepcopy(ref), interpret=True)
    prompt = tokens(B=2, T=5, device=device, seed=5)
    expected = ref.generate(prompt, 6)
    assert torch.equal(fast.generate(prompt, 6), expected)
    # Chunked prefill at an offset: the rope kernel reads the tables at the tokens' positions, the
    # attention kernel reads the cache in place with the causal mask aligned to its end (the last
    # chunk, 40 tokens against 45 keys, goes through the FlashAttention-2 forward; the others
    # through flash-decoding).
    fast.setup_kv_cache(max_batch_size=3, max_seq_len=48)
    ref.setup_kv_cache(max_batch_size=3, max_seq_len=48)
    toks = tokens(B=2, T=45, device=device, seed=6)
    with torch.no_grad():
        for start, end in [(0, 4), (4, 5), (5, 45)]:
            close(f"decode [{start}, {end})", fast(toks[:, start:end], start_pos=start),
                  ref(toks[:, start:end], start_pos=start), 1e-5)  # fmt: skip


def test_accelerate_restore_round_trip_with_training_and_decoding():
    model = tiny()
    originals = {p: m for p, m in model.named_modules() if p}
    toks = tokens()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    replab_fast.accelerate(model, interpret=True)
    spec = replab_fast.get_spec("llama-tiny")
    spec.loss(model, (toks,), toks).backward()
    optimizer.step()  # built before the swap: trains the same tensors
    model.generate(toks[:, :3], 4)  # sets up a KV cache while accelerated
    with torch.no_grad():
        trained = model(toks)
    assert replab_fast.restore(model) is model
    for path, module in model.named_modules():
        if path:
            assert module is originals[path]
    assert not any(isinstance(m, FAST_CLASSES) for m in model.modules())
    assert model.kv_cache_shape is not None  # the cache set up while accelerated came back too
    with torch.no_grad():
        close("logits after restore", model(toks), trained, 1e-5)
