"""The architecture diagrams: traced from the modules, with the right layers, shapes and counts."""

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from replab_fast.cards import card_models
from replab_fast.cli import main
from replab_fast.diagram import Group, Layer, compact_detail, default_device, picture_digest, render, trace, trace_model
from replab_fast.models.registry import count_parameters, create_model, get_spec

CARD_MODELS = card_models(Path(__file__).resolve().parents[1] / "docs" / "models")  # every card's diagram


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def by_name(diagram) -> dict[str, Layer]:
    return dict(diagram.layers())


def test_lenet5_classic_is_section_ii_b_layer_by_layer():
    diagram = trace("lenet5-classic")
    layers = by_name(diagram)
    expected = {  # the paper's maps and trainable parameters (Section II-B)
        "features.c1": (("B", 6, 28, 28), 156), "features.s2": (("B", 6, 14, 14), 12),
        "features.c3": (("B", 16, 10, 10), 1516), "features.s4": (("B", 16, 5, 5), 32),
        "features.c5": (("B", 120, 1, 1), 48120), "classifier.f6": (("B", 84), 10164),
        "classifier.output": (("B", 10), 0),  # the RBF centres are fixed
    }  # fmt: skip
    for name, (shape, params) in expected.items():
        assert layers[name].shapes == (shape,), name
        assert layers[name].params == params, name
    assert [layer.kind for layer in diagram.inputs] == ["float32 tensor"]
    assert diagram.inputs[0].shapes == (("B", 1, 32, 32),)
    assert diagram.total_params == 60_000 == diagram.shown_params()
    order = [name for name, _ in diagram.layers()]
    assert order[:4] == ["features.c1", "features.c1_act", "features.s2", "features.s2_act"]


@pytest.mark.parametrize("name", CARD_MODELS)
def test_every_parameter_is_in_a_shown_layer_and_the_last_shape_is_the_output(name):
    diagram = trace(name)
    model = create_model(name)
    assert diagram.total_params == count_parameters(model) == diagram.shown_params()
    inputs, _ = get_spec(name).make_batch(model.eval(), 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = model(*inputs)
    last = diagram.layers()[-1][1].shapes[0]
    assert tuple(2 if d == "B" else d for d in last) == tuple(output.shape)


def test_llama_blocks_fold_into_one_group_shown_once():
    diagram = trace("llama-tiny", n_layers=3)
    groups = [item for item in diagram.items if isinstance(item, Group)]
    assert len(groups) == 1
    group = groups[0]
    assert (group.name, group.kind, group.repeat) == ("layers.0-2", "TransformerBlock", 3)
    assert [layer.name for layer in group.layers] == ["attention_norm", "attention", "ffn_norm", "feed_forward"]
    assert all(layer.shapes == (("B", 64, 64),) for layer in group.layers)
    assert group.caption.startswith("Pre-norm block")
    assert [item.name for item in diagram.items] == ["tok_embeddings", "layers.0-2", "norm", "output"]
    assert diagram.total_params == count_parameters(create_model("llama-tiny", n_layers=3)) == diagram.shown_params()
    assert "| `layers.0-2` | TransformerBlock x 3 |" in diagram.table()


def test_a_huge_preset_traces_on_the_meta_device():
    assert default_device("llama-13b") == "meta" and default_device("alexnet") == "cpu"
    diagram = trace("llama-small", device="meta")
    (group,) = [item for item in diagram.items if isinstance(item, Group)]
    assert group.repeat == 8 and by_name(diagram)["output"].shapes == (("B", 64, 32000),)
    assert diagram.total_params == count_parameters(create_model("llama-small", device="meta"))
    assert diagram.shown_params() == diagram.total_params


def test_batch_dimensions_are_found_wherever_they_are():
    lstm = by_name(trace("lstm-lm-small"))["lstm"]
    assert lstm.shapes == (("B", 64, 256), (2, "B", 256), (2, "B", 256))  # output, then (h_n, c_n)
    assert lstm.kind == "LSTM" and lstm.params == 4 * 256 * (256 + 256 + 2) * 2


class _Shared(nn.Module):
    """A toy: one Linear run twice, then a list of blocks that differ."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.blocks = nn.ModuleList(nn.Sequential(OrderedDict(fc=nn.Linear(4, n))) for n in (4, 4, 6))

    def forward(self, x):
        x = self.proj(self.proj(x))
        for block in self.blocks:
            x = block(x)
        return x


def _toy_batch(model, batch_size, *, generator):
    return (torch.randn(batch_size, 4, generator=generator),), None


def test_a_shared_module_counts_once_and_only_identical_blocks_fold():
    diagram = trace_model(_Shared(), _toy_batch, "toy")
    names = [item.name for item in diagram.items]
    assert names == ["proj", "proj", "blocks.0-1", "blocks.2"]
    assert [item.params for item in diagram.items[:2]] == [20, 0]
    assert diagram.items[2].repeat == 2 and diagram.items[3].repeat == 1
    assert diagram.total_params == diagram.shown_params() == 20 + 2 * 20 + 30


def test_labels_leave_out_pytorch_defaults_only():
    assert compact_detail("in_features=120, out_features=84, bias=True", unname_sizes=True) == "120, 84"
    assert compact_detail("in_features=64, out_features=256, bias=False", unname_sizes=True) == "64, 256, bias=False"
    assert compact_detail("1, 6, kernel_size=(5, 5), stride=(1, 1)") == "1, 6, kernel_size=5"
    assert compact_detail("3, 96, kernel_size=(11, 11), stride=(4, 4)") == "3, 96, kernel_size=11, stride=4"
    assert compact_detail("dim=1, unflattened_size=(64, 7, 7)") == "dim=1, unflattened_size=(64, 7, 7)"
    assert compact_detail("in_features=84, classes=10") == "in_features=84, classes=10"  # not a Linear
    assert by_name(trace("alexnet"))["features.conv2"].label == "Conv2d(96, 256, kernel_size=5, padding=2, groups=2)"


def test_render_writes_a_small_png_that_carries_the_digest(tmp_path):
    diagram = trace("llama-tiny")
    path = render(diagram, tmp_path / "llama-tiny.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(data) < 150_000
    assert picture_digest(path) == diagram.digest()
    assert trace("llama-tiny", n_layers=3).digest() != diagram.digest()


def test_the_diagram_command_draws_the_named_models(tmp_path, capsys):
    assert main(["diagram", "lenet5-modern", "--out", str(tmp_path)]) == 0
    assert picture_digest(tmp_path / "lenet5-modern.png") == trace("lenet5-modern").digest()
    assert "lenet5-modern.png" in capsys.readouterr().out
    assert main(["diagram", "--out", str(tmp_path / "empty")]) == 2  # no model named, no card there
    assert "no model card" in capsys.readouterr().err
