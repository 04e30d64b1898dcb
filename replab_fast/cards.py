"""Model cards: the generated sections of ``docs/models/<model>.md`` and the README's list of cards.

A card is hand-written prose (the paper's idea, the expected behaviour, what a broken
implementation looks like) around blocks between ``<!-- generated:NAME:begin -->`` and
``<!-- generated:NAME:end -->`` that this module writes from the code, so they cannot drift:

- ``summary``: the registry entry (class, config preset, parameters, the paper's figure);
- ``paper``: the citation at the head of the model file's docstring;
- ``diagram``: the picture ``replab_fast.diagram`` draws from the module, and its layers as a table;
- ``notes``: the model file's "Paper vs code" docstring section;
- ``training``: the model's ``train/recipes.py`` Recipe, and the loss's docstring;
- ``results``: ``results/<model>/final.json`` where it exists, else the command that writes it.

``replab-fast cards`` (``make docs``) rewrites every block of every card under ``docs/models/``
and the README's list between ``<!-- cards:begin -->`` and ``<!-- cards:end -->``;
``replab-fast cards --init MODEL`` writes a new card's skeleton. tests/test_cards.py fails while a
block differs from what this module writes now.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from pathlib import Path
from typing import Any, Optional

from .models.registry import count_parameters, create_model, get_spec, list_models

__all__ = ["BLOCKS", "card_models", "read_block", "render_blocks", "skeleton", "update_card", "update_readme"]

BLOCKS = ("summary", "paper", "diagram", "notes", "training", "results")
CARDS_DIR = Path("docs/models")
README_BEGIN, README_END = "<!-- cards:begin -->", "<!-- cards:end -->"
TO_ROOT = "../.."  # from a card to the repository root
PATH_DATA = ("text", "folders", "image-folder")  # DATASETS entries that stand for a path given as --data
_UNDERLINE = re.compile(r"[-=]{3,}")


def markers(block: str) -> tuple[str, str]:
    return f"<!-- generated:{block}:begin -->", f"<!-- generated:{block}:end -->"


# --------------------------------------------------------------------------------------------
# The model file's docstring
# --------------------------------------------------------------------------------------------


def model_module(name: str):
    return importlib.import_module(get_spec(name).model_cls.__module__)


def module_path(name: str) -> str:
    """The model file, relative to the repository root ("replab_fast/models/lenet.py")."""
    return model_module(name).__name__.replace(".", "/") + ".py"


def docstring_sections(doc: str) -> dict[str, str]:
    """A docstring's sections by title ("" for the text before the first), the first line (the
    title) left out. A section title is a line underlined with dashes or equals signs."""
    lines = inspect.cleandoc(doc).splitlines()[1:]
    sections: dict[str, list[str]] = {"": []}
    title, i = "", 0
    while i < len(lines):
        underline = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if lines[i].strip() and _UNDERLINE.fullmatch(underline):
            title, i = lines[i].strip(), i + 2
            sections[title] = []
            continue
        sections[title].append(lines[i])
        i += 1
    return {key: "\n".join(value).strip() for key, value in sections.items()}


def _paper_vs_code(name: str) -> str:
    sections = docstring_sections(model_module(name).__doc__ or "")
    if "Paper vs code" not in sections:
        raise ValueError(f"{module_path(name)}'s docstring has no 'Paper vs code' section")
    return sections["Paper vs code"]


# --------------------------------------------------------------------------------------------
# The blocks
# --------------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|")


def _link(path: str) -> str:
    return f"[`{path}`]({TO_ROOT}/{path})"


def _preset_link(name: str, cards: list[str]) -> str:
    """A preset's name (a link to its card when it has one) and its parameter count."""
    label = f"[`{name}`]({name}.md)" if name in cards else f"`{name}`"
    return f"{label} ({count_parameters(create_model(name, device='meta')):,} parameters)"


def render_summary(name: str, cards: list[str]) -> str:
    spec = get_spec(name)
    params = count_parameters(create_model(name, device="meta"))
    figure = f" (the paper's figure: {spec.paper_param_count:,})" if spec.paper_param_count else ""
    siblings = [n for n in list_models(spec.family) if n != name]
    others = ", ".join(_preset_link(n, cards) for n in siblings) or "none"
    rows = [
        ("registry name", f'`{name}`: `replab_fast.create_model("{name}")`'),
        ("paper", spec.paper),
        ("code", f'`{spec.model_cls.__name__}` in {_link(module_path(name))}, config '
                 f'`{spec.config_cls.__name__}.from_name("{spec.preset}")`'),
        ("parameters", f"{params:,}{figure}"),
        ("what it is", spec.description),
        ("other presets of the family", others),
    ]  # fmt: skip
    return "\n".join(["| | |", "|---|---|"] + [f"| {key} | {value} |" for key, value in rows])


def render_paper(name: str) -> str:
    head = docstring_sections(model_module(name).__doc__ or "")[""]
    quoted = "\n".join(f"> {line}".rstrip() for line in head.splitlines())
    return f"From the docstring of {_link(module_path(name))}:\n\n{quoted}"


def render_notes(name: str) -> str:
    return f"The \"Paper vs code\" section of {_link(module_path(name))}'s docstring:\n\n{_paper_vs_code(name)}"


def render_diagram(name: str) -> str:
    from .diagram import trace

    diagram = trace(name)
    return "\n".join([
        f"![the architecture of {name}, drawn from the module]({name}.png)",
        "",
        f"{diagram.total_params:,} trainable parameters. Drawn by `replab-fast diagram {name}` from one forward "
        "pass of a `make_batch` batch with hooks on the layers (`replab_fast/diagram.py`); `B` is the batch "
        "dimension.",
        "",
        "<details><summary>The layers as a table</summary>",
        "",
        diagram.table(),
        "",
        "</details>",
    ])  # fmt: skip


def _number(value: float) -> str:
    return f"{value:g}"


def _optimizer(recipe) -> str:
    text = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}[recipe.optimizer] + f", peak lr {_number(recipe.lr)}"
    if recipe.optimizer == "sgd":
        text += f", momentum {_number(recipe.momentum)}" if recipe.momentum else ", no momentum"
    else:
        text += f", betas ({_number(recipe.betas[0])}, {_number(recipe.betas[1])})"
    return text + (f", weight decay {_number(recipe.weight_decay)}" if recipe.weight_decay else "")


def _schedule(schedule) -> str:
    warmup = f"linear warmup over {schedule.warmup} steps, then " if schedule.warmup else ""
    if schedule.kind == "constant":
        return f"{warmup}constant"
    if schedule.kind == "step":
        at = [f"{m:.0%}" for m in schedule.milestones]
        at_text = ", ".join(at[:-1]) + " and " + at[-1] if len(at) > 1 else "".join(at)
        return f"step decay: the lr multiplied by {schedule.gamma:.4g} at {at_text} of the run"
    return f"{warmup}cosine decay to {schedule.min_ratio:.0%} of the peak"


def _data(name: str, recipe) -> str:
    from .data import DATASETS, task_of

    task = task_of(name)
    others = [f"`{d}`" for d in DATASETS[task] if d not in (recipe.data, *PATH_DATA)]
    also = f"another dataset ({', '.join(others)}) or a path" if others else "a path"
    return f"`{recipe.data}` ({task.replace('-', ' ')}); `--data` takes {also}"


def _loss(name: str) -> str:
    spec = get_spec(name)
    doc = inspect.getdoc(spec.loss) or inspect.getdoc(getattr(spec.model_cls, "loss", None)) or ""
    first = doc.split("\n\n")[0].replace("\n", " ").strip()
    return first or f"`{spec.loss.__module__}.{spec.loss.__name__}`"


def _metric(name: str, recipe) -> str:
    from .train.metrics import METRICS

    metric = METRICS[recipe.metric]
    better = "higher" if metric.higher_is_better else "lower"
    batches = "the whole split" if recipe.eval_batches is None else f"{recipe.eval_batches} batches"
    return (f"`{metric.name}` ({better} is better), on the validation split every {recipe.eval_every} steps "
            f"({batches}) and at the end; `replab-fast eval runs/{name}` gives the test split's")


def render_training(name: str) -> str:
    from .train.recipes import recipe_for

    try:
        recipe = recipe_for(name)
    except KeyError:
        return f"`{name}` has no training recipe in {_link('replab_fast/train/recipes.py')}."
    overrides = ", ".join(f"`{key}={value!r}`" for key, value in recipe.model_overrides)
    rows = [
        ("command", f"`replab-fast train {name}` (writes `runs/{name}/`)"),
        ("data", _data(name, recipe)),
        ("loss", _loss(name)),
        ("optimizer", _optimizer(recipe)),
        ("schedule", _schedule(recipe.schedule)),
        ("steps and batch", f"{recipe.steps:,} steps of {recipe.batch_size} examples"
                            + (f" ({recipe.grad_accum} micro-batches)" if recipe.grad_accum > 1 else "")),
        ("gradient clipping", f"global norm {_number(recipe.grad_clip)}" if recipe.grad_clip else "none"),
        ("mixed precision", f"{recipe.amp} autocast" if recipe.amp != "none" else "none (fp32)"),
        ("model config for training", overrides or "the preset's"),
        ("metric", _metric(name, recipe)),
        ("the paper trained with", recipe.paper or "-"),
        ("this recipe", recipe.note or "-"),
    ]  # fmt: skip
    lines = ["| | |", "|---|---|"] + [f"| {key} | {_cell(value)} |" for key, value in rows]
    return f"From `recipe_for(\"{name}\")` in {_link('replab_fast/train/recipes.py')}:\n\n" + "\n".join(lines)


def _value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict) and "name" in value:
        return str(value["name"])
    if isinstance(value, (dict, list)):
        text = json.dumps(value, sort_keys=True)
        return text if len(text) <= 120 else text[:119] + "\u2026"
    return str(value)


RESULT_KEYS = ("data", "split", "metric", "value")  # first, in this order; the rest as the file has them


def render_results(name: str, root: Path) -> str:
    """The card's results: every replication the card shows (``card_for``), from its final.json."""
    from .train.replicate import REPLICATIONS, card_for

    shown = [rep for rep in REPLICATIONS if card_for(rep, root / CARDS_DIR) == name or rep == name]
    if not shown:
        return (f"`{name}` has no replication recipe (`replab-fast replicate --list` names them); "
                f"`replab-fast train {name}` trains it by its training recipe.")  # fmt: skip
    return "\n\n".join(_render_result(rep, root) for rep in shown)


def _render_result(name: str, root: Path) -> str:
    folder = root / "results" / name
    final = folder / "final.json"
    if not final.is_file():
        return (f"No replication result committed yet. `replab-fast replicate {name}` trains the model by its recipe "
                f"and writes `results/{name}/final.json`; `make docs` then fills this section from it.")  # fmt: skip
    result = json.loads(final.read_text())
    keys = [k for k in RESULT_KEYS if k in result] + [k for k in result if k not in RESULT_KEYS]
    rows = [f"| `{key}` | {_cell(_value(result[key]))} |" for key in keys if result[key] is not None]
    source = f"From [`results/{name}/final.json`]({TO_ROOT}/results/{name}/final.json):"
    lines = [source, "", "| | |", "|---|---|", *rows]
    if (folder / "curves.png").is_file():
        lines += ["", f"![training curves of {name}]({TO_ROOT}/results/{name}/curves.png)"]
    return "\n".join(lines + _extra_results(name, folder))


def _extra_results(name: str, folder: Path) -> list[str]:
    """The replication's other files: the 2-D codes, the tradeoff table, the samples."""
    lines, link = [], f"{TO_ROOT}/results/{name}"
    if (folder / "codes.png").is_file():
        lines += ["", f"The test images' 2-D codes beside PCA's first two components ([`codes.png`]({link}/codes.png)):",
                  "", f"![2-D codes of {name} beside PCA's]({link}/codes.png)"]  # fmt: skip
    if (folder / "tradeoffs.md").is_file():
        lines += ["", f"Training tradeoffs ([`tradeoffs.md`]({link}/tradeoffs.md)):", "",
                  (folder / "tradeoffs.md").read_text().strip()]  # fmt: skip
    if (folder / "samples.txt").is_file():
        lines += ["", f"Samples from the best checkpoint ([`samples.txt`]({link}/samples.txt)):", "", "````text",
                  (folder / "samples.txt").read_text().strip(), "````"]  # fmt: skip
    return lines


def render_blocks(name: str, root: Path, cards: Optional[list[str]] = None) -> dict[str, str]:
    """Every generated block of ``name``'s card, by block name."""
    cards = card_models(root / CARDS_DIR) if cards is None else cards
    return {
        "summary": render_summary(name, cards),
        "paper": render_paper(name),
        "diagram": render_diagram(name),
        "notes": render_notes(name),
        "training": render_training(name),
        "results": render_results(name, root),
    }


# --------------------------------------------------------------------------------------------
# Card files
# --------------------------------------------------------------------------------------------


def card_models(folder: Path) -> list[str]:
    """The registered models with a card (``<model>.md``) in ``folder``, in registry order."""
    folder = Path(folder)
    return [name for name in list_models() if (folder / f"{name}.md").is_file()]


def _span(text: str, begin: str, end: str, where: str) -> tuple[int, int]:
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"{where} has no {begin} ... {end} markers")
    return start + len(begin), stop


def read_block(text: str, block: str) -> str:
    """The content between a block's markers, without the blank lines around it."""
    start, stop = _span(text, *markers(block), f"the card (block {block!r})")
    return text[start:stop].strip("\n")


def replace_block(text: str, begin: str, end: str, content: str, where: str) -> str:
    start, stop = _span(text, begin, end, where)
    return text[:start] + "\n\n" + content + "\n\n" + text[stop:]  # blank lines: markdown ends a table there


def update_card(path: Path, name: str, root: Path, cards: Optional[list[str]] = None) -> bool:
    """Rewrite every generated block of the card at ``path``; True when it changed."""
    path = Path(path)
    old = path.read_text()
    new = old
    for block, content in render_blocks(name, root, cards).items():
        new = replace_block(new, *markers(block), content, str(path))
    if new != old:
        path.write_text(new)
    return new != old


def render_readme_list(cards: list[str]) -> str:
    return "\n".join(f"- [`{n}`]({CARDS_DIR}/{n}.md): {get_spec(n).description}" for n in cards)


def update_readme(readme: Path, cards: list[str]) -> bool:
    """Rewrite the README's list of model cards; True when it changed."""
    readme = Path(readme)
    old = readme.read_text()
    new = replace_block(old, README_BEGIN, README_END, render_readme_list(cards), str(readme))
    if new != old:
        readme.write_text(new)
    return new != old


def skeleton(name: str) -> str:
    """A new card: the headings, every block's markers, and TODOs where prose goes."""
    def block(b: str) -> str:
        begin, end = markers(b)
        return f"{begin}\n{end}"

    spec = get_spec(name)
    return "\n\n".join([
        f"# `{name}`: {spec.description}", block("summary"),
        "## The paper", block("paper"), "TODO: the paper's idea in a paragraph.",
        "## Architecture", block("diagram"),
        "## Paper vs code", block("notes"),
        "## Training", block("training"), "**Expected behaviour.** TODO",
        "## Results", block("results"),
        "## What it looks like when it is broken", "TODO: the common bugs of this architecture and their symptoms.",
    ]) + "\n"  # fmt: skip


def run(models: list[str], root: Path, *, init: bool = False, readme: bool = True) -> list[str]:
    """Regenerate the cards of ``models`` (every card when empty) and the README's list; with
    ``init``, write the skeleton of each named card that does not exist yet. Returns the files changed."""
    root = Path(root)
    if init:
        for name in models:
            get_spec(name)
            path = root / CARDS_DIR / f"{name}.md"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(skeleton(name))
    cards = card_models(root / CARDS_DIR)
    missing = [n for n in models if n not in cards]
    if missing:
        raise FileNotFoundError(f"no card for {', '.join(missing)} under {root / CARDS_DIR}: "
                                "`replab-fast cards --init MODEL` writes a skeleton")  # fmt: skip
    changed = [str(root / CARDS_DIR / f"{n}.md") for n in (models or cards)
               if update_card(root / CARDS_DIR / f"{n}.md", n, root, cards)]  # fmt: skip
    if readme and update_readme(root / "README.md", cards):
        changed.append(str(root / "README.md"))
    return changed
