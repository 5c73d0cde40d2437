"""Request bodies of the API as pydantic models (strict types), and the parser that turns any bad body into a 400
naming the field: bytes -> UTF-8 -> JSON -> model. The models' JSON schemas document the bodies in /openapi.json.

Routing features are optional top-level fields of a completion request (see ssmkit/serve/README.md).
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ApiError, field_error

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_SEED = 2**63 - 1


def _check_text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("expected text encodable as UTF-8 (it holds a lone surrogate escape)") from None
    return value


class RoutingFields(BaseModel):
    """Optional request features for model "auto" (routing); ignored when a model is named."""

    model_config = ConfigDict(strict=True, extra="ignore")

    task: str | None = Field(None, min_length=1, max_length=64,
                             description='task label for routing, e.g. "chat", "summarization", "retrieval"')
    latency_budget_ms: float | None = Field(None, gt=0, allow_inf_nan=False, description="client latency budget")
    gpu_memory_gb: float | None = Field(None, gt=0, allow_inf_nan=False,
                                        description="GPU memory of the serving device the client targets")
    requires_icl: bool = Field(False, description="the prompt relies on in-context learning")

    @field_validator("task")
    @classmethod
    def _task_text(cls, v):
        return None if v is None else _check_text(v)


class SamplingFields(RoutingFields):
    """Fields shared by completions and chat completions."""

    model: str = Field("auto", min_length=1, max_length=256, description='"auto" routes; a model name pins')
    max_tokens: int | None = Field(None, ge=1, le=2**31 - 1,
                                   description="new tokens; default 16, capped by what the context leaves")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1, le=2**31 - 1, description="extension: keep the k most likely tokens")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="sampling seed; equal seeds give equal output")
    stop: str | list[str] | None = Field(None, description="up to 4 stop strings (not part of the output)")
    stream: bool = False
    ignore_eos: bool = Field(False, description="extension (as vLLM's): keep generating past the stop token")
    n: int = Field(1, ge=1, le=1, description="only 1 is supported")
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("expected up to 4 non-empty strings")
        return [_check_text(s) for s in stops]

    @field_validator("model")
    @classmethod
    def _model_text(cls, v):
        return _check_text(v)


class CompletionRequest(SamplingFields):
    """POST /v1/completions."""

    prompt: str | list[str] = Field(description="the prompt (a list must hold exactly one string)")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError(f"expected a string or a list of exactly one string, got {len(v)} strings")
            v = v[0]
        return _check_text(v)


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content")
    @classmethod
    def _content_text(cls, v):
        return _check_text(v)


class ChatRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)


class FeedbackRequest(BaseModel):
    """POST /v1/feedback: a quality score in [0, 1] for a routed request (its response's "id")."""

    model_config = ConfigDict(strict=True, extra="ignore")

    request_id: str = Field(min_length=1, max_length=256)
    quality: float = Field(ge=0.0, le=1.0)


def parse_body(raw: bytes, content_type: str | None, model_cls: type[BaseModel]) -> BaseModel:
    """Request bytes -> a validated model_cls instance; raises ApiError (400/413/415) naming the field."""
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"body: expected at most {MAX_BODY_BYTES} bytes, got {len(raw)}", param="body")
    if content_type and content_type.split(";")[0].strip().lower() not in ("application/json", ""):
        raise ApiError(415, f"body: expected Content-Type application/json, got {content_type!r}", param="body")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise field_error("body", f"expected UTF-8 text, got an invalid byte at offset {err.start}") from None
    if not text.strip():
        raise field_error("body", "expected a JSON object, got an empty body")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise field_error("body", f"malformed JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    except (ValueError, RecursionError) as err:
        raise field_error("body", f"malformed JSON: {err}") from None
    if not isinstance(data, dict):
        raise field_error("body", f"expected a JSON object, got {type(data).__name__}")
    try:
        return model_cls.model_validate(data)
    except ValidationError as err:
        raise _validation_error(err) from None


def _validation_error(err: ValidationError) -> ApiError:
    first = err.errors()[0]
    # Drop the union-member tags pydantic adds to the location (prompt.str, prompt.list[str]).
    loc = [str(p) for p in first["loc"] if not (isinstance(p, str) and ("[" in p or p in ("str", "int", "float")))]
    param = ".".join(loc) or "body"
    msg = first["msg"]
    if first["type"] == "missing":
        msg = "required field is missing"
    got = first.get("input")
    shown = "" if first["type"] == "missing" else f", got {_short(got)}"
    return field_error(param, f"{msg}{shown}")


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=True, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
