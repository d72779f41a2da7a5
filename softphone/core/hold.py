"""Hold and resume, sans I/O.

aiortc 1.16 cannot renegotiate a connection (no re-offer with ``a=sendonly``),
so hold is signaled beside the media (``docs/protocol.md``, "Media restart
and hold"): an ``offer`` whose data is ``{"type": "offer", "hold": true|false,
"seq": N}`` and no ``sdp``, acknowledged by an ``answer`` with the same
``hold`` and ``seq``. Each side has its own hold; audio flows only while
neither side holds. With a peer that announced ``hold`` nothing is sent
either way while held (the connection's consent checks and RTCP keep it
alive); with one that did not, hold is local only: our RTP carries silence
and playout is muted, so the peer sees a live stream.

:class:`HoldMachine` takes events with the time passed in and returns
actions; it resends an unacknowledged hold change every ``resend`` seconds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class FlowMode(enum.StrEnum):
    """What the media of the call does."""

    FLOWING = "flowing"
    HELD = "held"  # no RTP either way (the peer agreed to hold)
    MUTED = "muted"  # held towards a peer that does not know hold: RTP carries silence


# ---------------------------------------------------------------- events ---


@dataclass(frozen=True, slots=True)
class HoldEvent:
    """Base class of what a :class:`HoldMachine` consumes."""


@dataclass(frozen=True, slots=True)
class LocalHold(HoldEvent):
    pass


@dataclass(frozen=True, slots=True)
class LocalResume(HoldEvent):
    pass


@dataclass(frozen=True, slots=True)
class RemoteHold(HoldEvent):
    """The peer's ``offer`` with ``hold``: it holds (True) or resumes (False)."""

    held: bool
    seq: int


@dataclass(frozen=True, slots=True)
class RemoteHoldAck(HoldEvent):
    """The peer's ``answer`` acknowledging our hold change ``seq``."""

    seq: int


# --------------------------------------------------------------- actions ---


@dataclass(frozen=True, slots=True)
class HoldAction:
    """Base class of what a :class:`HoldMachine` asks its adapter to do."""


@dataclass(frozen=True, slots=True)
class SendHold(HoldAction):
    """Send ``offer`` ``{"type": "offer", "hold": held, "seq": seq}``."""

    held: bool
    seq: int


@dataclass(frozen=True, slots=True)
class SendHoldAck(HoldAction):
    """Send ``answer`` ``{"type": "answer", "hold": held, "seq": seq}``."""

    held: bool
    seq: int


@dataclass(frozen=True, slots=True)
class HoldChange(HoldAction):
    """For the status line, ``--json`` and the recorder: ``hold``/``resume`` by a side."""

    event: str  # "hold" | "resume"
    by: str  # "local" | "remote"


@dataclass(frozen=True, slots=True)
class SetMediaFlow(HoldAction):
    """Send and play according to ``mode`` (also on a connection made later)."""

    mode: FlowMode


@dataclass
class HoldMachine:
    """The hold state of one call, as seen from one side."""

    #: Both sides announced the ``hold`` feature.
    enabled: bool = True
    #: Seconds between resends of an unacknowledged hold change.
    resend: float = 1.0

    local_held: bool = field(init=False, default=False)
    remote_held: bool = field(init=False, default=False)
    seq: int = field(init=False, default=0)
    _remote_seq: int = field(init=False, default=0)
    _resend_at: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if not self.resend > 0:
            raise ValueError(f"hold resend must be a positive number of seconds, "
                             f"not {self.resend!r}")

    @property
    def mode(self) -> FlowMode:
        if not (self.local_held or self.remote_held):
            return FlowMode.FLOWING
        return FlowMode.HELD if self.enabled else FlowMode.MUTED

    @property
    def expects_rtp(self) -> bool:
        """Whether RTP should arrive (feed ``HoldChanged(not this)`` to the restart machine)."""
        return self.mode is not FlowMode.HELD

    def deadline(self) -> float | None:
        return self._resend_at

    def handle_timer(self, now: float) -> list[HoldAction]:
        if self._resend_at is None or now < self._resend_at:
            return []
        self._resend_at = now + self.resend
        return [SendHold(self.local_held, self.seq)]

    def handle(self, event: HoldEvent, now: float) -> list[HoldAction]:
        before = self.mode
        actions: list[HoldAction] = []
        if isinstance(event, LocalHold | LocalResume):
            held = isinstance(event, LocalHold)
            if held == self.local_held:
                return []
            self.local_held = held
            actions.append(HoldChange("hold" if held else "resume", "local"))
            if self.enabled:
                self.seq += 1
                self._resend_at = now + self.resend
                actions.append(SendHold(held, self.seq))
        elif isinstance(event, RemoteHold):
            if not self.enabled:
                return []
            if event.seq > self._remote_seq:
                self._remote_seq = event.seq
                if event.held != self.remote_held:
                    self.remote_held = event.held
                    actions.append(HoldChange("hold" if event.held else "resume", "remote"))
            # A repeat (our ack was lost) is acknowledged again, as it was.
            actions.append(SendHoldAck(event.held, event.seq))
        elif isinstance(event, RemoteHoldAck):
            if event.seq == self.seq:
                self._resend_at = None
        if self.mode is not before:
            actions.append(SetMediaFlow(self.mode))
        return actions
