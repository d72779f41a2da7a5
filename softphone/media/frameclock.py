"""One 20 ms timer on the event loop for many calls.

A bot carrying 50 calls used to wake 50 tasks every 20 ms to play out what
each call heard, and one more timer to send every call's prompt: the task
wake-ups alone were close to half of its event loop's work. A
:class:`FrameClock` is one timer that calls every member's ``tick`` in turn
every 20 ms. A :class:`~softphone.media.encoded.SharedPrompt` sends with one
(every call playing it); a :class:`~softphone.client.phone.Phone` plays out
with one (every call of the phone without a speaker).

It is an object its owner holds, not a process-wide clock: two phones in one
process each have their own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final, Protocol

log = logging.getLogger(__name__)

#: One frame, in seconds.
FRAME_SECONDS: Final = 0.02
#: Later than this, the loop was stalled: skip ahead rather than catch up in a burst.
STALL_SECONDS: Final = 0.2


class Ticking(Protocol):
    def tick(self, skipped: int = 0) -> None:
        """The next 20 ms is due; ``skipped`` frames came and went in a stall."""


class FrameClock:
    """Calls every member's ``tick`` every 20 ms, from one timer on the running loop.

    Members run in the order they were added; one that raises is logged and
    dropped, the others go on. The timer runs only while there are members.
    A member may add or remove members (itself included) from its ``tick``.
    """

    def __init__(self) -> None:
        self.members: dict[Ticking, None] = {}  # an ordered set
        self._handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0
        self._in_tick = False

    def __len__(self) -> int:
        return len(self.members)

    def add(self, member: Ticking) -> None:
        """Tick ``member`` from now on (first at once if the clock was idle, else
        with the others)."""
        loop = asyncio.get_running_loop()
        self.members[member] = None
        if self._in_tick and self._loop is loop:
            return  # the tick under way schedules the next
        if self._handle is None or self._loop is not loop:
            if self._handle is not None:
                self._handle.cancel()
            self._loop = loop
            self._due = loop.time()
            self._handle = loop.call_soon(self._tick)

    def remove(self, member: Ticking) -> None:
        """Stop ticking ``member`` (nothing if it was not a member)."""
        self.members.pop(member, None)
        if not self.members and not self._in_tick and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        skipped = 0
        late = loop.time() - self._due
        if late > STALL_SECONDS:
            skipped = int(late / FRAME_SECONDS)
            self._due += skipped * FRAME_SECONDS
        self._in_tick = True
        try:
            for member in list(self.members):
                if member not in self.members:
                    continue  # removed by one ticked before it
                try:
                    member.tick(skipped)
                except Exception:
                    log.exception("%r failed on the frame clock: dropped", member)
                    self.members.pop(member, None)
        finally:
            self._in_tick = False
        self._due += FRAME_SECONDS
        self._handle = loop.call_at(self._due, self._tick) if self.members else None
