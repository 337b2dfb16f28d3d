"""One JSON error envelope for every error the service returns.

    {"error": {"message": "...", "type": "...", "param": "mel" | null, "code": "..." | null}}

The shape is OpenAI's, so existing client libraries surface the message. ``type`` is the
class of problem (what the client should do), ``code`` the specific reason.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

INVALID = "invalid_request_error"
AUTH = "authentication_error"
TOO_LARGE = "request_too_large"
UNAVAILABLE = "service_unavailable"
NOT_FOUND = "not_found_error"
SERVER = "server_error"


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """What every non-2xx response carries."""

    error: ErrorBody


class APIError(Exception):
    """An error with its HTTP status, rendered in the envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = INVALID,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}


def invalid(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    """422: the request is well-formed but a value is unusable."""
    return APIError(422, message, INVALID, param, code)


def too_large(message: str, param: str | None = None, code: str = "too_large") -> APIError:
    """413: the request exceeds a size limit."""
    return APIError(413, message, TOO_LARGE, param, code)


def unavailable(message: str, code: str, retry_after: int) -> APIError:
    """503 with ``Retry-After``: overloaded, loading or draining; try again later."""
    return APIError(503, message, UNAVAILABLE, None, code, {"Retry-After": str(retry_after)})


def error_response(error: APIError) -> JSONResponse:
    body = ErrorResponse(
        error=ErrorBody(message=error.message, type=error.type, param=error.param, code=error.code)
    )
    return JSONResponse(body.model_dump(), status_code=error.status, headers=error.headers)


_HTTP_CODES = {
    400: "invalid_body",
    404: "not_found",
    405: "method_not_allowed",
    408: "body_timeout",
    413: "body_too_large",
}


def _http_type(status: int) -> str:
    if status == 401:
        return AUTH
    if status == 404:
        return NOT_FOUND
    if status == 413:
        return TOO_LARGE
    if status == 503:
        return UNAVAILABLE
    return INVALID if status < 500 else SERVER


_UNION_TAG = re.compile(r"^[a-z_-]+\[.*\]$|^(str|int|float|bool)$")


def _param(location: tuple[Any, ...]) -> str | None:
    """``("body", "mel", "list[...]", 0, 3)`` -> ``"mel.0.3"`` (union branch tags dropped)."""
    parts = [str(p) for p in location[1:] if not _UNION_TAG.match(str(p))]
    return ".".join(parts) or None


def _count(request: Request, status: int) -> None:
    """Refused bad input counts in ``distilwave_rejected_requests_total``."""
    service = getattr(request.app.state, "service", None)
    if service is not None and status in (400, 413, 422):
        service.metrics.reject("too_large" if status == 413 else "invalid")


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    _count(request, exc.status)
    return error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    _count(request, 422)
    first = errors[0] if errors else {"msg": "invalid request", "loc": (), "type": "invalid"}
    if first.get("type") == "json_invalid":
        return error_response(
            APIError(400, f"malformed JSON: {first.get('msg')}", INVALID, None, "invalid_json")
        )
    if tuple(first.get("loc", ())) == ("body",):  # no body, or not a JSON object
        return error_response(
            APIError(
                400,
                "the body must be a JSON object sent with Content-Type: application/json",
                INVALID,
                None,
                "invalid_body",
            )
        )
    param = _param(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid request"))
    if param:
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problems)"
    return error_response(APIError(422, message, INVALID, param, str(first.get("type"))))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    detail = exc.detail if isinstance(exc.detail, str) else "request failed"
    if exc.status_code == 400:
        _count(request, 400)
    code = _HTTP_CODES.get(exc.status_code)
    return error_response(
        APIError(exc.status_code, detail, _http_type(exc.status_code), None, code, headers)
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(APIError(500, "internal error", SERVER, None, "internal_error"))


def install_error_handlers(app: FastAPI) -> None:
    """Render every error (ours, validation, routing, unexpected) in the envelope."""
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
