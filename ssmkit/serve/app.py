"""The HTTP API (OpenAI-compatible): FastAPI routes over a Service. Bodies are parsed by schemas.parse_body so that
every bad body is a 400 naming its field; streams are server-sent events ending with `data: [DONE]`.

Every completion carries the routing decision in its "routing" field and in the X-Ssmkit-Routing header (JSON).
"""

from __future__ import annotations

import json
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .backends import LocalBackend
from .errors import ApiError
from .schemas import ChatRequest, CompletionRequest, FeedbackRequest, parse_body
from .service import Job, Service

ROUTING_HEADER = "X-Ssmkit-Routing"
_ERRORS = {str(s): {"description": d, "content": {"application/json": {}}} for s, d in
           ((400, "bad request: the error names the field"), (404, "unknown model"),
            (429, "over capacity (Retry-After)"), (503, "shutting down or no backend available"))}


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title="ssmkit", version="0.1.0", description="OpenAI-compatible serving with routing")
    app.state.service = service

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError):
        return err.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        return ApiError(err.status_code, f"{request.method} {request.url.path}: {err.detail}",
                        headers=dict(err.headers or {})).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):
        return ApiError(500, f"internal error: {type(err).__name__}: {err}", code="internal").response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {"loc": ("request",), "msg": "invalid"}
        param = ".".join(str(p) for p in first["loc"][1:]) or str(first["loc"][0])
        return ApiError(400, f"{param}: {first['msg']}", param=param).response()

    @app.post("/v1/completions", openapi_extra=_body(CompletionRequest), responses=_ERRORS)
    async def completions(request: Request):
        return await _complete(service, request, chat=False)

    @app.post("/v1/chat/completions", openapi_extra=_body(ChatRequest), responses=_ERRORS)
    async def chat_completions(request: Request):
        return await _complete(service, request, chat=True)

    @app.post("/v1/feedback", openapi_extra=_body(FeedbackRequest), responses=_ERRORS)
    async def feedback(request: Request):
        req = parse_body(await request.body(), request.headers.get("content-type"), FeedbackRequest)
        return service.feedback(req.request_id, req.quality)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": service.models()}

    @app.get("/health")
    async def health():
        backends = {}
        for name, b in service.backends.items():
            entry = b.describe() | {"breaker": None}
            if isinstance(b, LocalBackend):
                entry["running"], entry["queued"] = b.engine.load()
            backends[name] = entry
        for snap in service.breaker_states():
            if snap["backend"] in backends:
                backends[snap["backend"]]["breaker"] = snap["state"]
        status = "draining" if service.draining else "ok"
        return JSONResponse({"status": status, "backends": backends}, status_code=503 if service.draining else 200)

    @app.get("/metrics")
    async def metrics():
        return Response(service.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.openapi = lambda: _openapi(app)
    return app


async def _complete(service: Service, request: Request, chat: bool):
    endpoint = "chat.completions" if chat else "completions"
    job = None
    try:
        req = parse_body(await request.body(), request.headers.get("content-type"),
                         ChatRequest if chat else CompletionRequest)
        job = service.start(req, chat)
        local = isinstance(job.backend, LocalBackend)
        if local:
            stream, prompt_tokens = service.submit_local(job, req, chat)
    except ApiError as err:
        service.reject(endpoint, err, job)
        if job is not None:
            err.headers.setdefault(ROUTING_HEADER, _header(job.routing))
        raise
    if not local:
        return await _proxy(service, job, req, chat)  # records its own outcome
    headers = {ROUTING_HEADER: _header(job.routing), "X-Request-Id": job.request_id}
    if req.stream:
        return StreamingResponse(_sse_local(service, job, stream, prompt_tokens, chat), headers=headers,
                                 media_type="text/event-stream")
    text = []
    try:
        async for piece in stream.pieces(request.is_disconnected):
            text.append(piece.text)
            if piece.finish_reason is not None:
                service.finish(job, 200, completion_tokens=piece.completion_tokens,
                               first_token_at=piece.first_token_at)
                usage = _usage(prompt_tokens, piece.completion_tokens)
                return JSONResponse(_full(job, chat, "".join(text), piece.finish_reason, usage), headers=headers)
    except ApiError as err:
        service.finish(job, err.status, backend_error=err.status >= 500)
        err.headers.update(headers)
        raise
    service.finish(job, 499, record=False)  # the client hung up; nobody reads this
    return Response(status_code=499)


async def _sse_local(service: Service, job: Job, stream, prompt_tokens: int, chat: bool):
    first, status, tokens, first_at, error = True, 200, 0, None, False
    try:
        async for piece in stream.pieces():
            if piece.text or piece.finish_reason or first:
                chunk = _chunk(job, chat, piece.text, piece.finish_reason, first)
                if piece.finish_reason is not None:
                    tokens, first_at = piece.completion_tokens, piece.first_token_at
                    chunk["usage"] = _usage(prompt_tokens, tokens)
                first = False
                yield _event(chunk)
        yield b"data: [DONE]\n\n"
    except ApiError as err:
        status, error = err.status, err.status >= 500
        yield _event(err.body())
        yield b"data: [DONE]\n\n"
    finally:
        stream.cancel()  # no-op when finished; frees the slot when the client went away mid-stream
        status = status if stream.done else 499
        service.finish(job, status, completion_tokens=tokens, first_token_at=first_at, backend_error=error,
                       record=stream.done)


async def _proxy(service: Service, job: Job, req, chat: bool):
    """Sends the request to a remote backend and relays its answer (the SSE bytes unchanged when streaming)."""
    path = "/v1/chat/completions" if chat else "/v1/completions"
    headers = {ROUTING_HEADER: _header(job.routing), "X-Request-Id": job.request_id}
    try:
        resp = await job.backend.send(path, service.remote_body(req), stream=req.stream)
    except ApiError as err:
        service.finish(job, err.status, backend_error=True)
        err.headers.update(headers)
        raise
    if not req.stream or resp.status_code != 200:
        body = await resp.aread()
        await resp.aclose()
        service.finish(job, resp.status_code, backend_error=resp.status_code >= 500,
                       completion_tokens=_remote_tokens(body))
        try:
            data = json.loads(body)
        except ValueError:
            return Response(body, status_code=resp.status_code, headers=headers,
                            media_type=resp.headers.get("content-type"))
        if isinstance(data, dict) and resp.status_code == 200:
            data["routing"] = job.routing
        return JSONResponse(data, status_code=resp.status_code, headers=headers)
    return StreamingResponse(_sse_remote(service, job, resp), headers=headers, media_type="text/event-stream")


async def _sse_remote(service: Service, job: Job, resp):
    events, first_at, complete = 0, None, False
    try:
        async for chunk in resp.aiter_raw():
            if first_at is None:
                first_at = time.monotonic()
            events += chunk.count(b"data:") - chunk.count(b"data: [DONE]")
            complete = complete or b"[DONE]" in chunk
            yield chunk
    finally:
        await resp.aclose()
        # One token per relayed event: ssmkit and vLLM stream one token per chunk (an estimate for others).
        service.finish(job, 200 if complete else 502, completion_tokens=max(events - 1, 0), first_token_at=first_at,
                       backend_error=not complete)


def _remote_tokens(body: bytes) -> int:
    try:
        return int(json.loads(body)["usage"]["completion_tokens"])
    except (ValueError, KeyError, TypeError):
        return 0


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _full(job: Job, chat: bool, text: str, finish_reason: str, usage: dict) -> dict:
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return {"id": job.request_id, "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": job.backend.name, "choices": [choice], "usage": usage,
            "routing": job.routing}


def _chunk(job: Job, chat: bool, text: str, finish_reason: str | None, first: bool) -> dict:
    if chat:
        delta = {"role": "assistant", "content": text} if first else {"content": text}
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    chunk = {"id": job.request_id, "object": "chat.completion.chunk" if chat else "text_completion",
             "created": int(time.time()), "model": job.backend.name, "choices": [choice]}
    if first:
        chunk["routing"] = job.routing
    return chunk


def _event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _header(routing: dict) -> str:
    """The routing decision as one-line ASCII JSON (header values must be latin-1 without line breaks)."""
    return json.dumps({k: routing.get(k) for k in ("backend", "confidence", "rule", "source", "reason")},
                      ensure_ascii=True)


def _body(model_cls) -> dict:
    ref = {"$ref": f"#/components/schemas/{model_cls.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema plus the request bodies (parsed by hand, so FastAPI does not see them)."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for cls in (CompletionRequest, ChatRequest, FeedbackRequest):
        spec = cls.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(spec.pop("$defs", {}))
        components[cls.__name__] = spec
    app.openapi_schema = schema
    return schema
