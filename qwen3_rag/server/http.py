"""uvicorn's HTTP/1.1 protocol with a deadline for the request head (``--read-timeout``).

uvicorn times out idle keep-alive connections, but a client that sends part of a request head
and then nothing holds its connection (and a slot) forever: data arriving cancels the
keep-alive timer, and no other timer runs until the head is complete. This protocol arms a timer
when a connection opens and after each answer, disarms it when a request's head is complete,
and closes the connection with ``408 Request Timeout`` when it fires. The body has its own
deadline in the app (:func:`qwen3_rag.server.base.read_json`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

_TIMEOUT_BODY = b"the request head was not sent in time (--read-timeout)\n"
_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


def head_timeout_protocol(seconds: float) -> type[H11Protocol]:
    """An ``H11Protocol`` class (uvicorn's ``http=``) that gives a request head ``seconds``."""

    class HeadTimeoutProtocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _cycle_seen: Any = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and self.cycle is not self._cycle_seen:
                self._cycle_seen = self.cycle  # a head arrived: the app takes it from here
                self._disarm()

        def on_response_complete(self) -> None:
            # Armed first: a pipelined request that the call below starts disarms it again.
            self._arm()
            super().on_response_complete()
            if self.transport.is_closing():
                self._disarm()

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _expired(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete:
                self.transport.write(_TIMEOUT_ANSWER)
            self.transport.close()

    return HeadTimeoutProtocol
