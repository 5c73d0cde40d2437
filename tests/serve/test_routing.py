"""Routing over HTTP with the default rule table (transformer -> llama, mamba -> mamba2): a few cases of the table,
each boundary side included, decided from features the request carries and seq_len counted by the tokenizer; the
request is then served by the chosen model. The router's own tests cover the table exhaustively."""

from __future__ import annotations

import httpx
import pytest

from tests.serve.harness import serving

CASES = [  # (prompt length in bytes, request fields, backend, rule)
    (5, {}, "llama", "short-prompt"),
    (1999, {}, "llama", "short-prompt"),
    (2000, {}, "llama", "default"),
    (40, {"requires_icl": True}, "llama", "in-context-learning"),
    (32001, {"gpu_memory_gb": 24}, "mamba2", "long-context-small-gpu"),
    (32001, {"gpu_memory_gb": 80, "task": "summarization"}, "mamba2", "long-context-summarization-retrieval"),
]
CONFIDENCE = {"short-prompt": 0.8, "default": 0.5, "in-context-learning": 0.9, "long-context-small-gpu": 0.85,
              "long-context-summarization-retrieval": 0.7}


@pytest.fixture(scope="module")
def client(checkpoints, policy_file):
    models = {"llama": checkpoints["llama"], "mamba2": checkpoints["mamba2"]}
    # One slot keeps the llama's KV pool small while its context fits the 2000-token case.
    with serving(models, policy=policy_file, max_context=40_000, max_concurrency=1) as (url, service):
        with httpx.Client(base_url=url, timeout=60) as c:
            yield c, service


@pytest.mark.parametrize("length, fields, backend, rule", CASES)
def test_auto_routes_by_the_rule_table_and_serves_on_the_chosen_model(client, length, fields, backend, rule):
    c, _ = client
    r = c.post("/v1/completions", json={"model": "auto", "prompt": "a" * length, "max_tokens": 1, **fields})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["routing"]["backend"], body["routing"]["rule"]) == (backend, rule)
    assert body["routing"]["confidence"] == CONFIDENCE[rule]
    assert body["routing"]["seq_len"] == length
    assert body["model"] == backend and body["usage"]["prompt_tokens"] == length


def test_pinned_model_overrides_the_rules(client):
    c, _ = client
    r = c.post("/v1/completions", json={"model": "mamba2", "prompt": "a" * 10, "max_tokens": 1})
    assert r.json()["routing"]["source"] == "pinned" and r.json()["model"] == "mamba2"


def test_feedback_scores_a_routed_request_once(client):
    c, service = client
    r = c.post("/v1/completions", json={"prompt": "hello", "max_tokens": 2, "latency_budget_ms": 60000})
    request_id = r.json()["id"]
    fb = c.post("/v1/feedback", json={"request_id": request_id, "quality": 0.5})
    assert fb.status_code == 200, fb.text
    # reward = (0.7 * quality + 0.3 * latency_score) / 1.0 with the latency well within the 60 s budget
    assert fb.json()["reward"] == pytest.approx(0.7 * 0.5 + 0.3 * 1.0)
    outcome = service.router.store.outcome(request_id)  # the server measured the latency before the feedback
    assert outcome["quality"] == 0.5 and outcome["latency_ms"] > 0 and outcome["error"] == 0
    again = c.post("/v1/feedback", json={"request_id": request_id, "quality": 0.9})
    assert again.status_code == 409 and again.json()["error"]["param"] == "request_id"
    pinned = c.post("/v1/completions", json={"model": "llama", "prompt": "hi", "max_tokens": 1}).json()["id"]
    assert c.post("/v1/feedback", json={"request_id": pinned, "quality": 1.0}).status_code == 404
