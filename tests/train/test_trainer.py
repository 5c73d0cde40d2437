"""Trainer: exact resume on CPU, accumulation equals a bigger batch, atomic pickle-free checkpoints, HF export."""

import torch
from safetensors.torch import load_file

from ssmkit.io import load_pretrained
from ssmkit.train.checkpoint import latest_checkpoint
from ssmkit.train.trainer import Trainer
from tests.compare import assert_close
from tests.train.helpers import tiny_config


def test_resumed_run_repeats_the_uninterrupted_losses_and_weights_exactly(tmp_path):
    settings = dict(steps=4, checkpoint_every=2, eval_every=2, save_hf=False)
    whole = Trainer(tiny_config(tmp_path / "a", **settings)).train()
    first = Trainer(tiny_config(tmp_path / "b", **settings)).train(stop_at=2)
    resumed = Trainer(tiny_config(tmp_path / "b", **settings))
    assert resumed.step == 2
    rest = resumed.train()
    assert first.losses == whole.losses[:2]
    assert rest.losses == whole.losses[2:]  # bit for bit, not approximately
    assert rest.eval == whole.eval
    a = load_file(str(whole.checkpoint / "model.safetensors"))
    b = load_file(str(rest.checkpoint / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_accumulation_equals_one_batch_of_the_same_rows(tmp_path):
    acc = Trainer(tiny_config(tmp_path / "a", batch_size=2, grad_accum=2))
    big = Trainer(tiny_config(tmp_path / "b", batch_size=4, grad_accum=1))
    loss_acc, loss_big = acc.compute_gradients(0), big.compute_gradients(0)
    assert abs(loss_acc - loss_big) <= 1e-6 * abs(loss_big)
    for (name, p), q in zip(acc.model.named_parameters(), big.model.parameters()):
        assert_close(p.grad, q.grad, grad=True, name=f"grad {name}")


def test_checkpoints_are_safetensors_and_json_behind_an_atomic_latest_pointer(tmp_path):
    cfg = tiny_config(tmp_path, steps=4, checkpoint_every=1, keep_checkpoints=2, eval_every=100, save_hf=False)
    Trainer(cfg).train()
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000003", "step_00000004"]
    assert (root / "latest").read_text().strip() == "step_00000004"
    ckpt = latest_checkpoint(tmp_path)
    assert sorted(p.name for p in ckpt.iterdir()) == ["model.safetensors", "optimizer.safetensors",
                                                     "trainer_state.json"]
    opt = load_file(str(ckpt / "optimizer.safetensors"))
    model = Trainer(tiny_config(tmp_path / "fresh")).model
    for name, _ in model.named_parameters():
        assert f"state/{name}/exp_avg" in opt and f"state/{name}/exp_avg_sq" in opt
    assert opt["rng/torch_cpu"].dtype == torch.uint8


def test_finished_run_exports_a_hugging_face_model_with_the_same_logits(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, steps=2, eval_every=100))
    result = trainer.train()
    loaded = load_pretrained(result.hf_dir)
    assert (result.hf_dir / "ssmkit_tokenizer.json").is_file()
    ids = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        assert_close(loaded(ids), trainer.model.eval()(ids), name="exported logits")
