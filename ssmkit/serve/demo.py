"""The serving part of `make demo`: two tiny local models behind the router, routed requests sent with the openai
client (httpx when it is not installed), the decisions printed, then a graceful shutdown."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ssmkit.route import Router, RulePolicy, default_policy

from .backends import LocalBackend
from .server import ServerThread
from .service import Service

REQUESTS = [  # (what it shows, prompt, routing fields)
    ("a short prompt", "State space models ", {}),
    ("few-shot (in-context learning)", "cat -> chat; dog -> chien; bird -> ", {"requires_icl": True}),
    ("40K tokens on a 24 GB GPU", "long document. " * 2700, {"gpu_memory_gb": 24, "task": "summarization"}),
]


def run_serving_demo(transformer: Path, mamba: Path, out=print) -> None:
    """Serves the checkpoint folders `transformer` and `mamba` on a free loopback port with the default rule table
    (roles played by backends of those names), sends REQUESTS with model "auto", prints each decision."""
    policy = RulePolicy(rules=default_policy().rules, roles={"transformer": "transformer", "mamba": "mamba",
                                                             "hybrid": "transformer"})
    with tempfile.TemporaryDirectory(prefix="ssmkit-serve-demo-") as tmp:
        local = {name: LocalBackend(name, path, max_concurrency=4, max_queue=4, max_context=48_000)
                 for name, path in (("transformer", transformer), ("mamba", mamba))}
        # The transformer's KV pool is sized by max_context: 4 rows x 48K positions of a tiny model (a few MB).
        service = Service(local, {}, Router(policy, str(Path(tmp) / "router.db")))
        with ServerThread(service) as url:
            out(f"serving transformer={transformer.name}, mamba={mamba.name} on {url}")
            send = _openai_sender(url)
            for what, prompt, fields in REQUESTS:
                body, headers = send(prompt, fields)
                routing = body["routing"]
                out(f"{what:32s} -> {routing['backend']:11s} rule={routing['rule']} "
                    f"confidence={routing['confidence']} seq_len={routing['seq_len']}")
                out(f"{'':32s}    {json.loads(headers['x-ssmkit-routing'])['reason']}")
                out(f"{'':32s}    text: {body['choices'][0]['text']!r}")
        out("server shut down")


def _openai_sender(url: str):
    """send(prompt, fields) -> (response body as a dict, headers), through the openai client when installed."""
    try:
        import openai
    except ImportError:
        import httpx

        def send(prompt, fields):
            r = httpx.post(f"{url}/v1/completions", json={"model": "auto", "prompt": prompt, "max_tokens": 12,
                                                          "temperature": 0, **fields}, timeout=120)
            r.raise_for_status()
            return r.json(), r.headers
        return send

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)

    def send(prompt, fields):
        raw = client.completions.with_raw_response.create(model="auto", prompt=prompt, max_tokens=12,
                                                          temperature=0, extra_body=fields)
        return raw.parse().model_dump(), raw.headers
    return send
