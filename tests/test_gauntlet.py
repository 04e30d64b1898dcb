"""The debugging gauntlet for every registered model.

- every preset builds on the meta device (parameter counts of the huge presets without memory);
- every preset small enough to train here overfits one fixed batch: the loss falls below its
  OverfitRecipe's fraction of the starting loss within its number of Adam steps;
- every parameter of those receives a finite, non-zero gradient.
A preset without a recipe (7B, 13B, ...) is covered by a smaller preset of its family.
"""

import math

import pytest
import torch

import replab_fast
from replab_fast.models.registry import count_parameters

ALL = replab_fast.list_models()
TRAINABLE = [n for n in ALL if replab_fast.get_spec(n).overfit is not None]


@pytest.mark.parametrize("name", ALL)
def test_builds_on_meta_and_matches_the_papers_figure(name):
    spec = replab_fast.get_spec(name)
    model = replab_fast.create_model(name, device="meta")
    count = count_parameters(model)
    assert count > 0
    if spec.paper_param_count is not None:
        assert count == spec.paper_param_count


@pytest.mark.parametrize("name", ALL)
def test_every_family_has_a_preset_the_gauntlet_trains(name):
    family = replab_fast.get_spec(name).family
    assert any(replab_fast.get_spec(n).family == family for n in TRAINABLE)


def _model_and_batch(name):
    spec = replab_fast.get_spec(name)
    recipe = spec.overfit
    torch.manual_seed(0)
    model = replab_fast.create_model(name, **dict(recipe.overrides))
    inputs, target = spec.make_batch(model, recipe.batch_size, generator=torch.Generator().manual_seed(0))
    return spec, recipe, model, inputs, target


@pytest.mark.parametrize("name", TRAINABLE)
def test_every_parameter_gets_a_finite_nonzero_gradient(name):
    spec, _, model, inputs, target = _model_and_batch(name)
    spec.loss(model, inputs, target).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().max() > 0, f"{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", TRAINABLE)
def test_overfits_one_batch(name):
    spec, recipe, model, inputs, target = _model_and_batch(name)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    first = None
    for _ in range(recipe.steps):
        optimizer.zero_grad(set_to_none=True)
        loss = spec.loss(model, inputs, target)
        loss.backward()
        optimizer.step()
        first = loss.item() if first is None else first
    final = spec.loss(model, inputs, target).item()
    assert math.isfinite(final)
    assert final < recipe.below * first, f"{name}: loss {first:.4g} -> {final:.4g} in {recipe.steps} steps"
