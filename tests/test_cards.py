"""The model cards: one per trained preset, their generated blocks current, their pictures there."""

import dataclasses
import json
import re
from pathlib import Path

import pytest

from replab_fast import cards
from replab_fast.cli import main
from replab_fast.diagram import picture_digest, trace
from replab_fast.models import lenet
from replab_fast.train import recipes

ROOT = Path(__file__).resolve().parents[1]
CARDS = ROOT / "docs" / "models"
REQUIRED = ["lenet5-classic", "lenet5-modern", "autoencoder-deep", "autoencoder-2d", "autoencoder-linear",
            "autoencoder-conv", "alexnet", "lstm-lm-small", "lstm-classifier-small", "llama-tiny"]  # fmt: skip
HEADINGS = ["## The paper", "## Architecture", "## Paper vs code", "## Training", "## Results",
            "## What it looks like when it is broken"]  # fmt: skip
PRESENT = cards.card_models(CARDS)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def card_text(name: str) -> str:
    return (CARDS / f"{name}.md").read_text()


def test_every_trained_family_has_its_cards():
    assert set(REQUIRED) <= set(PRESENT), f"missing cards: {sorted(set(REQUIRED) - set(PRESENT))}"


@pytest.mark.parametrize("name", PRESENT)
def test_the_generated_blocks_are_what_the_generator_writes_now(name):
    text = card_text(name)
    blocks = cards.render_blocks(name, ROOT)
    stale = [block for block, content in blocks.items() if cards.read_block(text, block) != content]
    assert not stale, f"{name}: blocks {stale} are stale: run `make docs`"


@pytest.mark.parametrize("name", PRESENT)
def test_every_picture_a_card_embeds_exists_and_the_diagram_is_current(name):
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", card_text(name))
    assert f"{name}.png" in pictures
    for picture in pictures:
        path = (CARDS / picture).resolve()
        assert path.is_file() and 1_000 < path.stat().st_size < 150_000, picture
    assert picture_digest(CARDS / f"{name}.png") == trace(name).digest(), f"{name}.png is stale: run `make docs`"


@pytest.mark.parametrize("name", PRESENT)
def test_the_hand_written_parts_are_written(name):
    text = card_text(name)
    assert "TODO" not in text
    positions = [text.find(heading) for heading in HEADINGS]
    assert -1 not in positions and positions == sorted(positions), f"{name}: headings missing or out of order"
    for block in cards.BLOCKS:
        begin, end = cards.markers(block)
        assert text.count(begin) == text.count(end) == 1, (name, block)
    paper = text.split("## The paper")[1].split("## Architecture")[0]
    assert len(paper.split(cards.markers("paper")[1])[1].split()) > 60, f"{name}: the paper's idea in a paragraph"
    assert "**Expected behaviour.**" in text.split("## Training")[1].split("## Results")[0]
    broken = text.split("## What it looks like when it is broken")[1]
    assert len(re.findall(r"^- \*\*", broken, flags=re.M)) >= 3, f"{name}: the common bugs and their symptoms"


def test_the_readme_links_every_card():
    readme = (ROOT / "README.md").read_text()
    listed = readme.split(cards.README_BEGIN)[1].split(cards.README_END)[0]
    assert listed.strip("\n") == cards.render_readme_list(PRESENT)
    for link in re.findall(r"\]\(([^)]+)\)", listed):
        assert (ROOT / link).is_file(), link


def test_a_changed_docstring_or_recipe_makes_the_card_stale(monkeypatch):
    text = card_text("lenet5-classic")
    monkeypatch.setattr(lenet, "__doc__", lenet.__doc__.replace("Table I", "Table 1"))
    assert cards.render_notes("lenet5-classic") != cards.read_block(text, "notes")
    changed = dataclasses.replace(recipes.RECIPES["lenet5-classic"], lr=0.004)
    monkeypatch.setitem(recipes.RECIPES, "lenet5-classic", changed)
    assert cards.render_training("lenet5-classic") != cards.read_block(text, "training")


def test_the_paper_and_the_notes_come_from_the_docstring_sections():
    from replab_fast.models import alexnet

    sections = cards.docstring_sections(alexnet.__doc__)
    assert sections[""].startswith("Krizhevsky, A., Sutskever, I. & Hinton, G. E. (2012)")
    assert "    conv1 96 x 11x11 /4" in sections[""]  # the listing stays a code block
    assert sections["Paper vs code"].startswith("- Input size 227x227")
    assert "-------" not in sections["Paper vs code"]
    assert "> Krizhevsky, A." in cards.render_paper("alexnet")


def test_results_come_from_final_json_when_there_is_one(tmp_path):
    absent = cards.render_results("autoencoder-linear", tmp_path)
    assert "No replication result committed yet" in absent and "`replab-fast replicate autoencoder-linear`" in absent
    folder = tmp_path / "results" / "autoencoder-linear"
    folder.mkdir(parents=True)
    final = {"data": {"name": "digits", "sizes": {"test": 180}}, "split": "test", "metric": "reconstruction_sse",
             "value": 12.3456, "pca_value": 12.0, "steps": 2000, "note": None}  # fmt: skip
    (folder / "final.json").write_text(json.dumps(final))
    rows = cards.render_results("autoencoder-linear", tmp_path).splitlines()
    assert rows[0].startswith("From [`results/autoencoder-linear/final.json`]")
    body = [r for r in rows if r.startswith("| `")]
    assert body == ["| `data` | digits |", "| `split` | test |", "| `metric` | reconstruction_sse |",
                    "| `value` | 12.35 |", "| `pca_value` | 12 |", "| `steps` | 2,000 |"]  # fmt: skip


def test_the_cards_command_writes_a_skeleton_fills_it_and_keeps_the_prose(tmp_path, capsys):
    (tmp_path / "README.md").write_text(f"# x\n\n{cards.README_BEGIN}\nold\n{cards.README_END}\n")
    assert main(["cards", "lenet5-modern", "--root", str(tmp_path)]) == 2  # no card yet
    assert "--init" in capsys.readouterr().err
    assert main(["cards", "lenet5-modern", "--init", "--root", str(tmp_path)]) == 0
    path = tmp_path / "docs" / "models" / "lenet5-modern.md"
    text = path.read_text().replace("TODO: the paper's idea in a paragraph.", "Our own words.")
    path.write_text(text)
    assert main(["cards", "--root", str(tmp_path)]) == 0
    text = path.read_text()
    assert "Our own words." in text and "`replab-fast train lenet5-modern`" in text
    assert cards.read_block(text, "results").startswith("No replication result committed yet")
    assert "[`lenet5-modern`](docs/models/lenet5-modern.md)" in (tmp_path / "README.md").read_text()
    assert not cards.update_card(path, "lenet5-modern", tmp_path)  # a second run changes nothing
    path.write_text(text.replace(cards.markers("notes")[1], ""))
    with pytest.raises(ValueError, match="generated:notes"):
        cards.update_card(path, "lenet5-modern", tmp_path)


def test_a_preset_without_a_card_has_its_results_on_its_familys_card(tmp_path):
    from replab_fast.train.replicate import card_for

    assert card_for("alexnet-10class", CARDS) == "alexnet"
    assert card_for("lenet5-modern", CARDS) == "lenet5-modern"
    assert card_for("alexnet-10class", tmp_path) is None  # no card in the family
    shown = cards.render_results("alexnet", ROOT)
    assert "results/alexnet-10class/final.json" in shown
    assert "`llama-tiny` has no replication recipe" in cards.render_results("llama-tiny", ROOT)
