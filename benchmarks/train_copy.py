"""Selective copying and induction heads (Mamba paper, section 4.1 and table 1 / table 2): the selective SSM
(Mamba-1, Mamba-2) against the LTI S4 layer, and attention, at tiny scale.

Induction-heads models are also scored at longer sequences than they were trained on (length extrapolation).
    python benchmarks/train_copy.py --task copy --steps 3000
    python benchmarks/train_copy.py --task induction --steps 2000 --extrapolate 512 1024
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from train_report import (device_tag, environment, markdown_table, run_all, svg_lines, validate_device,
                          write_results)

MODELS = {
    "mamba": {"mixers": "mamba", "mamba_d_state": 16},
    "mamba2": {"mixers": "mamba2", "mamba2_d_state": 16, "mamba2_headdim": 16, "mamba2_chunk_size": 64},
    "s4": {"mixers": "s4", "feed_forwards": "mlp", "mlp_activation": "gelu", "s4_d_state": 16},
    "attention": {"mixers": "attention", "feed_forwards": "mlp", "n_heads": 4},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=["copy", "induction"], default="copy")
    p.add_argument("--models", nargs="+", default=["mamba", "mamba2", "s4"], choices=sorted(MODELS))
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--n-tokens", type=int, default=16, help="tokens to copy (selective copying)")
    p.add_argument("--vocab", type=int, default=16)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-examples", type=int, default=1024)
    p.add_argument("--extrapolate", nargs="*", type=int, default=[], help="extra eval lengths (induction)")
    p.add_argument("--budget-s", type=float, default=None, help="stop each run at the first eval past this")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--runs-dir", default="/tmp/ssmkit-train-copy")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)

    import torch

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    err = validate_device(device) if device != "cpu" else 0.0
    jobs = []
    for name in args.models:
        cfg = {"model": {"d_model": args.d_model, "n_layers": args.n_layers, **MODELS[name]},
               "data": {"kind": args.task, "seq_len": args.seq_len, "vocab_size": args.vocab,
                        "n_tokens": args.n_tokens, "eval_examples": args.eval_examples},
               "steps": args.steps, "batch_size": args.batch, "lr": args.lr, "warmup_steps": args.steps // 20,
               "eval_every": max(1, args.steps // 10), "checkpoint_every": args.steps, "keep_checkpoints": 1,
               "log_every": 50, "device": device, "progress": "none", "save_hf": False, "seed": 0,
               "out_dir": str(Path(args.runs_dir) / f"{args.task}-{name}")}
        jobs.append((name, cfg, args.threads) + ((args.budget_s,) if args.budget_s else ()))
    results = run_all(jobs, args.workers)

    from ssmkit.train.commands import evaluate_checkpoint

    extra = {}
    for r in results:
        for length in args.extrapolate:
            import io
            import json

            buf = io.StringIO()
            evaluate_checkpoint(r["config"]["out_dir"], args.task, seq_len=length, device=device, as_json=True,
                                stream=buf)
            extra[(r["name"], length)] = json.loads(buf.getvalue())["accuracy"]
    header = ["model", "params", f"accuracy (L={args.seq_len})", "sequence accuracy"] + \
        [f"accuracy L={n}" for n in args.extrapolate] + ["steps", "wall s"]
    rows = [[r["name"], f"{r['params'] / 1e3:.0f}k", f"{r['eval']['accuracy']:.3f}",
             f"{r['eval']['sequence_accuracy']:.3f}"] + [f"{extra[(r['name'], n)]:.3f}" for n in args.extrapolate]
            + [r["steps_done"], f"{r['wall_s']:.0f}"] for r in results]
    env = environment()
    stem = {"copy": "selective-copy", "induction": "induction-heads"}[args.task]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    svg = out / f"{stem}-{device_tag()}-{env['date'][:10]}.svg"
    svg_lines({r["name"]: [(e["step"], e["eval"]["accuracy"]) for e in r["evals"]] for r in results}, svg,
              f"{stem}: accuracy during training", "step", "accuracy", ylim=(0, 1))
    what = (f"selective copying: {args.n_tokens} tokens from a vocabulary of {args.vocab} scattered over the first "
            f"{args.seq_len - args.n_tokens} positions, recalled in order at {args.n_tokens} markers"
            if args.task == "copy" else
            f"induction heads: vocabulary {args.vocab}, one trigger token, recall the token after it at the end")
    body = (f"Task: {what} (ssmkit.train.synthetic); sequence length {args.seq_len}; accuracy over answer "
            f"positions of {args.eval_examples} held-out sequences.\nModels: d_model {args.d_model}, "
            f"{args.n_layers} layers, state size 16 (S4: HiPPO-LegS, ZOH, with a GELU MLP as in the tiny-s4 "
            f"preset). Training: {args.steps} steps x {args.batch} sequences, AdamW lr {args.lr}, warmup + "
            f"cosine. Device check: max relative error {err:.1e} against CPU float64.\n\n"
            + markdown_table(header, rows) + f"\n\nPlot: [{svg.name}]({svg.name}).\n")
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    md = write_results(stem, out, f"{stem}: selective SSM vs LTI S4", command, env, body, results)
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
