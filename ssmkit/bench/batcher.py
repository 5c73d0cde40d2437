"""Static batching for concurrent benchmark clients: requests waiting together run as one left-padded batch.

A worker thread takes every queued request (up to max_batch), runs them as one generate call for the longest
output, and releases each client when its own last token is produced. Static, not continuous: a new request waits
for the running batch to finish, and rows that finished early still ride along (both show in the latency).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

# run_batch(prompts, max_new_tokens, on_step): generates for every prompt, calling on_step(t) once the t-th new
# token (0-based) of every row is known (the caller synchronizes the device before calling it).
RunBatch = Callable[[list[list[int]], int, Callable[[int], None]], None]


@dataclass
class _Slot:
    ids: list[int]
    output_tokens: int
    done: threading.Event = field(default_factory=threading.Event)
    first_token_s: float = 0.0
    batch: int = 1
    error: BaseException | None = None


class StaticBatcher:
    """`serve_ids(ids, output_tokens)` from any number of client threads; `close()` stops the worker.

    window_s: after the first request arrives, wait this long for more before starting a batch.
    """

    def __init__(self, run_batch: RunBatch, max_batch: int = 32, window_s: float = 0.002):
        if max_batch < 1:
            raise ValueError(f"max_batch: expected >= 1, got {max_batch}")
        self.run_batch, self.max_batch, self.window_s = run_batch, max_batch, window_s
        self._queue: queue.Queue[_Slot | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.batch_sizes: list[int] = []

    def serve_ids(self, ids: list[int], output_tokens: int) -> tuple[float, int]:
        """Blocks until this request's output_tokens tokens exist; returns (first token time as
        time.perf_counter seconds, batch size it ran in). Re-raises the batch's exception."""
        self._start()
        slot = _Slot(list(ids), output_tokens)
        self._queue.put(slot)
        slot.done.wait()
        if slot.error is not None:
            raise slot.error
        return slot.first_token_s, slot.batch

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="ssmkit-batcher", daemon=True)
                self._thread.start()

    def _take(self) -> list[_Slot] | None:
        first = self._queue.get()
        if first is None:
            return None
        slots = [first]
        deadline = time.perf_counter() + self.window_s
        while len(slots) < self.max_batch:
            try:
                item = self._queue.get(timeout=max(deadline - time.perf_counter(), 0.0))
            except queue.Empty:
                break
            if item is None:  # close() while collecting: finish this batch, then stop
                self._queue.put(None)
                break
            slots.append(item)
        return slots

    def _loop(self) -> None:
        while True:
            slots = self._take()
            if slots is None:
                return
            self.batch_sizes.append(len(slots))
            for s in slots:
                s.batch = len(slots)

            def on_step(t: int) -> None:
                now = time.perf_counter()
                for s in slots:
                    if t == 0:
                        s.first_token_s = now
                    if t == s.output_tokens - 1:
                        s.done.set()

            try:
                self.run_batch([s.ids for s in slots], max(s.output_tokens for s in slots), on_step)
            except BaseException as err:  # noqa: BLE001 - an OOM in one batch is every waiting client's error
                for s in slots:
                    if not s.done.is_set():
                        s.error = err
            for s in slots:
                s.done.set()
