"""/metrics is Prometheus text that prometheus_client's parser reads back; after a known set of requests the
counters equal what was sent and answered: requests and tokens by backend, latency and TTFT histograms, routing
decisions by rule, queue depth and running sequences per engine, and breaker states."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.serve.harness import serving, sse_events


def _samples(text: str) -> dict:
    """{(sample name, sorted label items): value} of every sample in the exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_scraped_metrics_count_what_was_served(checkpoints, policy_file, monkeypatch):
    from ssmkit.ops.ssd.triton import plan

    # a CPU server tunes nothing: stand-in totals
    monkeypatch.setattr(plan, "_STATS", {"tuned": 3, "seconds": 1.5, "untuned": 7})
    models = {"llama": checkpoints["llama"], "mamba2": checkpoints["mamba2"]}
    with serving(models, policy=policy_file) as (url, _):
        with httpx.Client(base_url=url, timeout=30) as c:
            completion = {"llama": 0, "mamba2": 0}
            for model, n in (("auto", 3), ("mamba2", 2)):
                for i in range(n):
                    r = c.post("/v1/completions", json={"model": model, "prompt": f"p{i}", "max_tokens": 5,
                                                        "stream": i == 0})
                    last = sse_events(r.text.splitlines())[-1] if i == 0 else r.json()
                    completion["llama" if model == "auto" else model] += last["usage"]["completion_tokens"]
            assert c.post("/v1/completions", json={"prompt": 1}).status_code == 400
            scrape = c.get("/metrics")
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
    s = _samples(scrape.text)
    assert _value(s, "ssmkit_requests_total", backend="llama", endpoint="completions", status="200") == 3
    assert _value(s, "ssmkit_requests_total", backend="mamba2", endpoint="completions", status="200") == 2
    assert _value(s, "ssmkit_requests_total", backend="none", endpoint="completions", status="400") == 1
    assert _value(s, "ssmkit_tokens_total", backend="llama", kind="prompt") == 3 * 2  # prompts "p0".."p2"
    assert _value(s, "ssmkit_tokens_total", backend="mamba2", kind="prompt") == 2 * 2
    for backend in ("llama", "mamba2"):
        assert _value(s, "ssmkit_tokens_total", backend=backend, kind="completion") == completion[backend] > 0
    assert _value(s, "ssmkit_request_latency_seconds_count", backend="llama") == 3
    assert _value(s, "ssmkit_time_to_first_token_seconds_count", backend="mamba2") == 2
    assert (_value(s, "ssmkit_time_to_first_token_seconds_sum", backend="llama")
            <= _value(s, "ssmkit_request_latency_seconds_sum", backend="llama"))
    assert _value(s, "ssmkit_request_latency_seconds_bucket", backend="llama", le="+Inf") == 3
    assert _value(s, "ssmkit_routing_decisions_total", rule="short-prompt", backend="llama", source="rule") == 3
    assert _value(s, "ssmkit_routing_decisions_total", rule="pinned", backend="mamba2", source="pinned") == 2
    for backend in ("llama", "mamba2"):
        assert ("ssmkit_queue_depth", (("backend", backend),)) in s
        assert _value(s, "ssmkit_queue_depth", backend=backend) == 0
        assert _value(s, "ssmkit_running_sequences", backend=backend) == 0
        assert ("ssmkit_breaker_state", (("backend", backend),)) in s
        assert _value(s, "ssmkit_breaker_state", backend=backend) == 0  # closed
    assert _value(s, "ssmkit_kernel_tunings") == 3 and _value(s, "ssmkit_kernel_tuning_seconds") == 1.5
    assert _value(s, "ssmkit_kernel_untuned_calls") == 7
