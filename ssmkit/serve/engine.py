"""Continuous batching for one local model: a thread owns a SlotPool; the requests admitted together are prefilled
in left-padded batches of similar lengths (prefill_groups) into free slots and join the running decode batch at the
next token boundary; finished, cancelled and timed-out sequences free their slot at once. Tokens equal
`ssmkit.inference.generate` for the same prompt and seed.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from ssmkit.inference.sampling import SamplingConfig, next_token

from .slots import SlotPool


class Overloaded(Exception):
    """Every slot is busy and the queue is full; retry_after_s estimates when a place frees up."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Draining(Exception):
    """The engine is shutting down and takes no new work."""


@dataclass
class EngineEvent:
    """What the engine reports for a request: kind "token" (token id, its index) or "finish" (reason: "stop" |
    "length" | "cancelled" | "timeout" | "error", with message for errors). at: time.monotonic()."""

    kind: str
    token: int | None = None
    index: int | None = None
    reason: str | None = None
    message: str | None = None
    at: float = 0.0


@dataclass
class GenerationRequest:
    """One sequence to generate. prompt_ids: non-empty token ids; max_tokens >= 1; eos: stop token ids;
    seed: None draws one (sampling only); timeout_s: from submission to the last token; on_event: called from the
    engine thread with each EngineEvent (must be quick and thread-safe)."""

    prompt_ids: list[int]
    max_tokens: int
    on_event: Callable[[EngineEvent], None]
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    seed: int | None = None
    eos: tuple[int, ...] = ()
    timeout_s: float = math.inf
    request_id: str = ""
    submitted_at: float = 0.0
    generated: list[int] = field(default_factory=list)
    slot: int | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _generator: torch.Generator | None = field(default=None, repr=False)

    def cancel(self) -> None:
        """Asks the engine to stop this request at the next token boundary (its slot is freed then)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()


# A prompt joins a prefill batch padded to P tokens only if it is at least half as long, or at most this many
# tokens shorter: padding then costs at most as much as the real tokens (short prompts share almost for free).
PAD_SLACK = 16


def prefill_groups(lengths: list[int], capacities: list[int], max_prefill_tokens: int) -> list[list[int]]:
    """Splits requests into prefill batches: lists of indices into `lengths`, shortest batch first.

    lengths[i]: request i's prompt tokens. capacities[i]: the longest padded prompt its slot can take (max_len
    minus its new tokens, plus 1). Longest first, each batch takes every remaining request that fits: padded to
    the batch's longest prompt P, the batch holds at most max_prefill_tokens tokens (one longer prompt goes
    alone), each member is at least P / 2 tokens long or at most PAD_SLACK shorter than P, and P fits its slot.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups = []
    while order:
        longest = lengths[order[0]]
        group = [order[0]]
        for i in order[1:]:
            similar = 2 * lengths[i] >= longest or longest - lengths[i] <= PAD_SLACK
            if similar and longest <= capacities[i] and (len(group) + 1) * longest <= max_prefill_tokens:
                group.append(i)
        order = [i for i in order if i not in group]
        groups.append(group)
    return groups[::-1]


class Engine:
    """Serves one model. max_concurrency slots decode together; up to max_queue more requests wait.

    max_len: positions per slot (prompt plus new tokens); requests must fit (checked by the caller).
    max_prefill_tokens: the most tokens (padding included) one prefill forward takes; the requests admitted at one
    token boundary are prefilled in as few forwards as this and prefill_groups allow.
    warmup: run warm_up() before serving (on CUDA the first call of each shape class compiles and tunes Triton
    kernels for seconds; warmed, the first requests do not wait for it).
    Thread-safe: submit / cancel / drain from any thread; generation runs on the engine's own thread.
    """

    def __init__(self, model, *, max_concurrency: int = 8, max_queue: int = 16, max_len: int = 2048,
                 name: str = "model", max_prefill_tokens: int = 8192, warmup: bool = False):
        if max_concurrency < 1 or max_queue < 0 or max_len < 2 or max_prefill_tokens < 1:
            raise ValueError(f"max_concurrency >= 1, max_queue >= 0, max_len >= 2, max_prefill_tokens >= 1 "
                             f"expected, got {max_concurrency}, {max_queue}, {max_len}, {max_prefill_tokens}")
        self.model = model.eval()
        self.name = name
        self.max_concurrency, self.max_queue, self.max_len = max_concurrency, max_queue, max_len
        self.max_prefill_tokens = max_prefill_tokens
        self.device = model.embeddings.weight.device
        with torch.no_grad():
            self.pool = SlotPool(model, max_concurrency, max_len)
        self._cond = threading.Condition()
        self._waiting: deque[GenerationRequest] = deque()
        self._active: dict[int, GenerationRequest] = {}
        self._free = list(range(max_concurrency))
        self._draining = False
        self._stopped = False
        self._mean_request_s = 1.0  # running estimate for Retry-After
        self.steps = 0  # decode steps run (batched), for tests and metrics
        self.prefills = 0  # prefill forwards run (each over one or more requests)
        self.prefilled = 0  # requests prefilled
        self.warmup_stats: dict | None = None  # what warm_up() ran, when it ran
        if warmup:
            self.warm_up()
        self._thread = threading.Thread(target=self._run, name=f"ssmkit-engine-{name}", daemon=True)
        self._thread.start()

    @torch.no_grad()
    def warm_up(self) -> dict:
        """Runs the shapes that traffic meets, before any request: for each batch size n in 1, 2, 4, ..., and
        max_concurrency, prefills of n prompts of 16, 32, 64, ... tokens (up to max_len // 2 and
        max_prefill_tokens // n) and one decode step over n rows; then frees every slot. Called by __init__ (the
        engine thread has not started); returns and keeps {"prefills", "steps", "seconds"}."""
        started = time.perf_counter()
        vocab = self.model.config.vocab_size
        sizes = sorted({min(1 << i, self.max_concurrency) for i in range(self.max_concurrency.bit_length())}
                       | {self.max_concurrency})
        prefills = steps = 0
        for n in sizes:
            length = 16
            while length <= min(self.max_len // 2, self.max_prefill_tokens // n):
                self.pool.prefill([[t % vocab for t in range(length)]] * n, list(range(n)))
                prefills += 1
                length *= 2
            if prefills:
                self.model.step(torch.zeros(n, dtype=torch.int64, device=self.device), self.pool.prefix(n))
                self.pool.advance(n, [])
                steps += 1
        for slot in range(self.max_concurrency):
            self.pool.release(slot)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            _freeze_kernel_tuning()
        self.warmup_stats = {"prefills": prefills, "steps": steps, "seconds": time.perf_counter() - started}
        return self.warmup_stats

    # ---- called from other threads -------------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> None:
        """Queues `request`; raises Overloaded (slots and queue full) or Draining (shutting down)."""
        if not request.prompt_ids or len(request.prompt_ids) + request.max_tokens - 1 > self.max_len:
            raise ValueError(f"prompt_ids, max_tokens: expected 1 <= prompt + max_tokens - 1 <= {self.max_len}, "
                             f"got {len(request.prompt_ids)} + {request.max_tokens} - 1")
        with self._cond:
            if self._draining:
                raise Draining(f"{self.name} is shutting down")
            in_system = len(self._active) + len(self._waiting)
            if in_system >= self.max_concurrency + self.max_queue:
                ahead = len(self._waiting) + 1
                wait = self._mean_request_s * math.ceil(ahead / self.max_concurrency)
                raise Overloaded(f"{self.name}: {len(self._active)} requests running (max_concurrency "
                                 f"{self.max_concurrency}) and {len(self._waiting)} queued (max_queue "
                                 f"{self.max_queue})", max(1, math.ceil(wait)))
            request.submitted_at = time.monotonic()
            self._waiting.append(request)
            self._cond.notify()

    def load(self) -> tuple[int, int]:
        """(running, queued)."""
        with self._cond:
            return len(self._active), len(self._waiting)

    def drain(self) -> None:
        """Stops taking new requests; running and queued ones go on."""
        with self._cond:
            self._draining = True

    def wait_idle(self, timeout_s: float) -> bool:
        """Blocks until nothing runs or waits, or timeout_s passed; returns whether it is idle."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._active or self._waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return True

    def stop(self, grace_s: float = 0.0) -> None:
        """Drains, lets running work finish for up to grace_s, cancels the rest, and ends the thread."""
        self.drain()
        self.wait_idle(grace_s)
        with self._cond:
            for r in list(self._waiting) + list(self._active.values()):
                r.cancel()
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    # ---- the engine thread -------------------------------------------------------------------------------------
    def _run(self) -> None:
        with torch.no_grad():
            while True:
                with self._cond:
                    while not self._stopped and not self._waiting and not self._active:
                        self._cond.wait()
                    if self._stopped:
                        self._finish_all("cancelled", "the server shut down")
                        return
                    admitted = []
                    while self._waiting and self._free:
                        r = self._waiting.popleft()
                        r.slot = min(self._free)  # lowest first keeps the active prefix short
                        self._free.remove(r.slot)
                        self._active[r.slot] = r
                        admitted.append(r)
                if admitted:
                    self._prefill(admitted)
                if self._active:
                    self._decode_step()
                self._reap()

    def _prefill(self, admitted: list[GenerationRequest]) -> None:
        """Prefills the admitted requests (slots reserved) in batches from prefill_groups; emits first tokens."""
        live = [r for r in admitted if not self._expired(r)]
        for r in live:
            if r.seed is None and not r.sampling.greedy:
                r.seed = int(torch.randint(0, 2**62, (1,)).item())
            if r.seed is not None:
                r._generator = torch.Generator(device=self.device).manual_seed(r.seed)
        capacities = [self.max_len - r.max_tokens + 1 for r in live]
        for group in prefill_groups([len(r.prompt_ids) for r in live], capacities, self.max_prefill_tokens):
            batch = [live[i] for i in group]
            try:
                logits = self.pool.prefill([r.prompt_ids for r in batch], [r.slot for r in batch])  # (k, vocab)
                self.prefills += 1
                self.prefilled += len(batch)
                greedy = logits.argmax(dim=-1).tolist() if any(r.sampling.greedy for r in batch) else None
            except Exception as err:  # noqa: BLE001 - a bad request must not stop the engine
                if len(batch) > 1:  # find the culprit: the others must not fail with it
                    for r in batch:
                        self._prefill([r])
                else:
                    self._finish(batch[0], "error", f"{type(err).__name__}: {err}")
                continue
            for b, r in enumerate(batch):
                try:
                    self._emit_next(r, logits[b:b + 1], None if greedy is None else greedy[b])
                except Exception as err:  # noqa: BLE001
                    self._finish(r, "error", f"{type(err).__name__}: {err}")

    def _decode_step(self) -> None:
        """One model.step over slots [0, highest active]; idle rows in between step on a dummy token."""
        with self._cond:
            active = dict(self._active)
        n = max(active) + 1
        last = [active[i].generated[-1] if i in active else 0 for i in range(n)]
        tokens = torch.tensor(last, dtype=torch.int64, device=self.device)
        try:
            logits = self.model.step(tokens, self.pool.prefix(n))  # (n, vocab)
            self.pool.advance(n, [i for i in range(n) if i not in active])
            self.steps += 1
            # Greedy rows share one argmax and one read-back; each sampled row draws with its own generator.
            greedy = logits.argmax(dim=-1).tolist() if any(r.sampling.greedy for r in active.values()) else None
        except Exception as err:  # noqa: BLE001
            for r in active.values():
                self._finish(r, "error", f"{type(err).__name__}: {err}")
            return
        for slot, r in active.items():
            self._emit_next(r, logits[slot:slot + 1], None if greedy is None else greedy[slot])

    def _emit_next(self, r: GenerationRequest, logits: torch.Tensor, greedy_token: int | None = None) -> None:
        """Picks r's next token from logits (1, vocab), or takes the batch argmax already read for greedy rows."""
        if r.sampling.greedy and greedy_token is not None:
            token = greedy_token
        else:
            token = int(next_token(logits, r.sampling, r._generator)[0])
        r.generated.append(token)
        r.on_event(EngineEvent("token", token=token, index=len(r.generated) - 1, at=time.monotonic()))
        if token in r.eos:
            self._finish(r, "stop")
        elif len(r.generated) >= r.max_tokens:
            self._finish(r, "length")

    def _expired(self, r: GenerationRequest) -> bool:
        """Finishes r if it was cancelled or ran out of time; returns whether it did."""
        if r.cancelled:
            self._finish(r, "cancelled")
        elif time.monotonic() - r.submitted_at > r.timeout_s:
            self._finish(r, "timeout", f"no result within the request timeout of {r.timeout_s:g} s")
        else:
            return False
        return True

    def _reap(self) -> None:
        with self._cond:
            running = list(self._active.values())
            waiting = list(self._waiting)
        for r in running:
            self._expired(r)
        for r in waiting:
            if r.cancelled or time.monotonic() - r.submitted_at > r.timeout_s:
                with self._cond:
                    if r in self._waiting:
                        self._waiting.remove(r)
                self._expired(r)

    def _finish(self, r: GenerationRequest, reason: str, message: str | None = None) -> None:
        with self._cond:
            if r.slot is not None and self._active.get(r.slot) is r:
                del self._active[r.slot]
                self.pool.release(r.slot)
                self._free.append(r.slot)
                elapsed = time.monotonic() - r.submitted_at
                self._mean_request_s = 0.9 * self._mean_request_s + 0.1 * elapsed
            r.slot = None
            self._cond.notify_all()
        r.on_event(EngineEvent("finish", reason=reason, message=message, at=time.monotonic()))

    def _finish_all(self, reason: str, message: str) -> None:
        """Called with the lock held, at stop."""
        rest = list(self._waiting) + list(self._active.values())
        self._waiting.clear()
        self._active.clear()
        for r in rest:
            r.on_event(EngineEvent("finish", reason=reason, message=message, at=time.monotonic()))


def _freeze_kernel_tuning() -> None:
    """After warm-up no Triton kernel tunes a new shape bucket (seconds of stall for the request that meets it);
    such a call takes the default config (counted in /metrics as ssmkit_kernel_untuned_calls)."""
    try:
        from ssmkit.ops.ssd.triton.plan import freeze_tuning
    except ImportError:  # no triton: nothing tunes
        return
    freeze_tuning()
