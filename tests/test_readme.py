"""The README's models table is the registry's: every model, with its exact parameter count."""

from pathlib import Path

import replab_fast
from replab_fast.models.registry import count_parameters

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_lists_every_model_with_its_parameter_count():
    text = README.read_text()
    for name in replab_fast.list_models():
        count = count_parameters(replab_fast.create_model(name, device="meta"))
        assert f"| `{name}` | {replab_fast.get_spec(name).paper} | {count:,} |" in text, name


def test_readme_names_the_test_command_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci and "make test" in README.read_text()
