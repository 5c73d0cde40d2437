"""Byte-level language modelling on the Python standard library's own source: validation bits per byte vs
training steps for Mamba, Mamba-2, Transformer++ and a Mamba-2/attention hybrid at about equal parameters and
the same tokens. The corpus (Python version, file count, bytes, digest) is recorded with the results.

    python benchmarks/train_bpb.py --d-model 384 --steps 1500 --workers 4
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from train_report import (device_tag, environment, markdown_table, run_all, svg_lines, validate_device,
                          write_results)


def model_specs(d: int, n_layers: int) -> dict:
    """Mamba and Mamba-2 blocks hold ~6 d^2 parameters, a Transformer++ block (attention + SwiGLU MLP) ~12 d^2,
    so the Transformer++ gets half the layers; the hybrid replaces ~10% of Mamba-2 layers by attention."""
    from ssmkit.models import hybrid_pattern

    m2 = {"mamba2_d_state": 64, "mamba2_headdim": 32, "mamba2_chunk_size": 64}
    heads = max(1, d // 64)
    return {
        "mamba": {"d_model": d, "n_layers": n_layers, "mixers": "mamba", "mamba_d_state": 16},
        "mamba2": {"d_model": d, "n_layers": n_layers, "mixers": "mamba2", **m2},
        "transformer++": {"d_model": d, "n_layers": max(1, n_layers // 2), "mixers": "attention",
                          "feed_forwards": "mlp", "n_heads": heads},
        "hybrid": {"d_model": d, **hybrid_pattern(n_layers, 0.1, ffn=None), "n_heads": heads, **m2},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["mamba", "mamba2", "transformer++", "hybrid"])
    p.add_argument("--paths", nargs="+", default=["{stdlib}"])
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--budget-s", type=float, default=None, help="stop each run at the first eval past this")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--runs-dir", default="/tmp/ssmkit-train-bpb")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)

    import torch

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    err = validate_device(device) if device != "cpu" else 0.0
    specs = model_specs(args.d_model, args.n_layers)
    jobs = []
    for name in args.models:
        cfg = {"model": specs[name], "data": {"kind": "text", "paths": args.paths, "seq_len": args.seq_len},
               "steps": args.steps, "batch_size": args.batch, "lr": args.lr, "warmup_steps": args.steps // 20,
               "weight_decay": 0.1, "eval_every": args.eval_every, "eval_batches": args.eval_batches,
               "checkpoint_every": args.steps, "keep_checkpoints": 1, "log_every": args.eval_every,
               "device": device, "progress": "none", "save_hf": False, "seed": 0,
               "out_dir": str(Path(args.runs_dir) / name.replace("+", "p"))}
        jobs.append((name, cfg, args.threads) + ((args.budget_s,) if args.budget_s else ()))
    results = run_all(jobs, args.workers)

    tokens_per_step = args.batch * args.seq_len
    header = ["model", "layers", "params", "steps", "train bytes seen", "val bpb", "tokens/s", "wall s"]
    rows = []
    for r in results:
        tps = [t["tokens_per_s"] for t in r["train"][1:]] or [t["tokens_per_s"] for t in r["train"]]
        rows.append([r["name"], _layers(r["config"]["model"]), f"{r['params'] / 1e6:.2f}M", r["steps_done"],
                     f"{r['steps_done'] * tokens_per_step / 1e6:.1f}M", f"{r['evals'][-1]['eval']['bpb']:.3f}",
                     f"{sorted(tps)[len(tps) // 2]:.0f}" if tps else "-", f"{r['wall_s']:.0f}"])
    curve_steps = sorted({e["step"] for r in results for e in r["evals"]})
    table2 = markdown_table(["step"] + [r["name"] for r in results],
                            [[s] + [next((f"{e['eval']['bpb']:.3f}" for e in r["evals"] if e["step"] == s), "-")
                                    for r in results] for s in curve_steps])
    env = environment()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    svg = out / f"bpb-stdlib-{device_tag()}-{env['date'][:10]}.svg"
    svg_lines({r["name"]: [(e["step"], e["eval"]["bpb"]) for e in r["evals"]] for r in results}, svg,
              "validation bits per byte, Python stdlib source", "step", "bits per byte")
    corpus = results[0]["data"]
    body = (f"Corpus: the Python {corpus['python']} standard library at `{corpus['stdlib']}`, `*.py` files found "
            f"recursively under {args.paths}, skipping folders named test, tests, idlelib, site-packages: "
            f"{corpus['n_files']} files, {corpus['n_bytes']} bytes (sha256 of names and contents "
            f"{corpus['sha256']}; first {corpus['first']}, last {corpus['last']}). Every 20th file (sorted) is "
            f"held out: {corpus['train_bytes']} train bytes, {corpus['val_bytes']} validation bytes; bits per byte "
            f"on the first {args.eval_batches * args.batch} validation rows of {args.seq_len} bytes. Documents "
            f"are packed with per-document state resets.\n"
            f"Training: {args.steps} steps x {args.batch} x {args.seq_len} bytes, AdamW lr {args.lr}, warmup "
            f"{args.steps // 20}, cosine to 10%, weight decay 0.1, clip 1.0, bf16 autocast on GPU; runs "
            f"{'shared one device, ' + str(args.workers) + ' at a time' if args.workers > 1 else 'ran one at a time'}"
            f" (tokens/s is per run, under that sharing). Device check: max relative error {err:.1e} vs CPU "
            f"float64.\n\n" + markdown_table(header, rows) + "\n\nValidation bits per byte by step:\n\n" + table2
            + f"\n\nPlot: [{svg.name}]({svg.name}).\n")
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    md = write_results("bpb-stdlib", out, "Bits per byte vs steps on the Python standard library", command, env,
                       body, results)
    print(md.read_text())
    return 0


def _layers(model: dict) -> str:
    mixers = model.get("mixers")
    if isinstance(mixers, list):
        n_attn = mixers.count("attention")
        return f"{len(mixers) - n_attn} mamba2 + {n_attn} attention"
    return f"{model['n_layers']} x {mixers}" + (" + mlp" if model.get("feed_forwards") else "")


if __name__ == "__main__":
    sys.exit(main())
