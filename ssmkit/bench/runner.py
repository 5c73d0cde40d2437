"""The benchmark runner: times a LanguageModel's generation per request (TTFT, per-token times, memory) and runs
workloads through the driver, with warm-up, repeats (medians) and the quality suite's score on every result.

TTFT is prefill plus the first token, read after a device synchronize; the decode loop is ssmkit's generate_steps.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

from .batcher import StaticBatcher
from .driver import ServeTiming, run_workload
from .memory_monitor import MemoryMonitor
from .memory_plan import dtype_name
from .quality import HELDOUT_TEXT, QualityReport, quality_suite
from .request_log import Request
from .results import BenchmarkResult, RunResult
from .workload import Workload

BATCHING = ("none", "serial", "static")


@dataclass
class GenerationTiming:
    """Clock readings (time.perf_counter seconds) of one generation: start (prompt on the device), first token,
    last token; per_token_ms: the gaps between consecutive tokens."""

    start: float
    first: float
    end: float
    per_token_ms: list[float]


def synchronize(device: torch.device) -> None:
    """Waits for queued GPU work so a clock reading after it counts that work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Benchmarker:
    """Measures one model. `measure_generation(prompt, max_new_tokens)` times a single call; `run_suite(prompts)`
    and `run_workload(workload)` run many requests through the driver and return a RunResult.

    Args:
        model: a LanguageModel (put in eval mode). tokenizer: encode/decode (ssmkit.io tokenizers). name: label.
        prefill_chunk_size, kv_dtype: passed to generate_steps (chunked prefill, torch.int8 KV cache).
        batching: how concurrent requests share the model: "none" (each request runs alone, client threads run
            concurrently), "serial" (one request at a time, others queue) or "static" (requests waiting together
            run as one left-padded batch, see StaticBatcher). max_batch: the largest static batch.
        quality: compute the quality suite once and attach its score to every result.
        memory_cap_bytes: serve() fails a request (MemoryError, recorded by the driver as that request's error)
            when the memory plan for its prompt + output tokens exceeds this many bytes.
    """

    def __init__(self, model, tokenizer, name: str, *, prefill_chunk_size: int | None = None,
                 kv_dtype: torch.dtype | None = None, batching: str = "none", max_batch: int = 32,
                 quality: bool = True, memory_cap_bytes: int | None = None):
        if batching not in BATCHING:
            raise ValueError(f"batching: expected one of {list(BATCHING)}, got {batching!r}")
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.config = model.config  # the ModelConfig the memory planner reads
        self.device = model.embeddings.weight.device
        self.dtype = dtype_name(model.embeddings.weight.dtype)
        self.prefill_chunk_size, self.kv_dtype = prefill_chunk_size, kv_dtype
        self.batching, self.with_quality, self.memory_cap_bytes = batching, quality, memory_cap_bytes
        self._serial = threading.Lock()
        self._batcher = StaticBatcher(self._run_batch, max_batch) if batching == "static" else None
        self._quality: QualityReport | None = None
        self._filler: list[int] | None = None

    # --- prompts ------------------------------------------------------------------------------------------------
    def prompt_ids(self, request: Request | str | list[int]) -> list[int]:
        """Token ids of a request: its text encoded, or `prompt_tokens` ids of held-out text (cycled, starting at
        an offset that depends on the request id, so prompts differ but are reproducible)."""
        if isinstance(request, str):
            ids = self.tokenizer.encode(request)
        elif isinstance(request, Request) and request.prompt is not None:
            ids = self.tokenizer.encode(request.prompt)
        elif isinstance(request, Request):
            ids = self.filler_ids(request.prompt_tokens, offset=request.request_id * 97)
        else:
            ids = [int(i) for i in request]
        if not ids:
            raise ValueError("prompt: expected a non-empty prompt, got one that encodes to 0 tokens")
        return ids

    def filler_ids(self, n: int, offset: int = 0) -> list[int]:
        """n token ids of HELDOUT_TEXT repeated, starting at `offset` (synthetic prompts of a given length)."""
        if self._filler is None:
            self._filler = self.tokenizer.encode(HELDOUT_TEXT)
        f = self._filler
        reps = (offset % len(f) + n) // len(f) + 1
        return (f * reps)[offset % len(f):offset % len(f) + n]

    # --- timing -------------------------------------------------------------------------------------------------
    def generate_once(self, ids: list[int], max_new_tokens: int, batch: int = 1) -> GenerationTiming:
        """Generates max_new_tokens for `batch` copies of ids, here and now (no batcher, no lock). The clock
        starts once the prompt is on the device."""
        x = torch.tensor([ids], dtype=torch.int64, device=self.device).repeat(batch, 1)
        synchronize(self.device)
        start = time.perf_counter()
        times = self._generate_timed(x, max_new_tokens)
        return GenerationTiming(start, times[0], times[-1], [(b - a) * 1e3 for a, b in zip(times, times[1:])])

    def greedy_tokens(self, ids: list[int], max_new_tokens: int) -> list[int]:
        """The greedy continuation of one prompt (to check that two implementations agree before timing)."""
        from ssmkit.inference.generate import generate

        x = torch.tensor([ids], dtype=torch.int64, device=self.device)
        return generate(self.model, x, max_new_tokens=max_new_tokens, eos_token_id=[],
                        prefill_chunk_size=self.prefill_chunk_size, kv_dtype=self.kv_dtype)[0, len(ids):].tolist()

    def _generate_timed(self, input_ids: torch.Tensor, max_new_tokens: int, on_step=None,
                        attention_mask: torch.Tensor | None = None) -> list[float]:
        """Runs generate_steps to max_new_tokens (no early stop), calling on_step(t) after a synchronize at every
        token; returns the clock reading at each token."""
        from ssmkit.inference.generate import generate_steps

        steps = generate_steps(self.model, input_ids, max_new_tokens=max_new_tokens, eos_token_id=[],
                               prefill_chunk_size=self.prefill_chunk_size, kv_dtype=self.kv_dtype,
                               attention_mask=attention_mask)
        times = []
        for t, _ in enumerate(steps):
            synchronize(self.device)
            times.append(time.perf_counter())
            if on_step is not None:
                on_step(t)
        return times

    def _run_batch(self, prompts: list[list[int]], max_new_tokens: int, on_step) -> None:
        from ssmkit.inference.batch import left_pad

        ids, mask = left_pad(prompts, device=self.device)
        self._generate_timed(ids, max_new_tokens, on_step, mask if bool((mask == 0).any()) else None)

    def _serve_ids(self, ids: list[int], output_tokens: int) -> tuple[float, int]:
        """(first-token clock reading, batch) for one request, as `batching` says."""
        if self._batcher is not None:
            return self._batcher.serve_ids(ids, output_tokens)
        if self.batching == "serial":
            with self._serial:
                return self.generate_once(ids, output_tokens).first, 1
        return self.generate_once(ids, output_tokens).first, 1

    def serve(self, request: Request) -> ServeTiming:
        """The driver's serve callable: one request, timed from this call to its first and last token."""
        start = time.perf_counter()
        ids = self.prompt_ids(request)
        if self.memory_cap_bytes is not None:
            self.check_memory(len(ids) + request.output_tokens)
        first, batch = self._serve_ids(ids, request.output_tokens)
        return ServeTiming(ttft_ms=(first - start) * 1e3, output_tokens=request.output_tokens,
                           prompt_tokens=len(ids), batch=batch, quality_score=None)

    def check_memory(self, tokens: int, batch: int = 1) -> None:
        """Raises MemoryError when the planned bytes for `tokens` positions exceed memory_cap_bytes."""
        from .memory_plan import plan_memory

        kv = "int8" if self.kv_dtype == torch.int8 else None
        planned = plan_memory(self.config, context=tokens, batch=batch, dtype=self.dtype, kv_dtype=kv,
                              prefill_chunk=self.prefill_chunk_size,
                              kernels="fused" if self.device.type == "cuda" else "torch").total_bytes
        if planned > self.memory_cap_bytes:
            raise MemoryError(f"out of memory: planned {planned:,} bytes for {tokens} tokens x batch {batch} exceed "
                              f"the memory cap of {self.memory_cap_bytes:,} bytes")

    def measure_generation(self, prompt, max_new_tokens: int = 64, *, batch: int = 1) -> BenchmarkResult:
        """One timed generation of `prompt` (text or token ids), `batch` copies of it, `max_new_tokens` tokens per
        row (no early stop). Memory: CUDA allocator or process RSS, sampled over the call."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected an int >= 1, got {max_new_tokens!r}")
        ids = self.prompt_ids(prompt)
        with MemoryMonitor(self.device, 0.005) as monitor:
            t = self.generate_once(ids, max_new_tokens, batch)
        return BenchmarkResult.from_times(
            model=self.name, request_id=0, prompt_tokens=len(ids), output_tokens=max_new_tokens * batch,
            arrival_s=0.0, start_s=0.0, first_token_s=t.first - t.start, end_s=t.end - t.start, batch=batch,
            peak_memory_bytes=monitor.peak_bytes, avg_memory_bytes=monitor.avg_bytes,
            quality_score=self.quality().score if self.with_quality else None)

    # --- quality ------------------------------------------------------------------------------------------------
    def quality(self) -> QualityReport:
        """The quality suite's report for this model (computed once)."""
        if self._quality is None:
            self._quality = quality_suite(self.model, self.tokenizer)
        return self._quality

    # --- runs ---------------------------------------------------------------------------------------------------
    def run_workload(self, workload: Workload, *, progress=None, environment: dict | None = None) -> RunResult:
        """Warm-up, then `workload.repeats` timed passes through the driver (medians over repeats)."""
        score = self.quality().score if self.with_quality else None
        return run_workload(workload, self.serve, model=self.name, dtype=self.dtype, device=str(self.device),
                            quality_score=score, progress=progress, environment=environment)

    def run_suite(self, prompts, max_new_tokens: int = 64, *, warmup: int = 1, repeats: int = 3,
                  concurrency: int = 1, progress=None, environment: dict | None = None) -> RunResult:
        """Each prompt (text, or an int: a synthetic prompt of that many tokens) as one request of max_new_tokens,
        closed loop at `concurrency`; the RunResult's requests are the BenchmarkResults of every timed pass."""
        if not prompts:
            raise ValueError("prompts: expected at least one prompt")
        reqs = [Request(i, max_new_tokens, prompt_tokens=p) if isinstance(p, int) else
                Request(i, max_new_tokens, prompt=p) for i, p in enumerate(prompts)]
        workload = Workload("suite", reqs, mode="closed", concurrency=concurrency, warmup=warmup, repeats=repeats,
                            description=f"{len(reqs)} prompts, {max_new_tokens} new tokens each")
        return self.run_workload(workload, progress=progress, environment=environment)

    def set_max_batch(self, n: int) -> None:
        """The largest static batch from now on (e.g. the concurrency of the next run)."""
        if self._batcher is None:
            raise ValueError("set_max_batch: this Benchmarker was made with batching != 'static'")
        if n < 1:
            raise ValueError(f"n: expected >= 1, got {n}")
        self._batcher.max_batch = n

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
