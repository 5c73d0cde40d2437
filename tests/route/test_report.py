"""`route report DB`: per bucket, the counts, mean rewards and preference it prints equal what the router logged."""

import sqlite3

import torch

from ssmkit.route import FeedbackConfig, RequestFeatures, RewardConfig, Router, RouterConfig, bucket_report
from ssmkit.route.commands import route_report_main
from tests.compare import assert_close


def _fill(path):
    """Long summarization: Mamba scores 0.9, the Transformer 0.3 (latency reward off, so reward = quality)."""
    cfg = RouterConfig(backends=("transformer", "mamba"), reward=RewardConfig(quality_weight=1.0, latency_weight=0.0),
                       feedback=FeedbackConfig(min_samples=5, exploration=0.3, seed=3))
    router = Router(db=path, config=cfg, clock=lambda: 0.0)
    sent = []
    for i in range(300):
        d = router.decide(RequestFeatures(50_000, "summarization", gpu_memory_gb=80))
        router.record_latency(d.request_id, 100.0 + (d.backend == "mamba") * 50)
        router.record_quality(d.request_id, 0.9 if d.backend == "mamba" else 0.3)
        sent.append(d.backend)
    router.decide(RequestFeatures(100, "chat"))  # a bucket with a decision and no outcome
    router.close()
    return sent


def test_report_counts_rewards_and_preference_match_the_log(tmp_path, capsys):
    path = tmp_path / "router.db"
    sent = _fill(path)
    chat, long = bucket_report(path)
    assert (chat.bucket, chat.decisions, chat.preference) == ("0-1999/chat", 1, "transformer")
    assert chat.why.startswith("rule (still learning")
    assert long.bucket == "32001+/summarization" and long.rule_backend == "mamba"
    arms = {a.backend: a for a in long.arms}
    for backend, quality, latency in (("mamba", 0.9, 150.0), ("transformer", 0.3, 100.0)):
        a = arms[backend]
        assert a.decisions == a.outcomes == sent.count(backend)
        assert a.recent_share == sent[-100:].count(backend) / 100
        got = torch.tensor([a.mean_reward, a.mean_latency_ms, a.posterior_mean], dtype=torch.float64)
        want = torch.tensor([quality, latency, (1 + quality * a.outcomes) / (2 + a.outcomes)], dtype=torch.float64)
        assert_close(got, want, name=backend)
    assert long.preference == "mamba" and long.why.startswith("learned")
    assert route_report_main(str(path)) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"router database {path}: 301 decisions in 2 buckets")
    assert "bucket 32001+/summarization: 300 decisions; rule -> mamba; prefers mamba" in out


def test_report_on_a_missing_or_foreign_file_is_one_error_line(tmp_path, capsys):
    assert route_report_main(str(tmp_path / "nope.db")) == 2
    assert "no such router database" in capsys.readouterr().err
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    assert route_report_main(str(other)) == 2
    assert "not a router database" in capsys.readouterr().err
