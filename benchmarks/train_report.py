"""Shared pieces of the training benchmarks (train_mqar.py, train_copy.py, train_bpb.py): run TrainConfigs in
worker processes, read their metric curves, check the device against CPU first, write markdown, JSON and SVG.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def environment() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"python": platform.python_version(), "torch": torch.__version__, "gpu": gpu,
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def device_tag() -> str:
    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name(0).lower()
    return next((t for t in ("h200", "h100", "a100") if t in name), "gpu")


def run_one(job: tuple) -> dict:
    """Trains one config in this process: (name, config dict, torch threads[, time budget s]) -> result record.
    With a time budget the run stops at the first evaluation step past it (the record says which step)."""
    name, cfg, threads, *budget = job
    torch.set_num_threads(threads)
    from ssmkit.train import TrainConfig, Trainer

    cfg = dict(cfg)
    cfg.setdefault("out_dir", tempfile.mkdtemp(prefix=f"ssmkit-{name}-"))
    config = TrainConfig.from_dict(cfg)
    t0 = time.perf_counter()
    trainer = Trainer(config)
    result = trainer.train(stop_at=config.eval_every if budget else None)
    while trainer.step < config.steps and time.perf_counter() - t0 < budget[0]:
        result = trainer.train(stop_at=trainer.step + config.eval_every)
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (Path(config.out_dir) / "metrics.jsonl").read_text().splitlines()]
    return {"name": name, "config": cfg, "params": sum(p.numel() for p in trainer.model.parameters()),
            "eval": result.eval, "evals": [r for r in records if "eval" in r],
            "train": [r for r in records if "loss" in r], "wall_s": wall, "device": str(trainer.device),
            "steps_done": trainer.step,
            "data": trainer.data.describe()}


def run_all(jobs: list, workers: int) -> list:
    """Runs (name, config, threads) jobs, `workers` at a time in spawned processes; results in job order."""
    if workers <= 1:
        return [run_one(j) for j in jobs]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        return list(pool.map(run_one, jobs))


def validate_device(device: str) -> float:
    """Max relative error of a tiny Mamba-2/attention/Mamba/S4 model's logits and gradients on `device`
    (its default kernels) against the same weights on CPU in float64. Raises when above 2e-2."""
    from ssmkit.models import LanguageModel, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, d_model=64, n_layers=4, mixers=["mamba2", "attention", "mamba", "s4"],
                      feed_forwards="mlp", mamba2_d_state=16, mamba2_headdim=16, mamba2_chunk_size=32,
                      n_heads=4, s4_d_state=16)
    ref = LanguageModel(cfg).double()
    dev = LanguageModel(cfg).to(device)
    dev.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 64, (4, 100))
    worst = 0.0
    outs = []
    for model, x in ((ref, ids), (dev, ids.to(device))):
        logits = model(x)
        logits.float().logsumexp(-1).mean().backward()
        outs.append((logits.detach().double().cpu(), {n: p.grad.double().cpu() for n, p in model.named_parameters()}))
    (a, ga), (b, gb) = outs
    worst = max(worst, float((a - b).abs().max() / a.abs().max()))
    for n in ga:
        worst = max(worst, float((ga[n] - gb[n]).abs().max() / ga[n].abs().max().clamp(min=1e-12)))
    if worst > 2e-2:  # TF32 convolutions (cuDNN's default) alone reach ~1e-3; a wrong kernel gives O(1)
        raise AssertionError(f"device {device} disagrees with CPU float64: max relative error {worst:.2e}")
    return worst


def svg_lines(series: dict, path: Path, title: str, xlabel: str, ylabel: str, ylim=None) -> None:
    """A line chart (one polyline per series of (x, y) points) as a self-contained SVG file."""
    w, h, m = 640, 400, 60
    pts = [p for s in series.values() for p in s]
    if not pts:
        return
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = ylim or (min(p[1] for p in pts), max(p[1] for p in pts))
    sx = lambda x: m + (x - x0) / max(x1 - x0, 1e-12) * (w - 2 * m)  # noqa: E731
    sy = lambda y: h - m - (y - y0) / max(y1 - y0, 1e-12) * (h - 2 * m)  # noqa: E731
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
              "#7f7f7f", "#bcbd22", "#000000", "#aec7e8"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
           f'font-size="11">', f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
           f'<line x1="{m}" y1="{h - m}" x2="{w - m}" y2="{h - m}" stroke="black"/>',
           f'<line x1="{m}" y1="{m}" x2="{m}" y2="{h - m}" stroke="black"/>',
           f'<text x="{w / 2}" y="{h - 20}" text-anchor="middle">{xlabel}</text>',
           f'<text x="15" y="{h / 2}" transform="rotate(-90 15 {h / 2})" text-anchor="middle">{ylabel}</text>']
    for i in range(5):
        yv, xv = y0 + (y1 - y0) * i / 4, x0 + (x1 - x0) * i / 4
        out.append(f'<text x="{m - 5}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.3g}</text>')
        out.append(f'<text x="{sx(xv):.1f}" y="{h - m + 15}" text-anchor="middle">{xv:.4g}</text>')
    for k, (name, s) in enumerate(series.items()):
        c = colors[k % len(colors)]
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{line}"/>')
        out.append(f'<text x="{w - m + 5}" y="{m + 14 * k}" fill="{c}">{name}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def markdown_table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(stem: str, out_dir: Path, title: str, command: str, env: dict, body: str, results: list) -> Path:
    """results/<stem>-<device>-<date>.md (and .json with every run's record)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    day = env["date"][:10]
    md = out_dir / f"{stem}-{device_tag()}-{day}.md"
    device = env["gpu"] or f"CPU ({env['cpu']}, {env['cpu_count']} cores)"
    head = (f"# {title}\n\n- device: {device}\n- versions: python {env['python']}, torch {env['torch']}\n"
            f"- date: {env['date']}\n- command: `{command}`\n\n")
    md.write_text(head + body + "\n")
    md.with_suffix(".json").write_text(json.dumps({"env": env, "command": command, "runs": results}, indent=1))
    return md
