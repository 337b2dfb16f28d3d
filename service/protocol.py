"""uvicorn's HTTP/1.1 protocol (h11) with a time limit on request headers.

uvicorn closes idle keep-alive connections after ``timeout_keep_alive``, but any byte a
client sends cancels that timer, and a fresh connection has none: a client sending headers a
byte at a time (or nothing) holds its connection, and one of ``limit_concurrency`` places, for
ever. Here a connection that has not sent a request's complete headers within
``timeout_keep_alive`` of opening (or of its previous response) is closed. The body's time is
the app's (``DISTILWAVE_BODY_TIMEOUT_S``, 408). ``distilwave serve`` runs uvicorn with this
protocol.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class GuardedH11Protocol(H11Protocol):
    """``H11Protocol`` that closes connections whose request headers are late."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self.header_timer = self.loop.call_later(self.timeout_keep_alive, self._headers_late)

    def _disarm(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _headers_late(self) -> None:
        self.header_timer = None
        in_request = self.cycle is not None and not self.cycle.response_complete
        if in_request or self.transport.is_closing():
            return
        try:
            self.conn.send(h11.ConnectionClosed())
        except h11.LocalProtocolError:
            pass
        self.transport.close()
