"""Bad input stops with clear errors: NaN loss (keeping the last good checkpoint), another architecture on
resume, missing data files, resume without a checkpoint."""

import math

import pytest
import torch

from ssmkit.train import commands
from ssmkit.train.checkpoint import latest_checkpoint, read_checkpoint
from ssmkit.train.trainer import NonFiniteLossError, Trainer
from tests.train.helpers import tiny_config

FAST = dict(steps=4, checkpoint_every=2, eval_every=100, save_hf=False, grad_accum=1)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, **FAST))
    trainer.train(stop_at=2)
    with torch.no_grad():
        trainer.model.embeddings.weight[ord("e")].fill_(math.nan)  # a byte every row of Python source has
    # Mamba-2's ssd rejects the NaN activations before a loss exists; the trainer reports it the same way.
    with pytest.raises(NonFiniteLossError, match=r"is nan at step 3: training stopped before the optimizer "
                                                 r"step.*last good checkpoint is .*step_00000002"):
        trainer.train()
    assert latest_checkpoint(tmp_path).name == "step_00000002"
    weights, _, state = read_checkpoint(latest_checkpoint(tmp_path))
    assert state["step"] == 2 and all(bool(torch.isfinite(w).all()) for w in weights.values())
    assert Trainer(tiny_config(tmp_path, **FAST)).step == 2


def test_command_returns_exit_code_3_when_the_loss_diverges(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
model: {{preset: tiny-llama, d_model: 16, n_layers: 1, n_heads: 2, n_kv_heads: 1, d_ff: 32}}
data: {{kind: induction, seq_len: 16}}
steps: 6
lr: 1.0e+30
warmup_steps: 0
grad_clip: null
batch_size: 2
eval_every: 100
out_dir: {tmp_path / 'run'}
progress: none
""")
    assert commands.train(cfg) == commands.EXIT_NONFINITE
    err = capsys.readouterr().err
    assert "ssmkit train: stopped:" in err and ("is nan" in err or "is inf" in err)


def test_resume_with_another_architecture_names_the_fields_that_differ(tmp_path):
    Trainer(tiny_config(tmp_path, **FAST)).train(stop_at=2)
    with pytest.raises(ValueError, match=r"resume: checkpoint .*step_00000002 holds another architecture "
                                         r"\(d_model: checkpoint 32, config 48.*set resume: never"):
        Trainer(tiny_config(tmp_path, model_d_model=48, **FAST))
    with pytest.raises(ValueError, match=r"mixers: checkpoint \['mamba2'\], config \['attention'\]"):
        Trainer(tiny_config(tmp_path, model_preset="tiny-llama", model_mixers="attention", **FAST))


def test_missing_data_files_name_the_path(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{kind: text, paths: [{tmp_path / 'corpus'}]}}\nout_dir: {tmp_path / 'run'}\n")
    with pytest.raises(FileNotFoundError, match=r"data.paths\[0\]: no such file or folder: .*corpus"):
        commands.train(cfg)


def test_resume_always_without_a_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="resume: 'always' but no checkpoint"):
        Trainer(tiny_config(tmp_path, resume="always", **FAST))
