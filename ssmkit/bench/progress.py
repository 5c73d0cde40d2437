"""A progress bar for benchmark runs: tqdm on a terminal when installed, else a plain line every tenth of the run.

Callable as the driver's `progress(done, total)`; thread-safe, since the driver calls it from client threads.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import time


class ProgressBar:
    """`bar = ProgressBar("bench mamba2", total)`, then `bar(done, total)` from any thread, and `bar.close()`.

    kind: "auto" (tqdm on a terminal, else plain), "tqdm", "plain" or "none".
    """

    def __init__(self, label: str, total: int, kind: str = "auto", stream=None):
        self.label, self.total = label, total
        self.stream = stream or sys.stderr
        if kind == "auto":
            tty = hasattr(self.stream, "isatty") and self.stream.isatty()
            kind = "tqdm" if tty and importlib.util.find_spec("tqdm") is not None else "plain"
        self.kind = kind
        self._lock = threading.Lock()
        self._last_tenth = -1
        self._start = time.perf_counter()
        self._bar = None
        if kind == "tqdm":
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, file=self.stream, dynamic_ncols=True, leave=True)

    def __call__(self, done: int, total: int | None = None) -> None:
        with self._lock:
            total = total or self.total
            if self._bar is not None:
                self._bar.total = total
                self._bar.update(done - self._bar.n)
            elif self.kind == "plain":
                tenth = done * 10 // max(total, 1)
                if tenth > self._last_tenth:
                    self._last_tenth = tenth
                    elapsed = time.perf_counter() - self._start
                    print(f"{self.label}: {done}/{total} ({elapsed:.1f} s)", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
