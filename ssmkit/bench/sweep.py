"""Length sweep: latency and memory of one model as the prompt grows (256, 512, ... tokens) until memory runs out.

Running out of memory is a result, not a crash: the first length that does not fit is recorded with status "oom"
and the sweep of that model stops. A memory cap makes this testable anywhere: a length whose planned bytes
(weights + cache + activations, memory_plan) exceed the cap is refused as "oom" before it runs; on CUDA the cap is
also set as the allocator's limit, so an allocation past it raises torch.OutOfMemoryError, which is caught.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .environment import describe_environment
from .memory_plan import plan_memory
from .results import _check_keys
from .remedies import NewTensorPeak, model_tensors

SWEEP_SCHEMA_VERSION = 1
DEFAULT_LENGTHS = tuple(256 * 2**i for i in range(10))  # 256 .. 131072


def is_out_of_memory(err: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA), MemoryError (host), or a RuntimeError whose message says out of memory."""
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None), MemoryError) if t is not None)
    if isinstance(err, oom_types):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                              or "not enough memory" in text)


@dataclass
class SweepPoint:
    """One prompt length. status: "ok", "oom" (measured or planned past the cap) or "error".

    ttft_ms: prefill plus the first token; decode_ms_per_token: mean time per later token; peak_memory_bytes:
    CUDA allocator peak in the timed run, or on CPU the weights plus the peak of live tensors in an extra untimed
    run (memory_source says which). planned_*: from memory_plan for prompt + output tokens; kv_bytes and
    state_bytes: the plan's KV cache (grows with the length) and SSM conv + ssm state (does not).
    """

    prompt_tokens: int
    batch: int
    output_tokens: int
    status: str
    ttft_ms: float | None = None
    decode_ms_per_token: float | None = None
    total_latency_ms: float | None = None
    tokens_per_s: float | None = None
    peak_memory_bytes: int | None = None
    memory_source: str = ""
    planned_bytes: int = 0
    kv_bytes: int = 0
    state_bytes: int = 0
    error: str | None = None


@dataclass
class SweepResult:
    """One model's sweep; `oom_length` is the first length that ran out of memory (None: every length ran)."""

    model: str
    batch: int
    output_tokens: int
    points: list[SweepPoint]
    memory_cap_bytes: int | None
    prefill_chunk_size: int | None
    kv_dtype: str
    dtype: str
    device: str
    versions: dict
    date: str
    command: str
    schema_version: int = SWEEP_SCHEMA_VERSION
    notes: list[str] = field(default_factory=list)

    @property
    def oom_length(self) -> int | None:
        return next((p.prompt_tokens for p in self.points if p.status == "oom"), None)

    @property
    def max_ok_length(self) -> int | None:
        return max((p.prompt_tokens for p in self.points if p.status == "ok"), default=None)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {"schema_version": d.pop("schema_version"), "kind": "length-sweep", **d}

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path) -> "SweepResult":
        path = Path(path)
        d = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(d, dict) or d.get("kind") != "length-sweep":
            raise ValueError(f"{path}: not a length-sweep results file (no \"kind\": \"length-sweep\")")
        if d.get("schema_version") != SWEEP_SCHEMA_VERSION:
            raise ValueError(f"{path}: sweep schema version {d.get('schema_version')!r}, this ssmkit reads "
                             f"{SWEEP_SCHEMA_VERSION}")
        d.pop("kind")
        _check_keys(cls, d, str(path))
        points = []
        for i, p in enumerate(d["points"]):
            _check_keys(SweepPoint, p, f"{path}: points[{i}]")
            points.append(SweepPoint(**p))
        return cls(**{**d, "points": points})


def _measure(bench, ids: list[int], batch: int, new_tokens: int, repeats: int, warmup: bool) -> SweepPoint:
    device = bench.device
    tensors = model_tensors(bench.model)
    weights = sum(t.untyped_storage().nbytes() for t in tensors)
    if warmup:
        bench.generate_once(ids, min(new_tokens, 2), batch)
    ttfts, decode, totals = [], [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(repeats):
        t = bench.generate_once(ids, new_tokens, batch)
        ttfts.append((t.first - t.start) * 1e3)
        totals.append((t.end - t.start) * 1e3)
        decode.append(statistics.fmean(t.per_token_ms) if new_tokens > 1 else 0.0)
    if device.type == "cuda":
        peak, source = torch.cuda.max_memory_allocated(device), "cuda-allocator"
    else:
        with NewTensorPeak(tensors) as mem:
            bench.generate_once(ids, new_tokens, batch)
        peak, source = weights + mem.peak_bytes, "weights+tensor-peak"
    total = statistics.median(totals)
    return SweepPoint(prompt_tokens=len(ids), batch=batch, output_tokens=new_tokens, status="ok",
                      ttft_ms=statistics.median(ttfts), decode_ms_per_token=statistics.median(decode),
                      total_latency_ms=total, tokens_per_s=batch * new_tokens / (total / 1e3),
                      peak_memory_bytes=int(peak), memory_source=source)


def length_sweep(bench, lengths=DEFAULT_LENGTHS, *, batch: int = 1, new_tokens: int = 16,
                 memory_cap_bytes: int | None = None, repeats: int = 1, warmup: bool = True,
                 progress=None, environment: dict | None = None, deadline: float | None = None) -> SweepResult:
    """Times `bench` (a Benchmarker, or anything with its name, config, model, device, dtype, prefill_chunk_size,
    kv_dtype, filler_ids and generate_once) at each prompt length in increasing order until one runs out of
    memory.

    Args:
        lengths: prompt lengths in tokens (prompts are held-out text repeated to length).
        batch: identical rows per call. new_tokens: tokens generated after the prompt.
        memory_cap_bytes: refuse lengths whose planned total exceeds it (and cap the CUDA allocator to it).
        repeats: timed runs per length (medians). warmup: one untimed run per length first (compiles, caches).
        progress: called as progress(done, total) after each length.
        environment: the describe_environment() dict to record (computed when None).
        deadline: a time.time() after which no new length starts (noted in the result's notes).
    """
    lengths = sorted({int(n) for n in lengths})
    if not lengths or lengths[0] < 1:
        raise ValueError(f"lengths: expected prompt lengths >= 1, got {lengths}")
    if memory_cap_bytes is not None and memory_cap_bytes <= 0:
        raise ValueError(f"memory_cap_bytes: expected > 0, got {memory_cap_bytes}")
    env = environment or describe_environment()
    kv = {None: bench.dtype, torch.int8: "int8"}.get(bench.kv_dtype, str(bench.kv_dtype))
    result = SweepResult(model=bench.name, batch=batch, output_tokens=new_tokens, points=[],
                         memory_cap_bytes=memory_cap_bytes, prefill_chunk_size=bench.prefill_chunk_size, kv_dtype=kv,
                         dtype=bench.dtype, device=env["device"], versions=env["versions"], date=env["date"],
                         command=env["command"])
    cuda = bench.device.type == "cuda"
    if cuda and memory_cap_bytes is not None:
        total = torch.cuda.get_device_properties(bench.device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(memory_cap_bytes / total, 1.0), bench.device)
    try:
        for i, n in enumerate(lengths):
            if deadline is not None and time.time() > deadline:
                result.notes.append(f"stopped by the time budget before {n} tokens")
                break
            plan = plan_memory(bench.config, context=n + new_tokens, batch=batch, dtype=bench.dtype,
                               kv_dtype=None if kv == bench.dtype else kv, prefill_chunk=bench.prefill_chunk_size,
                               kernels="fused" if cuda else "torch")
            planned = dict(planned_bytes=plan.total_bytes, kv_bytes=plan.kv_bytes,
                           state_bytes=plan.conv_bytes + plan.ssm_bytes)
            if memory_cap_bytes is not None and plan.total_bytes > memory_cap_bytes:
                result.points.append(SweepPoint(n, batch, new_tokens, "oom", **planned, error=(
                    f"planned {plan.total_bytes:,} bytes (weights + cache + activations) exceed the memory cap of "
                    f"{memory_cap_bytes:,} bytes")))
                break
            try:
                point = _measure(bench, bench.filler_ids(n), batch, new_tokens, repeats, warmup)
                for k, v in planned.items():
                    setattr(point, k, v)
                result.points.append(point)
            except Exception as err:  # noqa: BLE001 - out of memory (or another failure) is this length's result
                status = "oom" if is_out_of_memory(err) else "error"
                result.points.append(SweepPoint(n, batch, new_tokens, status, **planned,
                                                error=f"{type(err).__name__}: {str(err)[:300]}"))
                del err  # its traceback holds the failed call's tensors
                gc.collect()
                break
            finally:
                if cuda:
                    torch.cuda.empty_cache()
            if progress:
                progress(i + 1, len(lengths))
    finally:
        if cuda and memory_cap_bytes is not None:
            torch.cuda.set_per_process_memory_fraction(1.0, bench.device)
    return result


def format_sweep(sweeps: list[SweepResult]) -> str:
    """One markdown table: model, length, status, TTFT, decode ms/token, peak memory, planned KV and state."""
    from .memory_plan import format_bytes
    from .table import fmt_number, markdown_table

    rows = []
    for s in sweeps:
        for p in s.points:
            rows.append([s.model, p.prompt_tokens, s.batch, p.status if p.status == "ok" else p.status.upper(),
                         fmt_number(p.ttft_ms), fmt_number(p.decode_ms_per_token), format_bytes(p.peak_memory_bytes),
                         format_bytes(p.kv_bytes), format_bytes(p.state_bytes)])
    return markdown_table(["model", "prompt tokens", "batch", "status", "TTFT ms", "decode ms/token", "peak memory",
                           "KV cache (plan)", "SSM state (plan)"], rows, right_align_from=1)
