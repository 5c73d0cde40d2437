"""Errors the API answers with, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

`param` names the offending request field (or "body" for a body that is not JSON), and the message starts with it.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error",
               409: "conflict_error", 413: "invalid_request_error", 415: "invalid_request_error",
               429: "rate_limit_error", 500: "server_error", 502: "upstream_error", 503: "service_unavailable",
               504: "timeout_error"}


class ApiError(Exception):
    """An error answer: HTTP status, message, the field it concerns (or None), extra headers."""

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.headers = headers or {}
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def field_error(param: str, message: str) -> ApiError:
    """400 for one request field; the message is prefixed with the field's name."""
    return ApiError(400, f"{param}: {message}", param=param)
