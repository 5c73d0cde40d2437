"""One rank of the expert-parallel test: the tiny hybrid in float64, its MoE experts split over a gloo group,
profiled into its own DuckDB file, and compared with the single-process model on the full batch."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ssmkit.inference import generate
from ssmkit.profile import Profiler
from ssmkit.profile.expert_parallel import shard_experts
from tests.compare import assert_close

from .models import prompt, tiny_hybrid

ROWS_PER_RANK = 2
NEW_TOKENS = 5
CAPACITY_FACTORS = (0.5, 1.0, 2.0, 0.25)  # layer 3's per-expert factors (reported at inference, not enforced)


def run(rank: int, world: int, folder: str, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = tiny_hybrid(dtype=torch.float64)
        model.layers[3].ff.set_capacity_factors(CAPACITY_FACTORS)
        ids = prompt(batch=ROWS_PER_RANK * world, seqlen=7)
        with torch.no_grad():
            expected_logits = model(ids)
        expected_tokens = generate(model, ids, max_new_tokens=NEW_TOKENS)
        assert shard_experts(model) == [1, 3]
        mine = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
        with Profiler(model, f"{folder}/rank{rank}.duckdb", run_name=f"rank {rank}"):
            with torch.no_grad():
                logits = model(ids[mine])
            tokens = generate(model, ids[mine], max_new_tokens=NEW_TOKENS)
        assert_close(logits, expected_logits[mine], name=f"rank {rank} logits")
        assert torch.equal(tokens, expected_tokens[mine]), f"rank {rank}: tokens differ"
    finally:
        dist.destroy_process_group()
