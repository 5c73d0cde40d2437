"""The GPU benchmark scripts' shared helpers: model selection and the random-weight models they time."""

import pytest
import torch

from ssmkit.bench.scripts import random_model, select_models


def test_select_models_keeps_the_asked_order_and_rejects_unknown_names():
    models = {"a": 1, "b": 2, "c": 3}
    assert select_models(models, None, pytest.fail) == models
    assert list(select_models(models, "c,a", pytest.fail).items()) == [("c", 3), ("a", 1)]
    errors = []
    with pytest.raises(KeyError):
        select_models(models, "a,zz", errors.append)  # error() returned instead of exiting: the lookup fails
    assert errors == ["--models: unknown ['zz']; expected from ['a', 'b', 'c']"]


def test_random_model_is_seeded_and_scales_only_the_lm_head():
    plain = random_model("tiny-mamba2", "cpu", torch.float32, head_scale=1.0)
    scaled = random_model("tiny-mamba2", "cpu", torch.float32)
    assert not plain.training and not scaled.training
    for (name, p), (_, q) in zip(plain.named_parameters(), scaled.named_parameters()):
        expected = p * 8.0 if name == "lm_head.weight" else p
        assert torch.equal(q, expected), name
