"""Pure ASGI middleware that decides before a request body is read: API key, readiness and
draining gate, and the body-size limit counted as bytes arrive.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import AUTH, APIError, error_response, too_large

GENERATION_PREFIX = "/v1/audio/"
PROTECTED_PREFIX = "/v1/"


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when the body passes the limit (FastAPI re-raises HTTP errors)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds {limit} bytes")


async def _reply(error: APIError, scope: Scope, receive: Receive, send: Send) -> None:
    await error_response(error)(scope, receive, send)


class APIKeyMiddleware:
    """``Authorization: Bearer <key>`` on ``/v1/`` when a key is set; probes stay open."""

    def __init__(self, app: ASGIApp, api_key: str | None, on_reject: Callable[[], None]) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.expected is None
            or scope["type"] != "http"
            or not scope["path"].startswith(PROTECTED_PREFIX)
        ):
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if secrets.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        self.on_reject()
        message = "missing API key" if not given else "invalid API key"
        error = APIError(
            401, f"{message}: send 'Authorization: Bearer <key>'", AUTH, None, "invalid_api_key"
        )
        error.headers["WWW-Authenticate"] = "Bearer"
        await _reply(error, scope, receive, send)


class InFlight:
    """How many admitted generation requests have not finished (response sent)."""

    def __init__(self) -> None:
        self.count = 0


class GateMiddleware:
    """Refuse generation requests while loading or draining; count the ones in flight.

    ``check`` returns an ``APIError`` (503) to refuse with, or None to admit the request.
    """

    def __init__(
        self, app: ASGIApp, check: Callable[[], APIError | None], in_flight: InFlight
    ) -> None:
        self.app = app
        self.check = check
        self.in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(GENERATION_PREFIX):
            await self.app(scope, receive, send)
            return
        refusal = self.check()
        if refusal is not None:
            await _reply(refusal, scope, receive, send)
            return
        self.in_flight.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight.count -= 1


class BodyLimitMiddleware:
    """413 for bodies over ``limit`` bytes: a larger ``Content-Length`` is refused unread;
    otherwise bytes are counted as they arrive (a client may lie or send chunked)."""

    def __init__(self, app: ASGIApp, limit: int, on_reject: Callable[[], None]) -> None:
        self.app = app
        self.limit = limit
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            self.on_reject()
            await _reply(self._error(), scope, receive, send)
            return
        state: dict[str, Any] = {"received": 0, "exceeded": False, "replaced": False}

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.limit:
                    if not state["exceeded"]:
                        self.on_reject()
                    state["exceeded"] = True
                    raise BodyTooLarge(self.limit)
            return message

        async def guarded_send(message: Message) -> None:
            # Whatever the app made of the interrupted body, the answer is 413.
            if state["exceeded"] and message["type"] == "http.response.start":
                if message["status"] != 413:
                    state["replaced"] = True
                    await _reply(self._error(), scope, receive, send)
                    return
            if state["replaced"]:
                return
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    def _error(self) -> APIError:
        return too_large(
            f"the request body exceeds this server's limit of {self.limit} bytes",
            None,
            "body_too_large",
        )
