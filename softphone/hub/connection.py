"""The hub's WebSocket connections: plain :class:`asyncio.Protocol` objects.

websockets' sans-I/O :class:`~websockets.server.ServerProtocol` parses frames and
the closing handshake and says what to send back; the common frames (whole text
frames, pings, pongs) skip it (:func:`softphone.hub.frames.scan`). No task,
queue, reader or timer per connection: every connection costs memory for as
long as a phone is online. What a message means is the hub's business
(:class:`ConnectionOwner`, which :class:`~softphone.hub.server.Hub` is).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final, Protocol

from websockets.frames import CloseCode, Opcode
from websockets.protocol import State as WSState
from websockets.server import ServerProtocol

from softphone.core.protocol import ErrorCode, HubError
from softphone.hub.frames import PING, frame_end, scan, text_frame
from softphone.hub.limits import TokenBucket

log = logging.getLogger(__name__)

#: Seconds a client has to answer the hub's close frame before it is cut off.
CLOSE_TIMEOUT: Final = 5.0

_TEXT: Final = Opcode.TEXT
_BINARY: Final = Opcode.BINARY
_CONT: Final = Opcode.CONT


class ConnectionOwner(Protocol):
    """What a :class:`ClientConnection` asks of its hub."""

    #: While frames read at once are handled: the connections given frames to write
    #: when they are done (see :meth:`ClientConnection.deliver`); else None.
    batch: list[ClientConnection] | None
    #: Frames above this many bytes are for websockets (which refuses them: 1009).
    max_frame: int

    def on_text(self, conn: ClientConnection, text: str) -> bool:
        """Handle one message; False if ``conn`` must not be read for now (it is held)."""
        ...

    def answer(self, conn: ClientConnection, error: HubError) -> None:
        """Tell ``conn`` what was wrong with what it sent."""
        ...

    def connection_closed(self, conn: ClientConnection) -> None:
        """``conn``'s TCP connection is closed."""
        ...


class Unanswered(asyncio.Transport):
    """A connection's transport until the hub answers its handshake.

    The answer (``101`` and what goes with it) waits until the client's id is
    registered, hub-wide: a client told it is connected can at once be called
    from any node. Whatever the hub writes meanwhile (pongs, messages for it)
    waits behind the answer, in order. A connection closed before then (the
    client sent a close frame at once; the hub replaced it or is stopping) is
    answered first, so that its closing handshake is one the client can read.
    """

    __slots__ = ("_out", "transport")

    def __init__(self, transport: asyncio.Transport, answer: bytes) -> None:
        super().__init__()
        self.transport = transport
        #: The answer and what waits behind it (None: answered, written through).
        self._out: list[bytes] | None = [answer]

    def answered(self) -> asyncio.Transport:
        """Write the answer and what waited behind it; the transport, from now on."""
        transport, out = self.transport, self._out
        if out is not None:
            self._out = None
            if not transport.is_closing():
                transport.write(b"".join(out))
        return transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._out is None:
            self.transport.write(data)
        else:
            self._out.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        waiting = 0 if self._out is None else sum(map(len, self._out))
        return self.transport.get_write_buffer_size() + waiting

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:  # (answered: see the class docstring; then FIN)
        self.answered().close()

    def abort(self) -> None:
        self.transport.abort()

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)


class WebSocket(asyncio.Protocol):
    """A WebSocket on its transport, once the hub has answered its handshake.

    websockets' sans-I/O :class:`~websockets.server.ServerProtocol` parses what
    arrives (frames, pings, the closing handshake) and says what to send back;
    this plain :class:`asyncio.Protocol` moves the bytes. No task, queue or timer
    per connection: liveness is one hub-wide sweep (the hub's heartbeat).
    """

    __slots__ = ("_close_timer", "_lost", "_transport", "_ws", "quiet", "slot")

    def __init__(self, ws: ServerProtocol, transport: asyncio.Transport) -> None:
        self._ws = ws
        self._transport = transport
        self._close_timer: asyncio.TimerHandle | None = None
        self._lost: asyncio.Future[None] | None = None
        #: Heartbeat visits since this client last sent anything.
        self.quiet = 0
        #: Its slot in the hub's heartbeat wheel.
        self.slot = 0

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    def flush(self) -> None:
        for data in self._ws.data_to_send():
            if data:
                self._transport.write(data)
            else:  # end of stream: after a closing handshake the server closes TCP
                self._transport.close()

    def data_received(self, data: bytes) -> None:
        self.quiet = 0
        ws = self._ws
        ws.receive_data(data)
        self.flush()
        events = ws.events_received()
        if events:
            self._frames(events)

    def eof_received(self) -> bool | None:
        self._ws.receive_eof()
        self.flush()
        return None  # the transport closes itself

    def _frames(self, events: list[Any]) -> None:
        """Frames the client sent (control frames are already answered)."""

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: bytes = b"") -> None:
        """Start the closing handshake; the connection is cut if it does not finish."""
        ws = self._ws
        if ws.state is WSState.OPEN:
            ws.send_close(code, reason.decode(errors="replace"))
            self.flush()
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
            self._transport.write(PING)

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


class Refused(WebSocket):
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


class ClientConnection(WebSocket):
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
                 "_slow", "away", "bucket", "client_id", "dropped", "limited_at", "registered",
                 "remote")

    def __init__(self, hub: ConnectionOwner, client_id: str, ws: ServerProtocol,
                 transport: asyncio.Transport, limit_bytes: int = 1024 * 1024,
                 bucket: TokenBucket | None = None, remote: str = "") -> None:
        super().__init__(ws, transport)
        self._hub = hub
        self.client_id = client_id
        self.bucket = bucket
        self.remote = remote
        self.dropped = False
        self.registered = False
        #: The heartbeat dropped it (nothing was closed: its network went away).
        self.away = False
        #: When this client was last told ``rate-limited``.
        self.limited_at = float("-inf")
        self._limit_bytes = limit_bytes
        #: Frames parsed but not handled yet, while reading is paused (None: reading).
        self._held: list[Any] | None = None
        #: The frames so far of a fragmented message.
        self._fragments: list[Any] | None = None
        #: The start of a frame not complete yet (see :meth:`data_received`); once
        #: websockets parses everything, what of it websockets has already been given.
        self._partial = b""
        #: websockets parses everything from now on (:meth:`_slow_data`).
        self._slow = False
        #: Frames for this client from the batch being handled (see ConnectionOwner.batch).
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
        frame = text_frame(text)
        batch = self._hub.batch
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

    def flush(self) -> None:
        if self._out is not None:  # (what was delivered goes before a close frame)
            self.write_out()
        WebSocket.flush(self)

    def _drop(self) -> None:
        log.warning("slow-reader id=%s remote=%s: more than %d bytes unread, dropping it",
                    self.client_id, self.remote, self._limit_bytes)
        self.dropped = True
        # It does not read, so it would not read a close frame either; and a closing
        # transport would keep its unsent buffer until the peer reads: abort.
        self._transport.abort()

    def stop(self) -> None:
        self.dropped = True

    def answer_handshake(self) -> None:
        """Send the handshake's answer, and what waited behind it (see :class:`Unanswered`)."""
        if isinstance(self._transport, Unanswered):
            self._transport = self._transport.answered()

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: bytes = b"") -> None:
        self.answer_handshake()  # (the close frame is for a client that was answered)
        WebSocket.close(self, code, reason)

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
            self._slow_data(data)
            return
        buf = self._partial + data if self._partial else data
        texts, pongs, pos, slow = scan(buf, self._hub.max_frame)
        if pongs:
            self._transport.write(pongs)
        if slow:  # not a frame for the quick path: websockets takes it from here
            self._slow = True
            self._partial = b""
            if texts:
                self._frames(texts)
            self._slow_data(buf[pos:] if pos else buf)
            return
        self._partial = buf[pos:] if pos < len(buf) else b""
        if len(texts) > 1:
            self._batch(texts)
        elif texts:
            self._frames(texts)

    def _slow_data(self, data: bytes) -> None:
        """websockets parses: handed one frame at a time, each handled before the next
        is parsed (a message's invalid UTF-8 is answered before a protocol error in a
        frame behind it, as when they come apart). The start of a frame not complete
        yet goes too (websockets refuses a bad head at once)."""
        given = len(self._partial)
        buf = self._partial + data if given else data
        pos = 0
        while (end := frame_end(buf, pos)) is not None:
            WebSocket.data_received(self, buf[max(pos, given):end])
            pos = end
        if pos < len(buf):
            if len(buf) > given:
                WebSocket.data_received(self, buf[max(pos, given):])
            self._partial = buf[pos:]
        else:
            self._partial = b""

    def _batch(self, texts: list[Any]) -> None:
        """Several messages read at once: what they deliver to each client is written
        in one piece when they are all handled."""
        hub = self._hub
        batch: list[ClientConnection] = []
        hub.batch = batch
        try:
            self._frames(texts)
        finally:
            hub.batch = None
            for conn in batch:
                conn.write_out()

    def eof_received(self) -> bool | None:
        if self._partial and not self._slow:  # websockets would not know it was cut
            self._slow = True
            self._ws.receive_data(self._partial)
            self._partial = b""
        return WebSocket.eof_received(self)

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
        if held and self._ws.state is WSState.OPEN:  # (closed by the hub meanwhile:
            self._frames(held)                       # what it sent then is not relayed)

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
                    hub.answer(self, HubError(ErrorCode.BAD_MESSAGE,
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
        if self._hub.on_text(self, text):
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
        self._ws.fail(CloseCode.INVALID_DATA, "invalid UTF-8")
        self.flush()
        self.dropped = True

    def _gone(self) -> None:
        self.dropped = True
        self._held = None
        self._hub.connection_closed(self)
