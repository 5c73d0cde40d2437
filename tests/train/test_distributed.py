"""Data parallelism on CPU: two gloo processes (spawned here, bounded in time) produce the outputs, gradients,
losses and updated weights of one process training on the whole batch."""


import pytest
import torch
from safetensors.torch import load_file, save_file

from ssmkit.train.config import TrainConfig
from ssmkit.train.distributed import close_distributed, init_distributed
from ssmkit.train.packing import model_logits
from ssmkit.train.trainer import Trainer
from tests.compare import assert_close
from tests.train.helpers import run_gloo_workers

WORLD = 2
TIMEOUT_S = 120


def config(out_dir, batch_size: int) -> TrainConfig:
    """A Mamba-2 + attention hybrid on packed stdlib bytes, two micro-batches per step."""
    return TrainConfig.from_dict({
        "model": {"d_model": 32, "n_layers": 2, "mixers": ["mamba2", "attention"], "feed_forwards": "mlp",
                  "mamba2_d_state": 8, "mamba2_headdim": 16, "mamba2_chunk_size": 8, "n_heads": 2, "d_ff": 64},
        "data": {"kind": "text", "paths": ["{stdlib}/json"], "seq_len": 24},
        "steps": 2, "batch_size": batch_size, "grad_accum": 2, "lr": 1e-2, "warmup_steps": 0,
        "out_dir": str(out_dir), "progress": "none", "resume": "never", "save_hf": False})


def run_steps(trainer: Trainer, rows: slice) -> dict:
    """Logits of `rows` of step 0's first micro-batch, step 0's gradients and loss, weights after two steps."""
    inputs, _, segments = trainer.data.train_batch(0, 0, 2 * WORLD, grad_accum=2)
    with torch.no_grad():
        logits = model_logits(trainer.model, inputs[rows], segments[rows])
    out = {"logits": logits, "loss0": torch.tensor(trainer.compute_gradients(0))}
    out.update({f"grad/{n}": p.grad.clone() for n, p in trainer.model.named_parameters()})
    trainer.optimizer_step(0)
    out["loss1"] = torch.tensor(trainer.compute_gradients(1))
    trainer.optimizer_step(1)
    out.update({f"param/{n}": p.detach().clone() for n, p in trainer.model.named_parameters()})
    return out


def worker(rank: int, init_method: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    ctx = init_distributed("gloo", rank=rank, world_size=WORLD, init_method=init_method)
    try:
        trainer = Trainer(config(f"{out_dir}/run", batch_size=2), dist=ctx)
        out = run_steps(trainer, slice(2 * rank, 2 * rank + 2))
        save_file({k: v.contiguous() for k, v in out.items()}, f"{out_dir}/rank{rank}.safetensors")
    finally:
        close_distributed(ctx)


def test_two_gloo_processes_match_one_process_on_the_whole_batch(tmp_path):
    run_gloo_workers(worker, tmp_path, WORLD, TIMEOUT_S)

    single = run_steps(Trainer(config(tmp_path / "single", batch_size=2 * WORLD)), slice(0, 2 * WORLD))
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(WORLD)]
    assert_close(torch.cat([r["logits"] for r in ranks]), single["logits"], name="logits")
    for r in ranks:
        for key in ("loss0", "loss1"):
            assert float(r[key]) == pytest.approx(float(single[key]), rel=1e-6), key
        for key, value in single.items():
            if key.startswith("grad/"):
                assert_close(r[key], value, grad=True, name=key)
            elif key.startswith("param/"):
                assert_close(r[key], value, name=key)
