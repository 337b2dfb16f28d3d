"""Pure ASGI middleware that decides before a request body is read: API key, readiness and
draining gate, and the body's size (counted as bytes arrive) and time to arrive.

Paths are judged as the router sees them: without the ``root_path`` a server (``uvicorn
--root-path``) or a mounting app puts in front, so no prefix gets around the key or the gate.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import AUTH, APIError, error_response, too_large

GENERATION_PREFIX = "/v1/audio/"
PROTECTED_PREFIX = "/v1/"


def route_path(scope: Scope) -> str:
    """The path the router matches: ``scope["path"]`` without the ``root_path`` (Starlette's
    rule: the root path is stripped only when the path starts with it)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :] or "/"
    return path


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when the body passes the limit (FastAPI re-raises HTTP errors)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds {limit} bytes")


class BodyTimeout(HTTPException):
    """Raised from ``receive`` when the body does not arrive in time."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            408,
            f"the request body did not arrive within {seconds:g} s",
            headers={"Connection": "close"},
        )


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
            or not route_path(scope).startswith(PROTECTED_PREFIX)
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
        if scope["type"] != "http" or not route_path(scope).startswith(GENERATION_PREFIX):
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
    otherwise bytes are counted as they arrive (a client may lie or send chunked). 408 when
    the whole body has not arrived ``timeout`` seconds after the request began (a slow
    client holds a connection and a worker's attention for at most that long)."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        timeout: float,
        on_reject: Callable[[str], None],
    ) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            self.on_reject("too_large")
            await _reply(self._too_large(), scope, receive, send)
            return
        deadline = time.monotonic() + self.timeout
        state: dict[str, Any] = {"received": 0, "complete": False, "error": None, "replaced": False}

        async def limited_receive() -> Message:
            if state["complete"]:  # the body is in: what comes next is the disconnect
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except TimeoutError:
                if state["error"] is None:
                    self.on_reject("body_timeout")
                state["error"] = BodyTimeout(self.timeout)
                raise state["error"] from None
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                state["complete"] = not message.get("more_body", False)
                if state["received"] > self.limit:
                    if state["error"] is None:
                        self.on_reject("too_large")
                    state["error"] = BodyTooLarge(self.limit)
                    raise state["error"]
            else:
                state["complete"] = True
            return message

        async def guarded_send(message: Message) -> None:
            # Whatever the app made of the interrupted body, the answer is 413 or 408.
            error = state["error"]
            if error is not None and message["type"] == "http.response.start":
                if message["status"] != error.status_code:
                    state["replaced"] = True
                    await _reply(self._error(error), scope, receive, send)
                    return
            if state["replaced"]:
                return
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    def _error(self, error: HTTPException) -> APIError:
        if isinstance(error, BodyTimeout):
            return APIError(
                408, str(error.detail), code="body_timeout", headers=dict(error.headers or {})
            )
        return self._too_large()

    def _too_large(self) -> APIError:
        return too_large(
            f"the request body exceeds this server's limit of {self.limit} bytes",
            None,
            "body_too_large",
        )
