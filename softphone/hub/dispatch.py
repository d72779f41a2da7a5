"""A new connection's first bytes: the request head, then the WebSocket handshake.

:class:`Dispatch` reads each new connection's request head and hands the
connection on: a WebSocket upgrade to ``/ws`` to the hub (which applies
:func:`softphone.hub.admission.admit`), anything else to the aiohttp
application. :func:`handshake` and :func:`refuse` answer an upgrade that is not
accepted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, Protocol, cast

from aiohttp import web
from websockets.http11 import Response as WSResponse
from websockets.server import ServerProtocol

from softphone.core.protocol import HubError
from softphone.hub.connection import Refused
from softphone.hub.frames import text_frame

#: Seconds a new connection has to send its request head.
HEAD_TIMEOUT: Final = 30.0
#: A request head larger than this is not a WebSocket upgrade (aiohttp answers it).
MAX_HEAD_BYTES: Final = 16 * 1024

#: websockets logs every connection's opening and closing at info level: the hub says
#: it once, with the client's id (``connect``/``disconnect``).
WS_LOG: Final = logging.getLogger("softphone.hub.websocket")
WS_LOG.setLevel(logging.WARNING)


class Upgrades(Protocol):
    """Where :class:`Dispatch` hands a connection (the hub)."""

    #: The aiohttp server of the HTTP routes (None until the hub has started).
    http: web.Server | None

    def open_ws(self, transport: asyncio.Transport, head: bytes) -> None:
        """A request for ``/ws`` (``head``: what the client sent so far): answer it."""
        ...


class Dispatch(asyncio.Protocol):
    """Each new connection's first protocol: reads the request head, then hands the
    connection to the hub's WebSocket path (``/ws``) or to aiohttp (everything else).
    """

    __slots__ = ("_head", "_hub", "_timeout", "_timer", "_transport")

    def __init__(self, hub: Upgrades, timeout: float = HEAD_TIMEOUT) -> None:
        self._hub = hub
        self._head = b""
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not subclasses of asyncio's, but behave as them)
        self._transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(self._timeout, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def data_received(self, data: bytes) -> None:
        head = self._head + data if self._head else data
        transport = self._transport
        assert transport is not None
        if b"\r\n\r\n" not in head and len(head) <= MAX_HEAD_BYTES:
            self._head = head
            return
        self._head = b""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if head.startswith((b"GET /ws?", b"GET /ws ")):
            self._hub.open_ws(transport, head)
            return
        http = self._hub.http
        assert http is not None
        protocol = http()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(head)

    def eof_received(self) -> bool | None:
        return None  # an incomplete request: close


def handshake(ws: ServerProtocol, transport: asyncio.Transport, response: WSResponse,
              on_lost: Callable[[], None] | None) -> Refused:
    """Send ``response`` to the upgrade; the connection then waits to be closed."""
    refused = Refused(ws, transport, on_lost)
    transport.set_protocol(refused)
    ws.send_response(response)
    refused.flush()
    return refused


def refuse(ws: ServerProtocol, transport: asyncio.Transport, response: WSResponse,
           on_lost: Callable[[], None] | None, error: HubError, code: int,
           reason: str, early: bytes = b"") -> None:
    """Accept the upgrade, say why in an ``error`` message, then close with ``code``.

    (``early``: what the client sent right behind its request.)"""
    refused = handshake(ws, transport, response, on_lost)
    transport.write(text_frame(error.encode()))
    refused.close(code, reason.encode()[:120])
    if early:
        refused.data_received(early)
