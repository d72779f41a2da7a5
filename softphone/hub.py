"""The signaling hub: an aiohttp adapter around :mod:`softphone.protocol`.

Routes: ``GET /ws?id=`` (WebSocket), ``GET /ice-servers``, ``GET /healthz``.
Every frame a client sends is validated by :func:`route_frame` (pure); a
valid one is delivered through the :class:`~softphone.registry.Registry`
with ``from`` set to the sender, a bad one is answered with ``error`` and the
connection is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import WSCloseCode, WSMsgType, web

from ._tasks import spawn
from .protocol import (
    ErrorCode,
    HubError,
    Message,
    ProtocolError,
    is_valid_id,
    parse_client_message,
)
from .registry import MemoryRegistry, Registry

log = logging.getLogger(__name__)

#: The original hub's ``/ice-servers``: one public Google STUN entry.
DEFAULT_ICE_SERVERS: Final[tuple[dict[str, Any], ...]] = (
    {"urls": "stun:stun.l.google.com:19302"},
)

#: Close code for a refused id (policy violation).
CLOSE_BAD_ID: Final = WSCloseCode.POLICY_VIOLATION


def route_frame(sender: str, text: str | bytes) -> Message | HubError:
    """Decide what to do with one frame from ``sender``: forward it, or answer an error."""
    try:
        message = parse_client_message(text)
    except ProtocolError as exc:
        return HubError(exc.code, str(exc), exc.ref)
    return message.with_sender(sender)


@dataclass
class HubConfig:
    ice_servers: Sequence[dict[str, Any]] = DEFAULT_ICE_SERVERS
    #: Frames above this many bytes are answered with ``too-large``.
    max_message_bytes: int = 64 * 1024
    #: Frames queued for a client that does not read; past it, it is dropped.
    send_queue: int = 256
    heartbeat: float = 20.0
    extra_routes: list[Callable[[web.Application], None]] = field(default_factory=list)


class ClientConnection:
    """One client's WebSocket, with a bounded queue of outgoing frames."""

    __slots__ = ("_queue", "_writer", "client_id", "ws")

    def __init__(self, client_id: str, ws: web.WebSocketResponse, size: int) -> None:
        self.client_id = client_id
        self.ws = ws
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(size)
        self._writer = asyncio.create_task(self._write(), name=f"hub-writer-{client_id}")

    def deliver(self, text: str) -> bool:
        try:
            self._queue.put_nowait(text)
        except asyncio.QueueFull:
            log.warning("client %s does not read: dropping it", self.client_id)
            self._writer.cancel()
            spawn(self.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"send queue full"))
            return False
        return True

    async def _write(self) -> None:
        while True:
            text = await self._queue.get()
            if text is None:
                return
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return

    async def close(self, code: int = WSCloseCode.OK, reason: bytes = b"") -> None:
        """Flush what is queued, then close."""
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._writer), 2.0)
        await self.ws.close(code=code, message=reason)

    def stop(self) -> None:
        self._writer.cancel()


class Hub:
    """The hub's aiohttp application, with a way to run it in-process."""

    def __init__(self, config: HubConfig | None = None,
                 registry: Registry | None = None) -> None:
        self.config = config or HubConfig()
        self.registry = registry or MemoryRegistry()
        self.app = web.Application(middlewares=[_cors])
        self.app.add_routes([
            web.get("/ws", self._ws),
            web.get("/ice-servers", self._ice_servers),
            web.get("/healthz", self._healthz),
        ])
        for add in self.config.extra_routes:
            add(self.app)
        self._runner: web.AppRunner | None = None
        self._connections: set[ClientConnection] = set()
        self.port: int | None = None

    # -- running ------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0,
                    sock: socket.socket | None = None) -> int:
        """Listen (``port=0``: any free port) and return the port."""
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site: web.BaseSite
        if sock is not None:
            site = web.SockSite(self._runner, sock)
        else:
            site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server  # aiohttp keeps the asyncio Server here
        assert server is not None and isinstance(server, asyncio.base_events.Server)
        self.port = int(server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        for conn in list(self._connections):
            await conn.close(WSCloseCode.GOING_AWAY, b"hub shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.registry.close()

    # -- HTTP ---------------------------------------------------------------

    async def _ice_servers(self, request: web.Request) -> web.Response:
        return web.json_response({"iceServers": list(self.config.ice_servers)})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "clients": self.registry.local_count()})

    # -- WebSocket ----------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=self.config.heartbeat,
                                   max_msg_size=self.config.max_message_bytes * 4)
        await ws.prepare(request)
        client_id = request.query.get("id", "")
        if not is_valid_id(client_id):
            reason = "missing id" if not client_id else "invalid id"
            await ws.send_str(HubError(
                ErrorCode.BAD_MESSAGE,
                f"{reason}: use ?id= with 1 to 64 characters of A-Z a-z 0-9 . _ -").encode())
            await ws.close(code=CLOSE_BAD_ID, message=reason.encode())
            return ws

        conn = ClientConnection(client_id, ws, self.config.send_queue)
        self._connections.add(conn)
        replaced = await self.registry.register(conn)
        if isinstance(replaced, ClientConnection):
            replaced.deliver(HubError(ErrorCode.REPLACED,
                                      "a newer connection took this id").encode())
            spawn(replaced.close(WSCloseCode.POLICY_VIOLATION, b"replaced"))
        log.info("client %s connected from %s", client_id, request.remote)
        try:
            async for frame in ws:
                if frame.type == WSMsgType.TEXT:
                    await self._on_text(conn, frame.data)
                elif frame.type == WSMsgType.BINARY:
                    conn.deliver(HubError(ErrorCode.BAD_MESSAGE,
                                          "binary frames are not accepted").encode())
                elif frame.type == WSMsgType.ERROR:
                    log.info("client %s: %s", client_id, ws.exception())
        finally:
            self._connections.discard(conn)
            await self.registry.unregister(conn)
            conn.stop()
            log.info("client %s disconnected", client_id)
        return ws

    async def _on_text(self, conn: ClientConnection, text: str) -> None:
        if len(text) > self.config.max_message_bytes:
            conn.deliver(HubError(ErrorCode.TOO_LARGE,
                                  f"messages are limited to {self.config.max_message_bytes}"
                                  " bytes").encode())
            return
        routed = route_frame(conn.client_id, text)
        if isinstance(routed, HubError):
            log.debug("bad message from %s: %s", conn.client_id, routed.message)
            conn.deliver(routed.encode())
            return
        if not await self.registry.deliver(routed.to, routed.encode()):
            conn.deliver(HubError(ErrorCode.OFFLINE, f"{routed.to} is not connected",
                                  routed.type, routed.to).encode())


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS as the original hub: any origin may use the HTTP routes."""
    if request.method == "OPTIONS":
        response: web.StreamResponse = web.Response(status=204)
    else:
        response = await handler(request)
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = "*"
    return response


async def serve_forever(hub: Hub, host: str, port: int,
                        ready: Callable[[int], None] | None = None) -> None:
    """Run ``hub`` until cancelled."""
    bound = await hub.start(host, port)
    if ready is not None:
        ready(bound)
    try:
        await asyncio.Event().wait()
    finally:
        await hub.stop()
