"""A call's events: its listeners, and the events told once their details are known.

:class:`CallEvents` (one per :class:`~softphone.client.call.Call`) hands each
event (a dict with ``"event"``, and ``"peer"`` added) to the call's listeners
(:meth:`Call.on_event <softphone.client.call.Call.on_event>`); a listener that
raises is logged, and the others are still told. An event whose details take a
while (the verification code, derived in a thread: the ``media`` and
``media-restart`` events) is *announced* (:meth:`CallEvents.announce`): told
once they are known. The call's end waits for those (:meth:`CallEvents.announced`,
:attr:`CallEvents.announce_wait` seconds at most), so that they come before its
``ended`` event; after the end, the listeners go (:meth:`CallEvents.close`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final

from softphone._tasks import spawn
from softphone.client.calltypes import EventCallback
from softphone.core import callstate as cs

log = logging.getLogger(__name__)

#: Seconds the end of a call waits for its events still being announced (their
#: verification code being derived, :meth:`CallEvents.announce`); then they go without it.
ANNOUNCE_WAIT: Final = 2.0


class CallEvents:
    """The listeners of the call ``machine`` runs, and its events being announced."""

    def __init__(self, machine: cs.CallMachine) -> None:
        self._machine = machine
        self._listeners: list[EventCallback] = []
        #: Events being announced (:meth:`announce`): the end waits for them, at most
        #: ``announce_wait`` seconds.
        self._announcing: set[asyncio.Task[None]] = set()
        self.announce_wait: float = ANNOUNCE_WAIT

    def listen(self, callback: EventCallback) -> None:
        self._listeners.append(callback)

    @property
    def listened(self) -> bool:
        """Someone listens (an event reaches them: the library need not log it too)."""
        return bool(self._listeners)

    def emit(self, event: dict[str, Any]) -> None:
        event.setdefault("peer", self._machine.peer)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("call event listener failed")

    def announce(self, event: dict[str, Any],
                 details: Callable[[], Coroutine[Any, Any, dict[str, Any]]], *,
                 name: str) -> None:
        """Emit ``event``, with what ``details()`` adds to it (the verification code,
        derived in a thread), once it has: an event of the call now, told a little later.

        The call's ``ended`` event waits for it (:attr:`announce_wait` at most; then it
        goes without its details), so it comes before the end and is never lost. An
        event of a call that has already ended is not announced at all (nothing of the
        call comes after its end).
        """
        if self._machine.is_ended:
            log.debug("%s of the call with %s after its end: not announced",
                      event.get("event"), self._machine.peer)
            return

        async def announce() -> None:
            extra: dict[str, Any] = {}
            try:
                extra = await details()
            finally:  # (also when the end cancelled it, tired of waiting: without them)
                self.emit({**event, **extra})

        task = spawn(announce(), name=name)
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    async def announced(self) -> None:
        """Wait for the events being announced: given :attr:`announce_wait`, those still
        waiting for their details are emitted without them."""
        pending = set(self._announcing)
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=self.announce_wait)
        for task in late:
            log.info("%s of the call with %s: not waiting for its details any more",
                     task.get_name(), self._machine.peer)
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=1.0)

    def close(self) -> None:
        """The call's last event is out: the listeners go (a listener that holds the
        call, as most do, would keep it and all it reaches for the garbage collector:
        issue 15)."""
        self._listeners.clear()
