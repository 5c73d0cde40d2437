"""Host cost of the profiler's hot path: extra microseconds per recorded layer call on CPU.

Validates first (a profiled block of decode steps records steps x units events), then times blocks of `--steps`
model.step calls plain (A) and profiled (B) in rotating order A B A', B A' A, ... and reports the median over
repeats of (B - mean(A, A')) / (steps x units): the profiler's host time per hooked call, its enter/exit (a
DuckDB transaction each) outside the timed block. Each block is timed twice: CPU time of the decoding thread
(time.thread_time_ns: what the hot path costs, blind to other processes taking the cores) and wall time (also
the writer thread's share and any preemption). The A/A columns, median |A - A'| on the same scale, are the
resolution of the measurement. A preset name with ":narrow" keeps the preset's layer pattern (its hooked units)
at a small width, so the model's own work stops hiding the hooks; ":stub" also replaces every mixer and
feed-forward by a module that returns its input (an MoE stub still reports routing tensors), which leaves the
profiler's own cost nearly alone in the difference.

    python benchmarks/profile_hook_cost.py --presets tiny-hybrid-moe hybrid-moe-1.3b:narrow hybrid-moe-1.3b:stub
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import torch
from torch import nn

from ssmkit.inference import allocate_cache, prefill
from ssmkit.models import LanguageModel, ModelConfig
from ssmkit.profile import Profiler, TraceStore

# A width at which a step of any preset costs well under a millisecond per layer on one CPU thread.
NARROW = dict(d_model=128, vocab_size=256, n_heads=4, n_kv_heads=4, d_ff=256, mamba2_d_state=16,
              mamba2_headdim=32, mamba2_chunk_size=16)


class StubUnit(nn.Module):
    """A mixer or feed-forward that returns its input, through forward and step."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return x

    def step(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return x

    def allocate_state(self, *args, **kwargs) -> None:
        return None


class StubMoE(StubUnit):
    """An MoE stand-in: calls route and leaves per-expert counts and an aux loss, like MoE, without experts."""

    def __init__(self, config):
        super().__init__()
        self.n_experts, self.top_k = config.n_experts, config.moe_top_k
        self.last_capacity = self.last_overflow = self.last_dropped = None
        self.aux_loss = torch.zeros(())

    def route(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        self.route(x)
        self.last_expert_counts = torch.zeros(self.n_experts, dtype=torch.int64)
        return x


def build(spec: str) -> tuple[LanguageModel, int]:
    """The float32 model of `spec` ("preset", "preset:narrow" or "preset:stub") and its hooked units per model
    call."""
    name, _, variant = spec.partition(":")
    if variant not in ("", "narrow", "stub"):
        raise ValueError(f"presets: expected NAME, NAME:narrow or NAME:stub, got {spec!r}")
    config = ModelConfig.from_name(name, **(NARROW if variant else {}))
    torch.manual_seed(0)
    model = LanguageModel(config).eval()
    if variant == "stub":
        for block in model.layers:
            block.mixer = StubUnit()
            if block.ff_kind is not None:
                block.ff = StubMoE(config) if block.ff_kind == "moe" else StubUnit()
    return model, sum(1 + (ff is not None) for ff in config.feed_forwards)


@torch.no_grad()
def timed_steps(model, steps: int, batch: int, profiler_db: Path | None) -> tuple[float, float]:
    """(thread CPU seconds, wall seconds) of `steps` model.step calls after an untimed prefill (and Profiler
    enter), profiled when a db is given."""
    ids = torch.zeros(batch, 4, dtype=torch.long)
    state = allocate_cache(model, batch, ids.shape[1] + steps)
    prefill(model, ids, state)
    token = ids[:, -1]
    prof = Profiler(model, profiler_db) if profiler_db is not None else None
    if prof is not None:
        prof.__enter__()
    try:
        start, start_cpu = time.perf_counter_ns(), time.thread_time_ns()
        for _ in range(steps):
            model.step(token, state)
        return (time.thread_time_ns() - start_cpu) * 1e-9, (time.perf_counter_ns() - start) * 1e-9
    finally:
        if prof is not None:
            prof.__exit__(None, None, None)


def validate(model, units: int, steps: int, batch: int, db: Path) -> None:
    timed_steps(model, steps, batch, db)
    with TraceStore(db, read_only=True) as store:
        got = store.query("SELECT count(*), count(DISTINCT call_id) FROM events WHERE run_id = "
                          "(SELECT max(run_id) FROM runs)")[1][0]
    assert got == (steps * units, steps * units), (got, steps, units)


def measure(spec: str, args, db_dir: Path) -> dict:
    model, units = build(spec)
    db = db_dir / f"{spec.replace(':', '-')}.duckdb"
    validate(model, units, args.steps, args.batch, db)
    for _ in range(2):  # warm-up of both paths
        timed_steps(model, args.steps, args.batch, None)
        timed_steps(model, args.steps, args.batch, db)
    per_call, aa, plain = ([], []), ([], []), []
    calls = args.steps * units
    for r in range(args.repeats):
        order = ["A", "B", "A2"]
        order = order[r % 3:] + order[:r % 3]
        t = {k: timed_steps(model, args.steps, args.batch, db if k == "B" else None) for k in order}
        for i in (0, 1):  # thread CPU time, wall time
            per_call[i].append((t["B"][i] - (t["A"][i] + t["A2"][i]) / 2) / calls * 1e6)
            aa[i].append(abs(t["A"][i] - t["A2"][i]) / calls * 1e6)
        plain.append((t["A"][1] + t["A2"][1]) / 2 / args.steps * 1e3)
    row = {"spec": spec, "units": units, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
           "step_ms": statistics.median(plain)}
    for i, clock in enumerate(("cpu", "wall")):
        quartiles = statistics.quantiles(per_call[i], n=4)
        row[clock] = (statistics.median(per_call[i]), quartiles[0], quartiles[2], statistics.median(aa[i]))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny-hybrid-moe", "hybrid-moe-1.3b:narrow"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=64, help="decode steps per timed block")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--label", default="", help="a name for this code version in the output")
    args = p.parse_args(argv)
    if args.repeats < 2:
        p.error("--repeats: expected >= 2 (quartiles need two values)")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(spec, args, Path(tmp)) for spec in args.presets]
    command = "python benchmarks/profile_hook_cost.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"- device: CPU ({platform.machine()}, {platform.processor() or 'unknown'}, {torch.get_num_threads()} "
          f"torch threads)\n- versions: python {platform.python_version()}, torch {torch.__version__}, duckdb "
          f"{duckdb.__version__}\n- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n"
          f"- command: `{command}`\n")
    print("| version | preset | params (M) | hooked units | plain step (ms) | CPU us / call | IQR | A/A | "
          "wall us / call | IQR | A/A |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cells = " | ".join(f"{m:.2f} | {q1:.2f} .. {q3:.2f} | {aa:.2f}" for m, q1, q3, aa in (r["cpu"], r["wall"]))
        print(f"| {args.label} | {r['spec']} | {r['params_m']:.1f} | {r['units']} | {r['step_ms']:.2f} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
