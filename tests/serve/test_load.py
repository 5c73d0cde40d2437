"""A bounded load test on loopback: waves of concurrent clients, more than the concurrency cap plus the queue,
against one local model. Past the cap and the queue the server answers 429 with Retry-After; nothing gets a 5xx;
every accepted request, streamed or not, completes with exactly the tokens `generate` gives it. The test sends a
fixed number of requests with client timeouts, so it stops by itself."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.serve.harness import reference, serving, sse_events

CLIENTS = 24  # per wave; the server admits 4 running + 4 queued
WAVES = 2
MAX_TOKENS = 40


def _one(url: str, i: int, barrier: threading.Barrier) -> tuple[int, dict | None, str | None, str]:
    """(status, sampling fields, text or None, Retry-After header) of client i's request."""
    fields = {"temperature": 0.8, "seed": i} if i % 2 else {"temperature": 0.0}
    payload = {"model": "llama", "prompt": f"client {i}: ", "max_tokens": MAX_TOKENS, "stream": i % 3 == 0, **fields}
    with httpx.Client(base_url=url, timeout=60) as c:
        barrier.wait(timeout=30)
        with c.stream("POST", "/v1/completions", json=payload) as r:
            if r.status_code != 200:
                r.read()
                return r.status_code, fields, None, r.headers.get("retry-after", "")
            if payload["stream"]:
                events = sse_events(r.iter_lines())
                assert "error" not in events[-1], events[-1]
                return 200, fields, "".join(e["choices"][0]["text"] for e in events), ""
            r.read()
            return 200, fields, r.json()["choices"][0]["text"], ""


def test_clients_beyond_the_cap_get_429_and_accepted_requests_complete_exactly(checkpoints):
    with serving({"llama": checkpoints["llama"]}, max_concurrency=4, max_queue=4) as (url, service):
        statuses = []
        for wave in range(WAVES):
            barrier = threading.Barrier(CLIENTS)
            with ThreadPoolExecutor(CLIENTS) as pool:
                results = list(pool.map(lambda i: _one(url, i, barrier), range(CLIENTS)))
            for i, (status, fields, text, retry_after) in enumerate(results):
                statuses.append(status)
                assert status in (200, 429), f"wave {wave} client {i}: {status}"
                if status == 429:
                    assert int(retry_after) >= 1
                else:
                    expected, _ = reference(checkpoints["llama"], f"client {i}: ", MAX_TOKENS,
                                            fields["temperature"], None, fields.get("seed"))
                    assert text == expected, f"wave {wave} client {i}"
        assert statuses.count(429) > 0, "no client was turned away"
        assert statuses.count(200) >= 8 * WAVES, "fewer accepted than the cap plus the queue"
        assert service.backends["llama"].engine.load() == (0, 0)
        with httpx.Client(base_url=url) as c:
            assert c.get("/health").status_code == 200
            metrics = c.get("/metrics").text
        assert f'ssmkit_rejected_total{{backend="llama",reason="overloaded"}} {statuses.count(429)}.0' in metrics
