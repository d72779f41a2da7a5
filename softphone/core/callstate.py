"""The call state machine, sans I/O.

One :class:`CallMachine` per call. It is driven by events (small frozen
dataclasses) and by the time, passed in as ``now`` (seconds, any monotonic
clock). It returns actions for an adapter to carry out: messages to send to
the peer through the hub, media operations, state changes. It never sleeps,
never reads a clock and never touches a socket; :meth:`CallMachine.deadline`
tells the adapter when to call :meth:`CallMachine.handle_timer`. The events,
actions, roles and states are :mod:`softphone.core.callevents` (re-exported here).

Every allowed transition is listed in :data:`TRANSITIONS`, one table, in the
manner of h11's ``_state.py``. The browser page runs the same table: the hub
serves it as JSON (``/callstate.json``). How a call ends and the exit codes:
:mod:`softphone.core.outcome`.

States::

    caller:  DIALING --call-accept--> CONNECTING --media up--> CONNECTED --hangup--> ENDED
    callee:  RINGING --accept-------> CONNECTING --media up--> CONNECTED --hangup--> ENDED

and from any state but ENDED to ENDED on reject, busy, offline, timeout,
media failure, hangup or cancellation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from softphone.core.callevents import (
    Action,
    AddCandidate,
    ApplyAnswer,
    ApplyOffer,
    CallState,
    Ended,
    Event,
    HubGone,
    HubLost,
    LocalAccept,
    LocalDescription,
    LocalHangup,
    LocalReject,
    MediaConnected,
    MediaFailed,
    MediaGiveUp,
    MediaInterrupted,
    MidCall,
    OfferDue,
    PeerOffline,
    RemoteAccept,
    RemoteAnswer,
    RemoteCandidate,
    RemoteHangup,
    RemoteMidCall,
    RemoteOffer,
    RemoteReject,
    RingTimeout,
    Role,
    Send,
    SetupTimeout,
    StartMedia,
    StateChanged,
    StopMedia,
)
from softphone.core.midcall import RestartCandidate, features_of, with_features

# Re-exported: they lived here first, and a call outcome is part of the call state.
from softphone.core.outcome import EXIT_CODES as EXIT_CODES
from softphone.core.outcome import ExitCode as ExitCode
from softphone.core.outcome import Outcome as Outcome
from softphone.core.protocol import IceCandidate, Message, MessageType, make

__all__ = [  # the vocabulary (core/callevents.py) re-exported: callstate.X is the whole API
    "EXIT_CODES", "REASON_BUSY", "REASON_GLARE", "REASON_MEDIA_FAILED", "REASON_MEDIA_LOST",
    "REASON_NO_ANSWER", "REASON_PEER_DISCONNECTED", "TRANSITIONS", "Action", "AddCandidate",
    "ApplyAnswer", "ApplyOffer", "CallMachine", "CallState", "CallStateError", "CallTimeouts",
    "Ended", "Event", "ExitCode", "HubGone", "HubLost", "LocalAccept", "LocalDescription",
    "LocalHangup", "LocalReject", "MediaConnected", "MediaFailed", "MediaGiveUp",
    "MediaInterrupted", "MidCall", "OfferDue", "Outcome", "PeerOffline", "RemoteAccept",
    "RemoteAnswer", "RemoteCandidate", "RemoteHangup", "RemoteMidCall", "RemoteOffer",
    "RemoteReject", "RingTimeout", "Role", "Send", "SetupTimeout", "StartMedia", "StateChanged",
    "StopMedia",
]


# ------------------------------------------------------------ the table ---

C, E = Role.CALLER, Role.CALLEE
S = CallState

#: (role, state, event type) -> next state. Anything not listed is not allowed:
#: a local event raises :class:`CallStateError`; a remote or media event is
#: ignored (the peer or the network is late or misbehaving, not us).
TRANSITIONS: Final[dict[tuple[Role, CallState, type[Event]], CallState]] = {
    # caller, waiting for the callee
    (C, S.DIALING, RemoteAccept): S.CONNECTING,
    (C, S.DIALING, RemoteReject): S.ENDED,  # rejected or busy
    (C, S.DIALING, RemoteHangup): S.ENDED,
    (C, S.DIALING, PeerOffline): S.ENDED,
    (C, S.DIALING, LocalHangup): S.ENDED,  # cancelled; prompt withdrawn
    (C, S.DIALING, HubLost): S.ENDED,
    (C, S.DIALING, HubGone): S.ENDED,
    (C, S.DIALING, RingTimeout): S.ENDED,  # no answer; prompt withdrawn
    # callee, prompt shown
    (E, S.RINGING, LocalAccept): S.CONNECTING,
    (E, S.RINGING, LocalReject): S.ENDED,
    (E, S.RINGING, LocalHangup): S.ENDED,  # same as reject
    (E, S.RINGING, RemoteHangup): S.ENDED,  # missed: the caller gave up
    (E, S.RINGING, HubLost): S.ENDED,
    (E, S.RINGING, HubGone): S.ENDED,
    # both, media being set up
    (C, S.CONNECTING, LocalDescription): S.CONNECTING,  # our offer
    (C, S.CONNECTING, RemoteAnswer): S.CONNECTING,
    (E, S.CONNECTING, RemoteOffer): S.CONNECTING,
    (E, S.CONNECTING, LocalDescription): S.CONNECTING,  # our answer
    (C, S.CONNECTING, RemoteCandidate): S.CONNECTING,
    (E, S.CONNECTING, RemoteCandidate): S.CONNECTING,
    (C, S.CONNECTING, OfferDue): S.CONNECTING,
    (C, S.CONNECTING, SetupTimeout): S.ENDED,
    (E, S.CONNECTING, SetupTimeout): S.ENDED,
    (C, S.CONNECTING, MediaConnected): S.CONNECTED,
    (E, S.CONNECTING, MediaConnected): S.CONNECTED,
    (C, S.CONNECTING, MediaFailed): S.ENDED,
    (E, S.CONNECTING, MediaFailed): S.ENDED,
    (C, S.CONNECTING, RemoteHangup): S.ENDED,
    (E, S.CONNECTING, RemoteHangup): S.ENDED,
    (C, S.CONNECTING, LocalHangup): S.ENDED,
    (E, S.CONNECTING, LocalHangup): S.ENDED,
    (C, S.CONNECTING, PeerOffline): S.ENDED,
    (E, S.CONNECTING, PeerOffline): S.ENDED,
    (C, S.CONNECTING, HubLost): S.ENDED,
    (E, S.CONNECTING, HubLost): S.ENDED,
    (C, S.CONNECTING, HubGone): S.ENDED,
    (E, S.CONNECTING, HubGone): S.ENDED,
    # both, in the call
    (C, S.CONNECTED, RemoteCandidate): S.CONNECTED,  # late trickle
    (E, S.CONNECTED, RemoteCandidate): S.CONNECTED,
    (C, S.CONNECTED, HubLost): S.CONNECTED,  # media is peer to peer: keep talking
    (E, S.CONNECTED, HubLost): S.CONNECTED,
    (C, S.CONNECTED, HubGone): S.ENDED,  # refused for good: nothing reaches us any more
    (E, S.CONNECTED, HubGone): S.ENDED,
    (C, S.CONNECTED, RemoteHangup): S.ENDED,
    (E, S.CONNECTED, RemoteHangup): S.ENDED,
    (C, S.CONNECTED, LocalHangup): S.ENDED,
    (E, S.CONNECTED, LocalHangup): S.ENDED,
    (C, S.CONNECTED, MediaFailed): S.ENDED,
    (E, S.CONNECTED, MediaFailed): S.ENDED,
    # both, in the call: media restart and hold (core/midcall.py)
    (C, S.CONNECTED, RemoteMidCall): S.CONNECTED,
    (E, S.CONNECTED, RemoteMidCall): S.CONNECTED,
    (C, S.CONNECTED, MediaInterrupted): S.CONNECTED,
    (E, S.CONNECTED, MediaInterrupted): S.CONNECTED,
    (C, S.CONNECTED, MediaGiveUp): S.ENDED,
    (E, S.CONNECTED, MediaGiveUp): S.ENDED,
}

_LOCAL_EVENTS: Final = (LocalAccept, LocalReject, LocalHangup, LocalDescription)

#: Reasons we put in ``hangup`` / ``call-reject`` data (extensions; the
#: original pages ignore data).
REASON_NO_ANSWER: Final = "no-answer"
REASON_MEDIA_FAILED: Final = "media-failed"
REASON_BUSY: Final = "busy"
REASON_GLARE: Final = "glare"  # both called each other at once
REASON_PEER_DISCONNECTED: Final = "peer-disconnected"
REASON_MEDIA_LOST: Final = "media-lost"  # media died and no restart brought it back

#: How a connected call ends on the peer's ``hangup``: completed (they hung up), or
#: media-lost when the peer gave up on the media (``media-lost``), or when our media is
#: lost (a restart episode) and the hangup is no one's choice: the hub's
#: ``peer-disconnected`` (the peer never came back), a peer that has no such call
#: any more (``no-such-call``, core/line.py: it was killed and started again, or gave
#: up while we could not hear it), ``media-failed``, or none (the original pages say
#: no reason). A deliberate one (``interrupted``, ``hangup``) is the peer hanging up.
_LOST_WITH_MEDIA: Final = frozenset({None, REASON_PEER_DISCONNECTED, REASON_MEDIA_FAILED,
                                     "no-such-call"})


def _cause_of(event: Event) -> str:
    name = type(event).__name__
    if name.startswith("Local"):
        return "local"
    if name.startswith("Remote"):
        return "remote"
    if name.endswith(("Timeout", "Due")):
        return "timeout"
    return "network"


class CallStateError(RuntimeError):
    """A local event that is not allowed in the current state."""


@dataclass(frozen=True, slots=True)
class CallTimeouts:
    ring: float = 30.0  # caller: give up after ringing this long
    setup: float = 15.0  # both: accepted -> media connected, at most
    offer_delay: float = 0.3  # caller: wait after a plain call-accept (original pages)


@dataclass
class CallMachine:
    """The state of one call, as seen from one side."""

    role: Role
    peer: str
    now: float
    timeouts: CallTimeouts = field(default_factory=CallTimeouts)
    request_data: Any = None
    #: What we announce in our call-request/call-accept (core/midcall.py).
    features: tuple[str, ...] = ()

    state: CallState = field(init=False)
    #: What the peer announced (its call-request, or its call-accept).
    peer_features: frozenset[str] = field(init=False, default=frozenset())
    #: Media is lost and not restored (a restart episode): the call cannot complete.
    media_lost: bool = field(init=False, default=False)
    outcome: Outcome | None = field(init=False, default=None)
    reason: str | None = field(init=False, default=None)
    ended_by: str | None = field(init=False, default=None)
    started_at: float = field(init=False)
    connected_at: float | None = field(init=False, default=None)
    ended_at: float | None = field(init=False, default=None)
    history: list[tuple[CallState, float]] = field(init=False, default_factory=list)
    _deadlines: dict[type[Event], float] = field(init=False, default_factory=dict)
    _pending_offer: str | None = field(init=False, default=None)
    _remote_description: bool = field(init=False, default=False)
    _early_candidates: list[IceCandidate] = field(init=False, default_factory=list)
    _cause: str = field(init=False, default="local")

    def __post_init__(self) -> None:
        self.started_at = self.now
        self.state = S.DIALING if self.role is Role.CALLER else S.RINGING
        self.history.append((self.state, self.now))
        if self.role is Role.CALLER:
            self._deadlines[RingTimeout] = self.now + self.timeouts.ring
        else:
            self.peer_features = features_of(self.request_data)

    # -- entry points -------------------------------------------------------

    def start(self) -> list[Action]:
        """Caller: the ``call-request`` to send. Callee: nothing (prompt the user)."""
        if self.role is Role.CALLER:
            data = with_features(self.request_data, self.features)
            if data is None:
                return [Send(make(MessageType.CALL_REQUEST, self.peer))]
            return [Send(make(MessageType.CALL_REQUEST, self.peer, data))]
        return []

    def deadline(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or None."""
        return min(self._deadlines.values()) if self._deadlines else None

    def handle_timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for kind, when in sorted(self._deadlines.items(), key=lambda kv: kv[1]):
            if when <= now and kind in self._deadlines and self.state is not S.ENDED:
                del self._deadlines[kind]
                actions += self.handle(kind(), now)
        return actions

    def check(self, event: type[Event]) -> None:
        """Raise :class:`CallStateError` if a local ``event`` (its type) is not allowed
        now, as :meth:`handle` would, without changing anything: an adapter checks
        before it sets up what the event needs (a call's audio, before an accept)."""
        if (self.role, self.state, event) not in TRANSITIONS:
            raise CallStateError(
                f"{event.__name__} is not allowed when the {self.role} is {self.state}")

    def handle(self, event: Event, now: float) -> list[Action]:
        """Feed one event; return the actions to carry out, in order."""
        key = (self.role, self.state, type(event))
        new_state = TRANSITIONS.get(key)
        if new_state is None:
            if isinstance(event, _LOCAL_EVENTS):
                self.check(type(event))
            return []
        self._cause = _cause_of(event)
        handler = getattr(self, "_on_" + type(event).__name__)
        actions: list[Action] = handler(event, now)
        assert self.state is new_state, (key, self.state)  # the table is the truth
        return actions

    # -- helpers ------------------------------------------------------------

    @property
    def is_ended(self) -> bool:
        return self.state is S.ENDED

    def _goto(self, state: CallState, now: float) -> list[Action]:
        old = self.state
        if old is state:
            return []
        self.state = state
        self.history.append((state, now))
        if state is S.CONNECTING:
            self._deadlines.pop(RingTimeout, None)
            self._deadlines[SetupTimeout] = now + self.timeouts.setup
        elif state is S.CONNECTED:
            self.connected_at = now
            self._deadlines.clear()
        return [StateChanged(old, state, now)]

    def _end(self, outcome: Outcome, reason: str | None, now: float,
             send: Message | None = None) -> list[Action]:
        media = self.state in (S.CONNECTING, S.CONNECTED)
        actions: list[Action] = []
        if send is not None:
            actions.append(Send(send))
        if media:
            actions.append(StopMedia())
        actions += self._goto(S.ENDED, now)
        self._deadlines.clear()
        self.outcome = outcome
        self.reason = reason
        self.ended_at = now
        self.ended_by = self._cause
        actions.append(Ended(outcome, reason, now, self._cause))
        return actions

    def _hangup(self, reason: str | None = None) -> Message:
        if reason is None:
            return make(MessageType.HANGUP, self.peer)
        return make(MessageType.HANGUP, self.peer, {"reason": reason})

    # -- handlers, one per event type ---------------------------------------

    def _on_RemoteAccept(self, event: RemoteAccept, now: float) -> list[Action]:
        self.peer_features = event.features
        actions = self._goto(S.CONNECTING, now)
        delay = 0.0 if event.media_ready else self.timeouts.offer_delay
        if delay > 0:
            self._deadlines[OfferDue] = now + delay
        return [*actions, StartMedia(offerer=True)]

    def _on_RemoteReject(self, event: RemoteReject, now: float) -> list[Action]:
        outcome = Outcome.BUSY if event.reason in (REASON_BUSY, REASON_GLARE) \
            else Outcome.REJECTED
        return self._end(outcome, event.reason, now)

    def _on_RemoteHangup(self, event: RemoteHangup, now: float) -> list[Action]:
        if self.state is S.DIALING:
            # The callee hung up instead of rejecting: treat as a rejection.
            return self._end(Outcome.REJECTED, event.reason, now)
        if self.state is S.RINGING:
            return self._end(Outcome.MISSED, event.reason, now)
        if self.state is S.CONNECTED:
            lost = event.reason == REASON_MEDIA_LOST or (
                self.media_lost and event.reason in _LOST_WITH_MEDIA)
            outcome = Outcome.MEDIA_LOST if lost else Outcome.COMPLETED
            return self._end(outcome, event.reason or "remote-hangup", now)
        if event.reason == REASON_MEDIA_FAILED:
            return self._end(Outcome.MEDIA_FAILED, event.reason, now)
        return self._end(Outcome.CANCELLED, event.reason or "remote-hangup", now)

    def _on_PeerOffline(self, event: PeerOffline, now: float) -> list[Action]:
        return self._end(Outcome.OFFLINE, None, now)

    def _on_HubGone(self, event: HubGone, now: float) -> list[Action]:
        # (no hangup sent: the hub is gone; the peer learns it from the hub or the
        # phone that took our id, core/line.py's no-such-call)
        return self._end(Outcome.HUB_UNREACHABLE, event.reason, now)

    def _on_HubLost(self, event: HubLost, now: float) -> list[Action]:
        if self.state is S.CONNECTED:
            return []
        return self._end(Outcome.HUB_UNREACHABLE, "hub-lost", now)

    def _on_LocalAccept(self, event: LocalAccept, now: float) -> list[Action]:
        if event.features is not None:
            self.features = event.features
        data = with_features({"media": "ready"}, self.features)
        actions: list[Action] = [Send(make(MessageType.CALL_ACCEPT, self.peer, data))]
        actions += self._goto(S.CONNECTING, now)
        actions.append(StartMedia(offerer=False))
        return actions

    def _on_LocalReject(self, event: LocalReject, now: float) -> list[Action]:
        msg = make(MessageType.CALL_REJECT, self.peer, {"reason": event.reason})
        return self._end(Outcome.REJECTED, event.reason, now, send=msg)

    def _on_LocalHangup(self, event: LocalHangup, now: float) -> list[Action]:
        if self.state is S.RINGING:
            return self._on_LocalReject(LocalReject(event.reason), now)
        # (a connected call we hang up is completed, also while its media is being
        # restarted: media-lost is for giving up, MediaGiveUp)
        outcome = Outcome.COMPLETED if self.state is S.CONNECTED else Outcome.CANCELLED
        return self._end(outcome, event.reason, now, send=self._hangup(event.reason))

    def _on_RemoteMidCall(self, event: RemoteMidCall, now: float) -> list[Action]:
        return [MidCall(event.message)]

    def _on_MediaInterrupted(self, event: MediaInterrupted, now: float) -> list[Action]:
        self.media_lost = event.lost
        return []

    def _on_MediaGiveUp(self, event: MediaGiveUp, now: float) -> list[Action]:
        self.media_lost = True
        return self._end(Outcome.MEDIA_LOST, event.reason, now,
                         send=self._hangup(REASON_MEDIA_LOST))

    def _on_LocalDescription(self, event: LocalDescription, now: float) -> list[Action]:
        if self.role is Role.CALLER:
            if OfferDue in self._deadlines:
                self._pending_offer = event.sdp
                return []
            return [Send(make(MessageType.OFFER, self.peer, {"type": "offer", "sdp": event.sdp}))]
        return [Send(make(MessageType.ANSWER, self.peer, {"type": "answer", "sdp": event.sdp}))]

    def _remote_description_set(self) -> list[Action]:
        self._remote_description = True
        held: list[Action] = [AddCandidate(c) for c in self._early_candidates]
        self._early_candidates.clear()
        return held

    def _on_RemoteOffer(self, event: RemoteOffer, now: float) -> list[Action]:
        if self._remote_description:
            return []  # a second offer: renegotiation is not supported
        return [ApplyOffer(event.sdp), *self._remote_description_set()]

    def _on_RemoteAnswer(self, event: RemoteAnswer, now: float) -> list[Action]:
        if self._remote_description:
            return []
        return [ApplyAnswer(event.sdp), *self._remote_description_set()]

    def _on_RemoteCandidate(self, event: RemoteCandidate, now: float) -> list[Action]:
        if self.state is S.CONNECTED:
            # A late trickle: the call's first connection is now generation 0 of the restart
            # adapter's, which adds it only while that connection is open (a candidate of a
            # generation that is not open is dropped: docs/protocol.md, "Restart messages").
            return [MidCall(RestartCandidate(0, event.candidate))]
        if not self._remote_description:
            self._early_candidates.append(event.candidate)  # hold until we can use it
            return []
        return [AddCandidate(event.candidate)]

    def _on_MediaConnected(self, event: MediaConnected, now: float) -> list[Action]:
        return self._goto(S.CONNECTED, now)

    def _on_MediaFailed(self, event: MediaFailed, now: float) -> list[Action]:
        return self._end(Outcome.MEDIA_FAILED, event.reason, now,
                         send=self._hangup(REASON_MEDIA_FAILED))

    def _on_RingTimeout(self, event: RingTimeout, now: float) -> list[Action]:
        return self._end(Outcome.NO_ANSWER, REASON_NO_ANSWER, now,
                         send=self._hangup(REASON_NO_ANSWER))

    def _on_OfferDue(self, event: OfferDue, now: float) -> list[Action]:
        sdp, self._pending_offer = self._pending_offer, None
        if sdp is None:
            return []  # not made yet: it is sent as soon as it is
        return [Send(make(MessageType.OFFER, self.peer, {"type": "offer", "sdp": sdp}))]

    def _on_SetupTimeout(self, event: SetupTimeout, now: float) -> list[Action]:
        return self._end(Outcome.MEDIA_FAILED, "setup-timeout", now,
                         send=self._hangup(REASON_MEDIA_FAILED))
