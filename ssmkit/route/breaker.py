"""Per-backend circuit breakers: closed -> open on slow or failing traffic, half-open after a cool-down, closed again
after enough successful probes. Time comes from an injected clock, so tests drive it by hand.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Callable

from ssmkit.route.config import BreakerConfig

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


def p99(latencies) -> float:
    """Nearest-rank 99th percentile: the ceil(0.99 n)-th smallest value (n >= 1)."""
    ordered = sorted(latencies)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


class CircuitBreaker:
    """One backend's breaker.

    closed: every request passes; results enter a sliding window of `window_s` seconds; once it holds at least
    `min_requests` results, p99 latency > p99_ms or error rate > error_rate opens the breaker.
    open: nothing passes until `cooldown_s` has elapsed, then half-open.
    half_open: requests pass as probes; `probes` successes in a row close it (with an empty window); a failure
    (an error, or latency > p99_ms) opens it again for another cool-down.
    clock: returns seconds (monotonic in production; a fake in tests).
    """

    def __init__(self, name: str, config: BreakerConfig | None = None, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.config = config or BreakerConfig()
        self.clock = clock
        self._state = CLOSED
        self._window: deque[tuple[float, float, bool]] = deque()  # (time s, latency ms, error)
        self._opened_at = 0.0
        self._successes = 0
        self.reason = ""

    @property
    def state(self) -> str:
        if self._state == OPEN and self.clock() - self._opened_at >= self.config.cooldown_s:
            self._state, self._successes = HALF_OPEN, 0
            self.reason = f"cool-down of {self.config.cooldown_s:g}s over; probing"
        return self._state

    def allow(self) -> bool:
        """Whether a request may go to this backend now."""
        return self.state != OPEN

    def _prune(self, now: float) -> None:
        while self._window and now - self._window[0][0] > self.config.window_s:
            self._window.popleft()

    def _open(self, now: float, reason: str) -> None:
        self._state, self._opened_at, self.reason = OPEN, now, reason
        self._window.clear()

    def record(self, latency_ms: float, error: bool = False) -> None:
        """One result from this backend: its latency (ms) and whether it failed."""
        cfg, now, state = self.config, self.clock(), self.state
        if state == OPEN:
            return  # a late result from before the breaker opened says nothing about now
        if state == HALF_OPEN:
            if error or latency_ms > cfg.p99_ms:
                what = "error" if error else f"latency {latency_ms:g} ms > {cfg.p99_ms:g} ms"
                self._open(now, f"probe failed ({what})")
                return
            self._successes += 1
            if self._successes >= cfg.probes:
                self._state, self.reason = CLOSED, f"{self._successes} probes succeeded"
                self._window.clear()
            return
        self._window.append((now, float(latency_ms), bool(error)))
        self._prune(now)
        n = len(self._window)
        if n < cfg.min_requests:
            return
        tail = p99([w[1] for w in self._window])
        err = sum(w[2] for w in self._window) / n
        if tail > cfg.p99_ms:
            self._open(now, f"p99 latency {tail:g} ms > {cfg.p99_ms:g} ms over the last {n} requests")
        elif err > cfg.error_rate:
            self._open(now, f"error rate {err:.2f} > {cfg.error_rate:g} over the last {n} requests")

    def snapshot(self) -> dict:
        """State, reason, and the current window's size, p99 latency (ms) and error rate, for metrics and reports."""
        self._prune(self.clock())
        lat = [w[1] for w in self._window]
        return {"backend": self.name, "state": self.state, "reason": self.reason, "window": len(lat),
                "p99_ms": p99(lat) if lat else None,
                "error_rate": sum(w[2] for w in self._window) / len(lat) if lat else None}
