"""Bad requests get a 4xx JSON error in OpenAI's shape whose `param` (and message) names the offending field, and
the server keeps serving: after each bad request, /health answers and a good completion still runs."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.serve.harness import serving

JSON = {"content-type": "application/json"}
CASES = [  # (name, endpoint, raw body, expected status, expected param)
    ("malformed json", "/v1/completions", b'{"prompt": "hi", ', 400, "body"),
    ("not an object", "/v1/completions", b'["hi"]', 400, "body"),
    ("empty body", "/v1/completions", b"", 400, "body"),
    ("invalid utf-8", "/v1/completions", b'{"prompt": "caf\xe9"}', 400, "body"),
    ("lone surrogate escape", "/v1/completions", b'{"prompt": "\\udc80"}', 400, "prompt"),
    ("missing prompt", "/v1/completions", b'{"max_tokens": 4}', 400, "prompt"),
    ("empty prompt", "/v1/completions", b'{"prompt": ""}', 400, "prompt"),
    ("two prompts", "/v1/completions", b'{"prompt": ["a", "b"]}', 400, "prompt"),
    ("prompt is a number", "/v1/completions", b'{"prompt": 42}', 400, "prompt"),
    ("negative max_tokens", "/v1/completions", b'{"prompt": "hi", "max_tokens": -1}', 400, "max_tokens"),
    ("zero max_tokens", "/v1/completions", b'{"prompt": "hi", "max_tokens": 0}', 400, "max_tokens"),
    ("huge max_tokens", "/v1/completions", b'{"prompt": "hi", "max_tokens": 1000000000}', 400, "max_tokens"),
    ("enormous max_tokens", "/v1/completions", b'{"prompt": "hi", "max_tokens": 1e400}', 400, "max_tokens"),
    ("max_tokens as string", "/v1/completions", b'{"prompt": "hi", "max_tokens": "5"}', 400, "max_tokens"),
    ("max_tokens as float", "/v1/completions", b'{"prompt": "hi", "max_tokens": 5.5}', 400, "max_tokens"),
    ("temperature too high", "/v1/completions", b'{"prompt": "hi", "temperature": 2.5}', 400, "temperature"),
    ("negative temperature", "/v1/completions", b'{"prompt": "hi", "temperature": -0.1}', 400, "temperature"),
    ("temperature NaN", "/v1/completions", b'{"prompt": "hi", "temperature": NaN}', 400, "temperature"),
    ("temperature as bool", "/v1/completions", b'{"prompt": "hi", "temperature": true}', 400, "temperature"),
    ("top_p zero", "/v1/completions", b'{"prompt": "hi", "top_p": 0}', 400, "top_p"),
    ("negative seed", "/v1/completions", b'{"prompt": "hi", "seed": -3}', 400, "seed"),
    ("stream as string", "/v1/completions", b'{"prompt": "hi", "stream": "yes"}', 400, "stream"),
    ("five stop strings", "/v1/completions", b'{"prompt": "hi", "stop": ["a","b","c","d","e"]}', 400, "stop"),
    ("n above one", "/v1/completions", b'{"prompt": "hi", "n": 2}', 400, "n"),
    ("prompt too long", "/v1/completions", json.dumps({"prompt": "x" * 200}).encode(), 400, "prompt"),
    ("prompt leaves no room", "/v1/completions", json.dumps({"prompt": "x" * 100, "max_tokens": 50}).encode(),
     400, "max_tokens"),
    ("unknown model", "/v1/completions", b'{"prompt": "hi", "model": "gpt-9"}', 404, "model"),
    ("model as number", "/v1/completions", b'{"prompt": "hi", "model": 7}', 400, "model"),
    ("bad routing feature", "/v1/completions", b'{"prompt": "hi", "gpu_memory_gb": -1}', 400, "gpu_memory_gb"),
    ("requires_icl as string", "/v1/completions", b'{"prompt": "hi", "requires_icl": "true"}', 400,
     "requires_icl"),
    ("chat without messages", "/v1/chat/completions", b'{"model": "llama"}', 400, "messages"),
    ("chat with a bad role", "/v1/chat/completions",
     b'{"model": "llama", "messages": [{"role": "robot", "content": "x"}]}', 400, "messages.0.role"),
    ("feedback quality above one", "/v1/feedback", b'{"request_id": "x", "quality": 1.5}', 400, "quality"),
    ("feedback for an unknown request", "/v1/feedback", b'{"request_id": "cmpl-x", "quality": 0.5}', 404,
     "request_id"),
]


@pytest.fixture(scope="module")
def client(checkpoints, policy_file):
    models = {"llama": checkpoints["llama"], "mamba2": checkpoints["mamba2"]}
    with serving(models, policy=policy_file, max_context=128) as (url, _):
        with httpx.Client(base_url=url, timeout=30) as c:
            yield c


@pytest.mark.parametrize("name, endpoint, body, status, param", CASES, ids=[c[0] for c in CASES])
def test_bad_request_is_a_4xx_naming_the_field_and_the_server_keeps_serving(client, name, endpoint, body, status,
                                                                            param):
    r = client.post(endpoint, content=body, headers=JSON)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    assert error["message"].startswith(param) or param in error["message"], error
    assert client.get("/health").status_code == 200
    ok = client.post("/v1/completions", json={"prompt": "ok", "max_tokens": 2, "model": "mamba2"})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1


def test_wrong_content_type_unknown_path_and_wrong_method_are_json_errors(client):
    r = client.post("/v1/completions", content=b"prompt=hi", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["param"] == "body"
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()
    r = client.get("/v1/completions")
    assert r.status_code == 405 and "error" in r.json()
    assert client.get("/health").status_code == 200
