"""Who is connected where: the hub's registry of client ids.

The hub asks a :class:`Registry` three things: take this connection for its
id (and tell me whom it replaced), forget this connection (only if it still
holds the id), and deliver this text to that id. :class:`MemoryRegistry`
answers them for one process; a Redis-backed registry answers the same
questions across several hub nodes without the hub changing.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from softphone._tasks import spawn


class Peer(Protocol):
    """A connected client as the registry sees it."""

    @property
    def client_id(self) -> str: ...

    def deliver(self, text: str) -> bool:
        """Queue ``text`` for the client; False if it cannot take more."""
        ...


class RegistryEvents(Protocol):
    """What a registry shared by several nodes tells its hub (see ``Registry.bind``)."""

    def registry_replaced(self, peer: Peer) -> None:
        """A newer connection on another node took ``peer``'s id: tell it and close it."""
        ...

    def registry_relayed(self, type_: str, sender: str, to: str) -> None:
        """A message from a client on another node was delivered to local ``to``."""
        ...

    def registry_peer_gone(self, client_id: str) -> None:
        """The node holding remote ``client_id`` vanished (as if it disconnected)."""
        ...

    def registry_peer_back(self, client_id: str) -> None:
        """Remote ``client_id`` is connected again (on some node)."""
        ...

    def registry_batch(self, deliver: Callable[[], None]) -> None:
        """Run ``deliver()``, which delivers several messages: what it gives each local
        client is written in one piece."""
        ...


class Registry(abc.ABC):
    def bind(self, events: RegistryEvents, metrics: Any = None) -> None:  # noqa: B027
        """Called once by the hub: where to report, and its Prometheus registry."""

    def status(self) -> str:
        """``ok``, or ``degraded`` when a shared backing store is unreachable."""
        return "ok"

    @abc.abstractmethod
    async def register(self, peer: Peer) -> Peer | None:
        """Make ``peer`` the holder of its id; return the peer it replaced, if any."""

    @abc.abstractmethod
    async def unregister(self, peer: Peer) -> bool:
        """Forget ``peer`` if it still holds its id (a replaced peer holds nothing)."""

    @abc.abstractmethod
    async def deliver(self, to: str, text: str) -> bool:
        """Deliver to the holder of ``to``; False if nobody holds it."""

    def deliver_nowait(self, to: str, text: str) -> bool | None:
        """:meth:`deliver` if it can be decided without waiting, else None (then the hub
        calls :meth:`deliver_later`). The hub's fast path: no task per message."""
        return None

    def deliver_later(self, to: str, text: str, done: Callable[[bool], None],
                      sender: str = "") -> bool:
        """:meth:`deliver` without awaiting it: ``done(ok)`` is called with the outcome
        (for one recipient, in the order of the calls). ``sender``: the id of the
        client who sent it. False: much waits already; the caller should not hand
        over more from that client until :meth:`when_ready` calls back."""
        async def deliver() -> None:
            done(await self.deliver(to, text))

        spawn(deliver(), name="hub-deliver")
        return True

    def when_ready(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (soon) once :meth:`deliver_later` takes more."""
        asyncio.get_running_loop().call_soon(callback)

    @abc.abstractmethod
    def local_count(self) -> int:
        """How many clients this node holds."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (connections to a backing store)."""


class MemoryRegistry(Registry):
    """All clients in this process. The default, and the embedded hub's."""

    def __init__(self) -> None:
        self._peers: dict[str, Peer] = {}

    async def register(self, peer: Peer) -> Peer | None:
        old = self._peers.get(peer.client_id)
        self._peers[peer.client_id] = peer
        return old if old is not peer else None

    async def unregister(self, peer: Peer) -> bool:
        if self._peers.get(peer.client_id) is peer:
            del self._peers[peer.client_id]
            return True
        return False

    async def deliver(self, to: str, text: str) -> bool:
        return self.deliver_nowait(to, text)

    def deliver_nowait(self, to: str, text: str) -> bool:
        peer = self._peers.get(to)
        if peer is None:
            return False
        return peer.deliver(text)

    def local_count(self) -> int:
        return len(self._peers)

    def holder(self, client_id: str) -> Peer | None:
        return self._peers.get(client_id)
