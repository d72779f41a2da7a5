"""One call's keys (DTMF, RFC 4733): the tones it sends and the digits the peer pressed.

:class:`DtmfLink` is the call's side of the
:class:`~softphone.media.dtmf_rtp.DtmfChannel` of its peer connection (each
connection's, as media restarts: :meth:`DtmfLink.attach`). It sends tones once
media is up, and stops when the call ends
(:meth:`Call.send_dtmf <softphone.client.call.Call.send_dtmf>`); it keeps the
digits the peer pressed (the latest 64) until
:meth:`Call.next_digit <softphone.client.call.Call.next_digit>` takes them; both
ways become the call's events (``dtmf``, ``dtmf-sent``).
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

from softphone.client.calltypes import CallEnded, held_call
from softphone.core.dtmf import (
    MAX_DURATION_MS,
    MIN_DURATION_MS,
    MIN_GAP_MS,
    DtmfEvent,
    check_tones,
)
from softphone.media.dtmf_rtp import DtmfChannel, DtmfUnavailable

if TYPE_CHECKING:
    from softphone.client.call import Call


def check_keys(tones: str, duration_ms: float, gap_ms: float) -> None:
    """A one-line ValueError unless :meth:`DtmfLink.send` may send these (what
    ``insertDTMF`` would quietly clamp or ignore is refused here)."""
    check_tones(tones)
    if not tones:
        raise ValueError("no DTMF key to send: give at least one of 0-9, *, #, A-D or ','")
    if not MIN_DURATION_MS <= duration_ms <= MAX_DURATION_MS:
        raise ValueError(f"DTMF duration {duration_ms!r} ms out of range "
                         f"{MIN_DURATION_MS}..{MAX_DURATION_MS}")
    if not MIN_GAP_MS <= gap_ms < math.inf:
        raise ValueError(f"DTMF gap {gap_ms!r} ms must be a finite number, at least "
                         f"{MIN_GAP_MS}")


class DtmfLink:
    """The keys of one call (module docstring)."""

    def __init__(self, call: Call) -> None:
        # Weak: the call holds its link, and a cycle would leave the ended call's
        # objects to the garbage collector (issue 15).
        self._call = weakref.ref(call)
        #: Digits the peer pressed, not yet taken by :meth:`next_digit` (the latest 64).
        self._digits: deque[DtmfEvent] = deque(maxlen=64)
        self._digit_arrived = asyncio.Event()

    @property
    def call(self) -> Call:
        return held_call(self._call, "DTMF link")

    def attach(self, channel: DtmfChannel) -> None:
        """``channel`` is the call's (its connection's): its keys become our events."""
        channel.on_event = self._received
        channel.on_tone = self._sent

    async def send(self, tones: str, duration_ms: float, gap_ms: float) -> None:
        """:meth:`Call.send_dtmf <softphone.client.call.Call.send_dtmf>`."""
        check_keys(tones, duration_ms, gap_ms)
        call = self.call
        await call.connected()
        if call.machine.is_ended:  # (over, its result maybe not out yet: wait for it)
            raise CallEnded(await call.ended())
        if call.media is None:
            raise DtmfUnavailable("the call has no media")
        channel = call.media.dtmf
        sending = asyncio.ensure_future(channel.send(tones, duration_ms, gap_ms))
        ended: asyncio.Future[Any] = call._ended
        done, _ = await asyncio.wait({sending, ended}, return_when=asyncio.FIRST_COMPLETED)
        if sending in done:
            try:
                sending.result()
            except DtmfUnavailable:
                if not call.machine.is_ended:
                    raise  # the peer takes no telephone events
            else:
                # (a channel closed with the call ends a send early: were all keys out?)
                sender = channel.sender
                if not call.machine.is_ended or (sender is not None and sender.keys_out):
                    return
        else:
            sending.cancel()
        raise CallEnded(await call.ended())

    async def next_digit(self, timeout: float | None = None) -> DtmfEvent:  # noqa: ASYNC109
        """:meth:`Call.next_digit <softphone.client.call.Call.next_digit>`."""
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"next_digit timeout {timeout!r} must be None or >= 0 seconds")
        ended: asyncio.Future[Any] = self.call._ended
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._digits:
            if ended.done():
                raise CallEnded(ended.result())
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise TimeoutError(f"no key pressed within {timeout} s")
            self._digit_arrived.clear()
            waiter = asyncio.ensure_future(self._digit_arrived.wait())
            try:  # (cancelled from outside, as by wait_for, too: no task left behind)
                await asyncio.wait({waiter, ended}, timeout=left,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
        return self._digits.popleft()

    # (A channel of an earlier connection may outlive the call: then nobody is told.)

    def _received(self, event: DtmfEvent) -> None:
        call = self._call()
        if call is None:
            return
        self._digits.append(event)
        self._digit_arrived.set()
        call._emit({"event": "dtmf", "digit": event.digit, "duration_ms": event.duration_ms})

    def _sent(self, tone: str) -> None:
        call = self._call()
        if call is not None and tone != ",":
            call._emit({"event": "dtmf-sent", "digit": tone})
