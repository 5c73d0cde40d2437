"""The architecture decision framework: four yes/no questions lead to one of four ways to serve a workload, with the
reason for each step, and the same answers turned into a rule policy that the router loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ssmkit.route.features import ROLES
from ssmkit.route.rules import Condition, Rule, RulePolicy, default_policy


@dataclass(frozen=True)
class Question:
    key: str        # the answers' key, and the flag --<key with dashes> / --no-<...>
    text: str


QUESTIONS = (
    Question("long_context", "Are most requests 32K tokens or longer?"),
    Question("gpu_80gb", "Do the serving GPUs have 80 GB of memory or more?"),
    Question("icl_central", "Is in-context learning central (few-shot prompts, recall or copying from the prompt)?"),
    Question("quality_required", "Is Transformer-level quality required?"),
)
BY_KEY = {q.key: q for q in QUESTIONS}

OUTCOMES = {
    "transformer": "Keep the Transformer",
    "transformer-chunked-prefill": "Keep the Transformer, with chunked prefill",
    "hybrid": "A hybrid: mostly Mamba layers plus some attention layers (or Jamba-style)",
    "mamba-ab": "Mamba, validated against the Transformer by an A/B test",
}

# (question, answer) -> reason for taking that branch
REASONS = {
    ("long_context", False): "below 32K tokens attention's quadratic prefill and the KV cache stay affordable, and "
                             "the Transformer you already serve keeps its in-context learning; an SSM gains little",
    ("long_context", True): "past 32K tokens the KV cache grows with every token and prefill attention grows "
                            "quadratically, while an SSM layer keeps a constant-size state",
    ("gpu_80gb", True): "80 GB holds long KV caches; chunked prefill caps the activation peak of a long prompt and "
                        "lets decodes run between its chunks, so the Transformer remains the lower-risk choice",
    ("gpu_80gb", False): "on smaller GPUs long KV caches cut the batch size or do not fit, so most layers should "
                         "carry a constant-size state",
    ("icl_central", True): "a fixed-size state compresses the context, and pure SSMs trail attention on recall and "
                           "in-context learning; a few attention layers restore it while most layers stay SSM",
    ("icl_central", False): "without heavy recall from the prompt, a fixed-size state gives up little",
    ("quality_required", True): "pure SSMs do not match Transformers on every task, hybrids come closer; a hybrid "
                                "is the safer way to meet a Transformer quality bar",
    ("quality_required", False): "Mamba serves long contexts at constant memory per sequence; check it on your own "
                                 "traffic with an A/B test (the feedback router) before moving all of it",
}


@dataclass(frozen=True)
class Advice:
    """outcome: a key of OUTCOMES. steps: (question key, answer, reason) in the order asked. answers: all given."""

    outcome: str
    steps: tuple[tuple[str, bool, str], ...]
    answers: dict

    @property
    def title(self) -> str:
        return OUTCOMES[self.outcome]

    def explain(self) -> str:
        lines = []
        for i, (key, answer, reason) in enumerate(self.steps, 1):
            lines.append(f"{i}. {BY_KEY[key].text} {'yes' if answer else 'no'}: {reason}.")
        return "\n".join(lines + [f"=> {self.title}."])


def advise(answers: dict, ask: Callable[[Question], bool] | None = None) -> Advice:
    """Walks the decision tree. answers: question key -> bool (missing or None = unanswered). Only the questions on
    the path are needed; an unanswered one is put to `ask`, or raises ValueError naming its flag when ask is None.
    """
    for key in answers:
        if key not in BY_KEY:
            raise ValueError(f"answers: unknown question {key!r}, expected one of {', '.join(BY_KEY)}")
    steps = []

    def answer(key: str) -> bool:
        value = answers.get(key)
        if value is None:
            if ask is None:
                flag = key.replace("_", "-")
                raise ValueError(f"{key}: '{BY_KEY[key].text}' needs an answer: pass --{flag} or --no-{flag}")
            value = ask(BY_KEY[key])
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true or false, got {value!r}")
        steps.append((key, value, REASONS[(key, value)]))
        return value

    if not answer("long_context"):
        outcome = "transformer"
    elif answer("gpu_80gb"):
        outcome = "transformer-chunked-prefill"
    elif answer("icl_central") or answer("quality_required"):
        outcome = "hybrid"
    else:
        outcome = "mamba-ab"
    given = {k: v for k, v in answers.items() if v is not None} | {k: v for k, v, _ in steps}
    return Advice(outcome, tuple(steps), given)


def advice_policy(advice: Advice, roles: dict | None = None) -> RulePolicy:
    """The rule policy that carries out the advice; `roles` maps roles to backend names (default: same names).

    transformer / chunked prefill: everything to the transformer. hybrid: long prompts to the hybrid, the rest to
    the transformer. mamba-ab: the default rule table (long prompts to Mamba), meant to run under the feedback router.
    """
    roles = roles or {}
    long = Condition("seq_len", "gt", 32000)
    if advice.outcome in ("transformer", "transformer-chunked-prefill"):
        note = "serve it with chunked prefill" if advice.outcome != "transformer" else "the workload fits attention"
        rules = (Rule("default", "transformer", 0.8, reason=note),)
    elif advice.outcome == "hybrid":
        rules = (Rule("long-context", "hybrid", 0.8, (long,), reason="constant-size state, attention kept for recall"),
                 Rule("default", "transformer", 0.6))
    else:
        rules = default_policy().rules
    used = dict.fromkeys(r.role for r in rules)
    mapping = {role: roles.get(role, role) for role in ROLES if role in used}
    meta = {"outcome": advice.outcome, "answers": dict(advice.answers),
            "steps": [f"{k}={'yes' if a else 'no'}: {r}" for k, a, r in advice.steps]}
    return RulePolicy(rules=rules, roles=mapping, description=f"ssmkit advise: {advice.title}.", advice=meta)
