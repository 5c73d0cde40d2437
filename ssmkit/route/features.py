"""What the router sees of a request and what it answers: two dataclasses, plus the bucket a request falls in.

The router is a pure function of `RequestFeatures`; the server fills them in (token counts from the target model's
tokenizer) and acts on the `RoutingDecision`. Buckets group requests for the feedback policy's estimates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

ROLES = ("transformer", "mamba", "hybrid")
DEFAULT_LENGTH_BANDS = (1999, 32000)  # inclusive upper bounds; matches the rule table's 2000 and 32000 edges


def _check_number(name: str, value, *, allow_none: bool, positive: bool, integer: bool = False) -> None:
    if value is None and allow_none:
        return
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        want = "an int" if integer else "a number"
        raise ValueError(f"{name}: expected {want}{' or None' if allow_none else ''}, got {value!r}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if (positive and value <= 0) or (not positive and value < 0):
        raise ValueError(f"{name}: expected {'> 0' if positive else '>= 0'}, got {value!r}")


@dataclass(frozen=True)
class RequestFeatures:
    """The features of one request.

    seq_len: prompt tokens in the target model's tokenizer (the server may add max_tokens; the policy does not care).
    task: a free lower-case label ("chat", "summarization", "retrieval", ...); normalized to lower case.
    latency_budget_ms: the client's budget, or None for no budget.
    gpu_memory_gb: memory of the GPU the request would be served on, or None when unknown.
    requires_icl: whether the prompt relies on in-context learning (few-shot examples, copying from context).
    A rule condition on a feature that is None never matches.
    """

    seq_len: int
    task: str = "general"
    latency_budget_ms: float | None = None
    gpu_memory_gb: float | None = None
    requires_icl: bool = False

    def __post_init__(self):
        _check_number("seq_len", self.seq_len, allow_none=False, positive=False, integer=True)
        if not isinstance(self.task, str) or not self.task.strip():
            raise ValueError(f"task: expected a non-empty string, got {self.task!r}")
        object.__setattr__(self, "task", self.task.strip().lower())
        _check_number("latency_budget_ms", self.latency_budget_ms, allow_none=True, positive=True)
        _check_number("gpu_memory_gb", self.gpu_memory_gb, allow_none=True, positive=True)
        if not isinstance(self.requires_icl, bool):
            raise ValueError(f"requires_icl: expected a bool, got {self.requires_icl!r}")


@dataclass(frozen=True)
class RoutingDecision:
    """The router's answer for one request.

    backend: the backend name to send the request to. role: the role it plays ("transformer", "mamba", "hybrid"),
    or "" when the backend plays no role in the rule policy. rule: the name of the rule that matched.
    source: "rule" (the rule decided), "feedback" (learned estimates overrode or confirmed the rule after enough
    samples), "explore" (the exploration floor picked it) or "fallback" (a breaker rerouted it).
    rerouted_from: the backend chosen before a breaker rerouted, else None. request_id: set by the feedback policy.
    """

    backend: str
    reason: str
    confidence: float
    rule: str
    bucket: str
    role: str = ""
    source: str = "rule"
    rerouted_from: str | None = None
    request_id: str | None = None


def length_band(seq_len: int, bands: Sequence[int] = DEFAULT_LENGTH_BANDS) -> str:
    """Label of the length band holding seq_len; `bands` are inclusive upper bounds, ascending.

    With the default (1999, 32000): "0-1999", "2000-32000", "32001+".
    """
    lo = 0
    for hi in bands:
        if seq_len <= hi:
            return f"{lo}-{hi}"
        lo = hi + 1
    return f"{lo}+"


def bucket_of(features: RequestFeatures, bands: Sequence[int] = DEFAULT_LENGTH_BANDS) -> str:
    """Bucket key "<length band>/<task>", with "+icl" appended when the request needs in-context learning.

    ICL gets its own buckets because the rule table treats it as the strongest signal; mixing it with other traffic
    would average two different reward distributions.
    """
    key = f"{length_band(features.seq_len, bands)}/{features.task}"
    return key + "+icl" if features.requires_icl else key
