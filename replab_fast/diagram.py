"""Architecture diagrams drawn from the module itself: one traced forward pass, rendered as a flow.

``trace(name)`` builds a registered model, runs it on a batch from its ``make_batch`` with a
forward hook on each of its layers, and returns a :class:`Diagram`: every layer's name, class,
settings (``extra_repr``), output shape and parameter count, in the order the forward runs them.
The layers are the model's children, with ``nn.Sequential`` and ``nn.ModuleDict`` opened into
theirs, and each block of an ``nn.ModuleList`` (LLaMA's transformer blocks) opened one level
into a group; consecutive groups that are identical fold into one, shown "x N". The forward runs
at two batch sizes, and a dimension that follows the batch is written ``B``.

``render(diagram, path)`` draws the diagram top to bottom (matplotlib's Agg canvas, no global
backend change) as a PNG whose metadata holds the diagram's digest, so a test tells a stale
picture from a current one without comparing pixels.

Diagrams come from a real forward on the CPU: every preset with a card runs in seconds (alexnet
at 1000 classes included). A preset of more than ``CPU_LIMIT`` parameters (llama-7b, llama-13b) is
traced on the meta device instead: the same shapes and counts, no memory, no values.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn

from .models.registry import count_parameters, create_model, get_spec

__all__ = ["Diagram", "Group", "Layer", "compact_detail", "default_device", "format_shapes", "picture_digest", "render",
           "shown_modules", "trace", "trace_model"]

Shape = tuple[Union[int, str], ...]  # an output's dimensions, "B" (or "64B") where it follows the batch
BATCH_SIZES = (2, 3)  # the two batches the forward runs: what changes between them is the batch
CPU_LIMIT = 100_000_000  # parameters: larger presets (llama-7b, llama-13b) are traced on the meta device
LABEL_CHARS = 60  # longest type text in a picture's box (the card's table has it whole)
DIGEST_KEY = "Description"  # the PNG text chunk holding the digest


@dataclass(frozen=True)
class Layer:
    name: str  # the module's qualified name ("features.c1"); in a group, relative to the block
    kind: str  # its class ("Conv2d")
    detail: str  # its extra_repr() ("1, 6, kernel_size=(5, 5), stride=(1, 1)")
    shapes: tuple[Shape, ...]  # the shapes of the tensors it returns
    params: int  # its trainable parameters (0 when a shared module runs again)

    @property
    def label(self) -> str:
        """The class and its settings, PyTorch's defaults left out ("Conv2d(1, 6, kernel_size=5)")."""
        detail = compact_detail(self.detail, unname_sizes=self.kind == "Linear")
        return f"{self.kind}({detail})" if detail else self.kind


@dataclass(frozen=True)
class Group:
    name: str  # "layers.0-1": the blocks it stands for
    kind: str  # the block's class ("TransformerBlock")
    caption: str  # the first line of the block class's docstring
    layers: tuple[Layer, ...]  # one block's layers
    repeat: int  # identical blocks in a row

    @property
    def params(self) -> int:
        """Parameters of one block."""
        return sum(layer.params for layer in self.layers)


@dataclass(frozen=True)
class Diagram:
    model: str  # registry name
    kind: str  # the model's class
    inputs: tuple[Layer, ...]  # the batch's inputs, as pseudo-layers named "input"
    items: tuple[Union[Layer, Group], ...]  # in forward order
    total_params: int  # count_parameters(model)

    @property
    def title(self) -> str:
        return f"{self.model}: {self.kind}, {self.total_params:,} parameters"

    def shown_params(self) -> int:
        """The parameters the items account for (the total, when every parameter is in a layer)."""
        return sum(item.params * getattr(item, "repeat", 1) for item in self.items)

    def layers(self) -> list[tuple[str, Layer]]:
        """Every layer with its qualified name, groups once each (their first block's name)."""
        rows: list[tuple[str, Layer]] = []
        for item in self.items:
            if isinstance(item, Group):
                rows += [(f"{item.name}.{layer.name}", layer) for layer in item.layers]
            else:
                rows.append((item.name, item))
        return rows

    def table(self) -> str:
        """The layers as a markdown table (the card shows it; the digest is taken of it)."""
        lines = ["| layer | type | output | parameters |", "|---|---|---|---:|"]
        for layer in self.inputs:
            lines.append(f"| `input` | {layer.kind} | {format_shapes(layer.shapes)} | |")
        for item in self.items:
            if isinstance(item, Group):
                lines.append(f"| `{item.name}` | {item.kind} x {item.repeat} | | {item.params:,} per block |")
                lines += [_table_row(f"{item.name}.{layer.name}", layer) for layer in item.layers]
            else:
                lines.append(_table_row(item.name, item))
        lines.append(f"| total | | | {self.total_params:,} |")
        return "\n".join(lines)

    def digest(self) -> str:
        return hashlib.sha256(f"{self.title}\n{self.table()}".encode()).hexdigest()[:16]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table_row(name: str, layer: Layer) -> str:
    params = f"{layer.params:,}" if layer.params else ""
    return f"| `{name}` | {_cell(layer.label)} | {format_shapes(layer.shapes)} | {params} |"


# Settings every reader assumes: left out of a layer's label.
DEFAULT_SETTINGS = {"stride=1", "padding=0", "dilation=1", "output_padding=0", "ceil_mode=False", "inplace=False",
                    "bias=True", "start_dim=1", "end_dim=-1"}  # fmt: skip
_SAME_INTS = re.compile(r"\((\d+)(?:, \1)+\)")  # (5, 5) -> 5


def _split_top_level(text: str) -> list[str]:
    """``text`` split at the commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    return [p for p in parts + [text[start:].strip()] if p]


def compact_detail(detail: str, *, unname_sizes: bool = False) -> str:
    """An extra_repr() without PyTorch's defaults and with square tuples as one number; with
    ``unname_sizes`` (Linear) "in_features=120, out_features=84, bias=True" -> "120, 84"."""
    parts = _split_top_level(_SAME_INTS.sub(r"\1", detail))
    sizes = ("in_features=", "out_features=") if unname_sizes else ()
    parts = [p.split("=", 1)[1] if sizes and p.startswith(sizes) else p for p in parts if p not in DEFAULT_SETTINGS]
    return ", ".join(parts)


def format_shapes(shapes: tuple[Shape, ...]) -> str:
    """"(B, 6, 28, 28)"; several tensors' shapes separated by commas."""
    return ", ".join("(" + ", ".join(str(d) for d in shape) + ")" for shape in shapes) or "-"


# --------------------------------------------------------------------------------------------
# Tracing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shown:
    name: str  # qualified name
    module: nn.Module
    group: Optional[str]  # the block it belongs to, None outside one


def shown_modules(module: nn.Module, prefix: str = "", group: Optional[str] = None) -> list[_Shown]:
    """The modules a diagram shows, in registration order: children, with Sequential and
    ModuleDict opened, and each block of a ModuleList opened one level (into a group)."""
    shown: list[_Shown] = []
    for name, child in module.named_children():
        qualified = prefix + name
        if isinstance(child, (nn.Sequential, nn.ModuleDict)):
            shown += shown_modules(child, qualified + ".", group)
        elif isinstance(child, nn.ModuleList):
            for index, block in child.named_children():
                block_name = f"{qualified}.{index}"
                opens = group is None and next(block.children(), None) is not None
                shown += shown_modules(block, block_name + ".", block_name) if opens else [
                    _Shown(block_name, block, group)]  # fmt: skip
        else:
            shown.append(_Shown(qualified, child, group))
    return shown


def _tensor_shapes(output: Any) -> list[tuple[int, ...]]:
    """The shapes of the tensors in an output (nested tuples and lists flattened, in order)."""
    if isinstance(output, Tensor):
        return [tuple(output.shape)]
    if isinstance(output, (tuple, list)):
        return [shape for part in output for shape in _tensor_shapes(part)]
    return []


def _run(model: nn.Module, inputs: tuple[Tensor, ...], shown: list[_Shown]) -> list[tuple[_Shown, list]]:
    """Each call of a shown module during one forward, in order, with its output's shapes."""
    calls: list[tuple[_Shown, list]] = []

    def hook_for(entry: _Shown):
        return lambda module, args, output: calls.append((entry, _tensor_shapes(output)))

    handles = [entry.module.register_forward_hook(hook_for(entry)) for entry in shown]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _batch_dim(small: int, large: int) -> Union[int, str]:
    """A dimension at batch sizes BATCH_SIZES: the number when it stays, "B" or "kB" when it
    follows the batch."""
    if small == large:
        return small
    b_small, b_large = BATCH_SIZES
    k = small // b_small
    if k * b_small == small and k * b_large == large:
        return "B" if k == 1 else f"{k}B"
    return f"{small}|{large}"  # neither fixed nor proportional: both values, said as they are


def _merge_shapes(small: list[tuple[int, ...]], large: list[tuple[int, ...]]) -> tuple[Shape, ...]:
    if len(small) != len(large) or any(len(a) != len(b) for a, b in zip(small, large)):
        raise ValueError("the forward returned differently structured outputs at two batch sizes")
    return tuple(tuple(_batch_dim(a, b) for a, b in zip(sa, sb)) for sa, sb in zip(small, large))


def _layers(calls_small: list, calls_large: list) -> list[tuple[Optional[str], Layer]]:
    """(group, Layer) per call; a module that runs again counts its parameters once."""
    if [c[0].name for c in calls_small] != [c[0].name for c in calls_large]:
        raise ValueError("the forward ran different layers at two batch sizes")
    seen: set[int] = set()
    layers = []
    for (entry, small), (_, large) in zip(calls_small, calls_large):
        first = id(entry.module) not in seen
        seen.add(id(entry.module))
        name = entry.name[len(entry.group) + 1 :] if entry.group else entry.name
        layer = Layer(name, type(entry.module).__name__, entry.module.extra_repr(), _merge_shapes(small, large),
                      count_parameters(entry.module) if first else 0)  # fmt: skip
        layers.append((entry.group, layer))
    return layers


def _group(calls: list[tuple[Optional[str], Layer]], block_classes: dict[str, type]) -> list[Union[Layer, Group]]:
    """Consecutive layers of one block into a Group; identical consecutive Groups folded."""
    items: list[Union[Layer, Group]] = []
    for group, layer in calls:
        last = items[-1] if items else None
        if group is None:
            items.append(layer)
        elif isinstance(last, Group) and last.name == group:
            items[-1] = Group(last.name, last.kind, last.caption, last.layers + (layer,), 1)
        else:
            cls = block_classes[group]
            caption = (inspect.getdoc(cls) or "").strip().split("\n")[0]
            items.append(Group(group, cls.__name__, caption, (layer,), 1))
    return _fold(items)


def _fold(items: list[Union[Layer, Group]]) -> list[Union[Layer, Group]]:
    folded: list[Union[Layer, Group]] = []
    for item in items:
        last = folded[-1] if folded else None
        if isinstance(item, Group) and isinstance(last, Group) and (last.kind, last.layers) == (item.kind, item.layers):
            prefix, _, first = last.name.partition("-")[0].rpartition(".")
            name = f"{prefix}.{first}-{item.name.rpartition('.')[2]}"
            folded[-1] = Group(name, last.kind, last.caption, last.layers, last.repeat + item.repeat)
        else:
            folded.append(item)
    return folded


def _input_layers(small: tuple[Tensor, ...], large: tuple[Tensor, ...]) -> tuple[Layer, ...]:
    return tuple(Layer("input", str(a.dtype).replace("torch.", "") + " tensor", "",
                       _merge_shapes([tuple(a.shape)], [tuple(b.shape)]), 0)
                 for a, b in zip(small, large))  # fmt: skip


def default_device(name: str, **overrides: Any) -> str:
    """"cpu" for a model a CPU runs in seconds, "meta" (shapes and counts only) above CPU_LIMIT."""
    return "meta" if count_parameters(create_model(name, device="meta", **overrides)) > CPU_LIMIT else "cpu"


def trace(name: str, *, device: Optional[str] = None, seed: int = 0, **overrides: Any) -> Diagram:
    """The diagram of registered model ``name`` (config ``overrides`` as for create_model), on
    ``device`` ("cpu" or "meta"; by default ``default_device``)."""
    spec = get_spec(name)
    torch.manual_seed(seed)
    device = device or default_device(name, **overrides)
    model = create_model(name, device=device, **overrides)
    return trace_model(model, spec.make_batch, name, seed=seed)


def trace_model(model: nn.Module, make_batch: Callable, name: str, *, seed: int = 0) -> Diagram:
    """The diagram of ``model``, run (in eval mode) on ``make_batch(model, batch_size, generator=...)[0]``."""
    model.eval()
    shown = shown_modules(model)
    batches = [make_batch(model, b, generator=torch.Generator().manual_seed(seed))[0] for b in BATCH_SIZES]
    calls = [_run(model, inputs, shown) for inputs in batches]
    block_classes = {entry.group: type(model.get_submodule(entry.group)) for entry in shown if entry.group}
    items = _group(_layers(*calls), block_classes)
    return Diagram(name, type(model).__name__, _input_layers(*batches), tuple(items), count_parameters(model))


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

WIDTH = 10.0  # inches
ROW, GAP = 0.34, 0.17  # a box's height and the arrow's length, inches
CAPTION = 0.32  # a group's caption line
COLUMNS = dict(name=0.45, label=2.05, shape=6.1, params=9.55)  # x of each text column, inches
STYLE = {  # face, edge
    "weights": ("#dbe8f5", "#4a78b0"),
    "plain": ("#f3f3f3", "#9a9a9a"),
    "input": ("#fbefd6", "#c89a3c"),
}


def _short(text: str, limit: int = LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _rounded(ax, indent: float, y: float, height: float, face: str, edge: str, **style) -> None:
    """A rounded rectangle across the figure, ``indent`` inches in from the 0.3-inch margins."""
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((0.3 + indent, y), WIDTH - 0.6 - 2 * indent, height, facecolor=face, edgecolor=edge,
                                boxstyle=f"round,pad=0,rounding_size={min(0.1, height / 4)}", **style))  # fmt: skip


def _box(ax, y: float, layer: Layer, indent: float, style: str) -> None:
    _rounded(ax, indent, y, ROW, *STYLE[style], linewidth=0.9)
    middle = y + ROW / 2
    ax.text(COLUMNS["name"] + indent, middle, _short(layer.name, 20), va="center", fontsize=8, fontweight="bold")
    ax.text(COLUMNS["label"], middle, _short(layer.label), va="center", fontsize=7.5, family="monospace")
    ax.text(COLUMNS["shape"], middle, _short(format_shapes(layer.shapes), 44), va="center", fontsize=7.5,
            family="monospace")  # fmt: skip
    if layer.params:
        ax.text(COLUMNS["params"] - indent, middle, f"{layer.params:,}", va="center", ha="right", fontsize=8)


def _arrow(ax, y_from: float, y_to: float) -> None:
    ax.annotate("", xy=(WIDTH / 2, y_to), xytext=(WIDTH / 2, y_from),
                arrowprops=dict(arrowstyle="-|>", color="#777777", lw=0.8, shrinkA=0, shrinkB=0))  # fmt: skip


def _group_frame(ax, y: float, group: Group) -> float:
    """Draw a group (frame, caption, its layers); return the y below it."""
    height = CAPTION + len(group.layers) * (ROW + GAP)
    _rounded(ax, 0.0, y, height, "#fbfbfb", "#8a8a8a", linewidth=1.0, linestyle="--")
    middle = y + CAPTION / 2 + 0.02
    ax.text(COLUMNS["name"], middle, f"{group.name}  {group.kind}", va="center", fontsize=8.5, fontweight="bold")
    ax.text(COLUMNS["label"] + 0.9, middle, _short(group.caption, 90), va="center", fontsize=7.5, style="italic",
            color="#444444")  # fmt: skip
    ax.text(COLUMNS["params"], middle, f"x {group.repeat}", va="center", ha="right", fontsize=12, fontweight="bold",
            color="#b03a2e")  # fmt: skip
    row_y = y + CAPTION
    for index, layer in enumerate(group.layers):
        _box(ax, row_y, layer, 0.2, "weights" if layer.params else "plain")
        if index < len(group.layers) - 1:
            _arrow(ax, row_y + ROW, row_y + ROW + GAP)
        row_y += ROW + GAP
    return y + height


def _height(diagram: Diagram) -> float:
    rows = len(diagram.inputs) + sum(1 for item in diagram.items if isinstance(item, Layer))
    grouped = sum(CAPTION + len(item.layers) * (ROW + GAP) + GAP for item in diagram.items if isinstance(item, Group))
    return 1.25 + rows * (ROW + GAP) + grouped + 0.45


def _header(ax, diagram: Diagram) -> float:
    ax.text(WIDTH / 2, 0.3, diagram.title, ha="center", va="center", fontsize=12, fontweight="bold")
    ax.text(WIDTH / 2, 0.58, "drawn from one forward pass of a make_batch batch (B: the batch dimension); "
            "trainable parameters", ha="center", va="center", fontsize=7.5, color="#555555")  # fmt: skip
    for column, text in (("name", "layer"), ("label", "type"), ("shape", "output")):
        ax.text(COLUMNS[column], 0.95, text, va="center", fontsize=7.5, color="#555555")
    ax.text(COLUMNS["params"], 0.95, "parameters", va="center", ha="right", fontsize=7.5, color="#555555")
    return 1.15


def render(diagram: Diagram, path: Union[str, Path], *, dpi: int = 85) -> Path:
    """Draw ``diagram`` top to bottom into the PNG ``path``; its metadata holds the digest."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height = _height(diagram)
    fig = Figure(figsize=(WIDTH, height))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(height, 0)
    ax.axis("off")
    y = _header(ax, diagram)
    entries: list[Union[Layer, Group]] = [*diagram.inputs, *diagram.items]
    for index, item in enumerate(entries):
        if isinstance(item, Group):
            bottom = _group_frame(ax, y, item)
        else:
            style = "input" if index < len(diagram.inputs) else "weights" if item.params else "plain"
            _box(ax, y, item, 0.0, style)
            bottom = y + ROW
        if index < len(entries) - 1:
            _arrow(ax, bottom, bottom + GAP)
        y = bottom + GAP
    ax.text(COLUMNS["params"], y + 0.12, f"total {diagram.total_params:,}", ha="right", va="center", fontsize=9,
            fontweight="bold")  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, metadata={"Software": None, DIGEST_KEY: f"replab_fast diagram {diagram.digest()}"})
    return path


def picture_digest(path: Union[str, Path]) -> Optional[str]:
    """The digest a PNG written by ``render`` carries, None for any other file."""
    from PIL import Image

    with Image.open(path) as image:
        text = image.info.get(DIGEST_KEY, "")
    prefix = "replab_fast diagram "
    return text[len(prefix) :] if text.startswith(prefix) else None
