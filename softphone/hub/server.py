"""The signaling hub: a network adapter around :mod:`softphone.core.protocol`.

Routes: ``GET /ws?id=[&token=]`` (WebSocket), ``GET /ice-servers``,
``GET /healthz``, ``GET /metrics``, and the browser phone (``/``,
``/callerA.html``, ``/callerB.html``: :mod:`softphone.hub.webpages`).

One listening socket (TLS included) for all of them. Each connection's request
head is read by :class:`_Dispatch`: a WebSocket upgrade to ``/ws`` stays on the
hub's own lean :class:`asyncio.Protocol` (:class:`ClientConnection`, with
websockets' sans-I/O :class:`~websockets.server.ServerProtocol` parsing frames
and handshakes), anything else goes to the aiohttp application, one request per
connection. Lean because every connection costs memory for as long as a phone
is online, and every message CPU: no task, queue, reader or timer per
connection; one hub-wide heartbeat sweep; frames are handled as they arrive.

Every frame a client sends is validated by
:func:`~softphone.core.protocol.relay_text` (pure; :func:`route_frame` is the same
decision as values); a valid one is delivered through the
:class:`~softphone.hub.registry.Registry` with ``from`` set to the sender, a bad
one is answered with ``error`` and the connection is kept.

The decisions are pure and tested on their own: tokens and TURN credentials
in :mod:`softphone.hub.auth`; rates, connection counts, origins and who is in a
call with whom in :mod:`softphone.hub.limits`. This module applies them.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import ipaddress
import logging
import socket
import ssl
import struct
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

from aiohttp import WSCloseCode, web
from websockets.frames import Opcode
from websockets.http11 import Request as WSRequest
from websockets.http11 import Response as WSResponse
from websockets.protocol import State as WSState
from websockets.server import ServerProtocol

try:  # websockets' C unmasking, if it was built
    from websockets.speedups import apply_mask as _unmask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask as _unmask

from softphone._tasks import spawn
from softphone.core.protocol import (
    ErrorCode,
    HubError,
    Message,
    ProtocolError,
    is_valid_id,
    parse_client_message,
    relay_text,
)
from softphone.hub.auth import (
    DEFAULT_TURN_TTL,
    AuthError,
    check_secret,
    turn_credentials,
    verify_token,
)
from softphone.hub.limits import CallPairs, ConnectionLimiter, OriginPolicy, TokenBucket
from softphone.hub.metrics import CONTENT_TYPE_LATEST, HubMetrics
from softphone.hub.registry import MemoryRegistry, Peer, Registry
from softphone.hub.webpages import add_web_routes

log = logging.getLogger(__name__)

#: The original hub's ``/ice-servers``: one public Google STUN entry.
DEFAULT_ICE_SERVERS: Final[tuple[dict[str, Any], ...]] = (
    {"urls": "stun:stun.l.google.com:19302"},
)

#: Close code for a refused id or token (policy violation).
CLOSE_BAD_ID: Final = WSCloseCode.POLICY_VIOLATION
#: Close code when the hub is full (RFC 6455 "try again later").
CLOSE_FULL: Final = WSCloseCode.TRY_AGAIN_LATER
#: Seconds a client has to answer the hub's close frame before it is cut off.
CLOSE_TIMEOUT: Final = 5.0
#: Seconds :meth:`Hub.stop` waits for clients to answer its close frames.
STOP_GRACE: Final = 1.0
#: Seconds a new connection has to send its request head.
HEAD_TIMEOUT: Final = 30.0
#: A request head larger than this is not a WebSocket upgrade (aiohttp answers it).
MAX_HEAD_BYTES: Final = 16 * 1024

_TEXT: Final = Opcode.TEXT
_BINARY: Final = Opcode.BINARY
_CONT: Final = Opcode.CONT
#: An empty ping frame (RFC 6455 5.5.2), as a server sends it.
_PING: Final = b"\x89\x00"
#: The head of a pong frame by payload length (0 to 125).
_PONG: Final = tuple(bytes([0x8A, n]) for n in range(126))

#: websockets logs every connection's opening and closing at info level: ours says
#: it once, with the client's id (``connect``/``disconnect``).
_WS_LOG: Final = logging.getLogger(f"{__name__}.websocket")
_WS_LOG.setLevel(logging.WARNING)


def route_frame(sender: str, text: str | bytes) -> Message | HubError:
    """Decide what to do with one frame from ``sender``: forward it, or answer an error."""
    try:
        return parse_client_message(text, sender)
    except ProtocolError as exc:
        return HubError(exc.code, str(exc), exc.ref)


@dataclass
class HubConfig:
    ice_servers: Sequence[dict[str, Any]] = DEFAULT_ICE_SERVERS
    #: Frames above this many bytes are answered with ``too-large``.
    max_message_bytes: int = 64 * 1024
    #: Bytes unread by a client that does not read; past it, it is dropped.
    send_queue_bytes: int = 1024 * 1024
    heartbeat: float = 15.0
    extra_routes: list[Callable[[web.Application], None]] = field(default_factory=list)
    #: Tokens: a connection needs a token signed with this secret (None: open hub).
    secret: str | None = None
    #: Browser origins allowed besides the hub's own (``*``: any).
    allow_origins: Sequence[str] = ()
    #: Messages per second per connection (0: unlimited), and the burst allowed.
    rate: float = 100.0
    burst: float = 200.0
    #: Connections in total / from one address (0: unlimited).
    max_connections: int = 20_000
    max_per_address: int = 100
    #: How long a client in a call may be gone before its peer gets ``hangup``.
    peer_grace: float = 4.0
    #: TURN URLs handed out by ``/ice-servers`` with REST credentials from this secret.
    turn_urls: Sequence[str] = ()
    turn_secret: str | None = None
    turn_ttl: float = DEFAULT_TURN_TTL


class _WebSocket(asyncio.Protocol):
    """A WebSocket on its transport, once the hub has answered its handshake.

    websockets' sans-I/O :class:`~websockets.server.ServerProtocol` parses what
    arrives (frames, pings, the closing handshake) and says what to send back;
    this plain :class:`asyncio.Protocol` moves the bytes. No task, queue or timer
    per connection: liveness is one hub-wide sweep (:meth:`Hub._heartbeat`).
    """

    __slots__ = ("_close_timer", "_lost", "_transport", "_ws", "quiet")

    def __init__(self, ws: ServerProtocol, transport: asyncio.Transport) -> None:
        self._ws = ws
        self._transport = transport
        self._close_timer: asyncio.TimerHandle | None = None
        self._lost: asyncio.Future[None] | None = None
        #: Heartbeat sweeps since this client last sent anything.
        self.quiet = 0

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    def _flush(self) -> None:
        for data in self._ws.data_to_send():
            if data:
                self._transport.write(data)
            else:  # end of stream: after a closing handshake the server closes TCP
                self._transport.close()

    def data_received(self, data: bytes) -> None:
        self.quiet = 0
        ws = self._ws
        ws.receive_data(data)
        self._flush()
        events = ws.events_received()
        if events:
            self._frames(events)

    def eof_received(self) -> bool | None:
        self._ws.receive_eof()
        self._flush()
        return None  # the transport closes itself

    def _frames(self, events: list[Any]) -> None:
        """Frames the client sent (control frames are already answered)."""

    def close(self, code: int = WSCloseCode.OK, reason: bytes = b"") -> None:
        """Start the closing handshake; the connection is cut if it does not finish."""
        ws = self._ws
        if ws.state is WSState.OPEN:
            ws.send_close(code, reason.decode(errors="replace"))
            self._flush()
        transport = self._transport
        if self._close_timer is None and not transport.is_closing():
            self._close_timer = asyncio.get_running_loop().call_later(
                CLOSE_TIMEOUT, self.cut)

    def cut(self) -> None:
        """End the TCP connection now: what was written still goes (FIN after it), unless
        the client is not reading it (then reset)."""
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        transport = self._transport
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()

    def abort(self) -> None:
        self._transport.abort()

    def ping(self) -> None:
        if self._ws.state is WSState.OPEN and not self._transport.is_closing():
            self._transport.write(_PING)

    async def wait_closed(self) -> None:
        if self._lost is None:
            if self._transport.is_closing() and self._close_timer is None:
                return
            self._lost = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._lost)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._ws.receive_eof()  # (no-op if the closing handshake was done)
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        self._gone()

    def _gone(self) -> None:
        """The TCP connection is closed."""


class _Refused(_WebSocket):
    """A WebSocket told why it is refused, waiting for its closing handshake."""

    __slots__ = ("_on_lost",)

    def __init__(self, ws: ServerProtocol, transport: asyncio.Transport,
                 on_lost: Callable[[], None] | None) -> None:
        super().__init__(ws, transport)
        self._on_lost = on_lost

    def _gone(self) -> None:
        if self._on_lost is not None:
            self._on_lost()
            self._on_lost = None


class ClientConnection(_WebSocket):
    """One client's WebSocket; what it has not read yet is bounded in bytes.

    Frames go straight to the transport (one ``write`` of a whole RFC 6455 text
    frame), so they never interleave with pings and close frames. The
    transport's unsent buffer is the send queue; once it holds more than
    ``limit_bytes`` the client is not reading and is dropped.

    Frames are handled as they arrive (no task per connection). When one cannot
    be (over the rate limit, or a shared registry must be awaited), the hub stops
    reading the client and holds its frames already parsed, in order, until then.
    """

    __slots__ = ("_fragments", "_held", "_hub", "_limit_bytes", "_out", "_out_size", "_partial",
                 "_slow", "bucket", "client_id", "dropped", "limited_at", "registered", "remote")

    def __init__(self, hub: Hub, client_id: str, ws: ServerProtocol,
                 transport: asyncio.Transport, limit_bytes: int = 1024 * 1024,
                 bucket: TokenBucket | None = None, remote: str = "") -> None:
        super().__init__(ws, transport)
        self._hub = hub
        self.client_id = client_id
        self.bucket = bucket
        self.remote = remote
        self.dropped = False
        self.registered = False
        #: When this client was last told ``rate-limited``.
        self.limited_at = float("-inf")
        self._limit_bytes = limit_bytes
        #: Frames parsed but not handled yet, while reading is paused (None: reading).
        self._held: list[Any] | None = None
        #: The frames so far of a fragmented message.
        self._fragments: list[Any] | None = None
        #: The start of a frame not complete yet (see :meth:`data_received`).
        self._partial = b""
        #: websockets parses everything from now on.
        self._slow = False
        #: Frames for this client from the batch being handled (see Hub._batch).
        self._out: list[bytes] | None = None
        self._out_size = 0

    @property
    def queued(self) -> int:
        """Bytes written for this client that it has not taken yet."""
        return self._transport.get_write_buffer_size()

    def deliver(self, text: str) -> bool:
        transport = self._transport
        if self.dropped or transport.is_closing() or self._ws.state is not WSState.OPEN:
            return False
        frame = _text_frame(text)
        batch = self._hub._batch
        if batch is None:
            transport.write(frame)
            unread = transport.get_write_buffer_size()
        else:  # written with the others of the batch: one system call, not one each
            if self._out is None:
                self._out = [frame]
                batch.append(self)
            else:
                self._out.append(frame)
            self._out_size += len(frame)
            unread = transport.get_write_buffer_size() + self._out_size
        if self._limit_bytes and unread > self._limit_bytes:
            self._drop()
            return False
        return True

    def write_out(self) -> None:
        """Write what the batch left for this client."""
        out = self._out
        if out is None:
            return
        self._out = None
        self._out_size = 0
        if not self.dropped and not self._transport.is_closing():
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _flush(self) -> None:
        if self._out is not None:  # (what was delivered goes before a close frame)
            self.write_out()
        _WebSocket._flush(self)

    def _drop(self) -> None:
        log.warning("slow-reader id=%s remote=%s: more than %d bytes unread, dropping it",
                    self.client_id, self.remote, self._limit_bytes)
        self.dropped = True
        # It does not read, so it would not read a close frame either; and a closing
        # transport would keep its unsent buffer until the peer reads: abort.
        self._transport.abort()

    def stop(self) -> None:
        self.dropped = True

    # -- frames in ------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Whole text, ping and pong frames as a client sends them are taken here.

        The rest (close, binary and fragmented frames, and anything RFC 6455 does not
        allow) goes to websockets from the first such frame on, for good: its parser
        then answers or fails it. Most clients never send any before closing, and
        the common frames then cost a third of websockets' generator-based parser.
        """
        self.quiet = 0
        if self._slow:
            _WebSocket.data_received(self, data)
            return
        buf = self._partial + data if self._partial else data
        end = len(buf)
        limit = self._hub._max_frame
        texts: list[Any] = []
        pos = 0
        while end - pos >= 6:
            b0 = buf[pos]
            length = buf[pos + 1] ^ 0x80  # masked (as clients must) unless >= 0x80 now
            if b0 & 0x70 or not b0 & 0x80 or length & 0x80:  # RSV bits, not final, unmasked
                break
            start = pos + 6
            if length == 126:
                start = pos + 8
                if end < start:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 4], "big")
            elif length == 127:
                start = pos + 14
                if end < start:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
            opcode = b0 & 0x0F
            if length > limit or (opcode & 0x08 and length > 125):
                break
            stop = start + length
            if stop > end:
                self._partial = buf[pos:]
                if texts:
                    self._frames(texts)
                return
            if opcode == 0x1:
                texts.append(_unmask(buf[start:stop], buf[start - 4:start]))
            elif opcode == 0x9:  # ping: pong with its payload
                self._transport.write(_PONG[length] + _unmask(buf[start:stop],
                                                                 buf[start - 4:start]))
            elif opcode != 0xA:  # (pongs need nothing)
                break
            pos = stop
        else:
            self._partial = buf[pos:] if pos < end else b""
            if len(texts) > 1:
                self._batch(texts)
            elif texts:
                self._frames(texts)
            return
        # Not a frame for the quick path: websockets takes it from here.
        self._slow = True
        self._partial = b""
        if texts:
            self._frames(texts)
        _WebSocket.data_received(self, buf[pos:] if pos else buf)

    def _batch(self, texts: list[Any]) -> None:
        """Several messages read at once: what they deliver to each client is written
        in one piece when they are all handled."""
        hub = self._hub
        batch: list[ClientConnection] = []
        hub._batch = batch
        try:
            self._frames(texts)
        finally:
            hub._batch = None
            for conn in batch:
                conn.write_out()

    def eof_received(self) -> bool | None:
        if self._partial:  # websockets has not seen it: it would not know it was cut
            self._slow = True
            self._ws.receive_data(self._partial)
            self._partial = b""
        return _WebSocket.eof_received(self)

    def hold(self) -> None:
        """Stop reading this client; frames already parsed wait in order."""
        if self._held is None:
            self._held = []
            self._transport.pause_reading()

    def resume(self) -> None:
        """Handle the frames held, then read again (unless one of them holds again)."""
        held = self._held
        if held is None:
            return
        self._held = None
        if self.dropped or self._transport.is_closing():
            return
        self._transport.resume_reading()
        if held:
            self._frames(held)

    def _frames(self, events: list[Any]) -> None:
        if self.dropped:
            return
        held = self._held
        if held is not None:
            held.extend(events)
            return
        hub = self._hub
        for i, frame in enumerate(events):
            if type(frame) is bytes:  # a whole text message, from the quick path
                if self._text(frame, events, i):
                    continue
                return
            opcode = frame.opcode
            if opcode is _CONT or opcode is _TEXT or opcode is _BINARY:
                if not frame.fin or self._fragments is not None:
                    if self._fragments is None:
                        self._fragments = []
                    self._fragments.append(frame)
                    if not frame.fin:
                        continue
                    parts, self._fragments = self._fragments, None
                    opcode = parts[0].opcode
                    data = b"".join(part.data for part in parts)
                else:
                    data = frame.data
                if opcode is _BINARY:
                    hub._answer(self, HubError(ErrorCode.BAD_MESSAGE,
                                               "binary frames are not accepted"))
                    continue
                if self._text(data, events, i):
                    continue
                return

    def _text(self, data: bytes, events: list[Any], i: int) -> bool:
        """Hand text message ``events[i]`` to the hub; False when the frames after it
        must not be read now (invalid UTF-8 closed us, or we wait)."""
        try:
            text = data.decode()
        except UnicodeDecodeError:
            self._invalid_text()
            return False
        if self._hub._on_text(self, text):
            return True
        self._wait(events, i)
        return False

    def _wait(self, events: list[Any], i: int) -> None:
        """Waiting (rate limit, or a registry round trip): the frames after ``i`` wait too."""
        if self._held is None:
            self.hold()
        assert self._held is not None
        self._held.extend(events[i + 1:])

    def _invalid_text(self) -> None:
        self._ws.fail(WSCloseCode.INVALID_TEXT, "invalid UTF-8")
        self._flush()
        self.dropped = True

    def _gone(self) -> None:
        self.dropped = True
        self._held = None
        self._hub._closed(self)


_SHORT: Final = struct.Struct("!BB")
_MEDIUM: Final = struct.Struct("!BBH")
_LONG: Final = struct.Struct("!BBQ")


def _text_frame(text: str) -> bytes:
    """An unmasked, final WebSocket text frame (RFC 6455 5.2), as a server sends."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        return _SHORT.pack(0x81, n) + payload
    if n < 65536:
        return _MEDIUM.pack(0x81, 126, n) + payload
    return _LONG.pack(0x81, 127, n) + payload


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Hub:
    """The hub's aiohttp application, with a way to run it in-process."""

    def __init__(self, config: HubConfig | None = None,
                 registry: Registry | None = None) -> None:
        self.config = config or HubConfig()
        self.registry = registry or MemoryRegistry()
        if self.config.secret is not None:
            check_secret(self.config.secret)
        self.metrics = HubMetrics()
        self.origins = OriginPolicy.from_list(self.config.allow_origins)
        self.limiter = ConnectionLimiter(self.config.max_connections,
                                         self.config.max_per_address)
        self.pairs = CallPairs(self.config.peer_grace)
        self.registry.bind(self, self.metrics.registry)  # a shared registry reports here
        self.app = web.Application(middlewares=[_one_request, _cors])
        self.app.add_routes([
            web.get("/ice-servers", self._ice_servers),
            web.get("/healthz", self._healthz),
            web.get("/metrics", self._metrics),
        ])
        add_web_routes(self.app)  # the browser phone: /, /callerA.html, /callerB.html
        for add in self.config.extra_routes:
            add(self.app)
        # Every response of the HTTP routes closes its connection, so that the next
        # request of that client (a WebSocket upgrade) comes through _Dispatch again.
        self.app.on_response_prepare.append(_close_after)  # (whatever else answers)
        self._runner: web.AppRunner | None = None
        self._http: web.Server | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tls = False
        self._beat: asyncio.TimerHandle | None = None
        self._loop_time: Callable[[], float] = time.monotonic
        #: Frames above this are refused by websockets (close 1009); up to it, too large
        #: messages are answered with ``too-large`` and the connection is kept.
        self._max_frame = self.config.max_message_bytes * 4
        #: While a connection's frames read at once are handled: the clients given
        #: frames to write when they are done (ClientConnection.deliver).
        self._batch: list[ClientConnection] | None = None
        self._connections: set[ClientConnection] = set()
        self._pair_timer: asyncio.TimerHandle | None = None
        self.port: int | None = None

    # -- running ------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0,
                    sock: socket.socket | None = None,
                    ssl_context: ssl.SSLContext | None = None) -> int:
        """Listen (``port=0``: any free port) and return the port (https with ``ssl_context``).

        One listening socket: WebSocket upgrades to ``/ws`` are served by the hub's
        own lean protocol, every other request by the aiohttp application.
        """
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        http = self._runner.server
        assert http is not None
        self._http = http
        loop = asyncio.get_running_loop()
        self._loop_time = loop.time

        def dispatch() -> asyncio.Protocol:
            return _Dispatch(self)

        if sock is not None:
            self._server = await loop.create_server(dispatch, sock=sock, ssl=ssl_context)
        else:
            self._server = await loop.create_server(dispatch, host, port, ssl=ssl_context)
        self._tls = ssl_context is not None
        sockets: Sequence[socket.socket] = self._server.sockets
        self.port = int(sockets[0].getsockname()[1])
        bound = str(sockets[0].getsockname()[0])
        if self.config.heartbeat > 0:
            self._beat = loop.call_later(self.config.heartbeat / 2, self._heartbeat)
        if not self.config.secret and not _is_loopback(bound):
            log.warning("hub is open: no --secret, so anyone who reaches %s:%s can take "
                        "any id", bound, self.port)
        log.info("listening host=%s port=%s auth=%s origins=%s", bound, self.port,
                 "token" if self.config.secret else "open",
                 ",".join(sorted(self.origins.allowed)) or "own")
        return self.port

    async def stop(self) -> None:
        if self._pair_timer is not None:
            self._pair_timer.cancel()
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        if self._server is not None:
            self._server.close()
        closing = list(self._connections)
        for conn in closing:
            conn.close(WSCloseCode.GOING_AWAY, b"hub shutting down")
        if closing:  # a moment for the closing handshakes, then the rest is cut
            await asyncio.wait([asyncio.ensure_future(c.wait_closed()) for c in closing],
                               timeout=STOP_GRACE)
            for conn in closing:
                conn.cut()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        await self.registry.close()

    def _heartbeat(self) -> None:
        """Every half heartbeat: ping the clients quiet for a while, drop the silent ones.

        A client that sent nothing (not even a pong) for 1.5 heartbeats is gone.
        """
        interval = self.config.heartbeat
        self._beat = asyncio.get_running_loop().call_later(interval / 2, self._heartbeat)
        for conn in list(self._connections):
            quiet = conn.quiet = conn.quiet + 1
            if quiet >= 3:
                log.info("heartbeat-timeout id=%s remote=%s", conn.client_id, conn.remote)
                conn.abort()
            elif quiet == 2 and not conn.dropped:
                conn.ping()

    # -- HTTP ---------------------------------------------------------------

    async def _ice_servers(self, request: web.Request) -> web.Response:
        servers = list(self.config.ice_servers)
        if self.config.turn_secret and self.config.turn_urls:
            client_id = request.query.get("id", "")
            if self.config.secret:
                token = request.query.get("token") or _bearer(request)
                try:
                    verify_token(self.config.secret, token, client_id, time.time())
                except AuthError as exc:
                    self.metrics.error(ErrorCode.UNAUTHORIZED)
                    return web.json_response(
                        {"error": ErrorCode.UNAUTHORIZED.value, "message": str(exc)},
                        status=401)
            elif not is_valid_id(client_id):
                client_id = "anonymous"
            creds = turn_credentials(self.config.turn_secret, client_id, time.time(),
                                     self.config.turn_ttl)
            servers += [{"urls": url, "username": creds.username,
                         "credential": creds.credential} for url in self.config.turn_urls]
        return web.json_response({"iceServers": servers})

    async def _healthz(self, request: web.Request) -> web.Response:
        # "degraded" (still HTTP 200): a shared registry is unreachable; this node
        # serves its own clients and recovers by itself (docs/scale-out.md).
        return web.json_response({"status": self.registry.status(),
                                  "clients": self.registry.local_count()})

    async def _metrics(self, request: web.Request) -> web.Response:
        self.metrics.calls.set(len(self.pairs))
        resp = web.Response(body=self.metrics.exposition())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    # -- WebSocket ----------------------------------------------------------

    def _open_ws(self, transport: asyncio.Transport, head: bytes) -> None:
        """A request for ``/ws`` (``head``: what the client sent so far): answer it."""
        ws = ServerProtocol(max_size=self._max_frame, logger=_WS_LOG)
        split = head.find(b"\r\n\r\n") + 4
        head, early = (head[:split], head[split:]) if split >= 4 else (head, b"")
        ws.receive_data(head)
        events = ws.events_received()
        request = events[0] if events and isinstance(events[0], WSRequest) else None
        if request is None:  # not HTTP; websockets answered it (or closes)
            _Refused(ws, transport, None)._flush()
            return
        headers = request.headers
        response = ws.accept(request)
        if response.status_code != 101:  # not a valid WebSocket upgrade
            self._handshake(ws, transport, response, None)
            return
        origin = headers.get("Origin")
        host = headers.get("Host", "")
        if not self.origins.allows(origin, f"{'https' if self._tls else 'http'}://{host}"):
            self.metrics.refused.labels("origin").inc()
            peer = transport.get_extra_info("peername")
            log.info("refused reason=origin origin=%r remote=%s", origin[:100] if origin else
                     origin, peer[0] if peer else "")
            self._handshake(ws, transport, ws.reject(403, "origin not allowed\n"), None)
            return
        peer = transport.get_extra_info("peername")
        remote = str(peer[0]) if peer else ""
        refusal = self.limiter.open(remote)
        if refusal is not None:
            self.metrics.refused.labels("limit").inc()
            log.info("refused reason=limit remote=%s why=%r", remote, refusal.value)
            self._refuse(ws, transport, response, None,
                         HubError(ErrorCode.TOO_MANY_CONNECTIONS, refusal.value),
                         CLOSE_FULL, refusal.value, early)
            return
        counted = functools.partial(self.limiter.close, remote)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
        client_id = (query.get("id") or [""])[0]
        if not is_valid_id(client_id):
            reason = "missing id" if not client_id else "invalid id"
            self.metrics.refused.labels("bad-id").inc()
            self._refuse(ws, transport, response, counted, HubError(
                ErrorCode.BAD_MESSAGE,
                f"{reason}: use ?id= with 1 to 64 characters of A-Z a-z 0-9 . _ -"),
                CLOSE_BAD_ID, reason, early)
            return
        if self.config.secret:
            try:
                tokens = query.get("token")
                verify_token(self.config.secret, tokens[0] if tokens else None, client_id,
                             time.time())
            except AuthError as exc:
                self.metrics.refused.labels("unauthorized").inc()
                log.info("refused reason=unauthorized id=%s remote=%s why=%r", client_id,
                         remote, str(exc))
                self._refuse(ws, transport, response, counted,
                             HubError(ErrorCode.UNAUTHORIZED, f"unauthorized: {exc}"),
                             CLOSE_BAD_ID, f"unauthorized: {exc}", early)
                return
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(self.config.rate, self.config.burst, loop.time()) \
            if self.config.rate > 0 else None
        ws.send_response(response)
        for data in ws.data_to_send():
            transport.write(data)
        # A new protocol object for the open connection: the handshake's parser would
        # keep the request (headers and all, 2 KB) as long as the connection lives.
        ws = ServerProtocol(state=WSState.OPEN, max_size=self._max_frame, logger=_WS_LOG)
        conn = ClientConnection(self, client_id, ws, transport,
                                self.config.send_queue_bytes, bucket, remote)
        transport.set_protocol(conn)
        conn.hold()  # until it is registered
        if early:  # frames sent right behind the request
            conn.data_received(early)
        self._connections.add(conn)
        self.metrics.connections.inc()
        self.metrics.connections_total.inc()
        spawn(self._register(conn), name="hub-register")

    @staticmethod
    def _handshake(ws: ServerProtocol, transport: asyncio.Transport, response: WSResponse,
                   on_lost: Callable[[], None] | None) -> _Refused:
        refused = _Refused(ws, transport, on_lost)
        transport.set_protocol(refused)
        ws.send_response(response)
        refused._flush()
        return refused

    def _refuse(self, ws: ServerProtocol, transport: asyncio.Transport, response: WSResponse,
                on_lost: Callable[[], None] | None, error: HubError, code: int,
                reason: str, early: bytes = b"") -> None:
        """Accept the upgrade, say why in an ``error`` message, then close with ``code``.

        (``early``: what the client sent right behind its request.)"""
        refused = self._handshake(ws, transport, response, on_lost)
        self.metrics.error(error.code)
        transport.write(_text_frame(error.encode()))
        refused.close(code, reason.encode()[:120])
        if early:
            refused.data_received(early)

    async def _register(self, conn: ClientConnection) -> None:
        client_id = conn.client_id
        replaced = await self.registry.register(conn)
        conn.registered = True
        self.pairs.connected(client_id)
        if replaced is not None:
            self.registry_replaced(replaced)
        log.info("connect id=%s remote=%s replaced=%s", client_id, conn.remote,
                 replaced is not None)
        if conn.dropped:  # gone while it was being registered
            await self._unregister(conn)
        else:
            conn.resume()

    def _closed(self, conn: ClientConnection) -> None:
        """``conn``'s TCP connection is closed."""
        self.limiter.close(conn.remote)
        self._connections.discard(conn)
        self.metrics.connections.dec()
        if conn.registered:
            spawn(self._unregister(conn), name="hub-unregister")

    async def _unregister(self, conn: ClientConnection) -> None:
        client_id = conn.client_id
        still_held = await self.registry.unregister(conn)
        if still_held:
            self._left(client_id, asyncio.get_running_loop().time())
        log.info("disconnect id=%s code=%s", client_id, conn.close_code)

    def _answer(self, conn: ClientConnection, error: HubError) -> None:
        self.metrics.error(error.code)
        conn.deliver(error.encode())

    def _rate_limited(self, conn: ClientConnection, now: float) -> None:
        self.metrics.rate_limited.inc()
        if now - conn.limited_at >= 1.0:  # one notice a second, not one per message
            conn.limited_at = now
            self._answer(conn, HubError(
                ErrorCode.RATE_LIMITED,
                f"more than {self.config.rate:g} messages a second: messages dropped"))

    def _on_text(self, conn: ClientConnection, text: str) -> bool:
        """Handle one message; False if ``conn`` must not be read for now (it is held)."""
        bucket = conn.bucket
        if bucket is not None:
            now = self._loop_time()
            if not bucket.allow(now):
                # Dropped. Not reading for a while is the backpressure: a flood fills
                # TCP's buffers instead of the hub's CPU.
                self._rate_limited(conn, now)
                conn.hold()
                asyncio.get_running_loop().call_later(bucket.delay(now), conn.resume)
                return False
        limit = self.config.max_message_bytes
        size = len(text)
        if size > limit or (size * 4 > limit and len(text.encode()) > limit):
            self._answer(conn, HubError(ErrorCode.TOO_LARGE,
                                        f"messages are limited to {limit} bytes"))
            return True
        sender = conn.client_id
        try:  # route_frame's decision, without building a Message
            type_, to, wire = relay_text(text, sender)
        except ProtocolError as exc:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("bad-message id=%s why=%r", sender, str(exc))
            self._answer(conn, HubError(exc.code, str(exc), exc.ref))
            return True
        ok = self.registry.deliver_nowait(to, wire)
        if ok is None:  # another node's client: wait for the shared registry, in order
            conn.hold()
            spawn(self._deliver_later(conn, type_, to, wire), name="hub-deliver")
            return False
        self._delivered(conn, type_, to, ok)
        return True

    async def _deliver_later(self, conn: ClientConnection, type_: str, to: str,
                             wire: str) -> None:
        try:
            ok = await self.registry.deliver(to, wire)
            self._delivered(conn, type_, to, ok)
        finally:
            conn.resume()

    def _delivered(self, conn: ClientConnection, type_: str, to: str, ok: bool) -> None:
        if not ok:
            self._answer(conn, HubError(ErrorCode.OFFLINE, f"{to} is not connected",
                                        type_, to))
            return
        self.metrics.message(type_)
        if type_ in _CALL_TYPES:
            sender = conn.client_id
            if self.pairs.relayed(type_, sender, to):
                if type_ == "call-accept":
                    self.metrics.calls_total.inc()
                    log.info("call-start a=%s b=%s", sender, to)
                else:
                    log.info("call-end by=%s peer=%s how=%s", sender, to, type_)
                self.metrics.calls.set(len(self.pairs))

    # -- other nodes: what a shared registry (RedisRegistry) reports -------------

    def registry_replaced(self, peer: Peer) -> None:
        """``peer`` lost its id to a newer connection (here or on another node)."""
        if isinstance(peer, ClientConnection):
            peer.deliver(HubError(ErrorCode.REPLACED,
                                  "a newer connection took this id").encode())
            self.metrics.error(ErrorCode.REPLACED)
            peer.close(WSCloseCode.POLICY_VIOLATION, b"replaced")

    def registry_relayed(self, type_: str, sender: str, to: str) -> None:
        """A call message from another node's client reached ours: track the call."""
        if type_ in _CALL_TYPES and self.pairs.relayed(type_, sender, to):
            self.metrics.calls.set(len(self.pairs))

    def registry_peer_gone(self, client_id: str) -> None:
        """A remote client's node died: as if it disconnected from here."""
        self._left(client_id, asyncio.get_running_loop().time())

    def registry_peer_back(self, client_id: str) -> None:
        self.pairs.connected(client_id)

    # -- peers that leave -----------------------------------------------------

    def _left(self, client_id: str, now: float) -> None:
        if self.pairs.disconnected(client_id, now) is not None:
            log.info("in-call-disconnect id=%s peer=%s grace=%s", client_id,
                     self.pairs.peer_of(client_id), self.config.peer_grace)
            self._schedule_pairs()

    def _schedule_pairs(self) -> None:
        if self._pair_timer is not None:
            self._pair_timer.cancel()
            self._pair_timer = None
        deadline = self.pairs.next_deadline()
        if deadline is not None:
            self._pair_timer = asyncio.get_running_loop().call_at(deadline, self._pairs_due)

    def _pairs_due(self) -> None:
        self._pair_timer = None
        for gone in self.pairs.due(asyncio.get_running_loop().time()):
            log.info("peer-disconnected gone=%s peer=%s", gone.gone, gone.peer)
            hangup = Message("hangup", gone.peer, {"reason": "peer-disconnected"},
                             gone.gone, True)
            spawn(self.registry.deliver(gone.peer, hangup.encode()), name="hub-peer-gone")
        self.metrics.calls.set(len(self.pairs))
        self._schedule_pairs()


_CALL_TYPES: Final = frozenset({"call-request", "call-accept", "call-reject", "hangup"})


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _close_after(request: web.Request, response: web.StreamResponse) -> None:
    response.force_close()


@web.middleware
async def _one_request(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One request per connection on the HTTP routes (``Connection: close``)."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.force_close()
        raise
    response.force_close()
    return response


class _Dispatch(asyncio.Protocol):
    """Each new connection's first protocol: reads the request head, then hands the
    connection to the hub's WebSocket path (``/ws``) or to aiohttp (everything else).
    """

    __slots__ = ("_head", "_hub", "_timer", "_transport")

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._head = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not subclasses of asyncio's, but behave as them)
        self._transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT, transport.close)

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
            self._hub._open_ws(transport, head)
            return
        http = self._hub._http
        assert http is not None
        protocol = http()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(head)

    def eof_received(self) -> bool | None:
        return None  # an incomplete request: close


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
                        ready: Callable[[int], None] | None = None,
                        ssl_context: ssl.SSLContext | None = None) -> None:
    """Run ``hub`` until cancelled."""
    bound = await hub.start(host, port, ssl_context=ssl_context)
    # What is loaded now lives as long as the process: keep it out of the cyclic
    # collector, whose full passes over it would pause every client's messages.
    gc.collect()
    gc.freeze()
    if ready is not None:
        ready(bound)
    try:
        await asyncio.Event().wait()
    finally:
        await hub.stop()
