"""The two kinds of backend a server sends work to.

`LocalBackend`: a checkpoint folder (config.json, safetensors, tokenizer) served by an Engine in this process.
`RemoteBackend`: any OpenAI-compatible server (another ssmkit, vLLM) reached over HTTP with httpx.
"""

from __future__ import annotations

import asyncio
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx

from ssmkit.inference.cache import cache_nbytes
from ssmkit.inference.sampling import SamplingConfig

from .engine import Draining, Engine, EngineEvent, GenerationRequest, Overloaded
from .errors import ApiError
from .text import IncrementalText, StopMatcher, load_chat_template


@dataclass
class Piece:
    """A part of a local completion: new text, and on the last piece the finish reason and token counts."""

    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0
    first_token_at: float | None = None


DISCONNECT_POLL_S = 0.2  # how often a non-streamed request checks that its client is still there


class EventRelay:
    """Hands engine events (engine thread) to request queues (event loop) with one loop wake-up per batch of
    events rather than one per token per request: a decode step of 32 sequences wakes the loop once."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._pending: list = []
        self._lock = threading.Lock()

    def post(self, queue: asyncio.Queue, event: EngineEvent) -> None:
        with self._lock:
            self._pending.append((queue, event))
            if len(self._pending) > 1:
                return  # a flush is already scheduled and will take this one too
        try:
            self.loop.call_soon_threadsafe(self._flush)
        except RuntimeError:
            pass  # the event loop has closed (shutdown): nobody is listening any more

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for queue, event in pending:
            queue.put_nowait(event)


class LocalBackend:
    """A local model: loads the checkpoint and its tokenizer, starts an Engine with max_concurrency slots of
    max_context positions. The chat template is the folder's (None when it ships none)."""

    kind = "local"

    def __init__(self, name: str, path, *, max_concurrency: int = 8, max_queue: int = 16, max_context: int = 2048,
                 dtype=None, device=None, warmup: bool = False):
        from ssmkit.io import ByteTokenizer, load_pretrained, load_tokenizer

        self.name, self.path = name, Path(path)
        self.model = load_pretrained(self.path, dtype=dtype, device=device)
        vocab = self.model.config.vocab_size
        try:
            self.tokenizer = load_tokenizer(self.path)
        except FileNotFoundError:
            # No tokenizer file: the built-in byte tokenizer, with <eos> only when the vocabulary has room for it.
            self.tokenizer = ByteTokenizer() if vocab > 256 else ByteTokenizer(specials=(), eos_token=None)
        self.chat_template = load_chat_template(self.path)
        eos = self.tokenizer.eos_token_id
        eos = self.model.config.eos_token_id if eos is None else eos
        self.eos = () if eos is None else (eos,)
        self.max_context = max_context
        self.engine = Engine(self.model, max_concurrency=max_concurrency, max_queue=max_queue, max_len=max_context,
                             name=name, warmup=warmup)
        self._relay: EventRelay | None = None

    def encode(self, text: str) -> list[int]:
        """Prompt text -> token ids (the tokenizer's BOS first when it has one), as `ssmkit generate` does."""
        ids = self.tokenizer.encode(text)
        bos = self.tokenizer.bos_token_id
        return [bos] + ids if bos is not None else ids

    def describe(self) -> dict:
        """What /v1/models and /health show: mixers, limits, and the bytes of the slot pool (SSM states of fixed
        size; KV caches of max_context positions per slot)."""
        cfg = self.model.config
        return {"kind": "local", "mixers": sorted(set(cfg.mixers)), "max_context": self.max_context,
                "chat_template": self.chat_template is not None, "max_concurrency": self.engine.max_concurrency,
                "max_queue": self.engine.max_queue, "state_bytes": cache_nbytes(self.engine.pool.state)}

    def submit(self, prompt_ids: list[int], max_tokens: int, sampling: SamplingConfig, seed: int | None,
               stops: list[str], timeout_s: float, request_id: str, ignore_eos: bool = False) -> "LocalStream":
        """Queues the request on the engine (raises ApiError 429 when full, 503 when draining)."""
        loop = asyncio.get_running_loop()
        if self._relay is None or self._relay.loop is not loop:
            self._relay = EventRelay(loop)
        queue: asyncio.Queue = asyncio.Queue()
        relay = self._relay

        def on_event(event: EngineEvent) -> None:
            relay.post(queue, event)

        eos = () if ignore_eos else self.eos
        request = GenerationRequest(prompt_ids, max_tokens, on_event, sampling=sampling, seed=seed, eos=eos,
                                    timeout_s=timeout_s, request_id=request_id)
        try:
            self.engine.submit(request)
        except Overloaded as err:
            raise ApiError(429, f"{err}; retry after {err.retry_after_s} s", code="overloaded",
                           headers={"Retry-After": str(err.retry_after_s)}) from None
        except Draining as err:
            raise ApiError(503, str(err), code="draining") from None
        return LocalStream(self, request, queue, stops)

    def close(self, grace_s: float = 0.0) -> None:
        self.engine.stop(grace_s)


class LocalStream:
    """The pieces of one local completion, as an async iterator. `cancel()` frees its slot at the next token.

    disconnected: optional async callable polled while no token arrives (non-streamed requests), so a client that
    hangs up is noticed. Timeouts and engine errors raise ApiError (504, 500).
    """

    def __init__(self, backend: LocalBackend, request: GenerationRequest, queue: asyncio.Queue, stops: list[str]):
        self.request, self.queue = request, queue
        self.text = IncrementalText(backend.tokenizer)
        self.stops = StopMatcher(stops)
        self.ids: list[int] = []
        self.first_token_at: float | None = None
        self.done = False

    def cancel(self) -> None:
        self.request.cancel()

    async def pieces(self, disconnected=None):
        checked = asyncio.get_running_loop().time()
        try:
            while not self.done:
                try:
                    event = await asyncio.wait_for(self.queue.get(), timeout=DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    event = None
                now = asyncio.get_running_loop().time()
                if disconnected is not None and now - checked >= DISCONNECT_POLL_S:
                    checked = now
                    if await disconnected():
                        self.cancel()
                        return
                if event is None:
                    continue
                piece = self._on_event(event)
                if piece is not None:
                    yield piece
        finally:
            if not self.done:
                self.cancel()

    def _on_event(self, event: EngineEvent) -> Piece | None:
        if event.kind == "token":
            self.ids.append(event.token)
            if self.first_token_at is None:
                self.first_token_at = event.at
            out, stopped = self.stops.feed(self.text.feed(self.ids))
            if stopped:
                self.cancel()
                self.done = True
                return Piece(out, "stop", len(self.ids), self.first_token_at)
            return Piece(out) if out else None
        self.done = True
        if event.reason in ("stop", "length"):
            out, _ = self.stops.feed(self.text.feed(self.ids, final=True), final=True)
            return Piece(out, event.reason, len(self.ids), self.first_token_at)
        if event.reason == "timeout":
            raise ApiError(504, f"timeout: {event.message}", code="timeout")
        if event.reason == "cancelled":
            raise ApiError(503, f"the request was cancelled: {event.message or 'cancelled'}", code="cancelled")
        raise ApiError(500, f"generation failed: {event.message}", code="engine_error")


class RemoteBackend:
    """An OpenAI-compatible server at base_url (with or without a trailing /v1). `model` is what is sent as the
    request's model field (default: this backend's name)."""

    kind = "remote"

    def __init__(self, name: str, base_url: str, model: str | None = None, timeout_s: float = 60.0):
        url = base_url.rstrip("/")
        self.name, self.base_url = name, url[:-3] if url.endswith("/v1") else url
        self.model = model or name
        self.timeout_s = timeout_s if math.isfinite(timeout_s) else None
        self._client: httpx.AsyncClient | None = None

    def describe(self) -> dict:
        return {"kind": "remote", "url": self.base_url, "model": self.model}

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s, connect=5.0))
        return self._client

    async def send(self, path: str, body: dict, stream: bool) -> httpx.Response:
        """POSTs body (with the remote model name) to base_url + path; the response is open when stream is set
        (the caller closes it). Raises ApiError 502 / 504 when the server cannot be reached or does not answer."""
        body = {**body, "model": self.model}
        request = self.client().build_request("POST", self.base_url + path, json=body)
        try:
            return await self.client().send(request, stream=stream)
        except httpx.TimeoutException as err:
            raise ApiError(504, f"backend {self.name}: no answer within {self.timeout_s} s ({type(err).__name__})",
                           code="upstream_timeout") from None
        except httpx.HTTPError as err:
            raise ApiError(502, f"backend {self.name}: {type(err).__name__}: {err}", code="upstream_error") from None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def close(self, grace_s: float = 0.0) -> None:
        self._client = None  # the event loop that owned it is gone; its sockets close with it
