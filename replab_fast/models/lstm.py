"""Long Short-Term Memory.

Hochreiter, S. & Schmidhuber, J. (1997). "Long Short-Term Memory". Neural Computation 9(8),
1735-1780. With the forget gate of Gers, F. A., Schmidhuber, J. & Cummins, F. (2000).
"Learning to Forget: Continual Prediction with LSTM". Neural Computation 12(10), 2451-2471.
The language-model presets follow the word-level setup of Zaremba, W., Sutskever, I. &
Vinyals, O. (2014). "Recurrent Neural Network Regularization". arXiv:1409.2329.

One step of the cell, per layer, with gates in torch.nn.LSTM's order (i, f, g, o):

    i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)      input gate
    f = sigmoid(W_if x + b_if + W_hf h + b_hf)      forget gate (Gers et al. 2000)
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)         cell input
    o = sigmoid(W_io x + b_io + W_ho h + b_ho)      output gate
    c' = f * c + i * g                              the constant error carousel, gated
    h' = o * tanh(c')

Paper vs code
-------------
- Forget gate: the 1997 cell has none; its memory cell is the "constant error carousel"
  c' = c + i * g, a self-connection of fixed weight 1.0. The forget gate f (Gers et al. 2000),
  which lets the cell reset itself, is what every modern LSTM (and torch.nn.LSTM) uses, so it
  is included; with f fixed to 1 the 1997 cell is recovered.
- Squashing functions: the 1997 paper squashes the cell input with a sigmoid scaled to [-2, 2]
  and the cell output with one scaled to [-1, 1]; this code uses tanh for both (torch's and
  common practice).
- Gradients: the 1997 paper truncates the error flow (errors arriving at the gates' and cell
  input's nets are not propagated back further in time; only the carousel carries error) and
  trains with its own real-time learning rule. This code uses full backpropagation through time
  by autograd, as all modern LSTMs do.
- No peephole connections (Gers & Schmidhuber 2000), no memory-cell blocks sharing gates (the
  1997 paper groups cells into blocks; here every cell has its own gates), no projection layer.
- Unidirectional only: no ``bidirectional`` option (torch.nn.LSTM has one); always with biases.
  torch.nn.LSTM's redundant pair of biases (``bias_ih`` and ``bias_hh``, added together) is kept so
  that state_dicts load both ways between :class:`LSTM` and torch.nn.LSTM.
- Parameters have torch.nn.LSTM's exact names, shapes and gate order: ``weight_ih_l{k}`` (4H, in),
  ``weight_hh_l{k}`` (4H, H), ``bias_ih_l{k}`` (4H,), ``bias_hh_l{k}`` (4H,), rows [i; f; g; o].
  Inputs must be batched (3-d); torch.nn.LSTM also accepts an unbatched 2-d input.
- Dropout between stacked layers (on every layer's output but the last's, in training mode) as
  torch.nn.LSTM does; the heads also drop the embedding output and the top LSTM output before the
  linear layer (Zaremba et al. 2014: dropout on the non-recurrent connections only). One
  ``dropout`` field sets all of these.
- Initialization, a deliberate choice: every parameter uniform(-1/sqrt(H), 1/sqrt(H)), which is
  torch.nn.LSTM's default. The 1997 experiments drew weights uniformly from [-0.1, 0.1] or
  [-0.2, 0.2] depending on the experiment and gave the output gates (and in some experiments the
  input gates) negative biases so the cells start closed; there is no single paper initialization
  to reproduce, and the torch default keeps :class:`LSTM` identical to torch.nn.LSTM at init.
  The heads apply the same uniform range to every parameter (embedding and output layer too), as
  Zaremba et al. do; their medium model sets the range to 0.05 (``init_range``).
- Heads (the 1997 paper has no embeddings or vocabularies): a language model (embedding -> LSTM ->
  linear to the vocabulary, next-token cross-entropy; Zaremba et al.'s setup, untied embeddings)
  and a sequence classifier (embedding -> LSTM -> top layer's last hidden state -> linear).
  The classifier reads the hidden state after the last position: sequences are fixed-length, no
  padding masks. An LSTM has no maximum length, so no sequence is too long; the language model's
  ``seq_len`` is only the unroll length of the batches ``make_batch`` draws (Zaremba: 35).
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
from .registry import Batch, Family, OverfitRecipe

State = tuple[Tensor, Tensor]  # (h, c), each (num_layers, B, H)


def lstm_cell(
    x: Tensor, h: Tensor, c: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor, bias_hh: Tensor
) -> State:
    """One time step of one LSTM layer.

    x (B, in), h (B, H), c (B, H); weight_ih (4H, in), weight_hh (4H, H), biases (4H,), gate rows
    in the order i, f, g, o. Returns the next (h, c), each (B, H).
    """
    gates = F.linear(x, weight_ih, bias_ih) + F.linear(h, weight_hh, bias_hh)  # (B, 4H)
    i, f, g, o = gates.chunk(4, dim=1)  # each (B, H)
    input_gate = torch.sigmoid(i)  # (B, H)
    forget_gate = torch.sigmoid(f)  # (B, H)
    cell_input = torch.tanh(g)  # (B, H)
    output_gate = torch.sigmoid(o)  # (B, H)
    c_next = forget_gate * c + input_gate * cell_input  # (B, H)
    h_next = output_gate * torch.tanh(c_next)  # (B, H)
    return h_next, c_next


class LSTM(nn.Module):
    """Multi-layer unidirectional LSTM, a from-scratch equivalent of ``torch.nn.LSTM``.

    Same parameter names, shapes and gate order as torch.nn.LSTM (state_dicts load both ways),
    same call convention: ``output, (h_n, c_n) = lstm(input, (h_0, c_0))`` with input (T, B, in),
    or (B, T, in) when ``batch_first``; h_0, c_0, h_n, c_n are (num_layers, B, H) either way.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        batch_first: bool = False,
        dropout: float = 0.0,
        device: Optional[torch.device | str] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1 or num_layers < 1:
            raise ValueError(
                f"input_size, hidden_size and num_layers must be >= 1, got {input_size}, {hidden_size}, {num_layers}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.batch_first = batch_first
        self.dropout = dropout
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        H = hidden_size
        for k in range(num_layers):
            layer_in = input_size if k == 0 else H
            # Registered in torch.nn.LSTM's order so state_dict keys line up one to one.
            self.register_parameter(f"weight_ih_l{k}", nn.Parameter(torch.empty(4 * H, layer_in, **kw)))
            self.register_parameter(f"weight_hh_l{k}", nn.Parameter(torch.empty(4 * H, H, **kw)))
            self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.empty(4 * H, **kw)))
            self.register_parameter(f"bias_hh_l{k}", nn.Parameter(torch.empty(4 * H, **kw)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every weight and bias uniform(-1/sqrt(H), 1/sqrt(H)), torch.nn.LSTM's default."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def layer_parameters(self, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(weight_ih, weight_hh, bias_ih, bias_hh) of layer k."""
        return tuple(getattr(self, f"{name}_l{k}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    def _check_input(self, input: Tensor, hx: Optional[State]) -> None:
        layout = "(B, T, input_size)" if self.batch_first else "(T, B, input_size)"
        if input.dim() != 3:
            raise ValueError(f"LSTM expects input of shape {layout}, got {input.dim()}-d {tuple(input.shape)}")
        if input.shape[-1] != self.input_size:
            raise ValueError(
                f"LSTM expects input_size={self.input_size} in the last dim {layout}, got {tuple(input.shape)}"
            )
        seq_len, batch = (input.shape[1], input.shape[0]) if self.batch_first else (input.shape[0], input.shape[1])
        if seq_len < 1:
            raise ValueError(f"LSTM expects a sequence of length >= 1 {layout}, got {tuple(input.shape)}")
        if hx is None:
            return
        if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            raise ValueError("LSTM expects the initial state hx as a pair (h_0, c_0)")
        expected = (self.num_layers, batch, self.hidden_size)
        for name, s in zip(("h_0", "c_0"), hx):
            if tuple(s.shape) != expected:
                raise ValueError(f"LSTM expects {name} of shape (num_layers, B, H) = {expected}, got {tuple(s.shape)}")

    def run_layer(self, k: int, layer_input: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Layer k over the sequence: layer_input (T, B, in), h and c (B, H) -> outputs (T, B, H),
        h_T and c_T (B, H); one ``lstm_cell`` per step (the drop-in runs the whole layer in kernels)."""
        weights = self.layer_parameters(k)
        outputs = []
        for x_t in layer_input:  # (B, in)
            h, c = lstm_cell(x_t, h, c, *weights)  # (B, H)
            outputs.append(h)
        return torch.stack(outputs), h, c

    def forward(self, input: Tensor, hx: Optional[State] = None) -> tuple[Tensor, State]:
        """input (T, B, in) or (B, T, in), hx = (h_0, c_0) each (L, B, H) or None for zeros
        -> output (input's layout, H last), (h_n, c_n) each (L, B, H). Same call as torch.nn.LSTM."""
        self._check_input(input, hx)
        x = input.transpose(0, 1) if self.batch_first else input  # (T, B, in)
        B = x.shape[1]
        if hx is None:
            zeros = x.new_zeros(self.num_layers, B, self.hidden_size)  # (L, B, H)
            hx = (zeros, zeros)
        h_0, c_0 = hx  # each (L, B, H)

        layer_input = x  # (T, B, in) for layer 0, (T, B, H) above
        h_n, c_n = [], []
        for k in range(self.num_layers):
            layer_output, h, c = self.run_layer(k, layer_input, h_0[k], c_0[k])  # (T, B, H), (B, H), (B, H)
            h_n.append(h)
            c_n.append(c)
            if k < self.num_layers - 1 and self.dropout > 0:
                layer_output = F.dropout(layer_output, self.dropout, self.training)  # (T, B, H)
            layer_input = layer_output

        output = layer_input.transpose(0, 1) if self.batch_first else layer_input  # input's layout, H last
        return output, (torch.stack(h_n), torch.stack(c_n))  # (L, B, H) each

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        return s


# ---------------------------------------------------------------------------------------------
# Heads: language model and sequence classifier
# ---------------------------------------------------------------------------------------------


@dataclass
class _LSTMStackConfig:
    vocab_size: int = 256  # number of token ids (256: byte-level)
    embed_dim: int = 256  # token embedding width = the LSTM's input_size
    hidden_size: int = 256  # H: LSTM hidden and cell width
    num_layers: int = 2  # stacked LSTM layers
    dropout: float = 0.0  # on the embedding output, between LSTM layers and before the linear layer
    seq_len: int = 64  # length of the sequences make_batch draws (no limit in the model itself)
    init_range: Optional[float] = None  # every parameter U(-r, r); None: r = 1/sqrt(hidden_size)
    # Derived in __post_init__:
    init_bound: float = field(init=False)  # the r actually used

    def __post_init__(self) -> None:
        for name in ("vocab_size", "embed_dim", "hidden_size", "num_layers", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.init_range is not None and self.init_range <= 0:
            raise ValueError(f"init_range must be > 0 or None, got {self.init_range}")
        self.init_bound = self.init_range if self.init_range is not None else 1.0 / math.sqrt(self.hidden_size)


@dataclass
class LSTMLanguageModelConfig(_LSTMStackConfig, PresetConfig):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # Byte-level, small enough for a CPU demo.
        "lstm-lm-small": {},
        # Zaremba et al. 2014 "medium": 2 x 650, 10k-word vocabulary (PTB), dropout 0.5,
        # 35 unrolled steps, every parameter U(-0.05, 0.05).
        "lstm-lm-medium": {
            "vocab_size": 10000,
            "embed_dim": 650,
            "hidden_size": 650,
            "num_layers": 2,
            "dropout": 0.5,
            "seq_len": 35,
            "init_range": 0.05,
        },
    }


@dataclass
class LSTMClassifierConfig(_LSTMStackConfig, PresetConfig):
    num_classes: int = 4  # output classes

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "lstm-classifier-small": {"embed_dim": 128, "hidden_size": 128, "seq_len": 32},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")


def check_tokens(tokens: Tensor, vocab_size: int) -> None:
    """Raise ValueError unless tokens is an integer (B, T) tensor with ids in [0, vocab_size)."""
    if tokens.dim() != 2:
        raise ValueError(f"expected tokens of shape (B, T), got {tokens.dim()}-d {tuple(tokens.shape)}")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise ValueError(f"expected integer token ids, got dtype {tokens.dtype}")
    if tokens.shape[1] < 1:
        raise ValueError(f"expected at least one token per sequence (B, T), got {tuple(tokens.shape)}")
    if tokens.device.type != "meta" and tokens.numel() > 0:
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(f"token ids must be in [0, {vocab_size}), got values in [{low}, {high}]")


class _LSTMStack(nn.Module):
    """Embedding -> dropout -> LSTM (batch_first) shared by both heads; ``self.lstm`` is swappable."""

    def __init__(
        self, config: _LSTMStackConfig, *, device: Optional[torch.device | str], dtype: Optional[torch.dtype]
    ) -> None:
        super().__init__()
        self.config = config
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        c = config
        self.embedding = nn.Embedding(c.vocab_size, c.embed_dim, **kw)
        self.lstm = LSTM(c.embed_dim, c.hidden_size, c.num_layers, batch_first=True, dropout=c.dropout, **kw)
        self.dropout = nn.Dropout(c.dropout)

    def reset_parameters(self) -> None:
        """Every parameter U(-r, r), r = init_range or 1/sqrt(H) (see the paper-vs-code note)."""
        for p in self.parameters():
            nn.init.uniform_(p, -self.config.init_bound, self.config.init_bound)

    def encode(self, tokens: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        """tokens (B, T) -> top-layer outputs (B, T, H) and (h_n, c_n) each (L, B, H)."""
        check_tokens(tokens, self.config.vocab_size)
        x = self.dropout(self.embedding(tokens))  # (B, T, E)
        return self.lstm(x, state)  # (B, T, H), ((L, B, H), (L, B, H))


class LSTMLanguageModel(_LSTMStack):
    """Next-token language model: tokens (B, T) -> logits (B, T, vocab_size)."""

    def __init__(
        self,
        config: LSTMLanguageModelConfig,
        *,
        device: Optional[torch.device | str] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__(config, device=device, dtype=dtype)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, device=device, dtype=dtype)
        self.reset_parameters()

    def forward_with_state(self, tokens: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        """As forward, also taking and returning the LSTM state (for truncated BPTT or sampling)."""
        hidden, new_state = self.encode(tokens, state)  # (B, T, H)
        logits = self.head(self.dropout(hidden))  # (B, T, V)
        return logits, new_state

    def forward(self, tokens: Tensor, state: Optional[State] = None) -> Tensor:
        return self.forward_with_state(tokens, state)[0]  # (B, T, V)

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
        """Continue ``prompt`` (B, T0): yield each new token (B,) as it is drawn, the LSTM state
        (h, c) carried from one step to the next (the prompt is read once). The sampling rules
        are ``replab_fast.generation``'s, as LLaMA's (temperature 0 is greedy; top-k, then
        temperature, then top-p; ``generator`` on the model's device); with ``eos_id`` a
        sequence stops at that token. Dropout is active in training mode: call ``eval()`` first.
        """
        sampling = Sampling(temperature, top_k, top_p)
        logits, state = self.forward_with_state(prompt)  # (B, T0, V)
        carried = [state]

        def step(tokens: Tensor, i: int) -> Tensor:
            logits, carried[0] = self.forward_with_state(tokens[:, None], carried[0])  # (B, 1, V)
            return logits[:, -1]  # (B, V)

        yield from decode(logits[:, -1], step, max_new_tokens, sampling, generator=generator, eos_id=eos_id)

    @torch.no_grad()
    def generate(self, prompt: Tensor, max_new_tokens: int, **sampling) -> Tensor:
        """Continue ``prompt`` (B, T0) by up to ``max_new_tokens``: the token ids (B, T0 + n), n the
        number drawn (fewer when every sequence reached ``eos_id``). Options as :meth:`stream`."""
        return collect(prompt, self.stream(prompt, max_new_tokens, **sampling))


class LSTMClassifier(_LSTMStack):
    """Sequence classifier: tokens (B, T) -> logits (B, num_classes) from the last hidden state."""

    def __init__(
        self,
        config: LSTMClassifierConfig,
        *,
        device: Optional[torch.device | str] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__(config, device=device, dtype=dtype)
        self.head = nn.Linear(config.hidden_size, config.num_classes, device=device, dtype=dtype)
        self.reset_parameters()

    def forward(self, tokens: Tensor) -> Tensor:
        _, (h_n, _) = self.encode(tokens)  # (L, B, H)
        last_hidden = h_n[-1]  # (B, H): top layer after the last position
        return self.head(self.dropout(last_hidden))  # (B, num_classes)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def make_lm_batch(model: LSTMLanguageModel, batch_size: int, *, generator: torch.Generator) -> Batch:
    """Random token ids (B, seq_len) and their next tokens (B, seq_len) as the target."""
    c = model.config
    device = next(model.parameters()).device
    tokens = torch.randint(0, c.vocab_size, (batch_size, c.seq_len + 1), generator=generator)  # (B, T+1)
    return (tokens[:, :-1].to(device),), tokens[:, 1:].to(device)


def lm_loss(model: nn.Module, inputs: tuple[Tensor, ...], target: Tensor) -> Tensor:
    """Mean next-token cross-entropy."""
    logits = model(*inputs)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), target.flatten())


def make_classifier_batch(model: LSTMClassifier, batch_size: int, *, generator: torch.Generator) -> Batch:
    """Random token ids (B, seq_len) and class labels (B,)."""
    c = model.config
    device = next(model.parameters()).device
    tokens = torch.randint(0, c.vocab_size, (batch_size, c.seq_len), generator=generator)  # (B, T)
    labels = torch.randint(0, c.num_classes, (batch_size,), generator=generator)  # (B,)
    return (tokens.to(device),), labels.to(device)


def classifier_loss(model: nn.Module, inputs: tuple[Tensor, ...], target: Tensor) -> Tensor:
    """Cross-entropy of the class logits against the labels."""
    return F.cross_entropy(model(*inputs), target)


_PAPER = "Hochreiter & Schmidhuber 1997; forget gate Gers et al. 2000"
LM_FAMILY = Family("lstm", _PAPER, LSTMLanguageModelConfig, LSTMLanguageModel, make_lm_batch, lm_loss)
CLASSIFIER_FAMILY = Family("lstm", _PAPER, LSTMClassifierConfig, LSTMClassifier, make_classifier_batch, classifier_loss)

SPECS = (
    LM_FAMILY.preset(
        "lstm-lm-small", "lstm-lm-small", "byte-level LSTM language model, 2 x 256 (1.18M params)",
        demo=True,
        overfit=OverfitRecipe(batch_size=4, steps=40, lr=5e-2, below=0.1, overrides=(("seq_len", 16),)),
    ),
    LM_FAMILY.preset(
        "lstm-lm-medium", "lstm-lm-medium",
        "word-level LSTM language model, Zaremba et al.'s medium: 2 x 650, 10k vocab (19.8M params)",
        paper=_PAPER + "; Zaremba et al. 2014",
        overfit=None,  # 19.8M parameters: several seconds per few Adam steps on a CPU; same code as -small
    ),
    CLASSIFIER_FAMILY.preset(
        "lstm-classifier-small", "lstm-classifier-small",
        "byte-level LSTM sequence classifier, 2 x 128, 4 classes (297K params)",
        overfit=OverfitRecipe(batch_size=8, steps=30, lr=1e-2, below=0.1),
    ),
)  # fmt: skip
