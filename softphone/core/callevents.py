"""The vocabulary of a call: its roles and states, the events a
:class:`~softphone.core.callstate.CallMachine` consumes and the actions it emits.

The decisions are :mod:`softphone.core.callstate`'s (which also re-exports
every name here); this module only says what it consumes and emits.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from softphone.core.midcall import MidCallMessage
from softphone.core.outcome import Outcome
from softphone.core.protocol import IceCandidate, Message


class Role(enum.StrEnum):
    CALLER = "caller"
    CALLEE = "callee"


class CallState(enum.StrEnum):
    DIALING = "dialing"  # caller: call-request sent, waiting for accept/reject
    RINGING = "ringing"  # callee: call-request received, waiting for the user
    CONNECTING = "connecting"  # accepted: offer/answer and ICE under way
    CONNECTED = "connected"  # media flows
    ENDED = "ended"




# ---------------------------------------------------------------- events ---


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of the events a call machine consumes."""


@dataclass(frozen=True, slots=True)
class LocalAccept(Event):
    """The user (or --auto-accept) answers an incoming call.

    ``features``: what our ``call-accept`` announces (None: the machine's ``features``).
    """

    features: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class LocalReject(Event):
    reason: str = "declined"


@dataclass(frozen=True, slots=True)
class LocalHangup(Event):
    reason: str = "hangup"


@dataclass(frozen=True, slots=True)
class LocalDescription(Event):
    """The media adapter produced our offer (caller) or answer (callee)."""

    sdp: str


@dataclass(frozen=True, slots=True)
class RemoteAccept(Event):
    #: True when the callee said its media is ready (our extension), so the
    #: offer can go at once; the original pages grab the microphone only
    #: after accepting, so for them the offer waits ``offer_delay``.
    media_ready: bool = False
    #: What the callee announced (``docs/protocol.md``: Features).
    features: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class RemoteReject(Event):
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RemoteHangup(Event):
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RemoteOffer(Event):
    sdp: str


@dataclass(frozen=True, slots=True)
class RemoteAnswer(Event):
    sdp: str


@dataclass(frozen=True, slots=True)
class RemoteCandidate(Event):
    candidate: IceCandidate


@dataclass(frozen=True, slots=True)
class PeerOffline(Event):
    """The hub answered a message to the peer with ``error``/``offline``."""


@dataclass(frozen=True, slots=True)
class HubLost(Event):
    """The connection to the hub is gone (and was not restored)."""


@dataclass(frozen=True, slots=True)
class HubGone(Event):
    """The hub refused us for good (another took our id: ``replaced``; or
    ``unauthorized``): nothing of the call can reach us any more, so it ends, a
    connected one too (with :class:`HubLost` it keeps talking)."""

    reason: str = "replaced"


@dataclass(frozen=True, slots=True)
class MediaConnected(Event):
    pass


@dataclass(frozen=True, slots=True)
class MediaFailed(Event):
    reason: str = "ice-failed"


@dataclass(frozen=True, slots=True)
class RemoteMidCall(Event):
    """A restart or hold message from the peer (:func:`softphone.core.midcall.classify`)."""

    message: MidCallMessage


@dataclass(frozen=True, slots=True)
class MediaInterrupted(Event):
    """Media was lost (``lost``: a restart episode began) or is back (media restart)."""

    lost: bool = True


@dataclass(frozen=True, slots=True)
class MediaGiveUp(Event):
    """Media did not come back within the give-up time: the call ends ``media-lost``."""

    reason: str = "media-lost"


@dataclass(frozen=True, slots=True)
class RingTimeout(Event):
    """Caller: nobody answered in time (a timer: ``CallMachine.handle_timer``)."""


@dataclass(frozen=True, slots=True)
class OfferDue(Event):
    """Caller: the offer delay after a plain ``call-accept`` is over (timer)."""


@dataclass(frozen=True, slots=True)
class SetupTimeout(Event):
    """Media did not connect in time after the call was accepted (timer)."""


# --------------------------------------------------------------- actions ---


@dataclass(frozen=True, slots=True)
class Action:
    """Base class of what a call machine asks its adapter to do."""


@dataclass(frozen=True, slots=True)
class Send(Action):
    message: Message


@dataclass(frozen=True, slots=True)
class StartMedia(Action):
    """Create the peer connection; the caller then makes its offer."""

    offerer: bool


@dataclass(frozen=True, slots=True)
class ApplyOffer(Action):
    """Callee: set the remote offer and make an answer (-> LocalDescription)."""

    sdp: str


@dataclass(frozen=True, slots=True)
class ApplyAnswer(Action):
    sdp: str


@dataclass(frozen=True, slots=True)
class AddCandidate(Action):
    candidate: IceCandidate


@dataclass(frozen=True, slots=True)
class StopMedia(Action):
    pass


@dataclass(frozen=True, slots=True)
class MidCall(Action):
    """Hand a restart or hold message to its adapter (restart link, hold adapter)."""

    message: MidCallMessage


@dataclass(frozen=True, slots=True)
class StateChanged(Action):
    old: CallState
    new: CallState
    at: float


@dataclass(frozen=True, slots=True)
class Ended(Action):
    outcome: Outcome
    reason: str | None
    at: float
    #: What ended it: "local" (us), "remote" (the peer), "timeout", "network".
    by: str = "local"
