"""The logic of `ssmkit compare`, `ssmkit gate` and `ssmkit tokens compare`: plain arguments in, output printed,
exit code returned. Bad input raises ValueError or FileNotFoundError, which ssmkit.cli reports with exit code 2.
"""

from __future__ import annotations

from .compare import compare, format_comparison
from .gate import format_gate, gate_checks
from .results import RunResult
from .tokens import compare_tokenizers, format_token_comparison, load_tokenizer_spec, read_texts


def compare_command(path_a: str, path_b: str) -> int:
    """Prints B / A ratios of two results files; returns 0."""
    a, b = RunResult.load(path_a), RunResult.load(path_b)
    print(format_comparison(a, b, compare(a, b)))
    return 0


def gate_command(path: str, *, min_quality: float | None = None, max_p95_latency_ms: float | None = None,
                 max_memory_gb: float | None = None, max_p95_ttft_ms: float | None = None,
                 min_throughput_tokens_per_s: float | None = None, max_failed_fraction: float = 0.0) -> int:
    """Prints a table of every check; returns 1 when any check fails, 0 when all pass."""
    result = RunResult.load(path)
    checks = gate_checks(result, min_quality=min_quality, max_p95_latency_ms=max_p95_latency_ms,
                         max_memory_gb=max_memory_gb, max_p95_ttft_ms=max_p95_ttft_ms,
                         min_throughput_tokens_per_s=min_throughput_tokens_per_s,
                         max_failed_fraction=max_failed_fraction)
    print(format_gate(result, checks))
    return 0 if all(c.passed for c in checks) else 1


def tokens_compare_command(spec_a: str, spec_b: str, files: list[str], context_tokens: int = 4096) -> int:
    """Prints token counts of each file under tokenizers A and B ('byte' or a tokenizer.json path); returns 0."""
    if not files:
        raise ValueError("files: expected at least one text file")
    if context_tokens < 1:
        raise ValueError(f"context_tokens: expected >= 1, got {context_tokens}")
    rows = compare_tokenizers(load_tokenizer_spec(spec_a), load_tokenizer_spec(spec_b), read_texts(files))
    print(format_token_comparison(rows, spec_a, spec_b, context_tokens))
    return 0


def load_model_spec(spec: str, *, device=None, dtype=None):
    """'NAME=CHECKPOINT' or 'CHECKPOINT' -> (name, model, tokenizer). CHECKPOINT is a checkpoint folder (config.json
    + safetensors; its tokenizer, else the byte tokenizer) or a preset name (random weights, seed 0, byte
    tokenizer). Raises ValueError naming the spec when it is neither."""
    from pathlib import Path

    import torch

    from ssmkit.io import ByteTokenizer, load_pretrained, load_tokenizer
    from ssmkit.models import PRESETS, LanguageModel, ModelConfig

    from .memory_plan import dtype_name

    name, sep, target = spec.partition("=")
    if not sep:
        name, target = Path(spec).name or spec, spec
    if not name or not target:
        raise ValueError(f"--model: expected NAME=CHECKPOINT, got {spec!r}")
    torch_dtype = None if dtype is None else getattr(torch, {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32",
                                                             "fp64": "float64"}[dtype_name(dtype)])
    path = Path(target)
    if (path / "config.json").is_file():
        model = load_pretrained(path, dtype=torch_dtype, device=device)
        try:
            tokenizer = load_tokenizer(path)
        except FileNotFoundError:
            tokenizer = ByteTokenizer()
    elif target in PRESETS:
        torch.manual_seed(0)
        model = LanguageModel(ModelConfig.from_name(target)).to(device=device, dtype=torch_dtype)
        tokenizer = ByteTokenizer()
    else:
        where = "a folder without config.json" if path.is_dir() else "no such folder"
        raise ValueError(f"--model {spec!r}: {target!r} is neither a checkpoint folder nor a preset ({where}); "
                         f"presets: {', '.join(sorted(PRESETS))}")
    return name, model.eval(), tokenizer


def parse_lengths(text: str) -> list[int]:
    """'256,512,1024' -> [256, 512, 1024]; raises ValueError naming --sweep."""
    try:
        lengths = [int(x) for x in str(text).replace(" ", "").split(",") if x]
    except ValueError:
        raise ValueError(f"--sweep: expected comma-separated prompt lengths like 256,512,1024, got {text!r}") from None
    if not lengths or min(lengths) < 1:
        raise ValueError(f"--sweep: expected prompt lengths >= 1, got {text!r}")
    return lengths


def bench_command(models: list[str], workload: str, out: str, *, memory_cap_gb: float | None = None,
                  sweep: str | None = None, sweep_batch: int = 1, sweep_new_tokens: int = 16, device: str | None = None,
                  dtype: str | None = None, batching: str = "none", prefill_chunk: int | None = None,
                  quality: bool = True, report: bool = True, progress: str = "auto") -> int:
    """Runs each model on the workload (and the length sweep), writes results JSON and an HTML report; returns 0.

    One model: its RunResult goes to `out`; several: to OUT-STEM-NAME.json each. The sweep goes to
    OUT-STEM-sweep[-NAME].json and the report to OUT-STEM.html. Requests whose planned memory exceeds
    memory_cap_gb fail as out of memory (recorded, not raised).
    """
    from pathlib import Path

    import torch

    from .environment import describe_environment
    from .progress import ProgressBar
    from .results import GB
    from .runner import Benchmarker
    from .sweep import format_sweep, length_sweep
    from .workload import load_workload

    if not models:
        raise ValueError("--model: expected at least one NAME=CHECKPOINT")
    if memory_cap_gb is not None and not memory_cap_gb > 0:
        raise ValueError(f"--memory-cap: expected a size > 0 in GiB, got {memory_cap_gb}")
    for flag, value in (("--sweep-batch", sweep_batch), ("--sweep-new-tokens", sweep_new_tokens),
                        ("--prefill-chunk", 1 if prefill_chunk is None else prefill_chunk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{flag}: expected an integer >= 1, got {value!r}")
    if device not in (None, "cpu") and not (str(device).startswith("cuda") and torch.cuda.is_available()):
        raise ValueError(f"--device: {device!r} is not available here (CUDA available: {torch.cuda.is_available()})")
    lengths = parse_lengths(sweep) if sweep else None
    wl = load_workload(workload)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cap = None if memory_cap_gb is None else int(memory_cap_gb * GB)
    specs = [load_model_spec(s, device=device, dtype=dtype) for s in models]
    names = [n for n, _, _ in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"--model: names must differ, got {names}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = describe_environment()
    runs, sweeps = [], []
    for name, model, tokenizer in specs:
        bench = Benchmarker(model, tokenizer, name, batching=batching, prefill_chunk_size=prefill_chunk,
                            quality=quality, memory_cap_bytes=cap)
        bar = ProgressBar(f"bench {name}", len(wl.requests) * wl.repeats, kind=progress)
        try:
            run = bench.run_workload(wl, progress=bar, environment=env)
        finally:
            bar.close()
            bench.close()
        path = out if len(specs) == 1 else out.with_name(f"{out.stem}-{name}{out.suffix or '.json'}")
        run.save(path)
        runs.append(run)
        print(f"{name}: {len(run.requests)} requests -> {path}")
        if lengths:
            bar = ProgressBar(f"sweep {name}", len(lengths), kind=progress)
            result = length_sweep(bench, lengths, batch=sweep_batch, new_tokens=sweep_new_tokens,
                                  memory_cap_bytes=cap, progress=bar)
            bar.close()
            suffix = "" if len(specs) == 1 else f"-{name}"
            result.save(out.with_name(f"{out.stem}-sweep{suffix}.json"))
            sweeps.append(result)
    print(_runs_table(runs))
    if sweeps:
        print(format_sweep(sweeps))
    if report:
        from .report import write_report

        html = write_report(out.with_suffix(".html"), runs=runs, sweeps=sweeps, environment=env)
        print(f"report: {html}")
    return 0


def _runs_table(runs) -> str:
    from .results import GB
    from .table import fmt_number, markdown_table

    rows = [[r.model, r.workload, r.concurrency, fmt_number(r.summary["ttft_ms"].p50),
             fmt_number(r.summary["total_latency_ms"].p95), fmt_number(r.throughput_tokens_per_s),
             f"{r.peak_memory_bytes / GB:.3g}", fmt_number(r.quality_score), r.failed_requests] for r in runs]
    return markdown_table(["model", "workload", "concurrency", "TTFT p50 ms", "latency p95 ms", "throughput tok/s",
                           "peak GiB", "quality", "failed"], rows, right_align_from=2)


def memory_command(config: str, context: int, batch: int = 1, dtype: str = "bf16", kv_dtype: str | None = None,
                   gpu_memory_gb: float | None = None, prefill_chunk: int | None = None, kernels: str = "fused") -> int:
    """Prints the memory plan of a preset, config.json or checkpoint folder; returns 0. kernels: "fused" (GPU
    Triton/flash paths) or "torch" (ssmkit's CPU paths) for the activation estimate."""
    from .memory_plan import format_plan, load_config, plan_memory

    name, cfg = load_config(config)
    print(format_plan(plan_memory(cfg, context=context, batch=batch, dtype=dtype, kv_dtype=kv_dtype,
                                  prefill_chunk=prefill_chunk, gpu_memory_gb=gpu_memory_gb, name=name,
                                  kernels=kernels)))
    return 0
