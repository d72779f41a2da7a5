"""The hub connection while a call's media is lost (issue 16).

The media path and the hub connection often die together (a NAT that forgot
its mappings, an address that went away), and a TCP connection whose path is
gone shows nothing for a long time. So while a call restarts its media
(``docs/protocol.md``, "The hub connection during a restart"):

- :meth:`HubCheck.check` (what ``Phone.check_hub()`` does, on the restart
  machine's :class:`~softphone.core.restart_events.CheckSignaling`): if the hub
  connection's local address is gone, give it up and reconnect at once; else
  ping, and do the same if no pong comes within :data:`PONG_WAIT`.
- While an *episode* lasts (:meth:`HubCheck.episode`), reconnect attempts start
  at most :data:`EPISODE_RETRY` apart, each given :data:`EPISODE_CONNECT_TIMEOUT`
  (otherwise the phone's usual backoff: doubling up to 10 s).
- :meth:`HubCheck.subscribe`: told when the hub connection goes down or is back
  (:class:`~softphone.core.restart_events.SignalingChanged`).

One per :class:`~softphone.client.phone.Phone`; its reconnect loop asks
:meth:`HubCheck.pause` how long to wait and connects through
:meth:`HubCheck.connect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, runtime_checkable

from softphone.client.hubaddress import HubUnreachable
from softphone.media.pathcheck import address_present

log = logging.getLogger(__name__)

#: A pong later than this: the hub connection is taken for dead.
PONG_WAIT: Final = 1.0
#: During an episode: reconnect attempts start at most this far apart ...
EPISODE_RETRY: Final = 1.0
#: ... and each may take this long to connect.
EPISODE_CONNECT_TIMEOUT: Final = 2.0
#: Otherwise: the first pause, and the longest (the backoff doubles up to it).
FIRST_BACKOFF: Final = 0.5
MAX_BACKOFF: Final = 10.0


@runtime_checkable
class CheckableHub(Protocol):
    """What a hub connection offers for the check (as
    :class:`~softphone.client.signaling.HubClient` does)."""

    @property
    def connected(self) -> bool: ...

    def local_address(self) -> str | None: ...

    async def ping(self, wait: float) -> bool: ...

    def abort(self) -> None: ...


class HubCheck:
    """The hub connection's check, and the reconnect pacing, of one phone."""

    def __init__(self, hub: Any, connect: Callable[[], Awaitable[None]] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        #: The hub connection (checked only if it is a :class:`CheckableHub`; fakes
        #: without ping/abort are taken as fine).
        self.hub = hub
        self._connect = connect if connect is not None else hub.connect
        self._clock = clock
        self._episodes: set[object] = set()
        self._kick = asyncio.Event()
        self._last_attempt: float | None = None
        self._checking: asyncio.Future[bool] | None = None
        self._listeners: list[Callable[[bool], None]] = []
        #: The hub connection is up (as last reported with :meth:`changed`).
        self.up = False

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    # -- episodes -----------------------------------------------------------

    @property
    def hurried(self) -> bool:
        """A call's media is lost: reconnect fast."""
        return bool(self._episodes)

    def episode(self, key: object, active: bool) -> None:
        """A call (``key``) started (``active``) or ended an episode of lost media."""
        if active:
            if key not in self._episodes:
                self._episodes.add(key)
                self._kick.set()  # a reconnect loop waiting its backoff: now
        else:
            self._episodes.discard(key)

    # -- the check ----------------------------------------------------------

    async def check(self) -> bool:
        """Is the hub connection alive? True if so; False if it was down or is given up
        (a reconnect is then under way, at once). Concurrent checks share one."""
        if self._checking is not None:
            return await asyncio.shield(self._checking)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._checking = future
        try:
            ok = await self._check()
            future.set_result(ok)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # (retrieved: a shared waiter may be gone)
            raise
        finally:
            self._checking = None
        return ok

    async def _check(self) -> bool:
        hub = self.hub
        if not isinstance(hub, CheckableHub):
            return True
        if not hub.connected:
            self._kick.set()
            return False
        local = hub.local_address()
        if local is not None and not address_present(local):
            log.info("the hub connection's address %s is gone: reconnecting", local)
            self._give_up(hub)
            return False
        if await hub.ping(PONG_WAIT):
            return True
        if not hub.connected:  # it ended while we waited
            self._kick.set()
            return False
        log.info("the hub did not answer a ping within %g s: reconnecting", PONG_WAIT)
        self._give_up(hub)
        return False

    def _give_up(self, hub: CheckableHub) -> None:
        self._kick.set()
        hub.abort()

    # -- the reconnect loop's pacing ------------------------------------------

    async def pause(self, backoff: float) -> None:
        """Wait before the next reconnect attempt: ``backoff`` seconds (jittered), or
        during an episode until :data:`EPISODE_RETRY` after the previous attempt
        started (at once if that was longer ago). An episode starting, or a
        check, cuts the wait short."""
        while True:
            self._kick.clear()
            if self.hurried:
                last = self._last_attempt
                wait = 0.0 if last is None else last + EPISODE_RETRY - self._now()
            else:
                wait = backoff * random.uniform(0.5, 1.5)
            if wait <= 0:
                return
            try:
                await asyncio.wait_for(self._kick.wait(), wait)
            except TimeoutError:
                return

    async def connect(self) -> None:
        """One reconnect attempt (:class:`HubUnreachable` if it fails); during an
        episode it is given :data:`EPISODE_CONNECT_TIMEOUT`."""
        self._last_attempt = self._now()
        if not self.hurried:
            await self._connect()
            return
        try:
            await asyncio.wait_for(self._connect(), EPISODE_CONNECT_TIMEOUT)
        except TimeoutError as exc:
            raise HubUnreachable(f"no connection to the hub within "
                                 f"{EPISODE_CONNECT_TIMEOUT:g} s") from exc

    def next_backoff(self, backoff: float) -> float:
        """The backoff after an attempt: doubled, but not while hurried (so when an
        episode ends with the hub still away, as when the old path came back by
        itself, the attempts do not jump to 10 s apart)."""
        return FIRST_BACKOFF if self.hurried else min(backoff * 2, MAX_BACKOFF)

    # -- up and down ----------------------------------------------------------

    def subscribe(self, listener: Callable[[bool], None]) -> Callable[[], None]:
        """Call ``listener(up)`` when the hub connection goes down or is back."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)
        return unsubscribe

    def changed(self, up: bool) -> None:
        """The phone's reader saw the hub connection end (False) or come back (True)."""
        if up == self.up:
            return
        self.up = up
        if up:
            self._last_attempt = None
        for listener in list(self._listeners):
            try:
                listener(up)
            except Exception:
                log.exception("a hub state listener failed")
