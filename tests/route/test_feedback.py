"""The feedback router: the reward formula, a simulated A/B where traffic moves to the better backend in one bucket
while other buckets keep their rules, identical state and decisions after a restart on the same SQLite file, and the
outcome API's checks.
"""

import random
from collections import Counter

import pytest
import torch

from ssmkit.route import FeedbackConfig, RequestFeatures, RewardConfig, Router, RouterConfig, reward
from ssmkit.route.rules import Rule, RulePolicy
from tests.compare import assert_close

LONG_SUM = RequestFeatures(10_000, "summarization", latency_budget_ms=2000.0)   # bucket 2000-32000/summarization
SHORT_CHAT = RequestFeatures(500, "chat", latency_budget_ms=500.0)            # bucket 0-1999/chat
ICL = RequestFeatures(800, "qa", requires_icl=True)                            # bucket 0-1999/qa+icl
# mean quality per (bucket, backend): Mamba is better on long summarization, the Transformer on short chat
QUALITY = {("2000-32000/summarization", "mamba"): 0.85, ("2000-32000/summarization", "transformer"): 0.45,
           ("0-1999/chat", "mamba"): 0.40, ("0-1999/chat", "transformer"): 0.80}


class FakeClock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def _config(**feedback):
    return RouterConfig(backends=("transformer", "mamba"),
                        feedback=FeedbackConfig(**{"min_samples": 10, "exploration": 0.1, "seed": 7, **feedback}))


def _simulate(router, clock, steps, start=0, sim_seed=1234):
    """Sends `steps` requests (2 long summarization : 1 short chat : 1 ICL without feedback), posting latency and
    a noisy quality for the first two kinds. Returns [(decision, reward, quality, latency_ms)], Nones for ICL.
    The simulation's own noise is keyed by step index, so a run split across a restart draws the same noise.
    """
    out = []
    for i in range(start, start + steps):
        noise = random.Random(f"{sim_seed}:{i}")
        features = (LONG_SUM, LONG_SUM, SHORT_CHAT, ICL)[i % 4]
        d = router.decide(features, request_id=f"r{i}")
        clock.t += 0.5
        r = None
        if features is not ICL:
            q = min(1.0, max(0.0, QUALITY[(d.bucket, d.backend)] + noise.uniform(-0.15, 0.15)))
            latency = features.latency_budget_ms * noise.uniform(0.5, 1.3)
            assert router.record_latency(d.request_id, latency) is None  # quality still missing
            r = router.record_quality(d.request_id, q)
            out.append((d, r, q, latency))
        else:
            out.append((d, None, None, None))
    return out


def test_reward_combines_quality_and_latency_against_the_budget():
    cfg = RewardConfig(quality_weight=0.7, latency_weight=0.3, over_budget_zero_at=2.0)
    got = [reward(cfg, error=False, latency_ms=800, budget_ms=1000, quality=0.6),    # within budget: score 1
           reward(cfg, error=False, latency_ms=1500, budget_ms=1000, quality=0.6),   # half way to 2x: score 0.5
           reward(cfg, error=False, latency_ms=2500, budget_ms=1000, quality=0.6),   # past 2x: score 0
           reward(cfg, error=False, latency_ms=9e9, budget_ms=None, quality=0.6),    # no budget: score 1
           reward(cfg, error=True, latency_ms=10, budget_ms=1000, quality=None),     # an error is 0
           reward(RewardConfig(quality_weight=0.0), error=False, latency_ms=1250, budget_ms=1000, quality=None)]
    want = [0.7 * 0.6 + 0.3, 0.7 * 0.6 + 0.15, 0.7 * 0.6, 0.7 * 0.6 + 0.3, 0.0, 0.75]
    assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64))
    assert reward(cfg, error=False, latency_ms=10, budget_ms=None, quality=None) is None


def test_feedback_moves_a_bucket_to_the_better_backend_while_other_buckets_keep_their_rules():
    clock = FakeClock()
    router = Router(db=":memory:", config=_config(), clock=clock)
    log = _simulate(router, clock, 1200)
    by_bucket = {}
    for d, *_ in log:
        by_bucket.setdefault(d.bucket, []).append(d)
    long_sum, chat, icl = by_bucket["2000-32000/summarization"], by_bucket["0-1999/chat"], by_bucket["0-1999/qa+icl"]
    assert [len(long_sum), len(chat), len(icl)] == [600, 300, 300]
    # The rule sends long summarization below 32K to the Transformer; after learning, Mamba gets most of it.
    assert all(d.rule == "default" for d in long_sum)
    late = Counter(d.backend for d in long_sum[-200:])
    assert late["mamba"] / 200 > 0.85, late
    early = Counter(d.backend for d in long_sum[:60])
    assert early["transformer"] / 60 > 0.8, early  # before min_samples the rule decides, bar exploration
    # Short chat: the Transformer is better and is the rule's choice; it keeps >= 1 - exploration of the traffic.
    assert Counter(d.backend for d in chat[-200:])["transformer"] / 200 >= 0.9
    # ICL: no outcomes, so nothing is learned: every decision is the rule's, or the exploration floor's.
    assert {d.source for d in icl} <= {"rule", "explore"}
    assert all(d.backend == "transformer" for d in icl if d.source == "rule")
    assert Counter(d.source for d in icl)["explore"] / 300 < 0.2
    # The arms hold exactly the sums of the rewards the test saw (recomputed here, independently of the store).
    for bucket, rows in (("2000-32000/summarization", long_sum), ("0-1999/chat", chat)):
        arms = router.store.arms(bucket)
        for backend in ("transformer", "mamba"):
            rewards = [r for d, r, *_ in log if d.bucket == bucket and d.backend == backend]
            assert arms[backend][0] == len(rewards)
            assert_close(torch.tensor(arms[backend][1], dtype=torch.float64),
                         torch.tensor(sum(rewards), dtype=torch.float64), name=f"{bucket}/{backend}")
    # Each reward follows the documented formula from the quality and latency the test posted.
    budget = {"2000-32000/summarization": LONG_SUM.latency_budget_ms, "0-1999/chat": SHORT_CHAT.latency_budget_ms}
    scored = [(d, r, q, lat) for d, r, q, lat in log if r is not None]
    want = [0.7 * q + 0.3 * min(1.0, max(0.0, 2.0 - lat / budget[d.bucket])) for d, _, q, lat in scored]
    assert_close(torch.tensor([r for _, r, _, _ in scored], dtype=torch.float64),
                 torch.tensor(want, dtype=torch.float64), name="rewards")


def test_epsilon_greedy_also_moves_traffic_to_the_better_backend():
    clock = FakeClock()
    router = Router(db=":memory:", config=_config(method="epsilon_greedy"), clock=clock)
    log = _simulate(router, clock, 800)
    late = [d.backend for d, *_ in log if d.bucket == "2000-32000/summarization"][-150:]
    assert late.count("mamba") / 150 > 0.85


def test_no_override_before_min_samples():
    clock = FakeClock()
    router = Router(db=":memory:", config=_config(min_samples=10_000), clock=clock)
    log = _simulate(router, clock, 400)
    assert {d.source for d, *_ in log} == {"rule", "explore"}
    assert all(d.backend == "transformer" for d, *_ in log if d.source == "rule")


def test_fixed_rule_is_never_overridden_nor_explored():
    policy = RulePolicy((Rule("everything", "transformer", 0.7, fixed=True),),
                        roles={"transformer": "transformer", "mamba": "mamba"})
    clock = FakeClock()
    router = Router(policy, ":memory:", _config(min_samples=1, exploration=0.5), clock)
    log = _simulate(router, clock, 200)
    assert {(d.backend, d.source) for d, *_ in log} == {("transformer", "rule")}


def test_router_state_survives_a_restart_and_continues_identically(tmp_path):
    # One router runs 600 steps without stopping; another stops after 300, and a new object on the same file
    # (with a different seed in its config: the stored seed wins) runs the remaining 300.
    clock_a, clock_b = FakeClock(), FakeClock()
    whole = Router(db=tmp_path / "whole.db", config=_config(), clock=clock_a)
    _simulate(whole, clock_a, 600)
    first = Router(db=tmp_path / "split.db", config=_config(), clock=clock_b)
    _simulate(first, clock_b, 300)
    before = first.state()
    first.close()
    second = Router(db=tmp_path / "split.db", config=_config(seed=99), clock=clock_b)
    assert second.state() == before
    _simulate(second, clock_b, 300, start=300)
    assert second.state() == whole.state()
    long_late = [row for row in second.state()["decisions"] if row[3] == "2000-32000/summarization"][-100:]
    assert sum(row[11] == "mamba" for row in long_late) > 85  # learning carried over the restart


def test_outcome_api_checks_ids_values_and_duplicates():
    router = Router(config=_config(), clock=FakeClock())
    d = router.decide(SHORT_CHAT, request_id="a")
    with pytest.raises(ValueError, match="request_id: 'a' already has a decision"):
        router.decide(SHORT_CHAT, request_id="a")
    with pytest.raises(ValueError, match="request_id: no decision logged for 'zzz'"):
        router.record_quality("zzz", 0.5)
    with pytest.raises(ValueError, match=r"quality: expected a number in \[0, 1\], got 1.5"):
        router.record_quality("a", 1.5)
    with pytest.raises(ValueError, match="latency_ms: expected a number >= 0"):
        router.record_latency("a", -1)
    assert router.record_quality("a", 0.5) is None  # latency still missing
    assert router.record_latency("a", 100.0) == pytest.approx(0.7 * 0.5 + 0.3)
    with pytest.raises(ValueError, match="already has quality recorded"):
        router.record_quality("a", 0.9)
    assert router.store.arms(d.bucket)[d.backend][0] == 1
    e = router.decide(SHORT_CHAT, request_id="b")
    assert router.record_latency("b", 30000.0, error=True) == 0.0  # an error settles the outcome at once
    assert router.record_quality("b", 1.0) is None                  # a late score does not count twice
    assert router.store.arms(e.bucket)[e.backend][0] == (2 if e.backend == d.backend else 1)


def test_latency_only_reward_needs_no_client_feedback():
    cfg = RouterConfig(reward=RewardConfig(quality_weight=0.0, latency_weight=1.0))
    router = Router(config=cfg, clock=FakeClock())
    router.decide(SHORT_CHAT, request_id="x")
    assert router.record_latency("x", 750.0) == 0.5  # budget 500 ms: 1.5x the budget scores 0.5
