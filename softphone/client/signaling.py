"""The client's side of the hub: WebSocket and ``/ice-servers``, nothing more.

:class:`HubClient` is a thin aiohttp adapter: it turns frames into parsed
messages (:func:`softphone.core.protocol.parse_hub_message`) and messages into
frames. What they mean is for :class:`softphone.core.line.Line` to decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any, Final
from urllib.parse import quote

import aiohttp

# (Re-exported: the hub's address and unreachable hub are part of this module's
# interface; they live apart so that the command line parses --server without aiohttp.)
from softphone.client.hubaddress import DEFAULT_SERVER as DEFAULT_SERVER
from softphone.client.hubaddress import HubAddress as HubAddress
from softphone.client.hubaddress import HubUnreachable as HubUnreachable
from softphone.core.protocol import (
    ICE_SERVERS_TYPE,
    HubError,
    Message,
    ProtocolError,
    parse_hub_message,
)

log = logging.getLogger(__name__)

#: A hub that took the connection but has not answered its handshake after this many
#: connect timeouts is unreachable (ours answers once it has registered the id: at
#: once, or a Redis round trip later).
HANDSHAKE_TIMEOUTS: Final = 3

#: Seconds the ICE servers the hub sent on connecting are used for a call; later
#: (TURN credentials expire) a call asks ``/ice-servers`` again.
PUSHED_FRESH: Final = 60.0


class HubClient:
    """One client's connection to a hub."""

    def __init__(self, server: str, client_id: str, *, token: str | None = None,
                 ssl_context: ssl.SSLContext | bool | None = None,
                 connect_timeout: float = 5.0) -> None:
        self.address = HubAddress.parse(server)
        self.client_id = client_id
        self.token = token
        self._ssl: ssl.SSLContext | bool = True if ssl_context is None else ssl_context
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        #: Waiting for a pong (:meth:`ping`); any pong answers them all.
        self._pongs: list[asyncio.Future[None]] = []
        #: The ICE servers our hub sent first on this connection (``?ice=1``), and when.
        self._pushed: tuple[float, list[dict[str, Any]]] | None = None
        self._pushed_event = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=None, connect=self._connect_timeout,
                                            sock_connect=self._connect_timeout)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def connect(self) -> None:
        """Open the WebSocket. Raises :class:`HubUnreachable`."""
        session = await self._ensure_session()
        url = f"{self.address.ws}/ws?id={quote(self.client_id, safe='')}&ice=1"
        self._pushed = None
        self._pushed_event.clear()
        if self.token:
            url += f"&token={quote(self.token, safe='')}"
        try:
            # Pings answered by messages() itself, which so sees the pongs (ping()).
            self._ws = await asyncio.wait_for(
                session.ws_connect(url, ssl=self._ssl, heartbeat=20.0, autoping=False),
                HANDSHAKE_TIMEOUTS * self._connect_timeout)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            hint = " (is it an https:// hub?)" if isinstance(
                exc, aiohttp.ServerDisconnectedError) and self.address.http.startswith(
                "http:") else ""
            raise HubUnreachable(f"cannot reach the hub at {self.address.http}: "
                                 f"{_describe(exc)}{hint}") from exc
        log.info("connected to %s as %s", self.address.ws, self.client_id)

    async def ice_servers(self) -> list[dict[str, Any]]:
        """The hub's STUN/TURN servers. Our hub sends them first on the WebSocket
        (``?ice=1``): those, if at most :data:`PUSHED_FRESH` seconds old. Else
        ``GET /ice-servers``, raced against that first frame still to come (a lost
        TCP SYN costs the request a whole second). Raises :class:`HubUnreachable`
        if the request fails and nothing came on the WebSocket."""
        pushed = self._fresh_push()
        if pushed is not None:
            return pushed
        fetch = asyncio.ensure_future(self._fetch_ice_servers())
        push = asyncio.ensure_future(self._pushed_event.wait())
        try:
            await asyncio.wait({fetch, push}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # (cancelled: a phone that could not connect drops it)
            fetch.cancel()
            fetch.add_done_callback(_retrieved)  # its error is no one's: not logged at exit
            raise
        finally:
            push.cancel()
        pushed = self._fresh_push()
        if pushed is not None and not fetch.done():
            fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError, HubUnreachable):
                await fetch
            return pushed
        return await fetch

    def _fresh_push(self) -> list[dict[str, Any]] | None:
        pushed = self._pushed
        if pushed is None or asyncio.get_running_loop().time() - pushed[0] > PUSHED_FRESH:
            return None
        return pushed[1]

    async def _fetch_ice_servers(self) -> list[dict[str, Any]]:
        """``GET /ice-servers``; raises :class:`HubUnreachable` on failure."""
        session = await self._ensure_session()
        try:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
            async with session.get(f"{self.address.http}/ice-servers",
                                   params={"id": self.client_id}, headers=headers,
                                   ssl=self._ssl) as resp:
                resp.raise_for_status()
                body = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise HubUnreachable(f"cannot get ICE servers from {self.address.http}: "
                                 f"{_describe(exc)}") from exc
        servers = body.get("iceServers") if isinstance(body, dict) else None
        if not isinstance(servers, list):
            raise HubUnreachable("the hub's /ice-servers is not {\"iceServers\": [...]}")
        return [s for s in servers if isinstance(s, dict)]

    async def send(self, message: Message) -> None:
        if self._ws is None or self._ws.closed:
            raise HubUnreachable("not connected to the hub")
        try:
            await self._ws.send_str(message.encode())
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            raise HubUnreachable(f"lost the hub: {_describe(exc)}") from exc

    async def messages(self) -> AsyncIterator[Message | HubError]:
        """Parsed frames until the connection closes."""
        ws = self._ws
        if ws is None:
            raise HubUnreachable("not connected to the hub")
        async for frame in ws:
            if self._pongs:  # any frame read after a ping shows the connection is alive,
                self._ponged()  # even when a busy reader reaches the pong itself late
            if frame.type != aiohttp.WSMsgType.TEXT:
                if frame.type == aiohttp.WSMsgType.PING:
                    with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
                        await ws.pong(frame.data)
                elif frame.type == aiohttp.WSMsgType.PONG:
                    self._ponged()
                continue
            try:
                message = parse_hub_message(frame.data)
            except ProtocolError as exc:
                log.warning("ignoring a frame from the hub: %s", exc)
                continue
            if isinstance(message, Message) and message.type == ICE_SERVERS_TYPE and \
                    message.sender is None:
                self._pushed_ice(message.data)
                continue
            yield message
        if ws.close_code not in (None, 1000):
            log.info("hub closed the connection: code %s", ws.close_code)

    @property
    def close_code(self) -> int | None:
        return None if self._ws is None else self._ws.close_code

    # -- liveness (softphone.client.hubcheck) ---------------------------------

    def local_address(self) -> str | None:
        """The local IP address of the hub connection (None when not connected)."""
        if not self.connected or self._ws is None:
            return None
        name = self._ws.get_extra_info("sockname")
        return str(name[0]) if name else None

    async def ping(self, wait: float) -> bool:
        """Ping the hub; True if a pong came within ``wait`` seconds (read by
        :meth:`messages`, which must be running)."""
        ws = self._ws
        if ws is None or ws.closed:
            return False
        pong: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pongs.append(pong)
        try:
            await ws.ping()
            await asyncio.wait_for(asyncio.shield(pong), wait)
        except (TimeoutError, ConnectionError, RuntimeError, aiohttp.ClientError):
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._pongs.remove(pong)
        return True

    def _pushed_ice(self, data: Any) -> None:
        servers = data.get("iceServers") if isinstance(data, dict) else None
        if not isinstance(servers, list):
            log.warning("ignoring the hub's ice-servers frame: no iceServers list")
            return
        self._pushed = (asyncio.get_running_loop().time(),
                        [s for s in servers if isinstance(s, dict)])
        self._pushed_event.set()

    def _ponged(self) -> None:
        pongs, self._pongs = self._pongs, []
        for pong in pongs:
            if not pong.done():
                pong.set_result(None)

    def abort(self) -> None:
        """Give up the hub connection now, without a closing handshake (its path is
        dead: nothing would answer): :meth:`messages` ends at once."""
        ws = self._ws
        if ws is None or ws.closed:
            return
        sock = ws.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # the reader sees the end of the stream

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()


def _retrieved(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _describe(exc: BaseException) -> str:
    """One line for a failed connection or request, never with the token in it (aiohttp's
    own texts name the URL, and the WebSocket's URL carries ``token=``)."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "no answer in time"
    if isinstance(exc, aiohttp.WSServerHandshakeError):  # (an HTTP answer, not an upgrade)
        if exc.status == 101:  # (an upgrade, but not a valid WebSocket one)
            return "it answered with an invalid WebSocket upgrade (a proxy in the way?)"
        return f"it answered HTTP {exc.status} instead of a WebSocket " \
               f"(is {'the path' if exc.status == 404 else 'the URL'} the hub's?)"
    if isinstance(exc, aiohttp.ClientConnectorError) \
            and not isinstance(exc, aiohttp.ClientSSLError):  # (its text: aiohttp's internals)
        err = exc.os_error
        if isinstance(err, socket.gaierror):
            known = err.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None))
            return f"{'no such host' if known else 'cannot look up the host'} " \
                   f"({err.strerror})"  # (else e.g. no DNS at all: EAI_AGAIN)
        if err.errno and err.errno > 0:
            return os.strerror(err.errno).lower()  # "connection refused"
    text = str(exc) or type(exc).__name__
    return without_token(text.splitlines()[0])[:200]


def without_token(text: str) -> str:
    """``text`` with the value of any ``token=`` in a URL it quotes masked."""
    return _TOKEN_IN_URL.sub(r"\1***", text)


#: ``token=...`` in a URL quoted by someone else's error text.
_TOKEN_IN_URL: Final = re.compile(r"([?&]token=)[^&\s'\"]+")
