"""One call's hold and resume: the asyncio adapter around :class:`~softphone.core.hold.HoldMachine`.

``docs/protocol.md``, "Hold and resume". :class:`HoldLink` feeds the
machine the user's :meth:`~softphone.client.call.Call.hold` /
:meth:`~softphone.client.call.Call.resume` and the peer's hold messages
(:class:`~softphone.core.midcall.HoldMessage`, handed on by the call
machine), and carries out what comes back:

- hold changes and their acknowledgements go to the hub (``offer``/``answer``
  with ``hold`` and ``seq``), a change again every second until it is
  acknowledged (a timer on the phone's loop clock);
- ``hold``/``resume`` events (``{"event": "hold", "by": "local"}``) go to
  the call's listeners (the status line, ``--json``);
- the media follows the flow mode (:meth:`CallAudio.set_flow
  <softphone.media.audiopath.CallAudio.set_flow>`: no audio packets either
  way, or silence to a peer that does not know hold), and listeners of
  :attr:`HoldLink.on_rtp_expected` (the media restart's silence watch) are
  told whether RTP should arrive, so a held call's silence restarts nothing;
- the spans without audio, in seconds since media connected, end up in the
  call's result (:attr:`CallResult.held <softphone.client.call.CallResult.held>`);
  a recording notes them itself (:mod:`softphone.media.recording`).

One per call, made when it is first needed (the call is connected by then, so
the peer's features are known).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from softphone.client.calltypes import held_call
from softphone.core import callstate as cs
from softphone.core import hold as h
from softphone.core.line import Routed
from softphone.core.midcall import FEATURE_HOLD, HoldMessage, hold_message
from softphone.core.protocol import Message

if TYPE_CHECKING:
    from softphone.client.call import Call

log = logging.getLogger(__name__)

#: Seconds between resends of an unacknowledged hold change.
HOLD_RESEND = 1.0


def hold_agreed(call: Call) -> bool:
    """Both sides announced ``hold``: hold is signaled (else it is local only)."""
    return FEATURE_HOLD in call.features and FEATURE_HOLD in call.peer_features


class HoldLink:
    """The hold state of one call and what carries it out (module docstring)."""

    def __init__(self, call: Call, *, enabled: bool, resend: float = HOLD_RESEND) -> None:
        # Weak: the call holds its link, and a cycle would leave the ended call's
        # objects to the garbage collector (issue 15).
        self._call = weakref.ref(call)
        self.machine = h.HoldMachine(enabled=enabled, resend=resend)
        #: Told ``expected`` (bool) whenever whether RTP should arrive changes.
        self.on_rtp_expected: list[Callable[[bool], None]] = []
        #: Spans without audio (either side held): (start, end) in seconds since
        #: media connected; the one under way is not in it.
        self.spans: list[tuple[float, float]] = []
        self._since: float | None = None  # when audio stopped (loop time), if it has
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def call(self) -> Call:
        return held_call(self._call, "hold link")

    @property
    def local_held(self) -> bool:
        return self.machine.local_held

    @property
    def remote_held(self) -> bool:
        return self.machine.remote_held

    @property
    def mode(self) -> h.FlowMode:
        return self.machine.mode

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    # -- what comes in ------------------------------------------------------------

    def local(self, held: bool) -> None:
        """The user holds (True) or resumes."""
        if self._closed:
            return
        now = self._now()
        self._run(self.machine.handle(h.LocalHold() if held else h.LocalResume(), now), now)

    def received(self, message: HoldMessage) -> None:
        """The peer's hold change (``offer``) or its acknowledgement of ours (``answer``)."""
        if self._closed:
            return
        event: h.HoldEvent = h.RemoteHold(message.hold, message.seq) \
            if message.kind == "offer" else h.RemoteHoldAck(message.seq)
        now = self._now()
        self._run(self.machine.handle(event, now), now)

    def _due(self) -> None:
        self._timer = None
        if not self._closed and self._call() is not None:
            now = self._now()
            self._run(self.machine.handle_timer(now), now)

    # -- what goes out --------------------------------------------------------------

    def _run(self, actions: list[h.HoldAction], now: float) -> None:
        call = self.call
        for action in actions:
            if isinstance(action, h.SendHold | h.SendHoldAck):
                kind = "offer" if isinstance(action, h.SendHold) else "answer"
                self._send(hold_message(call.peer, kind, action.held, action.seq))
            elif isinstance(action, h.HoldChange):
                call._emit({"event": action.event, "by": action.by})
            elif isinstance(action, h.SetMediaFlow):
                self._set_flow(action.mode, now)
        self._arm()

    def _send(self, message: Message) -> None:
        call = self.call
        if not call.is_ended:
            call.phone._run([Routed(call.machine, cs.Send(message))])

    def _set_flow(self, mode: h.FlowMode, now: float) -> None:
        if self.call.audio is not None:
            self.call.audio.set_flow(mode)
        if mode is h.FlowMode.FLOWING:
            self._close_span(now)
        elif self._since is None:
            self._since = now
        expected = self.machine.expects_rtp
        for listener in list(self.on_rtp_expected):
            try:
                listener(expected)
            except Exception:
                log.exception("hold listener failed")

    def _close_span(self, now: float) -> None:
        since, self._since = self._since, None
        connected = self.call.connected_at
        if since is not None and connected is not None:
            self.spans.append((round(since - connected, 3), round(now - connected, 3)))

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.machine.deadline()
        if deadline is not None and not self._closed:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._due)

    def close(self, at: float) -> tuple[tuple[float, float], ...]:
        """The call ended at ``at`` (loop time): no more resends; the spans, the last
        one closed at the end."""
        if not self._closed:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._close_span(at)
        return tuple(self.spans)
