"""GPU benchmark: ~130M and ~1.3B Mamba-2, Transformer++ and a Mamba-2/attention hybrid (random weights, bf16),
ssmkit side by side with transformers' generate on the same weights where transformers has the family.

Per model: (1) validate: ssmkit's and transformers' prefill logits and greedy tokens on one prompt; (2) prompt
length sweep 1K..128K at batch 1 and 16 (8 new tokens; a model stops at its first out-of-memory length, recorded);
(3) a replayed mixed workload (the shipped Azure conversation trace: its prompt lengths, outputs x0.1) closed loop
at concurrency 1, 8 and 32 with static batching. Writes bench-gpu-<device>-<date>.md, .json and .html.

    python benchmarks/bench_gpu.py [--quick] [--models mamba2-130m,...] [--sections sweep,workload] [--budget-s 560]
                                   [--out benchmarks/results]
    python benchmarks/bench_gpu.py --tiny        # a CPU dry run on tiny models
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from ssmkit.bench.scripts import free, log, random_model, select_models
from ssmkit.ops.ssd.triton.plan import tuning_stats
from ssmkit.bench.environment import describe_environment, markdown_header
from ssmkit.bench.hf_runner import TransformersBenchmarker, load_transformers_twin, transformers_family
from ssmkit.bench.report import write_report
from ssmkit.bench.runner import Benchmarker
from ssmkit.bench.sweep import length_sweep
from ssmkit.bench.table import fmt_number, markdown_table
from ssmkit.bench.traces import load_azure_trace
from ssmkit.bench.workload import Workload
from ssmkit.io import ByteTokenizer
from ssmkit.models import ModelConfig

MODELS = {"mamba2-130m": "mamba2-130m", "transformer-125m": "llama-125m", "hybrid-130m": "hybrid-130m",
          "mamba2-1.3b": "mamba2-1.3b", "transformer-1.3b": "llama-1.3b", "hybrid-1.3b": "hybrid-1.3b"}
TINY = {"mamba2-tiny": "tiny-mamba2", "transformer-tiny": "tiny-llama", "hybrid-tiny": "tiny-hybrid-moe"}
LENGTHS = tuple(1024 * 2**i for i in range(8))  # 1K .. 128K
BATCHES = (1, 16)
CONCURRENCY = (1, 8, 32)
NEW_TOKENS = 8
REPLAY_REQUESTS, OUTPUT_SCALE = 32, 0.1


def replay_workload(n: int, concurrency: int) -> Workload:
    """The first n requests of the Azure conversation trace (CC BY 4.0, Patel et al., Splitwise, ISCA 2024):
    prompt lengths as recorded, output lengths x OUTPUT_SCALE (at least 1), closed loop; its first C requests,
    sent together, are the warm-up."""
    reqs = [dataclasses.replace(r, output_tokens=max(1, round(r.output_tokens * OUTPUT_SCALE)))
            for r in load_azure_trace("conv", n)]
    return Workload(f"azure-conv-{n}", reqs, mode="closed", concurrency=concurrency, warmup=concurrency,
                    description=f"Azure conv trace, first {n} requests, outputs x{OUTPUT_SCALE}")


def validate(ref: dict, bench) -> dict:
    """Prefill logits and greedy tokens of `bench` against the ssmkit reference on the same prompt."""
    ids = ref["ids"]
    with torch.no_grad():
        x = torch.tensor([ids], device=bench.device)
        logits = bench.model(x).logits[0, -1].float().cpu()
    diff = (logits - ref["logits"]).pow(2).mean().sqrt() / ref["logits"].pow(2).mean().sqrt()
    tokens = bench.greedy_tokens(ids, len(ref["tokens"]))
    agree = sum(a == b for a, b in zip(tokens, ref["tokens"])) / len(tokens)
    return {"logits_rel_rms": float(diff), "token_agreement": agree}


def measure(bench, args, deadline: float, notes: list) -> tuple[list, list]:
    """The length sweeps at each batch (35 % of the time left each) and the workload at each concurrency (the
    rest); a section that would start after its share is skipped and noted."""
    sweeps, runs = [], []
    t0 = time.time()
    for i, batch in enumerate(BATCHES if "sweep" in args.sections else ()):
        share = t0 + (deadline - t0) * 0.35 * (i + 1)
        if time.time() > share:
            notes.append(f"{bench.name}: batch {batch} sweep skipped (time budget)")
            continue
        log(f"{bench.name}: sweep at batch {batch}")
        s = length_sweep(bench, args.lengths, batch=batch, new_tokens=NEW_TOKENS, warmup=True,
                         environment=args.env, deadline=share)
        notes.extend(f"{bench.name} batch {batch}: {n}" for n in s.notes)
        log(f"{bench.name}: batch {batch}: ok to {s.max_ok_length}, OOM at {s.oom_length}")
        sweeps.append(s)
        free(bench.device)
    for c in args.concurrency if "workload" in args.sections else ():
        if time.time() > deadline:
            notes.append(f"{bench.name}: workload at concurrency {c} skipped (time budget)")
            continue
        log(f"{bench.name}: workload at concurrency {c}")
        bench.set_max_batch(c)
        runs.append(bench.run_workload(replay_workload(args.requests, c), environment=args.env))
        free(bench.device)
    return sweeps, runs


def run_model(label: str, preset: str, args, deadline: float, tmp: Path, out: dict) -> None:
    device, dtype = torch.device(args.device), args.dtype
    model = random_model(preset, device, dtype)
    bench = Benchmarker(model, ByteTokenizer(), f"{label} ssmkit", batching="static", max_batch=32)
    ids = bench.filler_ids(256)
    with torch.no_grad():
        ref = {"ids": ids, "logits": model(torch.tensor([ids], device=device))[0, -1].float().cpu(),
               "tokens": bench.greedy_tokens(ids, 8)}
    out["quality"][label] = dataclasses.asdict(bench.quality())
    share = (deadline - time.time()) / 2 if transformers_family(model.config) else deadline - time.time()
    sweeps, runs = measure(bench, args, time.time() + share, out["notes"])
    out["sweeps"] += sweeps
    out["runs"] += runs
    bench.close()
    family = transformers_family(model.config)
    if family is None:
        out["notes"].append(f"{label}: no transformers family computes this pattern; ssmkit only")
    elif not args.no_transformers and time.time() < deadline:
        model.to("cpu")
        free(device)
        hf = load_transformers_twin(model.to(dtype), tmp / label, device=device, dtype=dtype)
        del model
        free(device)
        hf_bench = TransformersBenchmarker(hf, ModelConfig.from_name(preset), ByteTokenizer(),
                                           f"{label} transformers", batching="static", max_batch=32)
        out["validation"][label] = {"family": family, **validate(ref, hf_bench)}
        log(f"{label}: validation {out['validation'][label]}")
        sweeps, runs = measure(hf_bench, args, deadline, out["notes"])
        out["sweeps"] += sweeps
        out["runs"] += runs
        hf_bench.close()
        del hf, hf_bench
    elif not args.no_transformers:
        out["notes"].append(f"{label}: transformers side skipped (time budget)")
    free(device)


def pivot(sweeps, attr: str, scale: float = 1.0, digits: int = 3) -> str:
    """Rows (model impl, batch), columns prompt lengths; OOM where the sweep ran out, blank where it stopped."""
    lengths = sorted({p.prompt_tokens for s in sweeps for p in s.points})
    rows = []
    for s in sweeps:
        cells = {p.prompt_tokens: (p.status.upper() if p.status != "ok" else
                                   fmt_number(getattr(p, attr) * scale, digits)) for p in s.points}
        rows.append([s.model, s.batch] + [cells.get(n, "") for n in lengths])
    heads = [f"{n // 1024}K" if n % 1024 == 0 else str(n) for n in lengths]
    return markdown_table(["model", "batch"] + heads, rows, right_align_from=1)


def slower_notes(sweeps, runs) -> list[str]:
    """Where ssmkit is slower than transformers on the same weights (by more than 10 %), measured."""
    by = {(s.model, s.batch): s for s in sweeps}
    lines = []
    for (name, batch), s in by.items():
        if not name.endswith(" ssmkit"):
            continue
        hf = by.get((name.replace(" ssmkit", " transformers"), batch))
        if hf is None:
            continue
        ours = {p.prompt_tokens: p for p in s.points}
        for p in hf.points:
            q = ours.get(p.prompt_tokens)
            if q is None or p.status != "ok":
                continue
            if q.status != "ok":
                lines.append(f"- {name} batch {batch}: out of memory at {p.prompt_tokens} tokens where transformers "
                             f"ran ({q.error[:90] if q.error else ''})")
                continue
            for attr, what in (("ttft_ms", "TTFT"), ("decode_ms_per_token", "decode ms/token")):
                a, b = getattr(q, attr), getattr(p, attr)
                if a and b and a > 1.1 * b:
                    lines.append(f"- {name} batch {batch}, {p.prompt_tokens} tokens: {what} {a:.3g} vs {b:.3g} "
                                 f"({a / b:.2f}x)")
    run_by = {(r.model, r.concurrency): r for r in runs}
    for (name, c), r in run_by.items():
        hf = run_by.get((name.replace(" ssmkit", " transformers"), c))
        if not name.endswith(" ssmkit") or hf is None:
            continue
        if r.throughput_tokens_per_s < 0.9 * hf.throughput_tokens_per_s:
            lines.append(f"- {name} workload at concurrency {c}: throughput {r.throughput_tokens_per_s:.0f} vs "
                         f"{hf.throughput_tokens_per_s:.0f} tok/s")
        for field, stat, what in (("ttft_ms", "p50", "TTFT p50"), ("ttft_ms", "p95", "TTFT p95"),
                                  ("total_latency_ms", "p95", "latency p95")):
            a, b = getattr(r.summary[field], stat), getattr(hf.summary[field], stat)
            if a == a and b == b and b > 0 and a > 1.1 * b:  # both measured (not NaN)
                lines.append(f"- {name} workload at concurrency {c}: {what} {a:.3g} vs {b:.3g} ms ({a / b:.2f}x)")
    return lines or ["- nowhere by more than 10 % in this run"]


def write_results(out: dict, args, started: float) -> Path:
    env = args.env
    device = env["device"].replace(" ", "-").lower() if args.device == "cuda" else "cpu"
    stem = Path(args.out) / f"bench-gpu-{device}-{datetime.date.today().isoformat()}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    sweeps, runs = out["sweeps"], out["runs"]
    try:
        from transformers.utils.import_utils import is_causal_conv1d_available, is_mamba_2_ssm_available
        kernels = f"mamba_ssm {'yes' if is_mamba_2_ssm_available() else 'no'}, causal_conv1d " \
                  f"{'yes' if is_causal_conv1d_available() else 'no'}"
    except ImportError:
        kernels = "unknown"
    workload = [[r.model, r.concurrency, fmt_number(r.summary["ttft_ms"].p50), fmt_number(r.summary["ttft_ms"].p95),
                 fmt_number(r.summary["total_latency_ms"].p95), fmt_number(r.summary["time_per_output_token_ms"].p50),
                 fmt_number(r.throughput_tokens_per_s), f"{r.peak_memory_bytes / 2**30:.2f}", r.failed_requests]
                for r in runs]
    valid = [[k, v["family"], f"{v['logits_rel_rms']:.2e}", f"{v['token_agreement']:.0%}"]
             for k, v in out["validation"].items()]
    text = "\n\n".join([
        markdown_header("ssmkit vs transformers generate on GPU: prompt-length sweep and replayed workload", env),
        f"Models: random weights (seed 0, LM head x8), {args.dtype_name}, presets {list(args.models.values())}; "
        f"tokens: held-out text repeated to length. ssmkit: LanguageModel with generate_steps (Triton SSD, SDPA), "
        f"static batching for the workload. transformers: `generate` (greedy, default cache) on the same weights "
        f"saved by ssmkit.io.save_pretrained; its fused kernels: {kernels}. Sweep: {NEW_TOKENS} new tokens, one "
        f"untimed run per length first (Triton tunes per shape), then one timed run; TTFT = prefill + first "
        f"token; peak = CUDA allocator high-water mark of the timed run. A model stops at its first "
        f"out-of-memory length. Workload: first {args.requests} requests of the Azure LLM inference trace 2023 "
        f"(conversation; CC BY 4.0, Patel et al., Splitwise, ISCA 2024), prompt lengths as recorded, output "
        f"lengths x{OUTPUT_SCALE}, closed loop at concurrency {list(args.concurrency)}. Wall time "
        f"{time.time() - started:.0f} s.",
        "## Validation (same weights, one 256-token prompt)\n\n" + markdown_table(
            ["model", "transformers family", "last-position logits rel. RMS diff", "greedy agreement (8 tokens)"],
            valid),
        "## Time to first token, ms\n\n" + pivot(sweeps, "ttft_ms"),
        "## Decode, ms per token (per step of the whole batch)\n\n" + pivot(sweeps, "decode_ms_per_token"),
        "## Peak GPU memory, GiB\n\n" + pivot(sweeps, "peak_memory_bytes", 1 / 2**30),
        "## Replayed workload\n\n" + markdown_table(
            ["model", "concurrency", "TTFT p50 ms", "TTFT p95 ms", "latency p95 ms", "TPOT p50 ms",
             "throughput tok/s", "peak GiB", "failed"], workload, right_align_from=1),
        "## Where ssmkit is slower (measured, > 10 %)\n\n" + "\n".join(slower_notes(sweeps, runs)),
        "## Why (known causes)\n\n" + WHY,
        "## Notes\n\n" + "\n".join(f"- {n}" for n in out["notes"] or ["none"])])
    stem.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    stem.with_suffix(".json").write_text(json.dumps({
        "runs": [r.to_dict() for r in runs], "sweeps": [s.to_dict() for s in sweeps],
        "validation": out["validation"], "quality": out["quality"], "notes": out["notes"]}, indent=1,
        default=str) + "\n")
    write_report(stem.with_suffix(".html"), title="ssmkit vs transformers on GPU", runs=runs, sweeps=sweeps,
                 environment=env)
    return stem


WHY = """- Decode replays one CUDA graph per (batch, cache capacity); the first call at a new capacity captures it, and
  that capture may fall inside a timed first token.
- Triton kernels compile each block config on first use in a process, and calls of 2M input elements or more
  time every config once per shape bucket (powers of two of batch and length). The sweep runs each length once
  untimed first; the workload's warm-up sends its first C requests together, so the batched shapes it meets
  first are tuned; the timed passes run with tuning frozen, so a later request of a new bucket runs the default
  block config untimed (tuning_stats' "untuned" counts them) instead of waiting seconds for the tuner.
- Static batching: a request waits for the running batch, and short outputs ride along with the longest one."""


def summary_table(out: dict) -> str:
    rows = []
    for s in out["sweeps"]:
        at8k = next((p for p in s.points if p.prompt_tokens == 8192 and p.status == "ok"), None)
        rows.append([s.model, s.batch, s.max_ok_length or 0, s.oom_length or "-",
                     fmt_number(at8k.ttft_ms if at8k else None), fmt_number(at8k.decode_ms_per_token if at8k else None)])
    return markdown_table(["model", "batch", "longest ok", "OOM at", "TTFT 8K ms", "decode 8K ms/tok"], rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", help="comma-separated labels (default: all)")
    p.add_argument("--quick", action="store_true", help="130M models, 1K..8K, concurrency 1 and 8, 16 requests")
    p.add_argument("--tiny", action="store_true", help="CPU dry run on tiny presets, 64..256 tokens")
    p.add_argument("--no-transformers", action="store_true", help="ssmkit only")
    p.add_argument("--budget-s", type=float, default=560.0, help="stop starting new sections after this long")
    p.add_argument("--sections", default="sweep,workload",
                   help="comma-separated: sweep (length sweeps at batch 1 and 16), workload (concurrency 1/8/32)")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    args.sections = set(args.sections.split(","))
    if not args.sections or not args.sections <= {"sweep", "workload"}:
        p.error(f"--sections: expected sweep and/or workload, got {','.join(sorted(args.sections))}")
    args.device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    args.dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    args.dtype_name = "bf16" if args.device == "cuda" else "fp32"
    models, args.lengths, args.concurrency, args.requests = MODELS, LENGTHS, CONCURRENCY, REPLAY_REQUESTS
    if args.quick:
        models = {k: v for k, v in MODELS.items() if "1.3b" not in k}
        args.lengths, args.concurrency, args.requests = LENGTHS[:4], (1, 8), 16
    if args.tiny:
        models, args.lengths, args.concurrency, args.requests = TINY, (64, 128, 256), (1, 4), 8
    args.models = select_models(models, args.models, p.error)
    args.env = describe_environment()
    started = time.time()
    out = {"sweeps": [], "runs": [], "validation": {}, "quality": {}, "notes": []}
    with tempfile.TemporaryDirectory(prefix="ssmkit-bench-gpu-") as tmp:
        for i, (label, preset) in enumerate(args.models.items()):
            remaining = started + args.budget_s - time.time()
            deadline = time.time() + remaining / (len(args.models) - i)
            log(f"{label} ({preset}): {remaining:.0f} s left")
            run_model(label, preset, args, deadline, Path(tmp), out)
            log(f"Triton tuning so far: {tuning_stats()}")
            stem = write_results(out, args, started)  # after every model, so a cut-off run keeps what it has
    print(summary_table(out))
    print(f"wrote {stem}.md, .json, .html")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
