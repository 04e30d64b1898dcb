"""What each model's initialization rule says every parameter should look like at initialization.

``expected_init(model)`` maps parameter names to an :class:`ExpectedInit`: the standard deviation
the rule gives (a uniform(-a, a) draw has std a / sqrt(3)) or the constant it sets. The rules are
written from each model file's paper-vs-code note (and the papers it cites), not read back from
its ``reset_parameters``, so that ``replab-fast diagnose`` compares the code against what it
documents:

- LeNet-5 (``lecun98``): every weight and bias U(+-2.4/F_i), F_i the unit's fan-in (Appendix A);
  the C3 maps of Table I have 3, 4 or 6 inputs, so one tensor mixes three ranges (its expected std
  is their root mean square); ``he`` (the modern preset): He-uniform +-sqrt(6/F_i) before a ReLU,
  +-sqrt(3/F_i) for the output layer, zero biases;
- AlexNet: weights N(0, init_std^2) (0.01 in the paper); biases 1 in conv2, conv4, conv5, FC6 and
  FC7, 0 elsewhere (Section 5);
- the MLP autoencoders: Glorot-uniform +-gain sqrt(6/(F_in + F_out)), gain 4 for a layer that
  feeds logistic units, zero biases; the conv autoencoder: the same with gain 1;
- LLaMA: linear and embedding weights N(0, 0.02^2), RMSNorm weights 1;
- the LSTM models: every parameter U(-r, r), r = init_range or 1/sqrt(H);
- any other model: PyTorch's defaults for the standard layers it is built of (Linear and Conv
  weights and biases U(+-1/sqrt(F_in)), Embedding N(0, 1), norms' weights 1 and biases 0, the
  recurrent layers U(+-1/sqrt(H))); a parameter of a layer of its own has no rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from torch import Tensor, nn

from ..models.alexnet import AlexNet
from ..models.autoencoder import ConvAutoencoder, MLPAutoencoder
from ..models.lenet import LeNet5, PartialConv2d, Subsampling
from ..models.llama import Llama, RMSNorm
from ..models.lstm import LSTM, LSTMClassifier, LSTMLanguageModel

__all__ = ["ExpectedInit", "expected_init"]


@dataclass(frozen=True)
class ExpectedInit:
    std: float  # the rule's standard deviation (0 for a constant)
    rule: str  # the rule in words, with where it is documented
    constant: Optional[float] = None  # the value a constant rule sets


Rules = Iterator[tuple[str, ExpectedInit]]  # (parameter name, what its rule gives)


def uniform(bound: float, rule: str) -> ExpectedInit:
    return ExpectedInit(bound / math.sqrt(3.0), rule)


def normal(std: float, rule: str) -> ExpectedInit:
    return ExpectedInit(std, rule)


def constant(value: float, rule: str) -> ExpectedInit:
    return ExpectedInit(0.0, rule, constant=value)


def uniform_mixture(parts: list[tuple[int, float]], rule: str) -> ExpectedInit:
    """One tensor whose parts are drawn from different ranges: ``parts`` = (count, bound) pairs;
    the std of the whole (zero-mean parts) is the root mean square of the parts' stds."""
    total = sum(count for count, _ in parts)
    variance = sum(count * bound**2 / 3.0 for count, bound in parts) / total
    return ExpectedInit(math.sqrt(variance), rule)


def fans(weight: Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight as PyTorch counts them: dims 1 and 0 times the kernel's size."""
    receptive = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def _name(prefix: str, parameter: str) -> str:
    return f"{prefix}.{parameter}" if prefix else parameter


# ---- the papers' rules ----------------------------------------------------------------------


def _lenet5(model: LeNet5) -> Rules:
    he = model.config.init == "he"
    output = model.classifier.output
    for prefix, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = fans(module.weight)[0]
            if he:
                share = 3 if module is output else 6
                rule = f"He-uniform +-sqrt({share}/F_i), F_i = {fan_in}"
                yield _name(prefix, "weight"), uniform(math.sqrt(share / fan_in), rule)
                yield _name(prefix, "bias"), constant(0.0, "zero (He init)")
            else:
                for parameter in ("weight", "bias"):
                    yield _name(prefix, parameter), uniform(2.4 / fan_in, f"U(+-2.4/F_i), F_i = {fan_in} (App. A)")
        elif isinstance(module, Subsampling):
            fan_in = module.window**2
            for parameter in ("weight", "bias"):
                yield _name(prefix, parameter), uniform(2.4 / fan_in, f"U(+-2.4/F_i), F_i = {fan_in} (App. A)")
        elif isinstance(module, PartialConv2d):
            yield from _lenet5_partial_conv(prefix, module)


def _lenet5_partial_conv(prefix: str, module: PartialConv2d) -> Rules:
    """C3: output map j sees n_j input maps of Table I, so its fan-in is n_j k^2."""
    area = module.kernel_size**2
    fan_ins = [n * area for n in module.inputs_per_output]
    rule = f"U(+-2.4/F_i), F_i = {'/'.join(map(str, sorted(set(fan_ins))))} by map (App. A, Table I)"
    kernels = [(n * area, 2.4 / fan_in) for n, fan_in in zip(module.inputs_per_output, fan_ins)]
    yield _name(prefix, "weight"), uniform_mixture(kernels, rule)
    yield _name(prefix, "bias"), uniform_mixture([(1, 2.4 / fan_in) for fan_in in fan_ins], rule)


ALEXNET_BIAS_ONE = ("conv2", "conv4", "conv5", "fc6", "fc7")  # Section 5: the rest have bias 0


def _alexnet(model: AlexNet) -> Rules:
    std = model.config.init_std
    for prefix, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            bias = 1.0 if prefix.rsplit(".", 1)[-1] in ALEXNET_BIAS_ONE else 0.0
            yield _name(prefix, "weight"), normal(std, f"N(0, {std:g}^2) (Sec. 5)")
            yield _name(prefix, "bias"), constant(bias, f"{bias:g} (Sec. 5)")


def _glorot(layer: nn.Module, prefix: str, gain: float) -> Rules:
    fan_in, fan_out = fans(layer.weight)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    times = f"{gain:g} x " if gain != 1 else ""
    yield _name(prefix, "weight"), uniform(bound, f"Glorot-uniform +-{times}sqrt(6/({fan_in}+{fan_out}))")
    if layer.bias is not None:
        yield _name(prefix, "bias"), constant(0.0, "zero")


def _mlp_autoencoder(model: MLPAutoencoder) -> Rules:
    """Gain 4 for a layer that feeds logistic units: the hidden layers of a logistic net, and the
    output layer of a logistic output; the linear code layer has gain 1."""
    c = model.config
    for part in ("encoder", "decoder"):
        for name, layer in getattr(model, part).named_children():
            if not isinstance(layer, nn.Linear):
                continue
            hidden = name not in ("code", "output")
            feeds_logistic = c.hidden_activation == "logistic" if hidden else (
                name == "output" and c.output_activation == "logistic")  # fmt: skip
            yield from _glorot(layer, f"{part}.{name}", 4.0 if feeds_logistic else 1.0)


def _conv_autoencoder(model: ConvAutoencoder) -> Rules:
    for prefix, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            yield from _glorot(module, prefix, 1.0)


def _llama(model: Llama) -> Rules:
    for prefix, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            yield _name(prefix, "weight"), normal(0.02, "N(0, 0.02^2) (GPT-2 style, the note)")
        elif isinstance(module, RMSNorm):
            yield _name(prefix, "weight"), constant(1.0, "1 (RMSNorm)")


def _lstm_stack(model: nn.Module) -> Rules:
    c = model.config
    bound = c.init_range if c.init_range is not None else 1.0 / math.sqrt(c.hidden_size)
    source = f"init_range {c.init_range:g}" if c.init_range is not None else f"1/sqrt(H), H = {c.hidden_size}"
    for name, _ in model.named_parameters():
        yield name, uniform(bound, f"U(+-{bound:.4g}), {source}")


# ---- PyTorch's defaults ---------------------------------------------------------------------


def _torch_default(module: nn.Module, prefix: str) -> Rules:
    """The rules torch's own layers initialize with (their reset_parameters)."""
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
        fan_in = fans(module.weight)[0]
        rule = uniform(1 / math.sqrt(fan_in), f"U(+-1/sqrt(F_i)), F_i = {fan_in} (torch)")
        for parameter in ("weight", "bias"):
            if getattr(module, parameter, None) is not None:
                yield _name(prefix, parameter), rule
    elif isinstance(module, nn.Embedding):
        yield _name(prefix, "weight"), normal(1.0, "N(0, 1) (torch)")
    elif isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, RMSNorm, nn.RMSNorm)):
        for parameter, value in (("weight", 1.0), ("bias", 0.0)):
            if getattr(module, parameter, None) is not None:
                yield _name(prefix, parameter), constant(value, f"{value:g} (torch)")
    elif isinstance(module, (nn.RNNBase, LSTM)):
        bound = 1 / math.sqrt(module.hidden_size)
        for parameter, _ in module.named_parameters(recurse=False):
            yield _name(prefix, parameter), uniform(bound, f"U(+-1/sqrt(H)), H = {module.hidden_size} (torch)")


def _torch_defaults(model: nn.Module) -> Rules:
    for prefix, module in model.named_modules():
        yield from _torch_default(module, prefix)


RULES: tuple[tuple[type, Callable[..., Rules]], ...] = (
    (LeNet5, _lenet5),
    (AlexNet, _alexnet),
    (MLPAutoencoder, _mlp_autoencoder),
    (ConvAutoencoder, _conv_autoencoder),
    (Llama, _llama),
    (LSTMLanguageModel, _lstm_stack),
    (LSTMClassifier, _lstm_stack),
)


def expected_init(model: nn.Module) -> dict[str, ExpectedInit]:
    """{parameter name: what its initialization rule gives}; a parameter without a known rule is absent."""
    rules = next((rules for cls, rules in RULES if isinstance(model, cls)), _torch_defaults)
    return dict(rules(model))
