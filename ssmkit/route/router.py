"""The router the server wraps: rule policy, then the feedback policy's choice, then the breakers; every decision
and outcome goes into the SQLite store, so the learned state survives a restart.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import asdict, replace
from typing import Callable

from ssmkit.route.breaker import CircuitBreaker
from ssmkit.route.config import RouterConfig
from ssmkit.route.features import RequestFeatures, RoutingDecision
from ssmkit.route.feedback import choose, reward
from ssmkit.route.rules import RulePolicy, default_policy
from ssmkit.route.store import FeedbackStore


class Router:
    """Routes requests and learns from their outcomes.

    policy: the rule policy (the default table when None). db: SQLite file path, or ":memory:" (nothing survives).
    config: feedback, reward, buckets, breakers, fallback order. clock: seconds, used for timestamps and breakers;
    tests pass a fake. The seed is read from the database when it has one, so a restart keeps drawing the same stream.
    Thread-safe: each decision and outcome is one SQLite transaction under a lock.
    Breaker state is not persisted: it describes the live backends, and a restarted server should probe them afresh.
    """

    def __init__(self, policy: RulePolicy | None = None, db=":memory:", config: RouterConfig | None = None,
                 clock: Callable[[], float] = time.time):
        self.policy = policy or default_policy()
        self.config = config or RouterConfig()
        self.clock = clock
        self.candidates = list(self.config.backends) or self.policy.backends()
        self.fallback = list(self.config.fallback) or list(self.candidates)
        names = dict.fromkeys(self.candidates + self.fallback + self.policy.backends())
        self.breakers = {b: CircuitBreaker(b, self.config.breaker_for(b), clock) for b in names}
        self.store = FeedbackStore(db)
        self._lock = threading.RLock()  # guards the breakers; the store has its own
        with self.store.transaction():
            if self.store.get_meta("seed") is None:
                self.store.set_meta("seed", str(self.config.feedback.seed))
            self.seed = self.store.get_meta("seed")
            feedback = asdict(self.config.feedback) | {"seed": int(self.seed)}  # the effective (stored) seed
            self.store.save_config({"feedback": feedback, "reward": asdict(self.config.reward),
                                    "length_bands": list(self.config.length_bands), "candidates": self.candidates})

    def _role_of(self, backend: str) -> str:
        return next((role for role, name in self.policy.roles.items() if name == backend), "")

    def _breaker(self, backend: str) -> CircuitBreaker:
        if backend not in self.breakers:
            self.breakers[backend] = CircuitBreaker(backend, self.config.breaker_for(backend), self.clock)
        return self.breakers[backend]

    def _reroute(self, backend: str) -> tuple[str, str]:
        """(backend, source) after the breakers: the next admitting backend in the fallback order, wrapping."""
        if self._breaker(backend).allow():
            return backend, ""
        order = self.fallback
        start = order.index(backend) + 1 if backend in order else 0
        for name in order[start:] + order[:start]:
            if name != backend and self._breaker(name).allow():
                return name, "fallback"
        return backend, "unavailable"

    def decide(self, features: RequestFeatures, request_id: str | None = None) -> RoutingDecision:
        """Features -> decision (logged). request_id: the server's id for the request (a uuid when None); outcomes
        refer to it. The decision's source is "unavailable" when every breaker is open (the server should refuse).
        """
        base = self.policy.route(features, self.config.length_bands)
        rule = self.policy.match(features)
        request_id = request_id or uuid.uuid4().hex
        with self.store.transaction():
            if self.store.decision(request_id) is not None:
                raise ValueError(f"request_id: {request_id!r} already has a decision")
            seq = self.store.next_seq()
            rng = random.Random(f"{self.seed}:{seq}")  # str seeds hash with sha512: the same in every process
            backend, source, confidence, reason = base.backend, "rule", base.confidence, base.reason
            if self.config.feedback.enabled and not rule.fixed:
                cands = self.candidates if base.backend in self.candidates else self.candidates + [base.backend]
                pick = choose(base.backend, base.confidence, cands, self.store.arms(base.bucket),
                              self.config.feedback, rng)
                if pick.source != "rule":
                    backend, source, confidence = pick.backend, pick.source, pick.confidence
                    reason = f"{pick.reason}; the rules gave: {base.reason}"
            with self._lock:
                rerouted, why = self._reroute(backend)
            if why == "fallback":
                reason += f"; breaker of {backend} open ({self.breakers[backend].reason}), rerouted to {rerouted}"
                decision = replace(base, backend=rerouted, source="fallback", rerouted_from=backend,
                                   confidence=confidence, reason=reason)
            elif why == "unavailable":
                decision = replace(base, backend=backend, source="unavailable", confidence=0.0,
                                   reason=reason + "; every backend's breaker is open")
            else:
                decision = replace(base, backend=backend, source=source, confidence=confidence, reason=reason)
            decision = replace(decision, role=self._role_of(decision.backend), request_id=request_id)
            self.store.insert_decision({
                "seq": seq, "request_id": request_id, "created_at": self.clock(), "bucket": decision.bucket,
                "seq_len": features.seq_len, "task": features.task, "latency_budget_ms": features.latency_budget_ms,
                "gpu_memory_gb": features.gpu_memory_gb, "requires_icl": int(features.requires_icl),
                "rule": decision.rule, "rule_backend": base.backend, "backend": decision.backend,
                "source": decision.source, "confidence": decision.confidence, "reason": decision.reason})
        return decision

    def _update(self, request_id: str, **values) -> float | None:
        """Stores outcome parts; applies the reward to the arm once the outcome is complete. Returns the reward."""
        row = self.store.decision(request_id)
        if row is None:
            raise ValueError(f"request_id: no decision logged for {request_id!r}")
        prev = self.store.outcome(request_id)
        for key in values:
            if key != "error" and prev is not None and prev[key] is not None:
                raise ValueError(f"request_id: {request_id!r} already has {key} recorded")
        self.store.upsert_outcome(request_id, self.clock(), **values)
        out = self.store.outcome(request_id)
        if prev is not None and prev["reward"] is not None:
            return None  # already applied (an error settles an outcome before its quality arrives)
        r = reward(self.config.reward, error=bool(out["error"]), latency_ms=out["latency_ms"],
                   budget_ms=row["latency_budget_ms"], quality=out["quality"])
        if r is not None:
            self.store.upsert_outcome(request_id, self.clock(), reward=r)
            self.store.add_reward(row["bucket"], row["backend"], r, bool(out["error"]))
        return r

    def record_latency(self, request_id: str, latency_ms: float, error: bool = False) -> float | None:
        """The server's measurement for a routed request: end-to-end latency (ms) and whether it failed.
        Feeds the backend's breaker and the feedback estimates. Returns the reward when the outcome is complete.
        """
        if isinstance(latency_ms, bool) or not isinstance(latency_ms, (int, float)) or not latency_ms >= 0:
            raise ValueError(f"latency_ms: expected a number >= 0, got {latency_ms!r}")
        with self.store.transaction():
            r = self._update(request_id, latency_ms=float(latency_ms), error=int(bool(error)))
            backend = self.store.decision(request_id)["backend"]
        self.observe(backend, latency_ms, error)
        return r

    def record_quality(self, request_id: str, quality: float) -> float | None:
        """The client's quality score in [0, 1] for a routed request.
        Returns the reward when the outcome is complete."""
        if isinstance(quality, bool) or not isinstance(quality, (int, float)) or not 0.0 <= quality <= 1.0:
            raise ValueError(f"quality: expected a number in [0, 1], got {quality!r}")
        with self.store.transaction():
            return self._update(request_id, quality=float(quality))

    def observe(self, backend: str, latency_ms: float, error: bool = False) -> None:
        """A result from a backend that was not routed here (a pinned model): feeds its breaker only."""
        with self._lock:
            self._breaker(backend).record(latency_ms, error)

    def breaker_states(self) -> list[dict]:
        """One snapshot per backend: state (closed | open | half_open), reason, window size, p99_ms, error_rate."""
        with self._lock:
            return [b.snapshot() for b in self.breakers.values()]

    def state(self) -> dict:
        """The whole persisted state (meta, decisions, outcomes, arms) as plain values."""
        with self.store.transaction():
            return self.store.dump()

    def close(self) -> None:
        self.store.close()

