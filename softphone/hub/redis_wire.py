"""The Redis connections that carry messages between nodes: RESP on a plain
:class:`asyncio.Protocol`, replies parsed by hiredis.

A message between nodes crosses two of them: the sender's node writes it on its
routing connection (a ``PUBLISH``), the receiver's node reads it on its
subscription. redis-py's client costs tens of microseconds of Python a command
(a coroutine, a timeout, a parser in Python), more than the hub spends on a
local message. Here a :class:`Link` writes commands packed by :func:`command`
(many per write) and hands each reply, in order, to the callback given with its
command, straight from ``data_received``: no task, no future, no timeout per
command. Replies are parsed by ``hiredis.Reader`` (C) when hiredis is installed
(the ``redis`` extra has it), else by :class:`RespReader`, the same in Python.

redis-py still opens the connection (:func:`open_link`: the URL, TLS, AUTH,
SELECT as configured for the node), then the link takes its transport over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol

log = logging.getLogger(__name__)

Reply = Any
ReplyHandler = Callable[[Reply], None]


class ReplyError(Exception):
    """An error reply (``-ERR ...``) from Redis: a value handed to the callback, not raised."""


class LinkLost(ConnectionError):
    """The link closed before this command's reply came: handed to its callback."""


class Parser(Protocol):
    """What a :class:`Link` needs of a reply parser (``hiredis.Reader`` is one)."""

    def feed(self, data: bytes, /) -> None: ...

    def gets(self) -> Any: ...


class RespReader:
    """RESP2 replies from bytes, as ``hiredis.Reader`` gives them (the fallback).

    :meth:`gets` returns the next whole reply, or False when more bytes are
    needed. Bulk strings are bytes, integers int, errors :class:`ReplyError`
    instances, nil None, arrays lists.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes, /) -> None:
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def gets(self) -> Any:
        try:
            reply, pos = self._parse(self._pos)
        except _Incomplete:
            return False
        self._pos = pos
        return reply

    def _parse(self, pos: int) -> tuple[Any, int]:
        buf = self._buf
        end = buf.find(b"\r\n", pos)
        if end < 0:
            raise _Incomplete
        kind, line, after = buf[pos:pos + 1], bytes(buf[pos + 1:end]), end + 2
        if kind == b"$":
            n = int(line)
            if n < 0:
                return None, after
            if len(buf) < after + n + 2:
                raise _Incomplete
            return bytes(buf[after:after + n]), after + n + 2
        if kind == b":":
            return int(line), after
        if kind == b"+":
            return line, after
        if kind == b"-":
            return ReplyError(line.decode(errors="replace")), after
        if kind == b"*":
            n = int(line)
            if n < 0:
                return None, after
            items = []
            for _ in range(n):
                item, after = self._parse(after)
                items.append(item)
            return items, after
        raise ValueError(f"not a RESP reply: {bytes(buf[pos:pos + 20])!r}")


class _Incomplete(Exception):
    pass


def new_parser() -> Parser:
    """hiredis's reader if installed, else :class:`RespReader`."""
    try:
        import hiredis
    except ImportError:
        return RespReader()
    reader: Parser = hiredis.Reader(replyError=ReplyError)
    return reader


def has_hiredis() -> bool:
    try:
        import hiredis  # noqa: F401
    except ImportError:
        return False
    return True


def command(*args: bytes | str | int) -> bytes:
    """One command in RESP (an array of bulk strings), ready to write."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n" % len(data))
        out.append(data)
        out.append(b"\r\n")
    return b"".join(out)


#: The first element of a message a subscription pushes.
_MESSAGE: Final = b"message"


class Link(asyncio.Protocol):
    """One Redis connection: commands in, replies to their callbacks in order.

    On a subscription (``SUBSCRIBE`` sent), what Redis pushes (``message``
    arrays) goes to ``on_message(payload)`` instead. When the connection ends,
    the callbacks still waiting get :class:`LinkLost` and :attr:`lost` is done.
    """

    def __init__(self, on_message: Callable[[bytes], None] | None = None) -> None:
        self._parser = new_parser()
        self._waiting: deque[ReplyHandler] = deque()
        self._on_message = on_message
        self._transport: asyncio.Transport | None = None
        self._owner: Any = None
        self._stream_protocol: asyncio.BaseProtocol | None = None  # redis-py's, replaced by us
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def waiting(self) -> int:
        """Commands sent whose reply has not come yet."""
        return len(self._waiting)

    @property
    def unsent(self) -> int:
        """Bytes written that the kernel has not taken yet."""
        transport = self._transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def is_open(self) -> bool:
        return self._transport is not None and not self.lost.done()

    def send(self, data: bytes, handlers: list[ReplyHandler]) -> None:
        """Write ``data`` (one or more commands); ``handlers``: one per command, in order."""
        if not self.is_open():
            for handler in handlers:
                handler(LinkLost("the Redis connection is closed"))
            return
        assert self._transport is not None
        self._waiting.extend(handlers)
        self._transport.write(data)

    async def call(self, *args: bytes | str | int) -> Reply:
        """One command, awaited (set-up only: the hot paths use :meth:`send`)."""
        done: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

        def got(reply: Reply) -> None:
            if not done.done():
                done.set_result(reply)

        self.send(command(*args), [got])
        reply = await done
        if isinstance(reply, Exception):
            raise reply
        return reply

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        parser.feed(data)
        waiting = self._waiting
        on_message = self._on_message
        while True:
            try:
                reply = parser.gets()
            except Exception as exc:  # a protocol error: this connection is done for
                log.warning("redis-link: cannot parse a reply (%r): closing", exc)
                self.close()
                return
            if reply is False:
                return
            if on_message is not None and reply.__class__ is list and len(reply) == 3 \
                    and reply[0] == _MESSAGE:
                try:
                    on_message(reply[2])
                except Exception:  # a bug there must not stop the link
                    log.exception("redis-link: could not handle a message")
                continue
            if waiting:
                handler = waiting.popleft()
                try:
                    handler(reply)
                except Exception:
                    log.exception("redis-link: could not handle a reply")

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        stream, self._stream_protocol = self._stream_protocol, None
        if stream is not None:  # so redis-py's disconnect sees its writer closed, not waits 2 s
            with contextlib.suppress(Exception):
                stream.connection_lost(exc)
        waiting, self._waiting = self._waiting, deque()
        lost = LinkLost(f"the Redis connection was lost ({exc or 'closed'})")
        for handler in waiting:
            with contextlib.suppress(Exception):
                handler(lost)
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def aclose(self) -> None:
        """Close, and let redis-py forget the connection it opened."""
        self.close()
        owner, self._owner = self._owner, None
        if owner is not None:
            with contextlib.suppress(Exception):
                await owner.disconnect()


async def open_link(pool: Any, on_message: Callable[[bytes], None] | None = None) -> Link:
    """A :class:`Link` on a new connection of redis-py's connection ``pool``.

    redis-py connects it as it does its own (the URL's host or socket, TLS, AUTH,
    SELECT); then the link reads and writes its transport. Raises what redis-py
    raises when it cannot connect.
    """
    conn = pool.make_connection()
    if str(getattr(conn, "protocol", 2)) not in ("2", "None"):
        raise ValueError("redis_wire reads RESP2: make the pool with protocol=2")
    await conn.connect()
    writer = getattr(conn, "_writer", None)
    reader = getattr(conn, "_reader", None)
    transport = getattr(writer, "transport", None)
    if transport is None or (reader is not None and len(getattr(reader, "_buffer", ()))):
        with contextlib.suppress(Exception):
            await conn.disconnect()
        raise ConnectionError("cannot take over redis-py's connection "
                              "(an unexpected redis-py version?)")
    link = Link(on_message)
    link._owner = conn  # it closes the transport it opened (see aclose)
    link._stream_protocol = transport.get_protocol()
    transport.set_protocol(link)
    link.connection_made(transport)
    return link
