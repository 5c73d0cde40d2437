"""Tiny training configs shared by the trainer tests (seconds on two CPU cores)."""

from ssmkit.train.config import TrainConfig


def tiny_config(out_dir, **overrides) -> TrainConfig:
    """A 1-layer Mamba-2 on packed stdlib bytes (json/), 6 steps of 2 micro-batches of 2 rows of 32 bytes."""
    d = {"model": {"preset": "tiny-mamba2", "d_model": 32, "n_layers": 1},
         "data": {"kind": "text", "paths": ["{stdlib}/json"], "seq_len": 32},
         "steps": 6, "batch_size": 2, "grad_accum": 2, "lr": 3e-3, "warmup_steps": 2, "eval_every": 3,
         "eval_batches": 2, "checkpoint_every": 3, "log_every": 2, "out_dir": str(out_dir), "progress": "none"}
    for key, value in overrides.items():
        if key.startswith("data_"):
            d["data"] = {**d["data"], key[5:]: value}
        elif key.startswith("model_"):
            d["model"] = {**d["model"], key[6:]: value}
        else:
            d[key] = value
    return TrainConfig.from_dict(d)


def free_port() -> int:
    """A free TCP port on loopback for a gloo rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_gloo_workers(worker, out_dir, world: int = 2, timeout_s: float = 120.0) -> None:
    """Runs worker(rank, init_method, out_dir) in `world` spawned processes; asserts each exits 0 in time."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    init = f"tcp://127.0.0.1:{free_port()}"
    procs = [ctx.Process(target=worker, args=(r, init, str(out_dir))) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout_s)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, f"gloo workers still running after {timeout_s}s"
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
