"""TrainConfig from YAML: unknown keys name the key and list the valid ones; values are type-checked; overrides."""

import pytest

from ssmkit.train.commands import load_config
from ssmkit.train.config import DataConfig, TrainConfig, model_config


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_values_parse_into_the_dataclasses(tmp_path):
    cfg = TrainConfig.from_yaml(write(tmp_path, """
model: {preset: tiny-mamba2, d_model: 32}
data: {kind: mqar, seq_len: 32, vocab_size: 64, num_kv_pairs: 4}
lr: 3e-4
grad_clip: null
steps: 5
"""))
    assert isinstance(cfg.data, DataConfig) and cfg.data.num_kv_pairs == 4
    assert cfg.lr == 3e-4 and cfg.grad_clip is None and cfg.steps == 5
    mc = model_config(cfg.model, vocab_size=64)
    assert mc.d_model == 32 and mc.mixers == ["mamba2", "mamba2"] and mc.vocab_size == 64


@pytest.mark.parametrize("text,key,valid", [
    ("stepz: 3\n", "stepz", "'steps'"),
    ("data: {kind: mqar, seqlen: 8}\n", "data.seqlen", "'seq_len'"),
    ("model: {preset: tiny-mamba2, dmodel: 8}\n", "model.dmodel", "'d_model'"),
])
def test_unknown_keys_name_the_key_and_list_the_valid_ones(tmp_path, text, key, valid):
    with pytest.raises(ValueError, match=rf"{key}: unknown key; valid keys: \[.*{valid}"):
        cfg = TrainConfig.from_yaml(write(tmp_path, text))
        model_config(cfg.model, 64)


@pytest.mark.parametrize("text,match", [
    ("steps: three\n", r"steps: expected int, got 'three'"),
    ("lr: -1\n", r"lr: expected > 0"),
    ("data: {kind: audio}\n", r"data.kind: expected one of"),
    ("data: {kind: text}\n", r"data.paths: expected at least one"),
    ("precision: fp8\n", r"precision: expected one of"),
    ("parallel: pipeline\n", r"parallel: expected one of \['data', 'tensor', 'sequence'\], got 'pipeline'"),
    ("model: {preset: nope}\n", r"model.preset: expected one of"),
    ("model: {preset: tiny-mamba2, vocab_size: 10}\ndata: {kind: copy}\n", r"model.vocab_size: the data uses 18"),
])
def test_bad_values_raise_errors_naming_the_field(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        cfg = TrainConfig.from_yaml(write(tmp_path, text))
        model_config(cfg.model, 18)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config: no such file"):
        TrainConfig.from_yaml(tmp_path / "none.yaml")


def test_dotted_overrides_reach_into_data_and_model(tmp_path):
    path = write(tmp_path, "model: tiny-llama\ndata: {kind: mqar}\n")
    cfg = load_config(path, ["data.seq_len=48", "model.d_model=48", "lr=1e-2", "steps=7"])
    assert cfg.data.seq_len == 48 and cfg.model == {"preset": "tiny-llama", "d_model": 48}
    assert cfg.lr == 1e-2 and cfg.steps == 7
    with pytest.raises(ValueError, match="data.seq_lenn: unknown key"):
        load_config(path, ["data.seq_lenn=4"])
