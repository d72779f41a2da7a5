"""A phone line, sans I/O: which call each hub message belongs to, and busy.

A :class:`Line` holds up to ``max_calls`` calls at once (one
:class:`~softphone.core.callstate.CallMachine` each, one per peer; default
one, as a phone). It turns messages from the hub into events of the call
with that peer, answers a caller beyond ``max_calls`` with ``call-reject``
/ ``busy``, and answers the call messages of anyone it has no call with (an
offer, answer, candidate, call-accept: a peer that still holds a call we do
not, e.g. ours before a restart of this phone under the same id) with a
``hangup`` / ``no-such-call``, at most once per peer every
:data:`NO_CALL_REPLY_EVERY` seconds, the end of a call with it counting as
one (never a ``hangup`` or ``call-reject``: no storm between two phones
without a call). Ended calls are let go: a line that has carried thousands
of calls holds only the ones in progress (and :attr:`Line.call`, the latest).

Two ways to read what it says: :meth:`Line.receive`, :meth:`Line.handle_timer`
and :meth:`Line.handle_local` return plain actions (the call they concern
is the line's latest, :attr:`Line.call`); :meth:`Line.route`,
:meth:`Line.timers` and :meth:`Line.hub_lost` return :class:`Routed`
actions, each with its call, for a line with several calls at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

from softphone.core import callstate as cs
from softphone.core.midcall import classify, features_of
from softphone.core.protocol import (
    ErrorCode,
    HubError,
    Message,
    MessageType,
    ProtocolError,
    ice_candidate,
    make,
    reason_of,
    session_description,
)

log = logging.getLogger(__name__)

#: The reason of the ``hangup`` that answers a message for a call we do not have.
REASON_NO_SUCH_CALL: Final = "no-such-call"
#: Seconds between two such answers to one peer (the end of a call with it counts as one:
#: its late messages are not answered).
NO_CALL_REPLY_EVERY: Final = 5.0
#: The message types that belong to a call in progress: answered when we have none.
_CALL_MESSAGES: Final = frozenset({MessageType.CALL_ACCEPT, MessageType.OFFER,
                                   MessageType.ANSWER, MessageType.CANDIDATE})


@dataclass(frozen=True, slots=True)
class IncomingCall(cs.Action):
    """A new call is ringing: ask the user (or auto-accept)."""

    call: cs.CallMachine


@dataclass(frozen=True, slots=True)
class HubProblem(cs.Action):
    """The hub answered with an error that belongs to no call."""

    error: HubError


@dataclass(frozen=True, slots=True)
class Routed:
    """An action and the call it belongs to (None: the line's own, e.g. a busy reply)."""

    call: cs.CallMachine | None
    action: cs.Action


class LineBusy(RuntimeError):
    """Dialing while every line is taken (or already in a call with that peer)."""


class Line:
    """Routes hub messages to the calls of one client id (up to ``max_calls`` at once)."""

    def __init__(self, my_id: str, timeouts: cs.CallTimeouts | None = None, *,
                 max_calls: int = 1, features: tuple[str, ...] = ()) -> None:
        if not isinstance(max_calls, int) or max_calls < 1:
            raise ValueError(f"max_calls must be a whole number >= 1, not {max_calls!r}")
        self.my_id = my_id
        self.timeouts = timeouts or cs.CallTimeouts()
        self.max_calls = max_calls
        #: What our calls announce (core/midcall.py), unless a call says otherwise.
        self.features = features
        #: The calls in progress, by peer (ended calls are dropped).
        self.calls: dict[str, cs.CallMachine] = {}
        #: The latest call (ended or not); None before the first.
        self.call: cs.CallMachine | None = None
        #: When each peer was last told we have no call with it, or its call with us
        #: ended (entries older than NO_CALL_REPLY_EVERY are dropped).
        self._told: dict[str, float] = {}

    @property
    def active(self) -> list[cs.CallMachine]:
        """The calls in progress, oldest first."""
        return [c for c in self.calls.values() if not c.is_ended]

    @property
    def full(self) -> bool:
        return len(self.active) >= self.max_calls

    def _new(self, role: cs.Role, peer: str, now: float, data: Any) -> cs.CallMachine:
        call = cs.CallMachine(role, peer, now, self.timeouts, data, self.features)
        self.calls[peer] = self.call = call
        return call

    def _prune(self) -> None:
        for peer in [p for p, c in self.calls.items() if c.is_ended]:
            ended_at = self.calls.pop(peer).ended_at
            if ended_at is not None:
                self._forget_told(ended_at)
                self._told[peer] = ended_at  # (its end told the peer, or the peer us)

    def _forget_told(self, now: float) -> None:
        for peer in [p for p, t in self._told.items() if now - t >= NO_CALL_REPLY_EVERY]:
            del self._told[peer]

    # -- our side ------------------------------------------------------------

    def check_dial(self, peer: str) -> None:
        """Raise if :meth:`dial` would refuse ``peer``, changing nothing: ValueError for
        our own id (the hub would route the request back to us: it rings until no
        answer), :class:`LineBusy` for a peer we are in a call with (one call per
        peer: the protocol addresses a call by the peer's id, ``docs/protocol.md``)
        or when every line is taken."""
        if peer == self.my_id:
            raise ValueError(f"you cannot call yourself ({peer!r} is this phone's own id)")
        current = self.calls.get(peer)
        if current is not None and not current.is_ended:
            raise LineBusy(f"already in a call with {peer}: one call per peer (the protocol "
                           f"addresses calls by peer id)")
        if self.full:
            raise LineBusy(f"already in a call with {self.active[-1].peer}" if self.max_calls == 1
                           else f"all {self.max_calls} lines are in calls")

    def dial(self, peer: str, now: float, data: Any = None,
             features: tuple[str, ...] | None = None) -> list[cs.Action]:
        """Call ``peer``; ``features``: what this call announces (None: the line's)."""
        self.check_dial(peer)
        call = self._new(cs.Role.CALLER, peer, now, data)
        if features is not None:
            call.features = features
        return call.start()

    def deadline(self) -> float | None:
        """When :meth:`handle_timer` (or :meth:`timers`) must next be called, or None."""
        deadlines = [d for c in self.calls.values() if (d := c.deadline()) is not None]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> list[cs.Action]:
        return [r.action for r in self.timers(now)]

    def timers(self, now: float) -> list[Routed]:
        """Every call's expired timers, as routed actions."""
        out = [Routed(c, a) for c in list(self.calls.values()) for a in c.handle_timer(now)]
        self._prune()
        return out

    def handle_local(self, event: cs.Event, now: float,
                     call: cs.CallMachine | None = None) -> list[cs.Action]:
        """A local or media event for ``call`` (default: the latest); ignored once it ended."""
        call = self.call if call is None else call
        if call is None or call.is_ended or self.calls.get(call.peer) is not call:
            return []
        actions = call.handle(event, now)
        self._prune()
        return actions

    def hub_lost(self, now: float) -> list[Routed]:
        """The hub connection broke: every call in progress hears it."""
        out = [Routed(c, a) for c in self.active for a in c.handle(cs.HubLost(), now)]
        self._prune()
        return out

    # -- the hub's side ---------------------------------------------------------

    def receive(self, item: Message | HubError, now: float) -> list[cs.Action]:
        """One frame from the hub, already parsed."""
        return [r.action for r in self.route(item, now)]

    def route(self, item: Message | HubError, now: float) -> list[Routed]:
        """One frame from the hub: the actions it causes, each with its call."""
        try:
            if isinstance(item, HubError):
                return self._hub_error(item, now)
            if item.type == MessageType.CALL_REQUEST and item.sender:
                return self._call_request(item, now)
            call = self.calls.get(item.sender or "")
            if call is None or call.is_ended:
                return self._no_such_call(item, now)
            try:
                event = _event_of(item)
            except ProtocolError as exc:
                log.warning("ignoring a malformed %s from %s: %s", item.type, item.sender, exc)
                return []
            if event is None:
                return []
            return [Routed(call, a) for a in call.handle(event, now)]
        finally:
            self._prune()

    def _no_such_call(self, item: Message, now: float) -> list[Routed]:
        """A message from a peer we have no call with: a ``hangup`` / ``no-such-call`` for a
        call message (the peer holds a call we do not: it ends at once rather than after
        its give-up), unless that peer was told (or its call with us ended) lately."""
        sender = item.sender
        if not sender or sender == self.my_id or item.type not in _CALL_MESSAGES:
            log.debug("ignoring %s from %r: not our peer", item.type, sender)
            return []
        self._forget_told(now)
        if sender in self._told:
            log.debug("ignoring %s from %r: no call with it (told lately)", item.type, sender)
            return []
        self._told[sender] = now
        log.info("%s from %s for a call we do not have: hanging up (%s)", item.type, sender,
                 REASON_NO_SUCH_CALL)
        hangup = make(MessageType.HANGUP, sender, {"reason": REASON_NO_SUCH_CALL})
        return [Routed(None, cs.Send(hangup))]

    def _call_request(self, item: Message, now: float) -> list[Routed]:
        sender = item.sender
        assert sender is not None
        data = item.data if item.has_data else None
        call = self.calls.get(sender)
        if call is not None and not call.is_ended:
            if call.state is cs.CallState.DIALING and self.my_id > sender:
                # Glare: we called each other at once. The smaller id's call
                # wins; ours gives way and theirs rings here.
                gives_way = call.handle(cs.RemoteReject(cs.REASON_GLARE), now)
                ended = [Routed(call, a) for a in gives_way]
                new = self._new(cs.Role.CALLEE, sender, now, data)
                return [*ended, Routed(new, IncomingCall(new))]
            if call.state is cs.CallState.CONNECTED:
                # The peer of a connected call calls again: it holds no such call any
                # more (killed and started again under its id). The old call ends as
                # its no-such-call hangup would end it, and the new one rings.
                gone = call.handle(cs.RemoteHangup(REASON_NO_SUCH_CALL), now)
                new = self._new(cs.Role.CALLEE, sender, now, data)
                return [*(Routed(call, a) for a in gone), Routed(new, IncomingCall(new))]
            return []  # a repeated request from our peer (ringing, or being answered)
        if self.full:
            reject = make(MessageType.CALL_REJECT, sender, {"reason": cs.REASON_BUSY})
            return [Routed(None, cs.Send(reject))]
        new = self._new(cs.Role.CALLEE, sender, now, data)
        return [Routed(new, IncomingCall(new))]

    def _hub_error(self, error: HubError, now: float) -> list[Routed]:
        if error.code == ErrorCode.OFFLINE and error.ref != MessageType.HANGUP:
            # (an offline answer to a hangup is a late one, for a call already over)
            if error.to is not None:
                call = self.calls.get(error.to)
            else:  # the original hub names nobody: the one call in progress, if only one
                active = self.active
                call = active[0] if len(active) == 1 else None
            if call is not None and not call.is_ended:
                actions = call.handle(cs.PeerOffline(), now)
                if actions:
                    return [Routed(call, a) for a in actions]
        return [Routed(None, HubProblem(error))]


def _event_of(message: Message) -> cs.Event | None:
    kind = message.type
    if kind == MessageType.CALL_ACCEPT:
        ready = isinstance(message.data, dict) and message.data.get("media") == "ready"
        return cs.RemoteAccept(media_ready=ready, features=features_of(message.data))
    midcall = classify(message)  # a restart or hold message, not the first connection's
    if midcall is not None:
        return cs.RemoteMidCall(midcall)
    if kind == MessageType.CALL_REJECT:
        return cs.RemoteReject(reason_of(message))
    if kind == MessageType.HANGUP:
        return cs.RemoteHangup(reason_of(message))
    if kind == MessageType.OFFER:
        return cs.RemoteOffer(session_description(message, "offer"))
    if kind == MessageType.ANSWER:
        return cs.RemoteAnswer(session_description(message, "answer"))
    if kind == MessageType.CANDIDATE:
        return cs.RemoteCandidate(ice_candidate(message))
    return None
