"""`parallel: tensor` and `parallel: sequence` in the Trainer on CPU: two gloo processes (spawned here, bounded in
time) train a few steps on the same batches and give the single-process run's losses, evaluation, checkpoint
(weights and optimizer) and HF export, also when interrupted and resumed, in the same mode or by one process
(float64)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from ssmkit.io.checkpoint import WEIGHTS_NAME
from ssmkit.train.checkpoint import CHECKPOINTS, LATEST
from ssmkit.train.config import TrainConfig
from ssmkit.train.distributed import close_distributed, init_distributed
from ssmkit.train.trainer import Trainer
from tests.compare import assert_close
from tests.train.helpers import run_gloo_workers

WORLD = 2
TIMEOUT_S = 60
MODELS = {
    # heads, groups and kv heads split over 2 ranks; biases exercise the row-parallel out_proj bias
    "tensor": {"d_model": 32, "n_layers": 2, "mixers": ["mamba2", "attention"], "feed_forwards": "mlp",
               "d_ff": 48, "mamba2_d_state": 8, "mamba2_headdim": 8, "mamba2_ngroups": 2, "mamba2_chunk_size": 5,
               "mamba2_proj_bias": True, "n_heads": 4, "n_kv_heads": 2, "attn_bias": True},
    # chunks of 5 do not divide the 12-position slices
    "sequence": {"d_model": 32, "n_layers": 2, "mixers": "mamba2", "feed_forwards": "mlp", "d_ff": 48,
                 "mamba2_d_state": 8, "mamba2_headdim": 8, "mamba2_ngroups": 2, "mamba2_chunk_size": 5},
}


def config(out_dir, mode: str, parallel: str, resume: str = "never") -> TrainConfig:
    """3 steps of 2 micro-batches of 2 rows of 24 stdlib bytes; packed documents where the mode allows them."""
    return TrainConfig.from_dict({
        "model": MODELS[mode],
        "data": {"kind": "text", "paths": ["{stdlib}/json"], "seq_len": 24, "document_resets": mode == "tensor"},
        "steps": 3, "batch_size": 2, "grad_accum": 2, "lr": 1e-2, "warmup_steps": 1, "grad_clip": 0.5,
        "eval_every": 3, "eval_batches": 2, "checkpoint_every": 2, "out_dir": str(out_dir), "progress": "none",
        "resume": resume, "parallel": parallel})


def train(out_dir, mode: str, parallel: str, ctx=None, stop_at=None) -> None:
    """Trains (with stop_at: to step stop_at, then on from its checkpoint in a new Trainer) and writes the losses
    and evaluation (rank 0) next to the checkpoint and HF export."""
    losses = []
    if stop_at is not None:
        Trainer(config(out_dir, mode, parallel), dist=ctx).train(stop_at=stop_at)
    result = Trainer(config(out_dir, mode, parallel, resume="auto" if stop_at else "never"), dist=ctx).train()
    losses += result.losses
    if ctx is None or ctx.is_main:
        (out_dir / "result.json").write_text(json.dumps({"losses": losses, "eval": result.eval}))


def worker(rank: int, init_method: str, out_dir: str) -> None:
    from pathlib import Path

    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    ctx = init_distributed("gloo", rank=rank, world_size=WORLD, init_method=init_method)
    try:
        mode = Path(out_dir).name
        train(Path(out_dir) / "run", mode, mode, ctx)
        train(Path(out_dir) / "resumed", mode, mode, ctx, stop_at=2)
    finally:
        close_distributed(ctx)


@pytest.fixture
def float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.mark.parametrize("mode", ["tensor", "sequence"])
def test_two_gloo_processes_train_like_one_process(tmp_path, mode, float64_default):
    run_gloo_workers(worker, tmp_path / mode, WORLD, TIMEOUT_S)
    train(tmp_path / "single", mode, "data")
    # one process (parallel: data) resumes from the 2-rank run's step-2 checkpoint
    switched = tmp_path / mode / "switched" / CHECKPOINTS
    shutil.copytree(tmp_path / mode / "resumed" / CHECKPOINTS / "step_00000002", switched / "step_00000002")
    (switched / LATEST).write_text("step_00000002\n")
    result = Trainer(config(switched.parent, mode, "data", resume="always")).train()
    (switched.parent / "result.json").write_text(json.dumps({"losses": result.losses, "eval": result.eval}))

    ref = json.loads((tmp_path / "single" / "result.json").read_text())
    for run, steps in (("run", [1, 2, 3]), ("resumed", [3]), ("switched", [3])):
        ours = json.loads((tmp_path / mode / run / "result.json").read_text())
        assert [s for s, _ in ours["losses"]] == steps
        assert_close(torch.tensor([v for _, v in ours["losses"]]),
                     torch.tensor([v for s, v in ref["losses"] if s in steps]), name=f"{run} losses")
        for key, value in ref["eval"].items():
            if isinstance(value, float):
                assert_close(torch.tensor(ours["eval"][key]), torch.tensor(value), name=f"{run} eval/{key}")
        for where in ("model/" + WEIGHTS_NAME, "checkpoints/step_00000003/model.safetensors",
                      "checkpoints/step_00000003/optimizer.safetensors"):
            got, want = (load_file(str(d / where)) for d in (tmp_path / mode / run, tmp_path / "single"))
            want = {k: v for k, v in want.items() if not k.startswith("rng/")}  # each process's own RNG
            assert set(want) <= set(got), (run, where, sorted(set(want) - set(got)))
            for name, value in want.items():
                assert got[name].dtype == value.dtype, name  # float64, but A_log which Mamba-2 keeps in float32
                assert_close(got[name], value, name=f"{run} {where}:{name}")


@pytest.mark.parametrize("mode,overrides,match", [
    ("sequence", {"data": {"document_resets": True}},
     r"data.document_resets: parallel 'sequence' cannot run packed documents"),
    ("sequence", {"model": {**MODELS["tensor"]}}, r"mixers\[1\]: parallel 'sequence' supports \['mamba2'\], got "
                                                  r"'attention'"),
    ("tensor", {"model": {**MODELS["tensor"], "mixers": ["mamba2", "mamba"]}},
     r"mixers\[1\]: parallel 'tensor' supports \['attention', 'mamba2'\], got 'mamba'"),
])
def test_configs_a_parallel_mode_cannot_run_fail_before_training(tmp_path, mode, overrides, match):
    d = config(tmp_path, mode, mode).to_dict()
    d["model"] = overrides.get("model", d["model"])
    d["data"] = {**d["data"], **overrides.get("data", {})}
    with pytest.raises(ValueError, match=match):
        Trainer(TrainConfig.from_dict(d))
