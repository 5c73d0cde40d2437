"""Bad checkpoints fail loudly, naming what is wrong, instead of loading into a silently wrong model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from ssmkit.io import SUPPORTED_MODEL_TYPES, load_pretrained, save_pretrained
from ssmkit.models import LanguageModel, ModelConfig


@pytest.fixture
def checkpoint(tmp_path):
    cfg = ModelConfig(vocab_size=17, d_model=16, n_layers=2, mixers="mamba2", mamba2_d_state=4, mamba2_headdim=8)
    save_pretrained(LanguageModel(cfg), tmp_path)
    return tmp_path


def _edit_weights(path, edit):
    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_unknown_model_type_lists_supported_ones(checkpoint):
    _edit_config(checkpoint, model_type="rwkv")
    with pytest.raises(ValueError, match="model_type") as err:
        load_pretrained(checkpoint)
    assert "'rwkv'" in str(err.value) and all(t in str(err.value) for t in SUPPORTED_MODEL_TYPES)


def test_missing_tensor_is_named(checkpoint):
    _edit_weights(checkpoint, lambda t: t.pop("backbone.layers.1.mixer.dt_bias"))
    with pytest.raises(ValueError, match=r"missing tensor 'backbone\.layers\.1\.mixer\.dt_bias'"):
        load_pretrained(checkpoint)


def test_unexpected_tensor_is_named(checkpoint):
    _edit_weights(checkpoint, lambda t: t.update({"backbone.layers.1.mixer.extra": torch.zeros(3)}))
    with pytest.raises(ValueError, match=r"unexpected tensor 'backbone\.layers\.1\.mixer\.extra'"):
        load_pretrained(checkpoint)


def test_wrong_shape_names_tensor_and_both_shapes(checkpoint):
    _edit_weights(checkpoint, lambda t: t.update({"backbone.layers.0.mixer.D": torch.zeros(5)}))
    with pytest.raises(ValueError, match=r"'backbone\.layers\.0\.mixer\.D'.*\(5,\).*\(4,\)"):
        load_pretrained(checkpoint)


def test_inconsistent_mamba2_heads_are_reported(checkpoint):
    _edit_config(checkpoint, num_heads=3)
    with pytest.raises(ValueError, match=r"num_heads \* head_dim = 3 \* 8 = 24, expected .* 32"):
        load_pretrained(checkpoint)


def test_inconsistent_config_reports_the_field(checkpoint):
    _edit_config(checkpoint, n_groups=3)  # 4 heads cannot be split into 3 groups
    with pytest.raises(ValueError, match=r"mamba2_ngroups: nheads = 4 .* got mamba2_ngroups=3"):
        load_pretrained(checkpoint)


def test_pickle_weights_are_refused(tmp_path, checkpoint):
    (checkpoint / "model.safetensors").rename(checkpoint / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="safetensors only"):
        load_pretrained(checkpoint)


def test_missing_shard_is_named(tmp_path):
    cfg = ModelConfig(vocab_size=17, d_model=16, n_layers=2, mixers="mamba2", mamba2_d_state=4, mamba2_headdim=8)
    save_pretrained(LanguageModel(cfg), tmp_path, max_shard_size=2000)
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=shard.name):
        load_pretrained(tmp_path)


def test_unsupported_rope_scaling_is_refused(tmp_path):
    cfg = ModelConfig(vocab_size=17, d_model=16, n_layers=1, mixers="attention", feed_forwards="mlp", n_heads=2)
    save_pretrained(LanguageModel(cfg), tmp_path)
    _edit_config(tmp_path, rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0})
    with pytest.raises(ValueError, match="rope_type.*'yarn'"):
        load_pretrained(tmp_path)
