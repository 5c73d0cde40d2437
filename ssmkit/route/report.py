"""What the router has learned, per bucket, read from its SQLite database: traffic and outcomes per backend, mean
reward, and which backend the feedback policy currently prefers. Backs `ssmkit route report DB`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from ssmkit.route.store import open_readonly

RECENT = 100  # the report's "recent share" column covers a bucket's last RECENT decisions


@dataclass(frozen=True)
class ArmSummary:
    backend: str
    decisions: int
    recent_share: float      # fraction of the bucket's last RECENT decisions sent here
    outcomes: int            # outcomes applied to the estimates
    mean_reward: float | None
    posterior_mean: float    # (alpha + reward_sum) / (alpha + beta + n)
    errors: int
    mean_latency_ms: float | None


@dataclass(frozen=True)
class BucketSummary:
    bucket: str
    decisions: int
    rule_backend: str        # what the rules chose most often in this bucket
    preference: str          # the backend the policy prefers now
    why: str
    arms: tuple[ArmSummary, ...]


def bucket_report(db_path) -> list[BucketSummary]:
    """One summary per bucket, buckets sorted by name, backends by decisions (most first)."""
    conn = open_readonly(db_path)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        fb = json.loads(meta.get("config", "{}")).get("feedback", {})
        a0, b0, min_n = fb.get("prior_alpha", 1.0), fb.get("prior_beta", 1.0), fb.get("min_samples", 0)
        out = []
        buckets = [r[0] for r in conn.execute("SELECT DISTINCT bucket FROM decisions ORDER BY bucket")]
        for bucket in buckets:
            rows = conn.execute("SELECT backend, rule_backend FROM decisions WHERE bucket = ? ORDER BY seq",
                                (bucket,)).fetchall()
            sent = Counter(r["backend"] for r in rows)
            recent = Counter(r["backend"] for r in rows[-RECENT:])
            rule_backend = Counter(r["rule_backend"] for r in rows).most_common(1)[0][0]
            arms = {r["backend"]: r for r in conn.execute("SELECT * FROM arms WHERE bucket = ?", (bucket,))}
            lat = dict(conn.execute(
                "SELECT d.backend, AVG(o.latency_ms) FROM outcomes o JOIN decisions d USING (request_id) "
                "WHERE d.bucket = ? AND o.latency_ms IS NOT NULL GROUP BY d.backend", (bucket,)).fetchall())
            summaries = []
            for name in sorted(set(sent) | set(arms), key=lambda b: (-sent.get(b, 0), b)):
                arm = arms.get(name)
                n, total = (arm["n"], arm["reward_sum"]) if arm else (0, 0.0)
                summaries.append(ArmSummary(
                    backend=name, decisions=sent.get(name, 0), recent_share=recent.get(name, 0) / len(rows[-RECENT:]),
                    outcomes=n, mean_reward=total / n if n else None, posterior_mean=(a0 + total) / (a0 + b0 + n),
                    errors=arm["errors"] if arm else 0, mean_latency_ms=lat.get(name)))
            eligible = [s for s in summaries if s.backend == rule_backend or s.outcomes >= min_n]
            if len(eligible) <= 1:
                waiting = ", ".join(f"{s.backend} {s.outcomes}/{min_n}" for s in summaries if s.backend != rule_backend)
                pref, why = rule_backend, f"rule (still learning: {waiting or 'no other backend seen'})"
            else:
                best = max(eligible, key=lambda s: s.posterior_mean)
                pref = best.backend
                why = "learned: highest posterior mean reward among backends with >= " \
                      f"{min_n} outcomes{'' if pref == rule_backend else f', overriding the rule ({rule_backend})'}"
            out.append(BucketSummary(bucket, len(rows), rule_backend, pref, why, tuple(summaries)))
        return out
    finally:
        conn.close()


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_report(summaries: list[BucketSummary], db_path: str = "") -> str:
    """Plain-text report: one block per bucket with a row per backend."""
    total = sum(s.decisions for s in summaries)
    lines = [f"router database {db_path}: {total} decisions in {len(summaries)} buckets"]
    head = f"  {'backend':<20} {'decisions':>9} {'recent':>7} {'outcomes':>8} {'reward':>7} {'posterior':>9} " \
           f"{'errors':>6} {'latency ms':>10}"
    for s in summaries:
        lines += ["", f"bucket {s.bucket}: {s.decisions} decisions; rule -> {s.rule_backend}; "
                      f"prefers {s.preference} ({s.why})", head]
        for a in s.arms:
            lines.append(f"  {a.backend:<20} {a.decisions:>9} {a.recent_share:>7.0%} {a.outcomes:>8} "
                         f"{_fmt(a.mean_reward, '.3f'):>7} {a.posterior_mean:>9.3f} {a.errors:>6} "
                         f"{_fmt(a.mean_latency_ms, '.1f'):>10}")
    return "\n".join(lines)
