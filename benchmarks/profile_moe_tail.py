"""The MoE tail with and without the imbalance penalty, measured through the profiler's trace store.

A hybrid Mamba-2/attention/MoE preset with random weights gets a skewed router (a forward hook adding fixed logits
that favour experts 0 and 1, as a router with a logit bias would). It decodes under the Profiler ("before"); then
the penalty is applied from traced load (profile a calibration batch, apply_imbalance_penalty, repeat); then the same
decode is profiled again ("after"). Reports per-layer-type p50/p99, per-call expert imbalance, the modelled
expert-parallel exchange (busiest rank) and the what-if scheduler's p99 for each.

    python benchmarks/profile_moe_tail.py --preset tiny-hybrid-moe --threads 1
    python benchmarks/profile_moe_tail.py --preset hybrid-moe-1.3b --device cuda --dtype bfloat16 --batch 16
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import duckdb
import numpy as np
import torch

from ssmkit.inference import generate
from ssmkit.models import LanguageModel, ModelConfig
from ssmkit.profile import Profiler, TraceStore
from ssmkit.profile.analysis import summarize
from ssmkit.profile.balance import apply_imbalance_penalty, expert_load
from ssmkit.profile.whatif import ExchangeModel, decode_chains, what_if

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def skew_routers(model, logits: list[float]) -> None:
    skew = torch.zeros(model.config.n_experts)
    skew[: len(logits)] = torch.tensor(logits)
    for block in model.layers:
        if block.ff_kind == "moe":
            block.ff.router.register_forward_hook(lambda m, a, out: out + skew.to(out.device, out.dtype))


def profiled_decode(model, store, ids, new_tokens: int, name: str) -> int:
    with torch.no_grad(), Profiler(model, store, run_name=name) as prof:
        generate(model, ids, max_new_tokens=new_tokens)
    return prof.run_id


def describe(store, run_id, exchange: ExchangeModel) -> dict:
    s = summarize(store, run_id)
    types = {r["layer_type"]: r for r in s.layer_types if r["phase"] == "decode"}
    imb = np.array([r[0] for r in store.query(
        "SELECT m.imbalance FROM moe_routing m JOIN events e USING (run_id, call_id) WHERE m.run_id = ? "
        "AND e.phase = 'decode'", [run_id])[1]], dtype=np.float64)
    one_way = [ns for c in decode_chains(store, run_id, exchange) for kind, ns in c if kind == "exchange"]
    w = what_if(store, run_id, exchange)
    prefill = store.query("SELECT m.imbalance, m.expert_counts FROM moe_routing m JOIN events e USING (run_id, "
                          "call_id) WHERE m.run_id = ? AND e.phase = 'prefill'", [run_id])[1]
    d_model = json.loads(store.query("SELECT model FROM runs WHERE run_id = ?", [run_id])[1][0][0])["config"][
        "d_model"]
    return {"types": types, "imb_mean": imb.mean(), "imb_p99": np.percentile(imb, 99),
            "prefill_imb": max(r[0] for r in prefill),
            "prefill_exchange": max(exchange.one_way_ns(r[1], d_model) for r in prefill),
            "exchange_p50": np.percentile(one_way, 50), "exchange_p99": np.percentile(one_way, 99), "whatif": w}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny-hybrid-moe")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--skew", type=float, nargs="+", default=[1.5, 0.5])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--db", default=":memory:")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ModelConfig.from_name(args.preset)
    device = torch.device(args.device)
    model = LanguageModel(config).to(device=device, dtype=DTYPES[args.dtype]).eval()
    skew_routers(model, args.skew)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.prompt_len), generator=g).to(device)
    calibration = torch.randint(0, config.vocab_size, (args.batch, 64), generator=g).to(device)
    store = TraceStore(args.db)
    profiled_decode(model, store, ids, args.new_tokens, "warm-up")  # every shape once: kernel selection, loading
    before = profiled_decode(model, store, ids, args.new_tokens, "before penalty")
    for r in range(args.rounds):
        with torch.no_grad(), Profiler(model, store, run_name=f"calibration {r}") as prof:
            model(calibration)
        apply_imbalance_penalty(model, expert_load(store, prof.run_id), lr=args.lr)
    after = profiled_decode(model, store, ids, args.new_tokens, "after penalty")
    exchange = ExchangeModel(world_size=2)
    b, a = describe(store, before, exchange), describe(store, after, exchange)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()}, " \
        f"{torch.get_num_threads()} threads)"
    command = "python benchmarks/profile_moe_tail.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = [f"# MoE tail with and without the imbalance penalty ({args.preset})", "",
           f"- device: {name}",
           f"- versions: python {platform.python_version()}, torch {torch.__version__}, duckdb {duckdb.__version__}",
           f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
           f"- command: `{command}`", "",
           f"Random weights, {args.dtype}, batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new "
           f"tokens (greedy). Routers skewed by logits {args.skew} on the first experts. Penalty: {args.rounds} "
           f"rounds of (profile a {args.batch}x64 calibration batch, bias -= {args.lr} * (load / mean - 1)). "
           f"Exchange: modelled all-to-all over {exchange.world_size} ranks (latency {exchange.latency_ns / 1e3:g} "
           f"us, {exchange.bytes_per_ns:g} GB/s, busiest rank's bytes), not measured.", "",
           "## Decode, per layer type (us)", "",
           "| layer type | p50 before | p99 before | p50 after | p99 after |", "|---|---:|---:|---:|---:|"]
    for t in sorted(b["types"]):
        rb, ra = b["types"][t], a["types"].get(t, {})
        out.append(f"| {t} | {rb['p50_ns'] / 1e3:.1f} | {rb['p99_ns'] / 1e3:.1f} | "
                   f"{ra.get('p50_ns', float('nan')) / 1e3:.1f} | {ra.get('p99_ns', float('nan')) / 1e3:.1f} |")
    out += ["", "## MoE routing and the modelled expert-parallel tail", "",
            "| | before | after |", "|---|---:|---:|",
            f"| expert load max/mean, mean over calls | {b['imb_mean']:.2f} | {a['imb_mean']:.2f} |",
            f"| expert load max/mean, p99 over calls | {b['imb_p99']:.2f} | {a['imb_p99']:.2f} |",
            f"| modelled one-way exchange p50 (us) | {b['exchange_p50'] / 1e3:.1f} | {a['exchange_p50'] / 1e3:.1f} |",
            f"| modelled one-way exchange p99 (us) | {b['exchange_p99'] / 1e3:.1f} | {a['exchange_p99'] / 1e3:.1f} |",
            f"| prefill: worst expert load max/mean | {b['prefill_imb']:.2f} | {a['prefill_imb']:.2f} |",
            f"| prefill: worst modelled one-way exchange (us) | {b['prefill_exchange'] / 1e3:.1f} | "
            f"{a['prefill_exchange'] / 1e3:.1f} |"]
    for policy in ("serial", "shared", "overlap"):
        sb, sa = getattr(b["whatif"], policy), getattr(a["whatif"], policy)
        out.append(f"| what-if {policy}: 2 micro-batch step p99 (us) | {sb['p99_ns'] / 1e3:.1f} | "
                   f"{sa['p99_ns'] / 1e3:.1f} |")
    text = "\n".join(out) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
