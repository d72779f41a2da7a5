"""One phone line, sans I/O: which call hub messages belong to, and busy.

A :class:`Line` holds at most one call (a :class:`~softphone.core.callstate.CallMachine`).
It turns messages from the hub into call events, answers a second caller
with ``call-reject`` / ``busy``, and ignores messages from anyone but the
current peer, as the original pages do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from softphone.core import callstate as cs
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


@dataclass(frozen=True, slots=True)
class IncomingCall(cs.Action):
    """A new call is ringing: ask the user (or auto-accept)."""

    call: cs.CallMachine


@dataclass(frozen=True, slots=True)
class HubProblem(cs.Action):
    """The hub answered with an error that belongs to no call."""

    error: HubError


class LineBusy(RuntimeError):
    """Dialing while a call is in progress."""


class Line:
    """Routes hub messages to the current call of one client id."""

    def __init__(self, my_id: str, timeouts: cs.CallTimeouts | None = None) -> None:
        self.my_id = my_id
        self.timeouts = timeouts or cs.CallTimeouts()
        self.call: cs.CallMachine | None = None

    def dial(self, peer: str, now: float, data: Any = None) -> list[cs.Action]:
        if self.call is not None and not self.call.is_ended:
            raise LineBusy(f"already in a call with {self.call.peer}")
        self.call = cs.CallMachine(cs.Role.CALLER, peer, now, self.timeouts, data)
        return self.call.start()

    def deadline(self) -> float | None:
        return None if self.call is None else self.call.deadline()

    def handle_timer(self, now: float) -> list[cs.Action]:
        return [] if self.call is None else self.call.handle_timer(now)

    def handle_local(self, event: cs.Event, now: float) -> list[cs.Action]:
        """A local or media event for the current call (ignored if there is none)."""
        if self.call is None or self.call.is_ended:
            return []
        return self.call.handle(event, now)

    def receive(self, item: Message | HubError, now: float) -> list[cs.Action]:
        """One frame from the hub, already parsed."""
        if isinstance(item, HubError):
            return self._hub_error(item, now)
        call = self.call
        active = call is not None and not call.is_ended
        if item.type == MessageType.CALL_REQUEST and item.sender:
            if (active and call is not None and call.peer == item.sender
                    and call.state is cs.CallState.DIALING and self.my_id > item.sender):
                # Glare: we called each other at once. The smaller id's call
                # wins; ours gives way and theirs rings here.
                ended = call.handle(cs.RemoteReject(cs.REASON_GLARE), now)
                self.call = cs.CallMachine(cs.Role.CALLEE, item.sender, now, self.timeouts,
                                           item.data if item.has_data else None)
                return [*ended, IncomingCall(self.call)]
            if active and call is not None and call.peer != item.sender:
                reject = make(MessageType.CALL_REJECT, item.sender, {"reason": cs.REASON_BUSY})
                return [cs.Send(reject)]
            if active:
                return []  # a repeated request from our peer
            self.call = cs.CallMachine(cs.Role.CALLEE, item.sender, now, self.timeouts,
                                       item.data if item.has_data else None)
            return [IncomingCall(self.call)]
        if not active or call is None or item.sender != call.peer:
            log.debug("ignoring %s from %r: not our peer", item.type, item.sender)
            return []
        try:
            event = _event_of(item)
        except ProtocolError as exc:
            log.warning("ignoring a malformed %s from %s: %s", item.type, item.sender, exc)
            return []
        if event is None:
            return []
        return call.handle(event, now)

    def _hub_error(self, error: HubError, now: float) -> list[cs.Action]:
        call = self.call
        if (error.code == ErrorCode.OFFLINE and call is not None and not call.is_ended
                and (error.to is None or error.to == call.peer)
                and error.ref != MessageType.HANGUP):  # a late answer to an old hangup
            actions = call.handle(cs.PeerOffline(), now)
            if actions:
                return actions
        return [HubProblem(error)]


def _event_of(message: Message) -> cs.Event | None:
    kind = message.type
    if kind == MessageType.CALL_ACCEPT:
        ready = isinstance(message.data, dict) and message.data.get("media") == "ready"
        return cs.RemoteAccept(media_ready=ready)
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
