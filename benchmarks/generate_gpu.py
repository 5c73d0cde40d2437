"""Generation on GPU: ssmkit's eager decode vs ssmkit's CUDA-graph decode vs transformers' generate on the same
weights, for ~130M, ~370M and ~1.3B Mamba, Mamba-2, Transformer++ and Mamba-2/attention hybrids (random weights,
bf16). Per model, batch and prompt length (1K..64K): TTFT, decode ms per step and tokens/s, peak memory, and the
bandwidth floor (bytes of weights + decode state read per step / measured copy bandwidth). A model's impl stops at
its first out-of-memory length (recorded). Writes generate-gpu-<device>-<date>.md and .json.

    python3 benchmarks/generate_gpu.py [--models mamba2-130m,...] [--batches 1,16,64] [--lengths 1024,...]
        [--new-tokens 32] [--budget-s 540] [--no-transformers] [--out benchmarks/results]
    python3 benchmarks/generate_gpu.py --tiny     # CPU dry run on the tiny presets (no CUDA graphs there)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from ssmkit.bench.scripts import free, log, random_model, sync, select_models
from ssmkit.bench.environment import describe_environment, markdown_header
from ssmkit.bench.hf_runner import _StepClock, load_transformers_twin, transformers_family
from ssmkit.bench.table import fmt_number, markdown_table
from ssmkit.inference import allocate_cache, cache_nbytes, generate_steps
from ssmkit.inference.graph_registry import clear_graphs, graphed_decoder, release_decoder
from ssmkit.inference.graphs import graph_cache_len

MODELS = {"mamba-130m": "mamba-130m", "mamba2-130m": "mamba2-130m", "transformer-125m": "llama-125m",
          "hybrid-130m": "hybrid-130m", "mamba-370m": "mamba-370m", "mamba2-370m": "mamba2-370m",
          "transformer-350m": "llama-350m", "hybrid-370m": "hybrid-370m", "mamba-1.4b": "mamba-1.4b",
          "mamba2-1.3b": "mamba2-1.3b", "transformer-1.3b": "llama-1.3b", "hybrid-1.3b": "hybrid-1.3b"}
TINY = {"mamba-tiny": "tiny-mamba", "mamba2-tiny": "tiny-mamba2", "transformer-tiny": "tiny-llama",
        "hybrid-moe-tiny": "tiny-hybrid-moe"}
IMPLS = ("graph", "eager", "transformers")
OOM_MARKERS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "cudaErrorMemoryAllocation")


@dataclasses.dataclass
class Point:
    """One (model, impl, batch, prompt length) measurement; status ok | oom | skipped | error."""

    model: str
    impl: str
    batch: int
    prompt: int
    status: str = "ok"
    ttft_ms: float | None = None
    ms_per_step: float | None = None  # one decode step of the whole batch
    tokens_per_s: float | None = None  # decode tokens per second, all rows
    peak_gib: float | None = None
    capture_s: float | None = None
    floor_ms: float | None = None
    note: str = ""










def prompt_ids(vocab: int, batch: int, length: int, device) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(length)).to(device)


def is_oom(e: Exception) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or any(m in str(e) for m in OOM_MARKERS)


def floor_ms(model, batch: int, context: int, bandwidth: float | None) -> float | None:
    """Weights + decode state read once per step (the KV caches up to `context`) / the copy bandwidth."""
    if bandwidth is None:
        return None
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    state = sum(cache_nbytes(allocate_cache(model, batch, context, device="meta")).values())
    return (weights + state) / bandwidth * 1e3


def time_ssmkit(model, ids, new_tokens: int, cuda_graph: bool, cache_len: int | None = None
                ) -> tuple[float, float, torch.Tensor]:
    """TTFT (prefill + first token) and decode ms per step of generate_steps; the greedy tokens. The host runs
    ahead of the device between the first and the last token (no read-back), as a serving loop would.
    cache_len: the KV capacity (for the graph path, that of the graph captured beforehand)."""
    device = ids.device
    kwargs = dict(max_new_tokens=new_tokens, eos_token_id=[], cuda_graph=cuda_graph, max_cache_len=cache_len)
    sync(device)
    t0 = time.perf_counter()
    steps = generate_steps(model, ids, **kwargs)
    tokens = [next(steps).tokens]
    sync(device)
    t1 = time.perf_counter()
    tokens += [s.tokens for s in steps]
    sync(device)
    t2 = time.perf_counter()
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3 / max(new_tokens - 1, 1), torch.stack(tokens, 1).cpu()


def time_transformers(hf, ids, new_tokens: int) -> tuple[float, float, torch.Tensor]:
    clock = _StepClock()  # time-stamps each new token (transformers hands it over on the host)
    sync(ids.device)
    t0 = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0,
                          streamer=clock)
    t = clock.times
    return (t[0] - t0) * 1e3, (t[-1] - t[0]) * 1e3 / max(len(t) - 1, 1), out[:, ids.shape[1]:].cpu()


def measure(label: str, impl: str, run, batch: int, length: int, device, warmup: bool, capture=None) -> Point:
    """One point: an untimed warm-up (Triton tunes per shape), then the timed run; OOM and errors recorded."""
    p = Point(label, impl, batch, length)
    try:
        if capture is not None:
            t = time.perf_counter()
            capture()
            p.capture_s = time.perf_counter() - t
        if warmup:
            run(2)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        p.ttft_ms, p.ms_per_step, _ = run(None)
        p.tokens_per_s = batch / (p.ms_per_step * 1e-3)
        if device.type == "cuda":
            p.peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
    except Exception as e:  # never crash: record and let the caller decide what to skip
        p.status = "oom" if is_oom(e) else "error"
        p.note = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    return p


def sweep(label, impl, model_or_hf, ssm_model, args, deadline, out, bandwidth) -> None:
    """All batches and lengths of one impl, smallest first; stops a batch at its first OOM (and skips lengths at
    least that long at larger batches), and skips a point whose estimated time would pass the deadline."""
    device, new = args.device, args.new_tokens
    oom_at, last = None, (1, 0.0)  # (tokens prefilled, seconds) of the last point run
    for batch in args.batches:
        for length in args.lengths:
            p = Point(label, impl, batch, length, status="skipped")
            # Time scales with the tokens prefilled, superlinearly with attention: x1.5 for safety.
            est = 1.5 * last[1] * batch * length / last[0]
            if batch * length > args.max_prefill_tokens:
                p.note = f"batch x prompt > --max-prefill-tokens {args.max_prefill_tokens}"
            elif oom_at is not None and length >= oom_at:
                p.note = f"out of memory at {oom_at} tokens with a smaller batch"
            elif time.time() + est > deadline:
                p.note = "time budget"
            else:
                ids = prompt_ids(ssm_model.config.vocab_size, batch, length, device)
                cache_len = graph_cache_len(length + new) if impl == "graph" else None
                if impl == "transformers":
                    run = lambda n: time_transformers(model_or_hf, ids, n or new)  # noqa: E731
                else:
                    run = lambda n: time_ssmkit(model_or_hf, ids, n or new, impl == "graph", cache_len)  # noqa: E731
                capture = None
                if impl == "graph":
                    def capture():
                        d = graphed_decoder(model_or_hf, batch, cache_len, exact=True)
                        if d is None:
                            raise RuntimeError("this model's step cannot be captured (see the warning)")
                        release_decoder(model_or_hf, d)
                # Triton tunes per shape in the first prefill; the graph sweep's warm-up serves the eager one.
                warm = impl == "transformers" or (label, batch, length) not in out["warmed"]
                t = time.time()
                p = measure(label, impl, run, batch, length, device, warmup=warm, capture=capture)
                if p.status == "ok" and impl != "transformers":
                    out["warmed"].add((label, batch, length))
                last = (batch * length, time.time() - t)
                p.floor_ms = floor_ms(ssm_model, batch, length + new, bandwidth) if p.status == "ok" else None
                del ids
                clear_graphs(ssm_model)
                free(device)
            out["points"].append(p)
            if p.status != "ok":
                out["notes"].add(f"{label} {impl} batch {batch}: {p.status} from {length} tokens: {p.note}")
            log(f"{label} {impl} batch {batch} prompt {length}: {p.status} {fmt_number(p.ms_per_step)} ms/step "
                f"{p.note}")
            if p.status == "oom":
                oom_at = length if oom_at is None else min(oom_at, length)
                break


def validate(model, args) -> dict:
    """Greedy tokens (batch 1, a 256-token prompt): graph vs eager, and transformers vs eager."""
    ids = prompt_ids(model.config.vocab_size, 1, 256, args.device)
    res = {}
    _, _, eager = time_ssmkit(model, ids, 32, False)
    if args.device.type == "cuda":
        _, _, graph = time_ssmkit(model, ids, 32, True)
        res["graph_vs_eager"] = float((graph == eager).float().mean())
        clear_graphs(model)
    res["eager_tokens"] = eager
    return res


def run_model(label: str, preset: str, args, deadline: float, tmp: Path, out: dict, bandwidth) -> None:
    device, dtype = args.device, args.dtype
    model = random_model(preset, device, dtype)
    family = transformers_family(model.config)
    with_hf = family and not args.no_transformers and "transformers" in args.impls
    hf_share = 0.4 if with_hf else 0.0
    ssm_deadline = time.time() + (deadline - time.time()) * (1 - hf_share)
    v = validate(model, args)
    out["validation"][label] = {"graph_vs_eager": v.get("graph_vs_eager"), "family": family or "none"}
    impls = [i for i in args.impls if i != "transformers" and (i != "graph" or device.type == "cuda")]
    for impl in impls:
        last = impl == impls[-1]
        share = ssm_deadline if last else time.time() + (ssm_deadline - time.time()) * 0.55
        sweep(label, impl, model, model, args, share, out, bandwidth)
    if device.type != "cuda":
        out["notes"].add("graph: CUDA graphs need a CUDA device; the CPU dry run times the eager step only")
    if family is None:
        out["notes"].add(f"{label}: no transformers family computes this pattern; ssmkit only")
    elif with_hf:
        model.to("cpu")  # the twin gets the GPU to itself
        free(device)
        hf = load_transformers_twin(model, tmp / label, device=device, dtype=dtype)
        _, _, hf_tokens = time_transformers(hf, prompt_ids(model.config.vocab_size, 1, 256, device), 32)
        out["validation"][label]["transformers_vs_eager"] = float((hf_tokens == v["eager_tokens"]).float().mean())
        sweep(label, "transformers", hf, model, args, deadline, out, bandwidth)
        del hf
    del model
    free(device)


def pivot(points, impl_filter, value, digits=3) -> str:
    """Rows (model, impl, batch), columns prompt lengths; OOM / skip markers where a point did not run."""
    lengths = sorted({p.prompt for p in points})
    rows, keys = [], []
    for p in points:
        k = (p.model, p.impl, p.batch)
        if impl_filter(p.impl) and k not in keys:
            keys.append(k)
    for k in keys:
        cells = {}
        for p in points:
            if (p.model, p.impl, p.batch) == k:
                cells[p.prompt] = fmt_number(value(p), digits) if p.status == "ok" else (
                    "OOM" if p.status == "oom" else "err" if p.status == "error" else "-")
        rows.append(list(k) + [cells.get(n, "") for n in lengths])
    heads = [f"{n // 1024}K" if n % 1024 == 0 else str(n) for n in lengths]
    return markdown_table(["model", "impl", "batch"] + heads, rows, right_align_from=2)


def peak_by_model(points) -> str:
    rows = []
    for model in dict.fromkeys(p.model for p in points):
        for impl in IMPLS:
            ok = [p for p in points if p.model == model and p.impl == impl and p.status == "ok" and p.peak_gib]
            if ok:
                top = max(ok, key=lambda p: p.peak_gib)
                oom = [p for p in points if p.model == model and p.impl == impl and p.status == "oom"]
                first_oom = ", ".join(f"b{p.batch}@{p.prompt}" for p in oom) or "-"
                rows.append([model, impl, f"{top.peak_gib:.2f}", f"batch {top.batch}, {top.prompt} tokens", first_oom])
    return markdown_table(["model", "impl", "peak GiB", "at", "OOM at"], rows, right_align_from=2)


def speedups(points) -> list[list]:
    """Graph vs eager vs transformers decode ms per step where all ran, with the floor."""
    by = {(p.model, p.impl, p.batch, p.prompt): p for p in points if p.status == "ok"}
    rows = []
    for (model, impl, batch, prompt), g in by.items():
        if impl != "graph":
            continue
        e, h = by.get((model, "eager", batch, prompt)), by.get((model, "transformers", batch, prompt))
        rows.append([model, batch, prompt, fmt_number(g.ms_per_step), fmt_number(e.ms_per_step if e else None),
                     fmt_number(h.ms_per_step if h else None),
                     fmt_number(e.ms_per_step / g.ms_per_step if e else None),
                     fmt_number(g.floor_ms), f"{g.floor_ms / g.ms_per_step:.0%}" if g.floor_ms else "n/a"])
    return rows


def write_results(out: dict, args, started: float) -> Path:
    env = args.env
    device = env["device"].replace(" ", "-").lower() if args.device.type == "cuda" else "cpu"
    stem = Path(args.out) / f"generate-gpu-{device}-{datetime.date.today().isoformat()}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    pts = out["points"]
    bw = f"{args.bandwidth / 1e9:.0f} GB/s" if args.bandwidth else "n/a (CPU)"
    valid = [[k, v["family"], fmt_number(v.get("graph_vs_eager")), fmt_number(v.get("transformers_vs_eager"))]
             for k, v in out["validation"].items()]
    ssm_ok = [p for p in pts if p.status == "ok" and p.impl != "transformers"]
    text = "\n\n".join([
        markdown_header("Generation on GPU: ssmkit eager vs ssmkit CUDA graph vs transformers generate", env),
        f"Models: random weights (seed 0, LM head x8), {args.dtype_name}, presets {list(args.models.values())}. "
        f"Prompts: random token ids, lengths {list(args.lengths)}, batches {list(args.batches)}, "
        f"{args.new_tokens} new tokens (greedy, no stop token). graph = generate(cuda_graph=True): the static "
        f"decode step replayed from a CUDA graph over a KV cache of graph_cache_len(prompt + new) positions "
        f"(capture timed separately); eager = generate(cuda_graph=False); transformers = its `generate` (default "
        f"cache) on the same weights saved by ssmkit.io. TTFT = prefill + first token, after one untimed warm-up "
        f"run of the shape (Triton tunes per shape). ms/step = one decode step of the whole batch, the host "
        f"running ahead (no read-back between tokens); tokens/s = batch / that. Floor = (weight bytes + decode "
        f"state bytes at prompt + new positions) / measured device copy bandwidth {bw}: the time one step "
        f"needs just to read them once. Peak = CUDA allocator high-water mark of the timed run. An impl stops at "
        f"its first out-of-memory length; points with batch x prompt > {args.max_prefill_tokens} are skipped. "
        f"Wall time {time.time() - started:.0f} s of a {args.budget_s:.0f} s budget.",
        "## Validation (greedy tokens, batch 1, 256-token prompt, 32 new)\n\n" + markdown_table(
            ["model", "transformers family", "graph = eager", "transformers = eager"], valid, right_align_from=2),
        "## Decode, ms per step (whole batch)\n\n" + pivot(pts, lambda i: True, lambda p: p.ms_per_step),
        "## Decode tokens/s (all rows)\n\n" + pivot(pts, lambda i: True, lambda p: p.tokens_per_s),
        "## Time to first token, ms\n\n" + pivot(pts, lambda i: True, lambda p: p.ttft_ms),
        "## Graph vs eager vs transformers, and the bandwidth floor\n\n" + markdown_table(
            ["model", "batch", "prompt", "graph ms", "eager ms", "transformers ms", "eager/graph", "floor ms",
             "graph at % of floor"], speedups(pts), right_align_from=1),
        "## CUDA graph capture, s (per batch and cache length, once)\n\n" + pivot(
            pts, lambda i: i == "graph", lambda p: p.capture_s),
        "## Peak memory per model and impl\n\n" + peak_by_model(pts),
        "## Peak memory, GiB (every point)\n\n" + pivot(pts, lambda i: True, lambda p: p.peak_gib),
        "## Notes\n\n" + "\n".join(f"- {n}" for n in sorted(out["notes"]) or ["none"])
        + ("" if ssm_ok else "\n- no ssmkit point completed")])
    stem.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    stem.with_suffix(".json").write_text(json.dumps({
        "environment": env, "points": [dataclasses.asdict(p) for p in pts], "validation": out["validation"],
        "notes": sorted(out["notes"])}, indent=1, default=str) + "\n")
    return stem


def summary(out: dict) -> str:
    """The terminal table: each model, impl and batch at its shortest and longest completed prompt."""
    rows = []
    groups = dict.fromkeys((p.model, p.impl, p.batch) for p in out["points"])
    for k in groups:
        ok = [p for p in out["points"] if (p.model, p.impl, p.batch) == k and p.status == "ok"]
        oom = next((p.prompt for p in out["points"] if (p.model, p.impl, p.batch) == k and p.status == "oom"), "-")
        if ok:
            a, b = ok[0], ok[-1]
            rows.append(list(k) + [f"{a.prompt}", fmt_number(a.ttft_ms), fmt_number(a.ms_per_step),
                                   fmt_number(a.tokens_per_s), f"{b.prompt}", fmt_number(b.ms_per_step), oom])
        else:
            rows.append(list(k) + ["-"] * 6 + [oom])
    return markdown_table(["model", "impl", "batch", "prompt", "TTFT ms", "ms/step", "tok/s", "longest",
                           "ms/step", "OOM at"], rows, right_align_from=2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", help=f"comma-separated labels (default: all of {list(MODELS)})")
    p.add_argument("--batches", default="1,16,64")
    p.add_argument("--lengths", default="1024,4096,16384,65536", help="prompt lengths, ascending")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--max-prefill-tokens", type=int, default=1 << 20, help="skip points with batch x prompt above")
    p.add_argument("--budget-s", type=float, default=540.0, help="the whole run ends within about this long")
    p.add_argument("--no-transformers", action="store_true", help="ssmkit only")
    p.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated, of {IMPLS}")
    p.add_argument("--no-warmup", dest="warmup", action="store_false")
    p.add_argument("--tiny", action="store_true", help="CPU dry run: tiny presets, 64/128 tokens, batch 1 and 4")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    args.device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    args.dtype = torch.bfloat16 if args.device.type == "cuda" else torch.float32
    args.dtype_name = "bf16" if args.device.type == "cuda" else "fp32"
    models = TINY if args.tiny else MODELS
    args.impls = args.impls.split(",")
    if not args.impls or not set(args.impls) <= set(IMPLS):
        p.error(f"--impls: expected some of {IMPLS}, got {args.impls}")
    args.batches = [int(b) for b in args.batches.split(",")]
    args.lengths = sorted(int(n) for n in args.lengths.split(","))
    if args.tiny:
        args.batches, args.lengths, args.new_tokens = [1, 4], [64, 128], 8
    args.models = select_models(models, args.models, p.error)
    args.env = describe_environment()
    started = time.time()
    args.bandwidth = None
    if args.device.type == "cuda":
        from ssmkit.bench.kernel_timing import copy_bandwidth

        args.bandwidth = copy_bandwidth()
        free(args.device)
    out = {"points": [], "validation": {}, "notes": set(), "warmed": set()}
    with tempfile.TemporaryDirectory(prefix="ssmkit-generate-gpu-") as tmp:
        for i, (label, preset) in enumerate(args.models.items()):
            remaining = started + args.budget_s - time.time()
            if remaining < 5:
                out["notes"].add(f"{', '.join(list(models)[i:])}: not run (time budget)")
                break
            log(f"{label} ({preset}): {remaining:.0f} s left")
            try:
                run_model(label, preset, args, time.time() + remaining / (len(args.models) - i), Path(tmp), out,
                          args.bandwidth)
            except Exception as e:  # a model that fails outside a point (build, twin) is noted, the rest go on
                out["notes"].add(f"{label}: stopped, {type(e).__name__}: {str(e).splitlines()[0][:160]}")
                free(args.device)
            write_results(out, args, started)  # after every model, so a cut-off run keeps what it has
    stem = write_results(out, args, started)
    print(summary(out))
    print(f"wrote {stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
