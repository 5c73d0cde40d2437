"""Warmup + cosine schedule against its closed form; weight decay only on weight matrices."""

import math

import pytest

from ssmkit.models import LanguageModel, ModelConfig
from ssmkit.train.optim import lr_at, param_groups


def test_schedule_warms_up_linearly_then_follows_the_cosine_to_the_floor():
    lr, warm, total, floor = 1e-3, 10, 110, 0.1
    assert lr_at(0, lr, warm, total, floor) == pytest.approx(1e-4)
    assert lr_at(9, lr, warm, total, floor) == pytest.approx(1e-3)
    for step in (10, 35, 60, 109):
        t = (step - warm) / (total - warm)
        want = lr * floor + lr * (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
        assert lr_at(step, lr, warm, total, floor) == pytest.approx(want, rel=1e-12)
    assert lr_at(500, lr, warm, total, floor) == pytest.approx(lr * floor)
    assert lr_at(0, lr, 0, total, floor) == pytest.approx(lr)


def test_no_weight_decay_on_biases_norms_and_ssm_parameters():
    model = LanguageModel(ModelConfig(d_model=32, n_layers=2, mixers=["mamba", "mamba2"], mamba2_headdim=16,
                                      mamba2_d_state=8))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    for name in no_decay["names"]:
        assert name.endswith(("bias", "A_log", ".D", "dt_bias", "norm.weight", "norm_f.weight"))
    for name in ("layers.0.mixer.A_log", "layers.1.mixer.dt_bias", "layers.0.mixer.D", "norm_f.weight"):
        assert name in no_decay["names"]
    assert "layers.0.mixer.in_proj.weight" in decay["names"] and "embeddings.weight" in decay["names"]
    n_params = sum(1 for _ in model.parameters())
    assert len(decay["names"]) + len(no_decay["names"]) == n_params
