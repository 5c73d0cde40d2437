"""MQAR accuracy vs state size (dstate) for Mamba-1, Mamba-2, attention (Transformer++) and a Mamba-2/attention
hybrid at tiny scale, as in the Mamba-2 paper's section 9.1 (figure 8), which uses the Zoology MQAR task.

Validates the device against CPU float64 first, then trains every model with the same data, steps and
optimizer, and writes results/mqar-<device>-<date>.md (+ .json, + .svg plots).
    python benchmarks/train_mqar.py --steps 3000 --workers 4
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from train_report import environment, markdown_table, run_all, svg_lines, validate_device, write_results

ARCHS = ("mamba", "mamba2", "attention", "hybrid")


def model_spec(arch: str, dstate: int, d: int, n_layers: int) -> dict:
    """ModelConfig fields of one sweep point; attention gets an MLP sized so its blocks match Mamba-2's."""
    from ssmkit.models import hybrid_pattern

    ssm2 = {"mamba2_d_state": dstate, "mamba2_headdim": 16, "mamba2_chunk_size": 64}
    if arch == "mamba":
        return {"d_model": d, "n_layers": n_layers, "mixers": "mamba", "mamba_d_state": dstate}
    if arch == "mamba2":
        return {"d_model": d, "n_layers": n_layers, "mixers": "mamba2", **ssm2}
    if arch == "attention":
        d_ff = max(32, round((2 * d + 128) / 3 / 32) * 32)  # 4d^2 + 3 d d_ff ~ Mamba-2's 6d^2 + 128 d
        return {"d_model": d, "n_layers": n_layers, "mixers": "attention", "feed_forwards": "mlp",
                "d_ff": d_ff, "n_heads": 4}
    pattern = hybrid_pattern(n_layers, 0.1, ffn=None)
    return {"d_model": d, **pattern, "n_heads": 4, **ssm2}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--dstates", nargs="+", type=int, default=[16, 64, 256])
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--kv", type=int, default=32, help="key-value pairs per sequence")
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-examples", type=int, default=1024)
    p.add_argument("--budget-s", type=float, default=None, help="stop each run at the first eval past this")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--runs-dir", default=None, help="where each run's out_dir goes (default: temporary)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)

    import torch

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    err = validate_device(device) if device != "cpu" else 0.0
    print(f"validated {device} against CPU float64: max relative error {err:.2e}", flush=True)

    jobs = []
    for arch in args.archs:
        for dstate in ([args.dstates[0]] if arch == "attention" else args.dstates):
            name = f"{arch}" if arch == "attention" else f"{arch}-N{dstate}"
            cfg = {"model": model_spec(arch, dstate, args.d_model, args.n_layers),
                   "data": {"kind": "mqar", "seq_len": args.seq_len, "vocab_size": args.vocab,
                            "num_kv_pairs": args.kv, "eval_examples": args.eval_examples},
                   "steps": args.steps, "batch_size": args.batch, "lr": args.lr,
                   "warmup_steps": args.steps // 20, "weight_decay": 0.1, "eval_every": max(1, args.steps // 10),
                   "checkpoint_every": args.steps, "keep_checkpoints": 1, "log_every": 50, "device": device,
                   "progress": "none", "save_hf": False, "seed": 0}
            if args.runs_dir:
                cfg["out_dir"] = str(Path(args.runs_dir) / name)
            jobs.append((name, cfg, args.threads) + ((args.budget_s,) if args.budget_s else ()))
    results = run_all(jobs, args.workers)

    by = {r["name"]: r for r in results}
    header = ["model", "layers (mixer)"] + [f"acc N={n}" for n in args.dstates] + ["params", "steps", "wall s"]
    rows = []
    for arch in args.archs:
        names = [arch] * len(args.dstates) if arch == "attention" else [f"{arch}-N{n}" for n in args.dstates]
        got = [by[n] for n in names if n in by]
        mixers = got[0]["config"]["model"].get("mixers")
        rows.append([arch, _pattern(mixers, args.n_layers)] + [f"{by[n]['eval']['accuracy']:.3f}" for n in names]
                    + [" / ".join(f"{r['params'] / 1e3:.0f}k" for r in got),
                       " / ".join(str(r["steps_done"]) for r in got), " / ".join(f"{r['wall_s']:.0f}" for r in got)])
    stem = Path(args.out) / "mqar"
    stem.parent.mkdir(parents=True, exist_ok=True)
    series = {arch: [(n.bit_length() - 1, by[arch if arch == "attention" else f"{arch}-N{n}"]["eval"]["accuracy"])
                     for n in args.dstates] for arch in args.archs}
    env = environment()
    from train_report import device_tag

    svg = stem.parent / f"mqar-{device_tag()}-{env['date'][:10]}.svg"
    svg_lines(series, svg, "MQAR accuracy vs state size", "log2 dstate", "accuracy", ylim=(0, 1))
    curves = {r["name"]: [(e["step"], e["eval"]["accuracy"]) for e in r["evals"]] for r in results}
    svg_curves = svg.with_name(svg.stem + "-curves.svg")
    svg_lines(curves, svg_curves, "MQAR accuracy during training", "step", "accuracy", ylim=(0, 1))
    body = (f"Task: MQAR (ssmkit.train.synthetic.MQAR, Zoology format), seq_len {args.seq_len}, "
            f"{args.kv} key-value pairs, vocab {args.vocab}, power_a 0.01, random non-query tokens. Accuracy is "
            f"over the {args.kv} answer positions of {args.eval_examples} held-out sequences.\n"
            f"Models: d_model {args.d_model}, {args.n_layers} layers; Mamba-2 headdim 16; attention 4 heads. "
            f"Training: {args.steps} steps x {args.batch} sequences, AdamW lr {args.lr}, warmup {args.steps // 20},"
            f" cosine to 10%, weight decay 0.1, bf16 autocast on GPU. Device check: max relative error "
            f"{err:.1e} against CPU float64.\n\n" + markdown_table(header, rows) +
            f"\n\nPlots: [{svg.name}]({svg.name}), [{svg_curves.name}]({svg_curves.name}).\n\n"
            + _checks(by, args.dstates))
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    md = write_results("mqar", Path(args.out), "MQAR accuracy vs state size", command, env, body, results)
    print(md.read_text())
    return 0


def _pattern(mixers, n_layers) -> str:
    if isinstance(mixers, str):
        return f"{n_layers} x {mixers}"
    return ", ".join(mixers)


def _checks(by: dict, dstates: list) -> str:
    """The paper's qualitative claims, each marked holds / does not hold on these numbers."""
    acc = {k: v["eval"]["accuracy"] for k, v in by.items()}
    lines = ["Claims of the Mamba-2 paper (figure 8) checked on these numbers:"]
    lo, hi = dstates[0], dstates[-1]

    def claim(text, ok):
        lines.append(f"- {text}: {'holds' if ok else 'does NOT hold'}")

    if f"mamba2-N{lo}" in acc and f"mamba-N{lo}" in acc:
        claim(f"Mamba-2 above Mamba-1 at dstate {lo} ({acc[f'mamba2-N{lo}']:.3f} vs {acc[f'mamba-N{lo}']:.3f})",
              acc[f"mamba2-N{lo}"] > acc[f"mamba-N{lo}"])
    for arch in ("mamba", "mamba2"):
        vals = [acc.get(f"{arch}-N{n}") for n in dstates]
        if None not in vals:
            claim(f"{arch} accuracy rises with dstate ({' -> '.join(f'{v:.3f}' for v in vals)})",
                  all(b >= a for a, b in zip(vals, vals[1:])) and vals[-1] > vals[0])
    if f"hybrid-N{hi}" in acc and f"mamba2-N{hi}" in acc:
        ok = all(acc[f"hybrid-N{n}"] >= acc[f"mamba2-N{n}"] for n in dstates)
        claim("hybrid at or above pure Mamba-2 at every dstate", ok)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
