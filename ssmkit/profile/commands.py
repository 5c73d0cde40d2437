"""The logic of `ssmkit profile` and `ssmkit trace query|summary|baseline save|check|report`: plain arguments in,
output printed, exit code returned. Bad input raises ValueError or FileNotFoundError (ssmkit.cli reports those
with exit code 2); SQL errors are printed with DuckDB's message and return 2, never a traceback.
"""

from __future__ import annotations

import sys

from .analysis import format_summary, summarize
from .baseline import Thresholds, alerts_json, check_baseline, save_baseline
from .format import FORMATS, render, text_table
from .store import SqlError, TraceStore

PRESET_PREFIX = "preset:"


def profile_command(checkpoint: str, prompt: str | None = None, max_new_tokens: int = 32, db: str = "trace.duckdb",
                    *, workload: str | None = None, run_name: str | None = None, requests: int = 1, batch: int = 1,
                    dtype: str | None = None, device: str | None = None, tokenizer: str | None = None,
                    temperature: float = 0.0, seed: int | None = None, report: str | None = None, out=None) -> int:
    """Generates `requests` completions of `prompt` (each a batch of `batch` copies), or the requests of a bench
    `workload` YAML, under the Profiler, writing the run into `db`; prints the run id and its summary, and writes
    an HTML report when `report` is a path.

    checkpoint: a folder with config.json and safetensors weights, or "preset:NAME" for a ModelConfig preset
    with random weights (seed 0) and the byte tokenizer. tokenizer: None = the checkpoint's, "byte", or a path.
    workload: exactly one of `prompt` and `workload` is given. Each workload request runs once, in the file's
    order, one after another (mode, concurrency, warmup, repeats and arrival times are the bench's concern, not
    the profiler's), as request `request_id` with its prefill and decode calls tagged, generating its
    `output_tokens` without an early stop; a `prompt_tokens` request gets the bench's synthetic prompt of that
    length. `requests` and `max_new_tokens` then do not apply.
    """
    from .recorder import Profiler

    out = sys.stdout if out is None else out
    if (prompt is None) == (workload is None):
        raise ValueError(f"prompt, workload: expected exactly one of them, got prompt={prompt!r}, "
                         f"workload={workload!r}")
    for name, value in (("max_new_tokens", max_new_tokens), ("requests", requests), ("batch", batch)):
        if value < 1:
            raise ValueError(f"{name}: expected >= 1, got {value}")
    if workload is not None:
        from ssmkit.bench.workload import load_workload

        jobs = workload_jobs(load_workload(workload), None)  # checks the file before the model loads
    model, tok = _load(checkpoint, dtype, device, tokenizer)
    if workload is not None:
        jobs = workload_jobs(load_workload(workload), tok)
    else:
        ids = tok.encode(prompt)
        if not ids:
            raise ValueError("prompt: expected a non-empty prompt, got an empty string")
        jobs = [(None, ids, max_new_tokens)] * requests
    with Profiler(model, db, run_name=run_name or f"profile {checkpoint}") as prof:
        for request_id, ids, n_new in jobs:
            new = _profile_request(prof, model, request_id, ids, n_new, batch, temperature, seed)
    ids_out = [int(t[0]) for t in new]
    try:
        completion = repr((prompt if workload is None else tok.decode(ids)) + tok.decode(ids_out))
    except ValueError:  # a random-weight preset emits ids the byte tokenizer has no text for
        completion = f"token ids {ids_out}"
    what = "completion" if workload is None else f"completion of the last of {len(jobs)} requests"
    out.write(f"{what}: {completion}\nrun {prof.run_id} written to {db}\n\n")
    with TraceStore(db, read_only=True) as store:
        out.write(format_summary(summarize(store, prof.run_id)) + "\n")
        if report:
            from .report import write_report

            write_report(store, report, prof.run_id)
            out.write(f"\nreport written to {report}\n")
    return 0


def trace_query_command(db: str, sql: str, fmt: str = "table", *, out=None, err=None) -> int:
    """Prints the rows of any SQL over the store as a table, CSV or JSON; 0, or 2 on an SQL error."""
    out, err = sys.stdout if out is None else out, sys.stderr if err is None else err
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {list(FORMATS)}, got {fmt!r}")
    with TraceStore(db, read_only=True) as store:
        try:
            columns, rows = store.query(sql)
        except SqlError as e:
            err.write(f"ssmkit trace query: SQL error: {e}\n")
            return 2
    out.write(render(columns, rows, fmt) + "\n")
    return 0


def trace_summary_command(db: str, run: int | None = None, *, k: int = 5, out=None) -> int:
    """Prints the per-layer-type summary of run `run` (the newest when None); returns 0."""
    out = sys.stdout if out is None else out
    with TraceStore(db, read_only=True) as store:
        out.write(format_summary(summarize(store, run, k=k)) + "\n")
    return 0


def trace_baseline_save_command(db: str, name: str, runs: list[int] | None = None, *, out=None) -> int:
    """Saves baseline `name` from `runs` (default: the newest run) and prints its percentiles; returns 0."""
    out = sys.stdout if out is None else out
    with TraceStore(db) as store:
        rows = save_baseline(store, name, runs)
    out.write(f"baseline {name!r} saved\n" + text_table(
        ["phase", "layer type", "n", "p50 us", "p95 us", "p99 us"],
        [[r["phase"], r["layer_type"], r["n"], f"{r['p50_ns'] / 1e3:.1f}", f"{r['p95_ns'] / 1e3:.1f}",
          f"{r['p99_ns'] / 1e3:.1f}"] for r in rows], right_from=2) + "\n")
    return 0


def trace_check_command(db: str, baseline: str, run: int | None = None, *, rel_p50: float = 0.5,
                        rel_p95: float = 1.0, abs_us: float = 50.0, min_samples: int = 20, check_p99: bool = False,
                        out=None) -> int:
    """Checks run `run` (the newest when None) against `baseline`; prints JSON alerts; returns 1 when there are
    any, else 0."""
    out = sys.stdout if out is None else out
    thresholds = Thresholds(rel_p50=rel_p50, rel_p95=rel_p95, abs_ns=abs_us * 1e3, min_samples=min_samples,
                            check_p99=check_p99)
    with TraceStore(db, read_only=True) as store:
        run_id = store.check_run(run)
        alerts = check_baseline(store, baseline, run_id, thresholds)
    out.write(alerts_json(alerts, baseline=baseline, run_id=run_id) + "\n")
    return 1 if alerts else 0


def trace_report_command(db: str, path: str = "trace-report.html", run: int | None = None, *, out=None) -> int:
    """Writes the self-contained HTML report of run `run` (the newest when None) to `path`; returns 0."""
    from .report import write_report

    out = sys.stdout if out is None else out
    with TraceStore(db, read_only=True) as store:
        write_report(store, path, run)
    out.write(f"report written to {path}\n")
    return 0


def workload_jobs(workload, tok) -> list[tuple[int, list[int], int]]:
    """(request_id, prompt ids, output tokens) per request of a bench Workload; text prompts are encoded with
    `tok`, `prompt_tokens` prompts are the bench runner's filler (held-out text cycled from an offset of
    97 x request_id). With tok None, only checks that every request has a prompt (ids left empty)."""
    jobs = []
    for r in workload.requests:
        if r.prompt is None and r.prompt_tokens is None:
            raise ValueError(f"workload: request {r.request_id} has neither prompt nor prompt_tokens")
        if tok is None:
            ids = []
        elif r.prompt is not None:
            ids = tok.encode(r.prompt)
        else:
            from ssmkit.bench.quality import HELDOUT_TEXT

            filler = tok.encode(HELDOUT_TEXT)
            start = r.request_id * 97 % len(filler)
            ids = (filler * ((start + r.prompt_tokens) // len(filler) + 1))[start:start + r.prompt_tokens]
        if tok is not None and not ids:
            raise ValueError(f"workload: request {r.request_id} has a prompt that encodes to 0 tokens")
        jobs.append((r.request_id, ids, r.output_tokens))
    return jobs


def _profile_request(prof, model, request_id, ids: list[int], n_new: int, batch: int, temperature: float,
                     seed) -> list:
    """One request (`batch` copies of `ids`) under prof: the first generation step is the prefill, the rest are
    decode steps, each tagged so. Returns the new tokens, one (batch,) tensor per step."""
    import torch

    from ssmkit.inference.generate import generate_steps

    input_ids = torch.tensor([ids] * batch, dtype=torch.int64, device=model.embeddings.weight.device)
    steps = generate_steps(model, input_ids, max_new_tokens=n_new, temperature=temperature, seed=seed,
                           eos_token_id=[])
    with prof.request(request_id):
        with prof.phase("prefill"):
            new = [next(steps).tokens]
        with prof.phase("decode"):
            new += [s.tokens for s in steps]
    return new


def _load(checkpoint: str, dtype: str | None, device: str | None, tokenizer: str | None):
    """(model, tokenizer) of a checkpoint folder or a "preset:NAME"."""
    import torch

    from ssmkit.io import ByteTokenizer, load_pretrained, load_tokenizer
    from ssmkit.models import LanguageModel, ModelConfig

    dtypes = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
              "float16": torch.float16}
    if dtype is not None and dtype not in dtypes:
        raise ValueError(f"dtype: expected one of {sorted(dtypes)}, got {dtype!r}")
    torch_dtype = None if dtype is None else dtypes[dtype]
    if checkpoint.startswith(PRESET_PREFIX):
        torch.manual_seed(0)
        model = LanguageModel(ModelConfig.from_name(checkpoint[len(PRESET_PREFIX):]))
        model = model.to(device=device, dtype=torch_dtype).eval()
        tokenizer = "byte" if tokenizer is None else tokenizer
    else:
        model = load_pretrained(checkpoint, dtype=torch_dtype, device=device)
    if tokenizer == "byte":
        # A 256-token model has no id for the byte tokenizer's <eos>: then it runs without one.
        tok = ByteTokenizer() if model.config.vocab_size > 256 else ByteTokenizer(specials=(), eos_token=None)
    else:
        tok = load_tokenizer(checkpoint if tokenizer is None else tokenizer)
    return model, tok
