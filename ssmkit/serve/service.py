"""What the server does with a completion request: pick the backend (routing or pinning), check the prompt against
the model, run it locally or proxy it, and record the outcome in the router (breakers, feedback) and the metrics.

The HTTP layer (app.py) only parses bodies and turns the results below into responses.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from ssmkit.inference.sampling import SamplingConfig
from ssmkit.io import ByteTokenizer
from ssmkit.route import RequestFeatures, Router

from .backends import LocalBackend, RemoteBackend
from .errors import ApiError, field_error
from .metrics import ServerMetrics
from .schemas import ChatRequest, CompletionRequest

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
ROUTING_FIELDS = ("task", "latency_budget_ms", "gpu_memory_gb", "requires_icl")


def check_policy_backends(router: Router, served: list[str]) -> None:
    """Raises ValueError when the router can choose a backend that is not in `served`."""
    missing = [b for b in dict.fromkeys(router.candidates + router.fallback + router.policy.backends())
               if b not in served]
    if missing:
        raise ValueError(f"policy: names backends {missing} that this server does not serve; served: "
                         f"{sorted(served)} (map roles to them in the policy's `roles`)")


@dataclass
class Job:
    """One request after routing: where it goes, the routing answer shown to the client, and its bookkeeping."""

    request_id: str
    endpoint: str  # "completions" | "chat.completions"
    backend: LocalBackend | RemoteBackend
    routing: dict
    routed: bool  # chosen by the router (feedback applies) rather than pinned
    started: float


class Service:
    """Backends by name, the router (None: "auto" goes to the first backend), metrics, and the draining flag.

    Raises ValueError when the router's policy names a backend that is not served.
    """

    def __init__(self, local: dict[str, LocalBackend], remote: dict[str, RemoteBackend], router: Router | None,
                 timeout_s: float = 60.0):
        self.backends: dict = {**local, **remote}
        if not self.backends:
            raise ValueError("model, backend: expected at least one local model or remote backend, got none")
        if len(self.backends) != len(local) + len(remote) or "auto" in self.backends:
            raise ValueError(f"model, backend: names must be distinct and not 'auto', got {list(local) + list(remote)}")
        self.router = router
        if router is not None:
            check_policy_backends(router, list(self.backends))
        self.timeout_s = timeout_s
        # seq_len for routing is counted with the first local model's tokenizer (UTF-8 bytes without one).
        first = next(iter(local.values()), None)
        self.routing_tokenizer = first.tokenizer if first is not None else ByteTokenizer(specials=(), eos_token=None)
        self.draining = False
        self.metrics = ServerMetrics(self.load, self.breaker_states)

    # ---- views for /health, /metrics, /v1/models -----------------------------------------------------------
    def load(self) -> dict:
        return {name: b.engine.load() for name, b in self.backends.items() if isinstance(b, LocalBackend)}

    def breaker_states(self) -> list[dict]:
        return self.router.breaker_states() if self.router is not None else []

    def models(self) -> list[dict]:
        created = int(time.time())
        return [{"id": name, "object": "model", "created": created, "owned_by": "ssmkit", "ssmkit": b.describe()}
                for name, b in self.backends.items()]

    # ---- routing -----------------------------------------------------------------------------------------------
    def start(self, req: CompletionRequest | ChatRequest, chat: bool) -> Job:
        """Routes (model "auto") or pins (a model name) the request; raises ApiError 404 / 503."""
        endpoint = "chat.completions" if chat else "completions"
        request_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        started = time.monotonic()
        if self.draining:
            raise ApiError(503, "the server is shutting down and takes no new requests", code="draining")
        if req.model != "auto":
            if req.model not in self.backends:
                raise ApiError(404, f"model: unknown model {req.model!r}; expected 'auto' or one of "
                                    f"{sorted(self.backends)}", param="model", code="model_not_found")
            routing = {"backend": req.model, "reason": "pinned by the request's model field", "confidence": 1.0,
                       "rule": None, "source": "pinned", "request_id": request_id}
            self.metrics.decisions.labels("pinned", req.model, "pinned").inc()
            return Job(request_id, endpoint, self.backends[req.model], routing, False, started)
        if self.router is None:
            name = next(iter(self.backends))
            routing = {"backend": name, "reason": "no routing policy: the first backend", "confidence": 1.0,
                       "rule": None, "source": "default", "request_id": request_id}
            return Job(request_id, endpoint, self.backends[name], routing, False, started)
        text = "\n".join(m.content for m in req.messages) if chat else req.prompt
        features = RequestFeatures(seq_len=len(self.routing_tokenizer.encode(text)),
                                   task=req.task or ("chat" if chat else "general"),
                                   latency_budget_ms=req.latency_budget_ms, gpu_memory_gb=req.gpu_memory_gb,
                                   requires_icl=req.requires_icl)
        d = self.router.decide(features, request_id=request_id)
        self.metrics.decisions.labels(d.rule, d.backend, d.source).inc()
        routing = {"backend": d.backend, "reason": d.reason, "confidence": d.confidence, "rule": d.rule,
                   "source": d.source, "request_id": request_id, "seq_len": features.seq_len}
        if d.source == "unavailable":
            raise ApiError(503, f"no backend available: {d.reason}", code="unavailable")
        return Job(request_id, endpoint, self.backends[d.backend], routing, True, started)

    # ---- local generation --------------------------------------------------------------------------------------
    def submit_local(self, job: Job, req: CompletionRequest | ChatRequest, chat: bool):
        """Checks the prompt against the local model and queues it; returns (LocalStream, prompt_tokens)."""
        b: LocalBackend = job.backend
        if chat:
            if b.chat_template is None:
                raise field_error("model", f"{b.name} ships no chat template (no chat_template in its "
                                           f"tokenizer_config.json); use /v1/completions with a prompt")
            try:
                text = b.chat_template.render([m.model_dump() for m in req.messages])
            except ValueError as err:
                raise field_error("messages", str(err).removeprefix("messages: ")) from None
        else:
            text = req.prompt
        ids = b.encode(text)
        if not ids:
            raise field_error("prompt", "expected a non-empty prompt, got an empty string")
        n, limit = len(ids), b.max_context
        if n >= limit:
            raise field_error("prompt", f"{n} tokens, but {b.name} allows at most {limit - 1} prompt tokens "
                                        f"(its context holds {limit} tokens, prompt plus completion)")
        bad = [i for i in ids if not 0 <= i < b.model.config.vocab_size]
        if bad:
            raise field_error("prompt", f"token id {bad[0]} is outside {b.name}'s vocabulary "
                                        f"({b.model.config.vocab_size} ids)")
        room = limit - n
        if req.max_tokens is not None and req.max_tokens > room:
            raise field_error("max_tokens", f"{req.max_tokens} new tokens do not fit: the prompt takes {n} of "
                                            f"{b.name}'s {limit} context tokens, leaving {room}")
        max_tokens = min(DEFAULT_MAX_TOKENS, room) if req.max_tokens is None else req.max_tokens
        sampling = SamplingConfig(req.temperature, req.top_k, req.top_p if req.top_p < 1.0 else None)
        try:
            stream = b.submit(ids, max_tokens, sampling, req.seed, req.stop, self.timeout_s, job.request_id,
                              ignore_eos=req.ignore_eos)
        except ApiError as err:
            self.metrics.rejected.labels(b.name, err.code or str(err.status)).inc()
            raise
        self.metrics.tokens.labels(b.name, "prompt").inc(n)
        return stream, n

    # ---- outcomes ----------------------------------------------------------------------------------------------
    def finish(self, job: Job, status: int, *, completion_tokens: int = 0, first_token_at: float | None = None,
               backend_error: bool = False, record: bool = True) -> None:
        """Records an answered request: metrics, and for the router its latency (routed: breakers and feedback;
        pinned: breakers). record=False (the client went away) leaves the router out."""
        name = job.backend.name
        elapsed = time.monotonic() - job.started
        self.metrics.requests.labels(name, job.endpoint, str(status)).inc()
        if completion_tokens:
            self.metrics.tokens.labels(name, "completion").inc(completion_tokens)
        if status < 400:
            self.metrics.latency.labels(name).observe(elapsed)
        if first_token_at is not None:
            self.metrics.ttft.labels(name).observe(max(0.0, first_token_at - job.started))
        if self.router is None or not record or 400 <= status < 500:
            return
        if job.routed:
            self.router.record_latency(job.request_id, elapsed * 1000.0, error=backend_error)
        else:
            self.router.observe(name, elapsed * 1000.0, backend_error)

    def reject(self, endpoint: str, err: ApiError, job: Job | None = None) -> None:
        """Counts a request answered with an error before it ran."""
        self.metrics.requests.labels(job.backend.name if job else "none", endpoint, str(err.status)).inc()

    def feedback(self, request_id: str, quality: float) -> dict:
        if self.router is None:
            raise ApiError(404, "request_id: this server has no router, so there is no decision to score",
                           param="request_id")
        try:
            r = self.router.record_quality(request_id, quality)
        except ValueError as err:
            status = 404 if "no decision" in str(err) else 409
            raise ApiError(status, str(err), param="request_id") from None
        return {"request_id": request_id, "quality": quality, "reward": r}

    def remote_body(self, req: CompletionRequest | ChatRequest) -> dict:
        """The request as sent to a remote backend: without routing fields, defaults left to the remote."""
        body = req.model_dump(exclude_none=True, exclude=set(ROUTING_FIELDS) | {"n", "user"})
        if not body.get("stop"):
            body.pop("stop", None)
        return body

    def close(self, grace_s: float = 0.0) -> None:
        for b in self.backends.values():
            if isinstance(b, LocalBackend):
                b.engine.drain()
        for b in self.backends.values():
            b.close(grace_s)
        if self.router is not None:
            self.router.close()
