"""ssmkit.inference.module_walk: tensor_signature, the staleness check of captured graphs, against the full walk
it replaced (for every change to a model, the signature changes exactly when the set of parameter and buffer
tensors does), and eval_mode against model.eval() (inside) and each module's own earlier mode (after)."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
from torch import nn

from ssmkit.inference.module_walk import _WALKS, eval_mode, tensor_signature
from tests.inference.models import tiny_model


def full_walk(model) -> tuple:
    """The independent reference: every parameter and buffer, walked afresh."""
    return tuple(t.data_ptr() for t in model.parameters()) + tuple(t.data_ptr() for t in model.buffers())


def _linear_without_bias(model) -> nn.Linear:
    return next(m for m in model.modules() if isinstance(m, nn.Linear) and m.bias is None)


def _reassign_a_weight(model) -> None:
    linear = next(m for m in model.layers[0].modules() if isinstance(m, nn.Linear))
    linear.weight = nn.Parameter(linear.weight.detach().clone())


CHANGES = {
    "nothing": lambda m: None,
    "values copied in place": lambda m: next(m.parameters()).data.add_(1.0),
    "to another dtype": lambda m: m.to(torch.float32),
    "a parameter reassigned": _reassign_a_weight,
    "a block swapped": lambda m: m.layers.__setitem__(1, copy.deepcopy(m.layers[1])),
    "an empty bias slot filled": lambda m: setattr(_linear_without_bias(m), "bias", nn.Parameter(
        torch.zeros(_linear_without_bias(m).out_features, dtype=torch.float64))),
    "a buffer registered": lambda m: m.layers[0].register_buffer("extra", torch.zeros(3)),
    "a block appended": lambda m: m.layers.append(copy.deepcopy(m.layers[0])),
}


@pytest.mark.parametrize("family", ["mamba", "mamba2", "llama", "hybrid-moe"])
@pytest.mark.parametrize("change", list(CHANGES))
def test_signature_changes_exactly_when_the_models_tensors_do(family, change):
    model = tiny_model(family)
    before, reference = tensor_signature(model), full_walk(model)
    assert tensor_signature(model) == before  # the kept walk, checked, gives the same tuple
    CHANGES[change](model)
    after = tensor_signature(model)
    changed = full_walk(model) != reference
    assert changed == (change not in ("nothing", "values copied in place")), change  # the change is one
    assert (after != before) == changed, change
    assert tensor_signature(model) == after  # stable once walked again


def test_the_kept_walk_does_not_keep_the_model_alive():
    model = tiny_model("mamba2")
    tensor_signature(model)
    assert model in _WALKS
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("family", ["mamba2", "hybrid-moe"])
def test_eval_mode_is_model_eval_inside_and_gives_each_module_its_own_mode_back(family):
    model = tiny_model(family)
    modules = list(model.modules())
    for i, m in enumerate(modules):  # mixed modes, the root's among them
        m.training = i % 3 == 0
    before = [m.training for m in modules]
    assert any(before) and not all(before)
    with eval_mode(model):
        assert not any(m.training for m in modules)
    assert [m.training for m in modules] == before
    with pytest.raises(RuntimeError, match="inside"):
        with eval_mode(model):
            raise RuntimeError("inside")
    assert [m.training for m in modules] == before
    model.layers.append(copy.deepcopy(model.layers[0]))  # a changed tree is walked again
    modules = list(model.modules())
    before = [m.training for m in modules]
    with eval_mode(model):
        assert not any(m.training for m in modules)
    assert [m.training for m in modules] == before
