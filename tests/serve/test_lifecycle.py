"""Lifecycle of requests and of the server: a client that hangs up frees its slot, a request past the timeout gets
a 504 (or an error event), graceful shutdown finishes running streams while refusing new work, and past the
grace period running work is cancelled."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.serve.harness import reference, serving, sse_events, start_server

PROMPT = "Long running "
LONG = {"prompt": PROMPT, "max_tokens": 90_000, "ignore_eos": True}  # runs until cancelled


def _wait_for(predicate, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture(scope="module")
def server(checkpoints):
    with serving({"mamba2": checkpoints["mamba2"]}, max_context=100_000, max_concurrency=2) as (url, service):
        yield url, service


def test_streaming_client_that_hangs_up_frees_its_slot(server):
    url, service = server
    engine = service.backends["mamba2"].engine
    with httpx.Client(base_url=url, timeout=30) as c:
        with c.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as r:
            lines = r.iter_lines()
            for _ in range(3):
                next(lines)
            assert engine.load()[0] == 1
    # leaving the block closed the connection mid-stream
    assert _wait_for(lambda: engine.load() == (0, 0)), engine.load()


def test_non_streaming_client_that_hangs_up_frees_its_slot(server):
    url, service = server
    engine = service.backends["mamba2"].engine
    with httpx.Client(base_url=url, timeout=0.5) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.post("/v1/completions", json=LONG)
    assert _wait_for(lambda: engine.load() == (0, 0)), engine.load()


def test_request_past_the_timeout_is_a_504_and_frees_its_slot(checkpoints):
    with serving({"mamba2": checkpoints["mamba2"]}, max_context=100_000, timeout_s=0.3) as (url, service):
        with httpx.Client(base_url=url, timeout=30) as c:
            r = c.post("/v1/completions", json=LONG)
            assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
            with c.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as s:
                events = sse_events(s.iter_lines())
            assert events[-1]["error"]["code"] == "timeout"
            assert service.backends["mamba2"].engine.load() == (0, 0)
            assert c.post("/v1/completions", json={"prompt": "ok", "max_tokens": 2}).status_code == 200


def test_draining_server_refuses_new_requests_with_503(server):
    url, service = server
    with httpx.Client(base_url=url, timeout=30) as c:
        service.draining = True
        try:
            r = c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
            assert r.status_code == 503 and r.json()["error"]["code"] == "draining"
            assert c.get("/health").json()["status"] == "draining"
        finally:
            service.draining = False
        assert c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code == 200


def test_graceful_shutdown_finishes_running_streams_and_refuses_new_work(checkpoints):
    server = start_server({"mamba2": checkpoints["mamba2"]}, max_context=4096, grace_s=30)
    result, first = {}, threading.Event()

    def stream():
        with httpx.Client(base_url=server.url, timeout=60) as c:
            with c.stream("POST", "/v1/completions", json={**LONG, "max_tokens": 1200, "temperature": 0,
                                                            "stream": True}) as r:
                lines = []
                for line in r.iter_lines():
                    lines.append(line)
                    first.set()
                result["events"] = sse_events(lines)

    client = threading.Thread(target=stream)
    client.start()
    assert first.wait(30)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    assert _wait_for(lambda: server.service.draining)

    def refused() -> bool:
        try:
            r = httpx.post(f"{server.url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=5)
            return r.status_code == 503
        except httpx.TransportError:
            return True  # the listening socket is closed

    assert refused()
    assert client.is_alive(), "the running stream should still be going while new work is refused"
    client.join(60)
    stopper.join(60)
    events = result["events"]
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert "".join(e["choices"][0]["text"] for e in events) == reference(checkpoints["mamba2"], PROMPT, 1200,
                                                                                     eos=False)[0]


def test_shutdown_past_the_grace_period_cancels_running_work(checkpoints):
    server = start_server({"mamba2": checkpoints["mamba2"]}, max_context=100_000, grace_s=0.3)
    engine = server.service.backends["mamba2"].engine
    started = threading.Event()

    def stream():
        try:
            with httpx.Client(base_url=server.url, timeout=60) as c:
                with c.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as r:
                    for _ in r.iter_lines():
                        started.set()
        except httpx.TransportError:
            pass  # the server cut the stream

    client = threading.Thread(target=stream)
    client.start()
    assert started.wait(30)
    t0 = time.monotonic()
    server.stop()
    assert time.monotonic() - t0 < 10
    client.join(30)
    assert not client.is_alive()
    assert engine.load() == (0, 0) and not engine._thread.is_alive()
