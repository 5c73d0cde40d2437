"""A remote backend is any OpenAI-compatible server; here a second ssmkit server on loopback. Requests routed or
pinned to it are proxied (streaming too) and equal `generate` on the upstream's checkpoint; its errors feed the
same breakers: an unreachable backend answers 502 and, once its breaker opens, routing falls back."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from ssmkit.route import BreakerConfig, RouterConfig
from tests.serve.harness import reference, serving, sse_events, write_policy

PROMPT = "Routing to a remote "


@pytest.fixture(scope="module")
def front(checkpoints, tmp_path_factory):
    """upstream: llama alone. front: mamba2 locally, and the upstream as backend "far" playing the transformer."""
    policy = write_policy(tmp_path_factory.mktemp("remote") / "policy.yaml",
                          {"transformer": "far", "mamba": "mamba2", "hybrid": "far"})
    with serving({"llama": checkpoints["llama"]}, max_context=256) as (upstream, _):
        with serving({"mamba2": checkpoints["mamba2"]}, remote={"far": f"{upstream}/v1#llama"},
                     policy=policy) as (url, service):
            with httpx.Client(base_url=url, timeout=60) as client:
                yield client, service


def test_routed_request_is_proxied_and_equals_generate_upstream(front, checkpoints):
    client, _ = front
    r = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 16, "temperature": 0.9, "seed": 11})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["text"] == reference(checkpoints["llama"], PROMPT, 16, 0.9, None, 11)[0]
    assert body["routing"]["backend"] == "far" and body["routing"]["rule"] == "short-prompt"
    assert json.loads(r.headers["x-ssmkit-routing"])["backend"] == "far"
    assert body["model"] == "llama"  # the upstream's own name for the model


def test_streamed_request_is_relayed_event_by_event(front, checkpoints):
    client, _ = front
    payload = {"model": "far", "prompt": PROMPT, "max_tokens": 12, "temperature": 0, "stream": True}
    with client.stream("POST", "/v1/completions", json=payload) as r:
        assert r.status_code == 200 and json.loads(r.headers["x-ssmkit-routing"])["source"] == "pinned"
        events = sse_events(r.iter_lines())
    assert "".join(e["choices"][0]["text"] for e in events) == reference(checkpoints["llama"], PROMPT, 12)[0]
    assert len(events) >= 2


def test_proxied_requests_are_counted_under_the_remote_backend(front):
    client, _ = front
    payload = {"model": "far", "prompt": "count me", "max_tokens": 3, "ignore_eos": True}
    client.post("/v1/completions", json=payload)
    with client.stream("POST", "/v1/completions", json={**payload, "stream": True}) as r:
        sse_events(r.iter_lines())
    metrics = client.get("/metrics").text
    assert 'ssmkit_requests_total{backend="far",endpoint="completions",status="200"}' in metrics
    assert 'ssmkit_time_to_first_token_seconds_count{backend="far"}' in metrics
    assert 'ssmkit_tokens_total{backend="far",kind="completion"}' in metrics


def test_chat_is_proxied_and_remote_client_errors_are_relayed(front):
    client, _ = front
    chat = client.post("/v1/chat/completions", json={"model": "far", "max_tokens": 4,
                                                     "messages": [{"role": "user", "content": "Hi"}]})
    assert chat.status_code == 200 and chat.json()["object"] == "chat.completion"
    too_long = client.post("/v1/completions", json={"model": "far", "prompt": "x" * 300, "max_tokens": 2})
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "prompt"
    assert client.get("/health").status_code == 200


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_remote_answers_502_and_its_breaker_reroutes(checkpoints, tmp_path):
    policy = write_policy(tmp_path / "policy.yaml", {"transformer": "dead", "mamba": "mamba2", "hybrid": "dead"})
    config = RouterConfig(breaker=BreakerConfig(min_requests=2, error_rate=0.5, cooldown_s=600))
    remote = {"dead": f"http://127.0.0.1:{_closed_port()}"}
    with serving({"mamba2": checkpoints["mamba2"]}, remote=remote, policy=policy, router_config=config) as (url, _):
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(2):
                r = client.post("/v1/completions", json={"model": "dead", "prompt": "hi", "max_tokens": 2})
                assert r.status_code == 502 and "dead" in r.json()["error"]["message"]
            r = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
            assert r.status_code == 200, r.text
            routing = r.json()["routing"]
            assert (routing["backend"], routing["source"]) == ("mamba2", "fallback")
            assert "breaker of dead open" in routing["reason"]
            assert client.get("/health").json()["backends"]["dead"]["breaker"] == "open"
            metrics = client.get("/metrics").text
    assert 'ssmkit_requests_total{backend="dead",endpoint="completions",status="502"} 2.0' in metrics
    assert 'ssmkit_breaker_state{backend="dead"} 2.0' in metrics
