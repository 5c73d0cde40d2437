"""Host cost of the profiler's hot path: extra microseconds per recorded layer call on CPU.

Validates first (a profiled block of decode steps records steps x units events), then times blocks of `--steps`
model.step calls plain (A) and profiled (B) in rotating order A B A', B A' A, ... and reports the median over
repeats of (B - mean(A, A')) / (steps x units): the profiler's host time per hooked call, its enter/exit (a
DuckDB transaction each) outside the timed block. The A/A column, median |A - A'| on the same scale, is the
resolution of the measurement. A preset name with ":narrow" keeps the preset's layer pattern (its hooked units)
at a small width, so the model's own work stops hiding the hooks.

    python benchmarks/profile_hook_cost.py --presets tiny-hybrid-moe hybrid-moe-1.3b:narrow hybrid-130m
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

from ssmkit.inference import allocate_cache, prefill
from ssmkit.models import LanguageModel, ModelConfig
from ssmkit.profile import Profiler, TraceStore

# A width at which a step of any preset costs well under a millisecond per layer on one CPU thread.
NARROW = dict(d_model=128, vocab_size=256, n_heads=4, n_kv_heads=4, d_ff=256, mamba2_d_state=16,
              mamba2_headdim=32, mamba2_chunk_size=16)


def build(spec: str) -> tuple[LanguageModel, int]:
    """The float32 model of `spec` ("preset" or "preset:narrow") and its hooked units per model call."""
    name, _, variant = spec.partition(":")
    if variant not in ("", "narrow"):
        raise ValueError(f"presets: expected NAME or NAME:narrow, got {spec!r}")
    config = ModelConfig.from_name(name, **(NARROW if variant else {}))
    torch.manual_seed(0)
    model = LanguageModel(config).eval()
    return model, sum(1 + (ff is not None) for ff in config.feed_forwards)


@torch.no_grad()
def timed_steps(model, steps: int, batch: int, profiler_db: Path | None) -> float:
    """Seconds of `steps` model.step calls after an untimed prefill (and Profiler enter), profiled when a db is
    given."""
    ids = torch.zeros(batch, 4, dtype=torch.long)
    state = allocate_cache(model, batch, ids.shape[1] + steps)
    prefill(model, ids, state)
    token = ids[:, -1]
    prof = Profiler(model, profiler_db) if profiler_db is not None else None
    if prof is not None:
        prof.__enter__()
    try:
        start = time.perf_counter()
        for _ in range(steps):
            model.step(token, state)
        return time.perf_counter() - start
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
    per_call, aa = [], []
    calls = args.steps * units
    for r in range(args.repeats):
        order = ["A", "B", "A2"]
        order = order[r % 3:] + order[:r % 3]
        t = {k: timed_steps(model, args.steps, args.batch, db if k == "B" else None) for k in order}
        per_call.append((t["B"] - (t["A"] + t["A2"]) / 2) / calls * 1e6)
        aa.append(abs(t["A"] - t["A2"]) / calls * 1e6)
        if r == 0:
            step_ms = (t["A"] + t["A2"]) / 2 / args.steps * 1e3
    return {"spec": spec, "units": units, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "step_ms": step_ms, "per_call_us": statistics.median(per_call),
            "q1": statistics.quantiles(per_call, n=4)[0], "q3": statistics.quantiles(per_call, n=4)[2],
            "aa_us": statistics.median(aa)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny-hybrid-moe", "hybrid-moe-1.3b:narrow"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=64, help="decode steps per timed block")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--label", default="", help="a name for this code version in the output")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(spec, args, Path(tmp)) for spec in args.presets]
    command = "python benchmarks/profile_hook_cost.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"- device: CPU ({platform.machine()}, {platform.processor() or 'unknown'}, {torch.get_num_threads()} "
          f"torch threads)\n- versions: python {platform.python_version()}, torch {torch.__version__}, duckdb "
          f"{duckdb.__version__}\n- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n"
          f"- command: `{command}`\n")
    print("| version | preset | params (M) | hooked units | plain step (ms) | profiler host us / call (median) "
          "| IQR | A/A us / call |\n|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {args.label} | {r['spec']} | {r['params_m']:.1f} | {r['units']} | {r['step_ms']:.2f} | "
              f"{r['per_call_us']:.2f} | {r['q1']:.2f} .. {r['q3']:.2f} | {r['aa_us']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
