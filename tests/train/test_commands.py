"""`ssmkit train` / `ssmkit eval` logic: a YAML run end to end, then every eval task on its checkpoint."""

import json

import pytest

from ssmkit.train import commands


def run_json(capsys, *args, **kwargs) -> dict:
    assert commands.evaluate_checkpoint(*args, as_json=True, **kwargs) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_train_then_eval_every_task_on_run_checkpoint_and_hf_export(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"""
model: {{preset: tiny-llama, d_model: 32, n_layers: 1, n_heads: 2, n_kv_heads: 1, d_ff: 64}}
data: {{kind: text, paths: ["{{stdlib}}/json"], seq_len: 32}}
steps: 3
batch_size: 4
eval_batches: 3
out_dir: {tmp_path / 'run'}
progress: none
""")
    assert commands.train(cfg, ["eval_every=3"]) == 0
    out = capsys.readouterr().out
    assert "trained 3 steps" in out and "model (Hugging Face format)" in out
    state = json.loads((tmp_path / "run/checkpoints/step_00000003/trainer_state.json").read_text())

    ppl = run_json(capsys, tmp_path / "run", "ppl", batch_size=4, max_batches=3)
    assert ppl["bpb"] == pytest.approx(state["eval"]["bpb"], rel=1e-6)  # the run's own validation rows
    assert ppl["ppl"] == pytest.approx(2 ** ppl["bpb"], rel=1e-9)
    assert ppl["data"]["python"] and ppl["data"]["first"][0].startswith("json/")
    hf = run_json(capsys, tmp_path / "run/model", "ppl", data=["{stdlib}/json"], seq_len=32, batch_size=4,
                  max_batches=3)
    assert hf["loss"] == pytest.approx(ppl["loss"], rel=1e-6)
    for task in ("mqar", "copy", "induction"):
        m = run_json(capsys, tmp_path / "run", task, seq_len=32, examples=8)
        assert 0.0 <= m["accuracy"] <= 1.0 and m["labels"] > 0 and "sequence_accuracy" in m


def test_eval_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint: no such file or folder"):
        commands.evaluate_checkpoint(tmp_path / "none", "mqar")
    with pytest.raises(FileNotFoundError, match="neither a training checkpoint"):
        commands.evaluate_checkpoint(tmp_path, "mqar")
    with pytest.raises(ValueError, match="task: expected one of"):
        commands.eval_data_config("bleu", {})
    with pytest.raises(ValueError, match=r"--task ppl needs text files"):
        commands.eval_data_config("ppl", {})


def test_ppl_refuses_a_checkpoint_whose_ids_are_not_bytes(tmp_path):
    from ssmkit.io import save_pretrained
    from ssmkit.models import LanguageModel, ModelConfig

    save_pretrained(LanguageModel(ModelConfig.from_name("tiny-llama")), tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="has a tokenizer.json, so its ids are not bytes"):
        commands.evaluate_checkpoint(tmp_path, "ppl", data=["{stdlib}/json"])
