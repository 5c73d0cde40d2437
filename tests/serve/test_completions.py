"""Completions over real HTTP (uvicorn on a loopback port, httpx): non-streamed and streamed answers equal
`generate` on the same checkpoint for the same seed, concurrent requests share decode steps and still match,
stop strings cut the text, chat uses the checkpoint's chat template, and the routing decision is in the answer."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.serve.harness import reference, serving, sse_events

PROMPT = "State space models "


@pytest.fixture(scope="module")
def server(checkpoints, policy_file):
    with serving(checkpoints, policy=policy_file, max_concurrency=4, max_queue=8) as (url, service):
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client, service


@pytest.mark.parametrize("model", ["llama", "mamba2", "hybrid"])
@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 0.8, "top_p": 0.9, "seed": 7}])
def test_completion_equals_generate_for_the_same_seed(server, checkpoints, model, sampling):
    client, _ = server
    r = client.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": 24, **sampling})
    assert r.status_code == 200, r.text
    body = r.json()
    text, ids = reference(checkpoints[model], PROMPT, 24, sampling["temperature"], sampling.get("top_p"),
                          sampling.get("seed"))
    assert body["choices"][0]["text"] == text
    assert body["usage"] == {"prompt_tokens": len(PROMPT), "completion_tokens": len(ids),
                             "total_tokens": len(PROMPT) + len(ids)}
    assert body["choices"][0]["finish_reason"] == ("stop" if ids[-1] == 256 else "length")
    assert body["model"] == model and body["routing"]["source"] == "pinned"


@pytest.mark.parametrize("model", ["llama", "mamba2"])
def test_streamed_completion_equals_generate(server, checkpoints, model):
    client, _ = server
    payload = {"model": model, "prompt": PROMPT, "max_tokens": 20, "temperature": 1.0, "seed": 3, "stream": True}
    with client.stream("POST", "/v1/completions", json=payload) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.iter_lines())
    text, ids = reference(checkpoints[model], PROMPT, 20, 1.0, None, 3)
    assert "".join(e["choices"][0]["text"] for e in events) == text
    assert len(events) >= 2 and all(e["choices"][0]["finish_reason"] is None for e in events[:-1])
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert events[-1]["usage"]["completion_tokens"] == len(ids)
    assert events[0]["routing"]["backend"] == model
    assert len({e["id"] for e in events}) == 1


def test_concurrent_requests_share_decode_steps_and_each_equals_generate(server, checkpoints):
    client, service = server
    engine = service.backends["hybrid"].engine
    prompts = [f"{i} " * (1 + 3 * i) for i in range(6)]
    steps_before = engine.steps

    def one(i):
        seed = {"temperature": 0.7, "seed": i} if i % 2 else {"temperature": 0.0}
        r = client.post("/v1/completions", json={"model": "hybrid", "prompt": prompts[i], "max_tokens": 30, **seed})
        return r.status_code, r.json(), seed

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(6)))
    total = 0
    for i, (status, body, seed) in enumerate(results):
        assert status == 200, body
        text, ids = reference(checkpoints["hybrid"], prompts[i], 30, seed["temperature"], None, seed.get("seed"))
        assert body["choices"][0]["text"] == text, f"request {i}"
        total += len(ids) - 1  # the first token of each comes from its prefill
    assert engine.steps - steps_before < total, "the requests were decoded one at a time"


def test_stop_string_cuts_the_text_before_it(server, checkpoints):
    client, _ = server
    text, _ = reference(checkpoints["llama"], PROMPT, 24)
    stop = next(text[i:i + 2] for i in range(3, len(text) - 2) if "\ufffd" not in text[i:i + 2])
    for stream in (False, True):
        payload = {"model": "llama", "prompt": PROMPT, "max_tokens": 24, "temperature": 0, "stop": [stop],
                   "stream": stream}
        if stream:
            with client.stream("POST", "/v1/completions", json=payload) as r:
                events = sse_events(r.iter_lines())
            got = "".join(e["choices"][0]["text"] for e in events)
            reason = events[-1]["choices"][0]["finish_reason"]
        else:
            choice = client.post("/v1/completions", json=payload).json()["choices"][0]
            got, reason = choice["text"], choice["finish_reason"]
        assert got == text[:text.index(stop)] and reason == "stop", f"stream={stream}"


def test_chat_completion_renders_the_checkpoints_chat_template(server, checkpoints):
    client, _ = server
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    r = client.post("/v1/chat/completions", json={"model": "llama", "messages": messages, "max_tokens": 10,
                                                   "temperature": 0})
    assert r.status_code == 200, r.text
    rendered = "<system>Be brief.\n<user>Hi\n<assistant>"  # harness.CHAT_TEMPLATE, by hand
    text, _ = reference(checkpoints["llama"], rendered, 10)
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": text}
    assert body["usage"]["prompt_tokens"] == len(rendered)
    with client.stream("POST", "/v1/chat/completions", json={"model": "llama", "messages": messages,
                                                             "max_tokens": 10, "temperature": 0,
                                                             "stream": True}) as s:
        events = sse_events(s.iter_lines())
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == text


def test_chat_with_a_model_without_chat_template_is_a_clear_400(server):
    client, _ = server
    r = client.post("/v1/chat/completions", json={"model": "mamba2",
                                                  "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "model" and "no chat template" in error["message"]


def test_routing_decision_is_in_the_body_and_the_header(server):
    client, _ = server
    r = client.post("/v1/completions", json={"model": "auto", "prompt": "Hello", "max_tokens": 2})
    assert r.status_code == 200
    routing = r.json()["routing"]
    header = json.loads(r.headers["x-ssmkit-routing"])
    assert routing["backend"] == header["backend"] == "llama" == r.json()["model"]
    assert routing["rule"] == header["rule"] == "short-prompt"
    assert routing["confidence"] == header["confidence"] == 0.8
    assert header["reason"] == routing["reason"] and "seq_len 5 < 2000" in routing["reason"]
    assert r.headers["x-request-id"] == r.json()["id"] == routing["request_id"]


def test_models_and_health_list_every_backend(server):
    client, _ = server
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["llama", "mamba2", "hybrid"]
    assert models["data"][0]["ssmkit"]["chat_template"] is True
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["backends"]["llama"]["breaker"] == "closed"
