"""The end-to-end demo behind `make demo`: every capability on CPU with embedded defaults, in order."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def demo_operators(quick: bool) -> None:
    from ssmkit.bench.ops import bench_selective_scan, bench_ssd, markdown_table

    section("Operators: SSD evaluation orders and the selective scan on CPU (float32)")
    seqlens = [256] if quick else [256, 1024]
    print(markdown_table(bench_ssd(seqlens) + bench_selective_scan(seqlens)))
    print("quadratic grows as L^2 in time and memory; chunked grows as L. Full table: benchmarks/results/.")


DEMO_MODELS = ("tiny-mamba", "tiny-mamba2", "tiny-llama", "tiny-hybrid-moe")


def demo_models(workdir: Path) -> dict[str, Path]:
    """Builds each tiny model, saves it in Hugging Face format, loads it back, checks the logits, generates."""
    import torch

    from ssmkit.io import ByteTokenizer, load_pretrained, save_pretrained
    from ssmkit.models import LanguageModel, ModelConfig

    section("Models: tiny Mamba, Mamba-2, Transformer++ and a Mamba-2/attention/MoE hybrid, through the HF format")
    tok = ByteTokenizer()
    prompt = torch.tensor([tok.encode("State space models ")])
    paths = {}
    for name in DEMO_MODELS:
        torch.manual_seed(0)
        model = LanguageModel(ModelConfig.from_name(name, vocab_size=tok.vocab_size)).eval()
        path = workdir / name
        model_type = save_pretrained(model, path)
        tok.save(path)
        loaded = load_pretrained(path).eval()
        with torch.no_grad():
            diff = (loaded(prompt) - model(prompt)).abs().max().item()
            out = loaded.generate(prompt, max_new_tokens=16, temperature=0.0)
        state = loaded.allocate_state(1, 4096)
        from ssmkit.inference.cache import cache_nbytes

        sizes = cache_nbytes(state)
        params = sum(p.numel() for p in loaded.parameters())
        print(f"{name:16s} model_type={model_type:7s} params={params:,} layers={loaded.config.mixers} "
              f"round-trip max|dlogits|={diff:.1e}")
        print(f"{'':16s} decode cache at 4096 tokens: {sizes}")
        print(f"{'':16s} greedy: {tok.decode(out[0].tolist())!r}")
        paths[name] = path
    return paths


def demo_training(workdir: Path, quick: bool) -> None:
    """Trains a tiny Mamba-2 on bytes of the standard library's json package, evaluates it, generates from it."""
    import torch

    from ssmkit.io import ByteTokenizer, load_pretrained
    from ssmkit.train.commands import evaluate_checkpoint, train

    section("Training: a tiny Mamba-2 on bytes of the Python standard library (json package), then eval")
    config = Path(__file__).resolve().parent.parent / "examples" / "train" / "tiny-stdlib.yaml"
    run = workdir / "tiny-stdlib"
    steps = 20 if quick else 300  # ~15 s on 2 idle cores; enough for the model to produce Python-like text
    train(config, [f"out_dir={run}", f"steps={steps}", f"eval_every={steps // 3}", f"checkpoint_every={steps}"])
    evaluate_checkpoint(run, "ppl", max_batches=4)
    model = load_pretrained(run / "model").eval()
    tok = ByteTokenizer(specials=(), eos_token=None)
    prompt = torch.tensor([tok.encode("import json\ndef ")])
    out = model.generate(prompt, max_new_tokens=40)
    print(f"greedy from the trained model: {tok.decode(out[0].tolist())!r}")


def demo_measurement_section(workdir: Path) -> None:
    from ssmkit.bench.demo import demo_measurement

    section("Measurement: bench, length sweep under a memory cap, compare, gate, memory plan, OOM remedies, tokens")
    report = demo_measurement(workdir / "bench")
    keep = Path("out") / "demo-report.html"
    keep.parent.mkdir(exist_ok=True)
    keep.write_bytes(report.read_bytes())
    print(f"HTML report: {keep}")


def demo_profile(workdir: Path) -> None:
    from ssmkit.profile.commands import profile_command, trace_summary_command

    section("Profiling: every layer call of the tiny Mamba-2/attention/MoE hybrid into DuckDB, then a summary")
    db = workdir / "trace.duckdb"
    report = Path("out") / "demo-profile.html"
    report.parent.mkdir(exist_ok=True)
    profile_command("preset:tiny-hybrid-moe", "State space models ", 24, str(db), requests=2,
                    report=str(report))
    trace_summary_command(str(db), None)
    print(f"profile report: {report}")


def run_demo(quick: bool = False) -> int:
    t0 = time.perf_counter()
    demo_operators(quick)
    with tempfile.TemporaryDirectory(prefix="ssmkit-demo-") as tmp:
        paths = demo_models(Path(tmp))
        section("Serving: the OpenAI-compatible server on two tiny models, routed requests through the openai client")
        from ssmkit.serve.demo import run_serving_demo

        run_serving_demo(paths["tiny-llama"], paths["tiny-mamba2"])
        demo_training(Path(tmp), quick)
        demo_measurement_section(Path(tmp))
        demo_profile(Path(tmp))
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f} s")
    return 0
