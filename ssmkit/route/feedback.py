"""The learning part of the router, as pure functions: the reward of one outcome, and the choice of a backend for a
bucket from the rule's choice and each backend's Beta posterior over reward (Thompson sampling or epsilon-greedy,
with an exploration floor and a minimum sample count before the rule is overridden).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ssmkit.route.config import FeedbackConfig, RewardConfig

PBEST_DRAWS = 256  # posterior draws used to estimate P(chosen backend is best), reported as the confidence


def latency_score(latency_ms: float, budget_ms: float | None, zero_at: float = 2.0) -> float:
    """1 within the budget (or with no budget), then linear down to 0 at `zero_at` x budget."""
    if budget_ms is None or latency_ms <= budget_ms:
        return 1.0
    return max(0.0, 1.0 - (latency_ms - budget_ms) / ((zero_at - 1.0) * budget_ms))


def reward(config: RewardConfig, *, error: bool, latency_ms: float | None, budget_ms: float | None,
           quality: float | None) -> float | None:
    """Reward in [0, 1] of one outcome, or None while a part with a weight > 0 is still unknown.

    0 for an error; otherwise the weighted mean of quality and latency_score (see RewardConfig).
    """
    if error:
        return 0.0
    wq, wl = config.quality_weight, config.latency_weight
    if (wq > 0 and quality is None) or (wl > 0 and latency_ms is None):
        return None
    q = quality if wq > 0 else 0.0
    s = latency_score(latency_ms, budget_ms, config.over_budget_zero_at) if wl > 0 else 0.0
    return (wq * q + wl * s) / (wq + wl)


@dataclass(frozen=True)
class Choice:
    """backend chosen, source ("rule" | "feedback" | "explore"), confidence in [0, 1], reason."""

    backend: str
    source: str
    confidence: float
    reason: str


def _posterior(arms: dict, backend: str, cfg: FeedbackConfig) -> tuple[float, float]:
    """Beta(alpha, beta) over the arm's mean reward; rewards in [0, 1] enter as fractional successes."""
    n, total = arms.get(backend, (0, 0.0))
    return cfg.prior_alpha + total, cfg.prior_beta + n - total


def _p_best(eligible: list[str], arms: dict, cfg: FeedbackConfig, rng: random.Random) -> dict[str, float]:
    wins = dict.fromkeys(eligible, 0)
    params = [_posterior(arms, b, cfg) for b in eligible]
    for _ in range(PBEST_DRAWS):
        draws = [rng.betavariate(a, b) for a, b in params]
        wins[eligible[draws.index(max(draws))]] += 1
    return {b: w / PBEST_DRAWS for b, w in wins.items()}


def choose(rule_backend: str, rule_confidence: float, candidates: list[str], arms: dict, cfg: FeedbackConfig,
           rng: random.Random) -> Choice:
    """Picks a backend for one request of a bucket.

    candidates: the backends to choose between (rule_backend among them). arms: backend -> (n, reward_sum) in this
    bucket. Order of the draws from `rng` is fixed, so a given rng seed gives a given choice.
    1. With probability `exploration`, a uniformly random candidate ("explore").
    2. Eligible = the rule's backend plus every candidate with at least `min_samples` outcomes here. If that is only
       the rule's backend, the rule stands.
    3. Otherwise Thompson sampling (one draw per eligible posterior, the largest wins) or epsilon-greedy (largest
       posterior mean), with confidence = estimated P(chosen is best) under the posteriors.
    """
    if rng.random() < cfg.exploration:
        pick = candidates[int(rng.random() * len(candidates))]
        return Choice(pick, "explore", 1.0 / len(candidates),
                      f"exploration floor (p={cfg.exploration:g}) picked {pick} at random")
    eligible = [b for b in candidates if b == rule_backend or arms.get(b, (0, 0.0))[0] >= cfg.min_samples]
    if len(eligible) == 1:
        return Choice(rule_backend, "rule", rule_confidence, "")
    params = {b: _posterior(arms, b, cfg) for b in eligible}
    if cfg.method == "thompson":
        draws = {b: rng.betavariate(*params[b]) for b in eligible}
        pick = max(eligible, key=lambda b: draws[b])
    else:
        pick = max(eligible, key=lambda b: params[b][0] / sum(params[b]))
    p_best = _p_best(eligible, arms, cfg, rng)
    summary = ", ".join(f"{b} {arms.get(b, (0, 0.0))[1] / max(arms.get(b, (0, 0.0))[0], 1):.3f} "
                        f"(n={arms.get(b, (0, 0.0))[0]})" for b in eligible)
    return Choice(pick, "feedback", p_best[pick],
                  f"{cfg.method} picked {pick}, P(best)={p_best[pick]:.2f}; mean reward {summary}")
