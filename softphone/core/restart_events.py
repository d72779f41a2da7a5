"""The vocabulary of media restart: settings, reasons, events and actions.

The decisions are :class:`softphone.core.restart.RestartMachine`'s (which also
re-exports every name here); this module only says what it consumes and emits.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

#: The outcome of a call whose media died and could not be restored: the value of
#: :attr:`softphone.core.outcome.Outcome.MEDIA_LOST` (exit code 14).
MEDIA_LOST: Final = "media-lost"


class RestartReason(enum.StrEnum):
    """Why an episode started (the ``reason`` of the ``media-restart`` event)."""

    ICE_DISCONNECTED = "ice-disconnected"
    ICE_FAILED = "ice-failed"
    RTP_SILENCE = "rtp-silence"
    PATH_DEAD = "path-dead"  # a short silence, and the path does not answer a check
    ADDRESS_CHANGE = "address-change"
    PEER_ADDRESS_CHANGE = "peer-address-change"  # its packets come from a new address
    PEER = "peer"  # the peer sent a restart offer


class PeerState(enum.StrEnum):
    """``RTCPeerConnection.connectionState`` of one generation's connection."""

    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    FAILED = "failed"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class RestartSettings:
    """The limits of media restart (seconds). Each is a documented option."""

    #: No RTP for this long while connected and not held: restart.
    silence: float = 2.0
    #: No RTP for this long: check the path (a STUN request on the selected
    #: pair); if it gets no answer, restart without waiting for ``silence``.
    probe_after: float = 0.5
    #: Attempts start at least this far apart (immediate retries excepted:
    #: signaling back, a local address added or removed).
    retry_interval: float = 2.0
    #: Our restart offer unanswered this long: the attempt is abandoned.
    answer_timeout: float = 2.0
    #: An answered (or accepted) attempt without RTP this long: abandoned.
    connect_timeout: float = 5.0
    #: The adapter did not make its offer/answer within this (gathering stuck).
    prepare_timeout: float = 8.0
    #: Media away this long (from the start of the episode): the call ends.
    give_up: float = 45.0

    def __post_init__(self) -> None:
        for name in ("silence", "probe_after", "retry_interval", "answer_timeout",
                     "connect_timeout", "prepare_timeout", "give_up"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"restart setting {name} must be a positive number of "
                                 f"seconds, not {value!r}")
        if self.probe_after >= self.silence:
            raise ValueError("restart setting probe_after must be shorter than silence")


# ---------------------------------------------------------------- events ---


@dataclass(frozen=True, slots=True)
class RestartEvent:
    """Base class of what a :class:`RestartMachine` consumes."""


@dataclass(frozen=True, slots=True)
class ConnectionChanged(RestartEvent):
    generation: int
    state: PeerState


@dataclass(frozen=True, slots=True)
class RtpReceived(RestartEvent):
    """Audio RTP arrived on ``generation``'s connection (feed at least every 0.5 s)."""

    generation: int


@dataclass(frozen=True, slots=True)
class ProbeResult(RestartEvent):
    """The answer to :class:`ProbePath`: did the peer answer the check?"""

    generation: int
    ok: bool


@dataclass(frozen=True, slots=True)
class RemoteAddressChanged(RestartEvent):
    """Packets from the peer arrive from another address than the selected pair's.

    Its NAT rebound (our packets to the old address are dropped), or it moved.
    """

    generation: int


@dataclass(frozen=True, slots=True)
class AddressesChanged(RestartEvent):
    """The machine's local (non-loopback) addresses; the first one is the baseline."""

    addresses: frozenset[str]


@dataclass(frozen=True, slots=True)
class SignalingChanged(RestartEvent):
    """The hub connection went down (``up=False``) or is (back) up."""

    up: bool


@dataclass(frozen=True, slots=True)
class RemoteRestartOffer(RestartEvent):
    generation: int
    sdp: str = ""


@dataclass(frozen=True, slots=True)
class RemoteRestartAnswer(RestartEvent):
    generation: int
    sdp: str = ""


@dataclass(frozen=True, slots=True)
class OfferSent(RestartEvent):
    """Our restart offer for ``generation`` went to the hub."""

    generation: int


@dataclass(frozen=True, slots=True)
class AnswerSent(RestartEvent):
    """Our restart answer for ``generation`` went to the hub."""

    generation: int


@dataclass(frozen=True, slots=True)
class PeerUnreachable(RestartEvent):
    """The hub answered our restart offer with ``error``/``offline``."""


@dataclass(frozen=True, slots=True)
class HoldChanged(RestartEvent):
    """Whether no RTP is expected because the call is on hold (either side)."""

    held: bool


# --------------------------------------------------------------- actions ---


@dataclass(frozen=True, slots=True)
class RestartAction:
    """Base class of what a :class:`RestartMachine` asks its adapter to do."""


@dataclass(frozen=True, slots=True)
class StartRestart(RestartAction):
    """Media was lost on ``generation``: an episode begins (status line, ``--json``)."""

    reason: RestartReason
    generation: int


@dataclass(frozen=True, slots=True)
class MediaStalled(RestartAction):
    """Media was lost but the peer cannot restart: only the old path may come back."""

    reason: RestartReason


@dataclass(frozen=True, slots=True)
class ProbePath(RestartAction):
    """Send one connectivity check on ``generation``'s selected pair (no retransmission
    beyond one RTO); feed :class:`ProbeResult`."""

    generation: int


@dataclass(frozen=True, slots=True)
class SendRestartOffer(RestartAction):
    """Make a fresh connection for ``generation``; send its offer with ``restart``."""

    generation: int
    reason: RestartReason


@dataclass(frozen=True, slots=True)
class ResendRestartOffer(RestartAction):
    """Send our pending offer for ``generation`` again (it won a glare; it may be lost)."""

    generation: int


@dataclass(frozen=True, slots=True)
class AcceptRestartOffer(RestartAction):
    """Make a fresh connection for ``generation`` from ``sdp``; send the answer."""

    generation: int
    sdp: str


@dataclass(frozen=True, slots=True)
class ApplyRestartAnswer(RestartAction):
    generation: int
    sdp: str


@dataclass(frozen=True, slots=True)
class IgnoreStale(RestartAction):
    """A restart offer/answer that is late, repeated, or lost a glare (log it)."""

    kind: str  # "offer" | "answer"
    generation: int
    why: str


@dataclass(frozen=True, slots=True)
class CloseConnection(RestartAction):
    """Close ``generation``'s connection (an abandoned attempt, or the old one)."""

    generation: int


@dataclass(frozen=True, slots=True)
class CheckSignaling(RestartAction):
    """Check the hub connection: reconnect at once if its local address is gone, or
    if a ping is not answered within a second. Feed :class:`SignalingChanged`."""


@dataclass(frozen=True, slots=True)
class RestartDone(RestartAction):
    """Media is back on ``generation``; ``gap_ms`` without audio. Play from it."""

    generation: int
    gap_ms: int
    reason: RestartReason
    attempts: int


@dataclass(frozen=True, slots=True)
class GiveUp(RestartAction):
    """End the call: media did not come back within ``give_up``."""

    outcome: str
    reason: RestartReason
