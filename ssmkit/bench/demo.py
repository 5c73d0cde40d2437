"""The measurement part of the demo: bench, compare, gate, memory and tokens on CPU in well under 30 s, and an HTML
report. Tiny random-weight models (Mamba-2, Transformer++, a Mamba-2/attention hybrid): the numbers show the
machinery and the shapes of the curves (KV grows, SSM state stays flat), not the speed of real models.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

DEMO_TEXTS = {
    "en.txt": "State space models keep a fixed-size state, so memory stays flat as the context grows.",
    "ko.txt": "상태 공간 모델은 고정 크기의 상태를 유지하므로 문맥이 길어져도 메모리가 일정하다.",
    "zh.txt": "状态空间模型保持固定大小的状态，因此上下文变长时内存保持不变。",
}
DEMO_WORKLOAD = """# Synthetic traffic for the demo: log-normal prompt and output lengths, closed loop.
name: demo-synthetic
concurrency: 4
warmup: 1
repeats: 1
synthetic:
  requests: 12
  seed: 0
  prompt_tokens: {distribution: lognormal, median: 96, sigma: 0.6, min: 16, max: 384}
  output_tokens: {distribution: lognormal, median: 8, sigma: 0.4, min: 2, max: 16}
"""
SWEEP_LENGTHS = (128, 256, 512, 1024, 2048)
SWEEP_CHUNK = 64


def _section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def _demo_models():
    """name -> LanguageModel: tiny Mamba-2, Transformer++ (GQA) and a Mamba-2 hybrid with one attention layer."""
    import torch

    from ssmkit.models import LanguageModel, ModelConfig, hybrid_pattern

    configs = {"mamba2": ModelConfig.from_name("tiny-mamba2", vocab_size=257),
               "transformer": ModelConfig.from_name("tiny-llama", vocab_size=257),
               "hybrid": ModelConfig.from_name("tiny-mamba2", vocab_size=257, n_heads=4, n_kv_heads=2,
                                               **hybrid_pattern(2, attn_share=0.5, ffn=None))}
    models = {}
    for name, cfg in configs.items():
        torch.manual_seed(0)
        models[name] = LanguageModel(cfg).eval()
    return models


def _train_bpe(path: Path) -> Path:
    """A small byte-level BPE trained on the demo texts (a stand-in for a real model's tokenizer.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from .quality import HELDOUT_TEXT

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [HELDOUT_TEXT] + list(DEMO_TEXTS.values()) * 3
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(path))
    return path


def _capture(fn, *args, **kwargs) -> tuple[int, str]:
    """(return value, printed text) of a command function; the text is printed too."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = fn(*args, **kwargs)
    print(buf.getvalue(), end="")
    return rc, buf.getvalue()


def demo_measurement(workdir) -> Path:
    """Runs the measurement demo in `workdir` (created if needed) and returns the path of the HTML report.

    1. bench: each tiny model on synthetic traffic at concurrency 1 and 4 (static batching), quality attached;
    2. a prompt-length sweep under a memory cap with chunked prefill: the Transformer runs out first, the
       hybrid later, Mamba-2 never (its state does not grow);
    3. compare (Transformer vs Mamba-2) and gate (one passing and one failing limit set);
    4. memory plans: the 80-layer textbook KV case and Mamba-2 1.3B at 128K tokens on 24 GiB;
    5. OOM remedies on one prompt; 6. tokens compare (byte vs BPE) on English, Korean and Chinese text.
    """
    from ssmkit.io import ByteTokenizer

    from .commands import compare_command, gate_command, memory_command, tokens_compare_command
    from .environment import describe_environment
    from .memory_plan import load_config, plan_memory
    from .remedies import DEFAULT_REMEDIES, format_remedies, measure_remedies
    from .report import write_report
    from .runner import Benchmarker
    from .sweep import format_sweep, length_sweep
    from .workload import load_workload

    t0 = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "workload.yaml").write_text(DEMO_WORKLOAD, encoding="utf-8")
    workload = load_workload(workdir / "workload.yaml")
    env = describe_environment()
    tok = ByteTokenizer()
    models = _demo_models()
    extras = {}

    _section("bench: synthetic traffic (log-normal lengths), closed loop at 1 and 4 clients, static batching")
    runs, sweeps = [], []
    for name, model in models.items():
        bench = Benchmarker(model, tok, name, batching="static", max_batch=4)
        try:
            for c in (1, 4):
                run = bench.run_workload(dataclasses.replace(workload, concurrency=c), environment=env)
                runs.append(run)
            run.save(workdir / f"results-{name}.json")
        finally:
            bench.close()
        q = bench.quality()
        print(f"{name:12s} TTFT p50 {run.summary['ttft_ms'].p50:7.1f} ms  p95 latency "
              f"{run.summary['total_latency_ms'].p95:7.1f} ms  throughput {run.throughput_tokens_per_s:7.1f} tok/s  "
              f"quality {q.score:.3f} (ppl {q.perplexity:.1f}, copy acc {q.task_accuracy:.2f})")

    cap = int(1.25 * 2**20)  # planned bytes pass it at 1024 tokens for the Transformer, at 2048 for the hybrid
    _section(f"length sweep under a {cap / 2**20:.2f} MiB memory cap (prefill in chunks of {SWEEP_CHUNK} tokens)")
    for name, model in models.items():
        bench = Benchmarker(model, tok, name, prefill_chunk_size=SWEEP_CHUNK, quality=False)
        sweeps.append(length_sweep(bench, SWEEP_LENGTHS, new_tokens=4, memory_cap_bytes=cap, warmup=False,
                                   environment=env))
    print(format_sweep(sweeps))

    _section("compare: transformer (A) vs mamba2 (B)")
    _, extras["compare: transformer (A) vs mamba2 (B)"] = _capture(
        compare_command, str(workdir / "results-transformer.json"), str(workdir / "results-mamba2.json"))
    _section("gate: generous limits (passes), then a quality floor random weights cannot meet (fails)")
    rc_pass, text_pass = _capture(gate_command, str(workdir / "results-mamba2.json"), max_p95_latency_ms=60_000,
                                  max_memory_gb=64)
    rc_fail, text_fail = _capture(gate_command, str(workdir / "results-mamba2.json"), min_quality=0.82,
                                  max_p95_latency_ms=60_000)
    print(f"exit codes: {rc_pass} (pass), {rc_fail} (fail)")
    extras["gate"] = f"{text_pass}\nexit code {rc_pass}\n\n{text_fail}\nexit code {rc_fail}"

    _section("memory: the textbook KV case and Mamba-2 1.3B at 128K tokens")
    textbook = workdir / "llama-80-layers" / "config.json"
    textbook.parent.mkdir(exist_ok=True)
    textbook.write_text(json.dumps({"model_type": "llama", "vocab_size": 32000, "hidden_size": 8192,
                                    "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 64,
                                    "head_dim": 128, "intermediate_size": 28672}))
    memory_command(str(textbook), context=131072, batch=1, dtype="fp16", gpu_memory_gb=80)
    print()
    memory_command("mamba2-1.3b", context=131072, batch=8, dtype="bf16", gpu_memory_gb=24)
    plans = [plan_memory(load_config(textbook)[1], context=131072, dtype="fp16", gpu_memory_gb=80,
                         name="80 layers x 64 KV heads x 128 (textbook)"),
             plan_memory(load_config("mamba2-1.3b")[1], context=131072, batch=8, gpu_memory_gb=24,
                         name="mamba2-1.3b")]

    _section("OOM remedies on one 1024-token prompt (tiny models, CPU tensor peaks)")
    remedy_models = {"attention": models["transformer"], "ssm": models["mamba2"], "hybrid": models["hybrid"]}
    bench_prompt = Benchmarker(models["transformer"], tok, "prompt", quality=False).filler_ids(1024)
    remedies = measure_remedies(remedy_models, bench_prompt, tokenizer=tok, new_tokens=8,
                                eval_tokens=64, remedies=[dataclasses.replace(r, prefill_chunk=128)
                                                          if r.model_key != "attention" else r
                                                          for r in DEFAULT_REMEDIES])
    print(format_remedies(remedies))

    _section("tokens: the byte tokenizer vs a small BPE on English, Korean and Chinese")
    paths = []
    for fname, text in DEMO_TEXTS.items():
        (workdir / fname).write_text(text, encoding="utf-8")
        paths.append(str(workdir / fname))
    bpe = _train_bpe(workdir / "bpe-tokenizer.json")
    _, extras["tokens: byte (A) vs BPE (B)"] = _capture(tokens_compare_command, "byte", str(bpe), paths)

    report = write_report(workdir / "report.html", title="ssmkit measurement demo (tiny random-weight models, CPU)",
                          runs=runs, sweeps=sweeps, remedies=remedies, plans=plans, extras=extras, environment=env)
    print(f"\nreport: {report}  ({time.perf_counter() - t0:.1f} s)")
    return report
