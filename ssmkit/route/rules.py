"""The rule policy: an ordered list of rules over request features, first match wins.

A rule names a role ("transformer", "mamba", "hybrid"); which backend plays each role is configuration. The default
policy is the rule table of issue 8. Loading and saving as YAML is in `policy_file.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ssmkit.route.features import DEFAULT_LENGTH_BANDS, ROLES, RequestFeatures, RoutingDecision, bucket_of

NUMERIC_FEATURES = ("seq_len", "latency_budget_ms", "gpu_memory_gb")
NUMERIC_OPS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "=="}
TASK_OPS = ("in", "not_in")


@dataclass(frozen=True)
class Condition:
    """One test on one feature: `feature op value`.

    Numeric features (seq_len, latency_budget_ms, gpu_memory_gb) take lt/le/gt/ge/eq with a number; `task` takes
    in/not_in with a tuple of labels; `requires_icl` takes eq with a bool. A None feature never matches.
    """

    feature: str
    op: str
    value: object

    def matches(self, features: RequestFeatures) -> bool:
        got = getattr(features, self.feature)
        if got is None:
            return False
        if self.feature == "task":
            return (got in self.value) == (self.op == "in")
        if self.feature == "requires_icl":
            return got is self.value
        return {"lt": got < self.value, "le": got <= self.value, "gt": got > self.value,
                "ge": got >= self.value, "eq": got == self.value}[self.op]

    def describe(self, features: RequestFeatures | None = None) -> str:
        """"seq_len > 32000", or with features "seq_len 40000 > 32000" (the request's value shown)."""
        shown = f" {getattr(features, self.feature)!r}" if features is not None else ""
        if self.feature == "task":
            word = "in" if self.op == "in" else "not in"
            return f"task{shown} {word} {{{', '.join(self.value)}}}"
        if self.feature == "requires_icl":
            return "requires in-context learning" if self.value else "no in-context learning"
        bound = int(self.value) if float(self.value).is_integer() else self.value
        return f"{self.feature}{shown} {NUMERIC_OPS[self.op]} {bound}"


@dataclass(frozen=True)
class Rule:
    """name: unique label, reported in decisions. conditions: all must hold (an empty tuple always matches).
    role: the role chosen. confidence: in [0, 1]. reason: optional prose appended to the decision's reason.
    fixed: when True the feedback policy never overrides this rule (a hard constraint, not a guess).
    """

    name: str
    role: str
    confidence: float
    conditions: tuple[Condition, ...] = ()
    reason: str = ""
    fixed: bool = False

    def __post_init__(self):
        # Group tests by feature (first occurrence order), as a YAML `when` mapping holds them, so that a rule
        # equals itself after a round trip through a file.
        order = list(dict.fromkeys(c.feature for c in self.conditions))
        conds = tuple(sorted(self.conditions, key=lambda c: order.index(c.feature)))
        if len({(c.feature, c.op) for c in conds}) != len(conds):
            raise ValueError(f"conditions: rule {self.name!r} tests one feature twice with the same operator")
        object.__setattr__(self, "conditions", conds)

    def matches(self, features: RequestFeatures) -> bool:
        return all(c.matches(features) for c in self.conditions)


@dataclass(frozen=True)
class RulePolicy:
    """Ordered rules (the last has no conditions, so every request gets a decision) and the role -> backend map.

    description and advice are metadata: `ssmkit advise` records its answers and outcome in `advice`.
    """

    rules: tuple[Rule, ...]
    roles: dict = field(default_factory=lambda: {r: r for r in ROLES})
    description: str = ""
    advice: dict | None = None

    def backends(self) -> list[str]:
        """Backend names of the roles that some rule uses, in rule order, without repeats."""
        names = [self.roles[r.role] for r in self.rules]
        return list(dict.fromkeys(names))

    def match(self, features: RequestFeatures) -> Rule:
        for rule in self.rules:
            if rule.matches(features):
                return rule
        raise ValueError(f"no rule matched {features}; a policy must end with a rule without conditions")

    def route(self, features: RequestFeatures, bands: Sequence[int] = DEFAULT_LENGTH_BANDS) -> RoutingDecision:
        """Features -> decision of the first matching rule. Pure: no state, no I/O."""
        rule = self.match(features)
        backend = self.roles[rule.role]
        why = ", ".join(c.describe(features) for c in rule.conditions) or "no earlier rule matched"
        reason = f"rule '{rule.name}': {why} -> {rule.role}"
        if rule.reason:
            reason += f" ({rule.reason})"
        return RoutingDecision(backend=backend, reason=reason, confidence=rule.confidence, rule=rule.name,
                               bucket=bucket_of(features, bands), role=rule.role, source="rule")


def default_policy() -> RulePolicy:
    """The rule table of issue 8, first match wins; each role is served by a backend of the same name."""
    long = Condition("seq_len", "gt", 32000)
    return RulePolicy(rules=(
        Rule("in-context-learning", "transformer", 0.9, (Condition("requires_icl", "eq", True),),
             reason="attention recalls from context better than a fixed-size state"),
        Rule("long-context-small-gpu", "mamba", 0.85, (long, Condition("gpu_memory_gb", "le", 24)),
             reason="a KV cache this long does not fit; the SSM state is constant-size"),
        Rule("long-context-summarization-retrieval", "mamba", 0.7,
             (long, Condition("task", "in", ("summarization", "retrieval"))),
             reason="linear-time prefill on long inputs"),
        Rule("short-prompt", "transformer", 0.8, (Condition("seq_len", "lt", 2000),),
             reason="attention is cheap at this length"),
        Rule("default", "transformer", 0.5),
    ), description="The default rule table (issue 8).")


def route(features: RequestFeatures, policy: RulePolicy | None = None) -> RoutingDecision:
    """The router as one pure function: features -> decision under `policy` (the default table when None)."""
    return (policy or default_policy()).route(features)
