"""The hub's heartbeat: every connection looked at once per half heartbeat, a slice
at a time.

A client that sends nothing (not even a pong) is pinged, and one silent for 1.5
heartbeats is dropped. Looking at every connection in one event-loop turn
stalls every client's messages for as long as that takes (milliseconds at a
few thousand connections, far more at 100,000), so the connections are spread
over the slots of a wheel: each tick looks at one slot, and the wheel turns
once per half heartbeat. Each connection is still looked at every half
heartbeat, so what a client sees is the same as with one sweep: pinged after 1
to 1.5 heartbeats of silence, dropped after 1 to 1.5 heartbeats without an answer.

:class:`Wheel` is the bookkeeping (pure: no clock, no loop); :class:`Heartbeat`
turns it on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Final, Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

#: Seconds between ticks at most as fine as this (more slots would only wake the
#: loop more often for fewer connections each).
TICK: Final = 0.025
#: Slots at most (a long heartbeat ticks more slowly instead).
MAX_SLOTS: Final = 1024


class Beating(Protocol):
    """What the heartbeat needs of a connection."""

    #: Half heartbeats since it last sent anything (it resets this when it does).
    quiet: int
    #: Its slot in the wheel (set by :meth:`Wheel.add`).
    slot: int
    #: Dropped already (a slow reader): not pinged.
    dropped: bool

    def ping(self) -> None: ...

    def abort(self) -> None: ...


C = TypeVar("C", bound=Beating)


def slots_for(interval: float) -> int:
    """How many slots a wheel turning once per ``interval / 2`` seconds gets."""
    return max(1, min(MAX_SLOTS, round(interval / 2 / TICK)))


class Wheel(Generic[C]):
    """Connections in ``slots`` slots, filled in turn; :meth:`visit` does one slot."""

    def __init__(self, slots: int) -> None:
        self._slots: list[set[C]] = [set() for _ in range(max(1, slots))]
        self._next = 0
        #: Connections in the wheel.
        self.size = 0

    def __len__(self) -> int:
        return len(self._slots)

    def __iter__(self) -> Iterator[C]:
        for slot in self._slots:
            yield from slot

    def add(self, conn: C) -> None:
        index = self._next
        self._next = (index + 1) % len(self._slots)
        conn.slot = index
        self._slots[index].add(conn)
        self.size += 1

    def discard(self, conn: C) -> None:
        slot = self._slots[conn.slot]
        if conn in slot:
            slot.remove(conn)
            self.size -= 1

    def visit(self, index: int, timed_out: Callable[[C], None]) -> None:
        """Slot ``index``'s turn: each connection there is one half heartbeat quieter;
        ping those quiet for two, hand those quiet for three to ``timed_out``."""
        late: list[C] = []
        for conn in self._slots[index]:
            quiet = conn.quiet = conn.quiet + 1
            if quiet >= 3:
                late.append(conn)
            elif quiet == 2 and not conn.dropped:
                conn.ping()
        for conn in late:  # (they leave the set when they close)
            timed_out(conn)


class Heartbeat(Generic[C]):
    """A :class:`Wheel` turned on the running event loop: one slot per tick, the whole
    wheel once per ``interval / 2`` seconds."""

    def __init__(self, interval: float, timed_out: Callable[[C], None]) -> None:
        self.interval = interval
        self.wheel: Wheel[C] = Wheel(slots_for(interval))
        self._timed_out = timed_out
        self._tick = interval / 2 / len(self.wheel)
        self._index = 0
        self._due = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = loop.time() + self._tick
        self._timer = loop.call_at(self._due, self._turn)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _turn(self) -> None:
        loop = asyncio.get_running_loop()
        # Due times from the start, not from now: the wheel keeps its pace however
        # late a tick runs (a late tick is followed by an early one, never skipped).
        self._due = max(self._due + self._tick, loop.time() - self.interval / 2)
        self._timer = loop.call_at(self._due, self._turn)
        index = self._index
        self._index = (index + 1) % len(self.wheel)
        self.wheel.visit(index, self._timed_out)
