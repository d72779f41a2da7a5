"""softphone.core.line, sans I/O: routing hub messages to the current call, and busy."""

from __future__ import annotations

from typing import Any

import pytest

from softphone.core import callstate as cs
from softphone.core.callstate import CallState as S
from softphone.core.callstate import Outcome
from softphone.core.line import HubProblem, IncomingCall, Line, LineBusy, Routed
from softphone.core.protocol import ErrorCode, HubError, IceCandidate, Message, make

TIMEOUTS = cs.CallTimeouts(ring=30.0, setup=16.0, offer_delay=0.5)
CAND = {"candidate": "candidate:1 1 udp 2122260223 192.0.2.1 50000 typ host",
        "sdpMid": "0", "sdpMLineIndex": 0}


def from_(sender: str, type_: str, *data: Any, to: str = "alice") -> Message:
    """A message as delivered by the hub; ``data`` omitted = absent on the wire."""
    return make(type_, to, *data).with_sender(sender)


def dialing(now: float = 0.0) -> Line:
    line = Line("alice", TIMEOUTS)
    assert line.dial("bob", now) == [cs.Send(make("call-request", "bob"))]
    return line


def ringing(now: float = 0.0, *data: Any) -> tuple[Line, cs.CallMachine]:
    line = Line("alice", TIMEOUTS)
    actions = line.receive(from_("bob", "call-request", *data), now)
    assert len(actions) == 1 and isinstance(actions[0], IncomingCall)
    call = actions[0].call
    assert line.call is call
    return line, call


def connected_caller() -> Line:
    line = dialing()
    line.receive(from_("bob", "call-accept", {"media": "ready"}), 1.0)
    line.receive(from_("bob", "answer", {"type": "answer", "sdp": "v=0 answer"}), 1.5)
    line.handle_local(cs.MediaConnected(), 2.0)
    assert line.call is not None and line.call.state is S.CONNECTED
    return line


def snapshot(call: cs.CallMachine | None) -> tuple[Any, ...]:
    assert call is not None
    return (call.state, list(call.history), call.outcome, call.deadline())


# ---------------------------------------------------------------- dialing ---


def test_new_line_has_no_call() -> None:
    line = Line("alice")
    assert line.call is None
    assert line.deadline() is None
    assert line.handle_timer(1e9) == []
    assert line.handle_local(cs.LocalHangup(), 1.0) == []
    assert line.timeouts == cs.CallTimeouts()


def test_dial_creates_a_caller() -> None:
    line = dialing(now=10.0)
    call = line.call
    assert call is not None
    assert (call.role, call.peer, call.state, call.started_at) == (
        cs.Role.CALLER, "bob", S.DIALING, 10.0)
    assert line.deadline() == 40.0


def test_dial_with_data() -> None:
    line = Line("alice", TIMEOUTS)
    assert line.dial("bob", 0.0, {"name": "Alice"}) == [
        cs.Send(make("call-request", "bob", {"name": "Alice"}))]


def test_caller_call_through_the_line() -> None:
    line = dialing()
    assert line.receive(from_("bob", "call-accept", {"media": "ready"}), 1.0) == [
        cs.StateChanged(S.DIALING, S.CONNECTING, 1.0), cs.StartMedia(offerer=True)]
    assert line.handle_local(cs.LocalDescription("v=0 offer"), 1.25) == [
        cs.Send(make("offer", "bob", {"type": "offer", "sdp": "v=0 offer"}))]
    early = IceCandidate(str(CAND["candidate"]), "0", 0)
    assert line.receive(from_("bob", "candidate", CAND), 1.375) == []  # held
    assert line.receive(from_("bob", "answer", {"type": "answer", "sdp": "v=0 answer"}),
                        1.5) == [cs.ApplyAnswer("v=0 answer"), cs.AddCandidate(early)]
    assert line.receive(from_("bob", "candidate", None), 1.625) == [
        cs.AddCandidate(IceCandidate("", None, None))]  # end of candidates
    assert line.handle_local(cs.MediaConnected(), 2.0) == [
        cs.StateChanged(S.CONNECTING, S.CONNECTED, 2.0)]
    assert line.receive(from_("bob", "hangup", {"reason": "bye"}), 9.0) == [
        cs.StopMedia(), cs.StateChanged(S.CONNECTED, S.ENDED, 9.0),
        cs.Ended(Outcome.COMPLETED, "bye", 9.0, by="remote")]
    assert line.handle_local(cs.LocalHangup(), 10.0) == []  # the call is over


def test_plain_call_accept_delays_the_offer() -> None:
    line = dialing()
    line.receive(from_("bob", "call-accept"), 1.0)
    assert line.deadline() == 1.5
    assert line.handle_local(cs.LocalDescription("v=0 offer"), 1.25) == []
    assert line.handle_timer(1.5) == [
        cs.Send(make("offer", "bob", {"type": "offer", "sdp": "v=0 offer"}))]


@pytest.mark.parametrize("data", [None, "ready", {"media": "later"}, ["ready"]])
def test_call_accept_without_media_ready(data: Any) -> None:
    line = dialing()
    line.receive(from_("bob", "call-accept", data), 1.0)
    assert line.deadline() == 1.5  # the offer waits


@pytest.mark.parametrize(("data", "outcome", "reason"), [
    ({"reason": "busy"}, Outcome.BUSY, "busy"),
    ({"reason": "declined"}, Outcome.REJECTED, "declined"),
    (None, Outcome.REJECTED, None),
    ("busy", Outcome.REJECTED, None),
])
def test_call_reject(data: Any, outcome: Outcome, reason: str | None) -> None:
    line = dialing()
    assert line.receive(from_("bob", "call-reject", data), 2.0)[-1] == cs.Ended(
        outcome, reason, 2.0, by="remote")


def test_ring_timeout_through_the_line() -> None:
    line = dialing(now=0.0)
    assert line.handle_timer(29.0) == []
    actions = line.handle_timer(30.0)
    assert actions[0] == cs.Send(make("hangup", "bob", {"reason": "no-answer"}))
    assert actions[-1] == cs.Ended(Outcome.NO_ANSWER, "no-answer", 30.0, by="timeout")
    assert line.deadline() is None


def test_dial_while_in_a_call_raises_line_busy() -> None:
    line = dialing()
    call = line.call
    with pytest.raises(LineBusy, match="bob"):
        line.dial("carol", 1.0)
    assert line.call is call
    line2, _ = ringing()
    with pytest.raises(LineBusy):
        line2.dial("carol", 1.0)


def test_dial_after_the_call_ended() -> None:
    line = dialing()
    line.handle_local(cs.LocalHangup(), 1.0)
    old = line.call
    assert line.dial("carol", 2.0) == [cs.Send(make("call-request", "carol"))]
    assert line.call is not old and line.call is not None and line.call.peer == "carol"


# ---------------------------------------------------------------- ringing ---


def test_incoming_call() -> None:
    _, call = ringing(3.0)
    assert (call.role, call.peer, call.state, call.started_at) == (
        cs.Role.CALLEE, "bob", S.RINGING, 3.0)
    assert call.request_data is None
    assert call.timeouts is TIMEOUTS


def test_incoming_call_keeps_request_data() -> None:
    _, call = ringing(0.0, {"name": "Bob"})
    assert call.request_data == {"name": "Bob"}


def test_callee_call_through_the_line() -> None:
    line, _ = ringing()
    assert line.handle_local(cs.LocalAccept(), 1.0) == [
        cs.Send(make("call-accept", "bob", {"media": "ready"})),
        cs.StateChanged(S.RINGING, S.CONNECTING, 1.0), cs.StartMedia(offerer=False)]
    assert line.receive(from_("bob", "offer", {"type": "offer", "sdp": "v=0 offer"}), 1.5) == [
        cs.ApplyOffer("v=0 offer")]
    assert line.handle_local(cs.LocalDescription("v=0 answer"), 1.75) == [
        cs.Send(make("answer", "bob", {"type": "answer", "sdp": "v=0 answer"}))]


def test_caller_gives_up_while_ringing() -> None:
    line, call = ringing()
    assert line.receive(from_("bob", "hangup"), 5.0)[-1] == cs.Ended(
        Outcome.MISSED, None, 5.0, by="remote")
    assert call.outcome is Outcome.MISSED


# ------------------------------------------------------------------- busy ---


def test_third_party_call_request_is_rejected_busy() -> None:
    line = connected_caller()
    call = line.call
    before = snapshot(call)
    assert line.receive(from_("carol", "call-request"), 5.0) == [
        cs.Send(make("call-reject", "carol", {"reason": "busy"}))]
    assert line.call is call
    assert snapshot(line.call) == before


def test_third_party_call_request_while_ringing_is_rejected_busy() -> None:
    line, call = ringing()
    assert line.receive(from_("carol", "call-request", {"x": 1}), 1.0) == [
        cs.Send(make("call-reject", "carol", {"reason": "busy"}))]
    assert line.call is call and call.peer == "bob" and call.state is S.RINGING


def test_third_party_call_request_while_dialing_is_rejected_busy() -> None:
    line = dialing()
    assert line.receive(from_("carol", "call-request"), 1.0) == [
        cs.Send(make("call-reject", "carol", {"reason": "busy"}))]
    assert line.call is not None and line.call.state is S.DIALING


def test_repeated_call_request_from_the_peer_is_ignored() -> None:
    line, call = ringing()
    assert line.receive(from_("bob", "call-request"), 1.0) == []
    assert line.call is call and call.state is S.RINGING
    line.handle_local(cs.LocalAccept(), 2.0)
    assert line.receive(from_("bob", "call-request"), 3.0) == []
    assert line.call is call and call.state is S.CONNECTING


NO_SUCH_CALL = cs.Send(make("hangup", "carol", {"reason": "no-such-call"}))


@pytest.mark.parametrize(("type_", "answer"), [
    ("call-accept", [NO_SUCH_CALL]), ("offer", [NO_SUCH_CALL]), ("answer", [NO_SUCH_CALL]),
    ("candidate", [NO_SUCH_CALL]), ("call-reject", []), ("hangup", [])])
def test_messages_from_other_senders_do_not_touch_the_call(type_: str,
                                                          answer: list[cs.Action]) -> None:
    """From someone we have no call with: the call is untouched; a call message is
    answered ``hangup`` / ``no-such-call`` (the sender holds a call we do not)."""
    line = dialing()
    before = snapshot(line.call)
    assert line.receive(from_("carol", type_, {"reason": "busy"}), 1.0) == answer
    assert snapshot(line.call) == before


def test_messages_without_sender_are_ignored() -> None:
    line = dialing()
    before = snapshot(line.call)
    assert line.receive(Message("call-accept", "alice", {"media": "ready"}, None, True), 1.0) == []
    assert line.receive(Message("call-request", "alice"), 1.0) == []
    assert snapshot(line.call) == before


def test_a_hangup_or_reject_without_a_call_is_never_answered() -> None:
    line = Line("alice")
    for type_ in ("call-reject", "hangup", "ping"):
        assert line.receive(from_("bob", type_), 1.0) == []
        assert line.receive(from_("bob", type_, {"reason": "no-such-call"}), 1.0) == []
    assert line.call is None


def test_call_messages_without_a_call_are_answered_with_a_hangup_now_and_then() -> None:
    """A peer still in a call with our id (this phone was restarted under it: its restart
    offers come here) is told at once, so its call ends now rather than at its give-up;
    once per peer every NO_CALL_REPLY_EVERY seconds, whatever it sends meanwhile."""
    from softphone.core.line import NO_CALL_REPLY_EVERY, REASON_NO_SUCH_CALL

    line = Line("alice")
    hangup = cs.Send(make("hangup", "bob", {"reason": REASON_NO_SUCH_CALL}))
    offer = {"type": "offer", "sdp": "v=0 restart", "restart": 2, "reason": "path-dead"}
    assert line.route(from_("bob", "offer", offer), 10.0) == [Routed(None, hangup)]
    for type_, data in (("offer", offer), ("candidate", {**CAND, "restart": 2}),
                        ("answer", {"type": "answer", "sdp": "v=0"}), ("call-accept", {})):
        assert line.receive(from_("bob", type_, data), 12.0) == []
    # Another peer is told on its own.
    assert line.receive(from_("carol", "candidate", CAND), 12.0) == [
        cs.Send(make("hangup", "carol", {"reason": REASON_NO_SUCH_CALL}))]
    assert line.receive(from_("bob", "offer", offer), 10.0 + NO_CALL_REPLY_EVERY) == [hangup]
    assert line.call is None and line.calls == {}
    # Never to our own id, nor for a message without a sender.
    assert line.receive(from_("alice", "offer", offer), 100.0) == []
    assert line.receive(Message("offer", "alice", offer, None, True), 100.0) == []


def test_unknown_message_types_from_the_peer_are_ignored() -> None:
    line = dialing()
    before = snapshot(line.call)
    assert line.receive(from_("bob", "ping", {"x": 1}), 1.0) == []
    assert line.receive(from_("bob", "error", {"code": "offline"}), 1.0) == []
    assert snapshot(line.call) == before


# ------------------------------------------------------------- hub errors ---


@pytest.mark.parametrize("to", ["bob", None])
def test_offline_error_ends_the_call_as_offline(to: str | None) -> None:
    line = dialing()
    error = HubError(ErrorCode.OFFLINE, "bob is not connected", "call-request", to)
    assert line.receive(error, 0.5) == [
        cs.StateChanged(S.DIALING, S.ENDED, 0.5),
        cs.Ended(Outcome.OFFLINE, None, 0.5, by="network")]
    assert line.call is not None and line.call.outcome is Outcome.OFFLINE


def test_offline_error_as_the_original_hub_sends_it() -> None:
    line = dialing()
    error = HubError("offline", "", None, None)
    assert line.receive(error, 0.5)[-1] == cs.Ended(Outcome.OFFLINE, None, 0.5, by="network")


def test_offline_error_while_connecting_ends_the_call() -> None:
    line = dialing()
    line.receive(from_("bob", "call-accept", {"media": "ready"}), 1.0)
    assert line.receive(HubError("offline", "gone", "offer", "bob"), 2.0) == [
        cs.StopMedia(), cs.StateChanged(S.CONNECTING, S.ENDED, 2.0),
        cs.Ended(Outcome.OFFLINE, None, 2.0, by="network")]


def test_offline_error_for_someone_else_is_a_hub_problem() -> None:
    line = dialing()
    before = snapshot(line.call)
    error = HubError(ErrorCode.OFFLINE, "carol is not connected", "call-reject", "carol")
    assert line.receive(error, 1.0) == [HubProblem(error)]
    assert snapshot(line.call) == before


def test_offline_error_without_a_call_is_a_hub_problem() -> None:
    line = Line("alice")
    error = HubError(ErrorCode.OFFLINE, "bob is not connected", "hangup", "bob")
    assert line.receive(error, 1.0) == [HubProblem(error)]


def test_offline_error_after_the_call_ended_is_a_hub_problem() -> None:
    line = dialing()
    line.handle_local(cs.LocalHangup(), 1.0)
    error = HubError(ErrorCode.OFFLINE, "bob is not connected", "hangup", "bob")
    assert line.receive(error, 2.0) == [HubProblem(error)]


@pytest.mark.parametrize("code", [ErrorCode.BAD_MESSAGE, ErrorCode.TOO_LARGE,
                                  ErrorCode.RATE_LIMITED, ErrorCode.UNAUTHORIZED,
                                  ErrorCode.REPLACED, "unknown"])
def test_other_hub_errors_are_hub_problems(code: str) -> None:
    line = dialing()
    before = snapshot(line.call)
    error = HubError(code, "something", "offer", "bob")
    assert line.receive(error, 1.0) == [HubProblem(error)]
    assert snapshot(line.call) == before


# --------------------------------------------------------- malformed data ---


@pytest.mark.parametrize("data", [None, "v=0", ["offer"], {"type": "answer", "sdp": "v=0"},
                                  {"type": "offer"}, {"type": "offer", "sdp": 7}])
def test_malformed_offer_is_ignored(data: Any) -> None:
    line, call = ringing()
    line.handle_local(cs.LocalAccept(), 1.0)
    before = snapshot(call)
    assert line.receive(from_("bob", "offer", data), 2.0) == []
    assert line.receive(from_("bob", "offer"), 2.0) == []  # data absent
    assert snapshot(call) == before
    # A good offer afterwards still works.
    assert line.receive(from_("bob", "offer", {"type": "offer", "sdp": "v=0"}), 3.0) == [
        cs.ApplyOffer("v=0")]


@pytest.mark.parametrize("data", [None, {"type": "offer", "sdp": "v=0"}, {"sdp": None}, 5])
def test_malformed_answer_is_ignored(data: Any) -> None:
    line = dialing()
    line.receive(from_("bob", "call-accept", {"media": "ready"}), 1.0)
    assert line.receive(from_("bob", "answer", data), 2.0) == []
    assert line.call is not None and line.call.state is S.CONNECTING


@pytest.mark.parametrize("data", ["candidate:1", {"candidate": 5},
                                  {"candidate": "c", "sdpMLineIndex": "0"},
                                  {"candidate": "c", "sdpMid": 0}])
def test_malformed_candidate_is_ignored(data: Any) -> None:
    line = connected_caller()
    assert line.receive(from_("bob", "candidate", data), 5.0) == []
    assert line.call is not None and line.call.state is S.CONNECTED


# ---------------------------------------------------------- after a call ---


def test_new_call_request_after_a_call_ended() -> None:
    line = dialing()
    line.receive(from_("bob", "call-reject", {"reason": "declined"}), 1.0)
    first = line.call
    assert first is not None and first.is_ended
    actions = line.receive(from_("carol", "call-request", {"n": 2}), 2.0)
    assert len(actions) == 1 and isinstance(actions[0], IncomingCall)
    second = actions[0].call
    assert line.call is second and second is not first
    assert (second.role, second.peer, second.state, second.request_data) == (
        cs.Role.CALLEE, "carol", S.RINGING, {"n": 2})
    assert first.outcome is Outcome.REJECTED  # the old call is untouched


def test_same_peer_can_call_again_after_the_call_ended() -> None:
    line, first = ringing()
    line.handle_local(cs.LocalReject(), 1.0)
    actions = line.receive(from_("bob", "call-request"), 2.0)
    assert line.call is not None and line.call is not first
    assert actions == [IncomingCall(line.call)]
    assert line.call.state is S.RINGING


def test_late_messages_of_an_ended_call_are_ignored() -> None:
    """The call's end told the peer (or the peer us): its late messages get no hangup,
    unless they come long after (then it still holds a call we do not)."""
    line = connected_caller()
    line.handle_local(cs.LocalHangup(), 5.0)
    call = line.call
    before = snapshot(call)
    for type_ in ("hangup", "candidate", "answer", "call-accept"):
        assert line.receive(from_("bob", type_), 6.0) == []
    assert snapshot(call) == before
    assert line.receive(from_("bob", "candidate", CAND), 11.0) == [
        cs.Send(make("hangup", "bob", {"reason": "no-such-call"}))]
    assert snapshot(call) == before


def test_a_call_request_from_the_peer_of_a_connected_call_is_a_new_call() -> None:
    """The peer was killed and started again, and calls at once: our old call ends (its
    media lost: media-lost; else completed) and the new one rings, not ignored as a
    repeated request while the old one waited for its give-up."""
    from softphone.core.line import IncomingCall

    for media_lost, outcome in ((True, cs.Outcome.MEDIA_LOST), (False, cs.Outcome.COMPLETED)):
        line = connected_caller()
        old = line.call
        assert old is not None
        if media_lost:
            line.handle_local(cs.MediaInterrupted(lost=True), 3.0, old)
        actions = line.receive(from_("bob", "call-request"), 4.0)
        assert [a for a in actions if isinstance(a, cs.Ended)] == [
            cs.Ended(outcome, "no-such-call", 4.0, "remote")]
        assert not [a for a in actions if isinstance(a, cs.Send)]  # (nothing to tell)
        assert isinstance(actions[-1], IncomingCall)
        assert line.call is not old and line.call is not None
        assert line.call.role is cs.Role.CALLEE and line.call.state is S.RINGING


def test_glare_the_smaller_id_wins() -> None:
    """Both dial each other at once: the larger id's call gives way and rings instead."""
    from softphone.core import callstate as cs
    from softphone.core.line import IncomingCall, Line
    from softphone.core.protocol import make

    big = Line("zed")
    big.dial("amy", 0.0)
    actions = big.receive(make("call-request", "zed").with_sender("amy"), 1.0)
    ended = [a for a in actions if isinstance(a, cs.Ended)]
    assert ended and ended[0].outcome is cs.Outcome.BUSY and ended[0].reason == "glare"
    assert isinstance(actions[-1], IncomingCall)
    assert big.call is not None and big.call.role is cs.Role.CALLEE
    small = Line("amy")
    small.dial("zed", 0.0)
    assert small.receive(make("call-request", "amy").with_sender("zed"), 1.0) == []
    assert small.call is not None and small.call.state is cs.CallState.DIALING


def test_late_offline_for_an_old_hangup_does_not_end_a_new_call() -> None:
    from softphone.core.line import HubProblem, Line
    from softphone.core.protocol import HubError

    line = Line("amy")
    line.dial("bob", 0.0)
    actions = line.receive(HubError("offline", "bob is not connected", "hangup", "bob"), 1.0)
    assert isinstance(actions[0], HubProblem)
    assert line.call is not None and not line.call.is_ended


# ------------------------------------------------------------- many calls ---


def ring(line: Line, peer: str, now: float = 0.0) -> list[Routed]:
    return line.route(from_(peer, "call-request"), now)


def test_max_calls_must_be_at_least_one() -> None:
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="max_calls"):
            Line("alice", max_calls=bad)  # type: ignore[arg-type]


def test_many_calls_ring_at_once_and_the_next_is_busy() -> None:
    line = Line("bot", TIMEOUTS, max_calls=3)
    calls = []
    for peer in ("p1", "p2", "p3"):
        (routed,) = ring(line, peer)
        assert isinstance(routed.action, IncomingCall) and routed.call is routed.action.call
        calls.append(routed.call)
    assert [c.peer for c in line.active] == ["p1", "p2", "p3"]
    assert line.full
    assert ring(line, "p4") == [Routed(None, cs.Send(make("call-reject", "p4",
                                                               {"reason": "busy"})))]
    assert "p4" not in line.calls
    # A repeated request from a peer in a call is ignored, full or not.
    assert ring(line, "p2") == []


def test_messages_go_to_the_call_with_their_sender() -> None:
    line = Line("bot", TIMEOUTS, max_calls=2)
    one = ring(line, "p1")[0].call
    two = ring(line, "p2")[0].call
    assert one is not None and two is not None
    line.handle_local(cs.LocalAccept(), 1.0, one)
    line.handle_local(cs.LocalAccept(), 1.0, two)
    offer = from_("p2", "offer", {"type": "offer", "sdp": "v=0 two"}, to="bot")
    assert line.route(offer, 1.5) == [Routed(two, cs.ApplyOffer("v=0 two"))]
    assert one.state is S.CONNECTING and two.state is S.CONNECTING
    routed = line.route(from_("p1", "hangup", {"reason": "bye"}, to="bot"), 2.0)
    assert all(r.call is one for r in routed) and isinstance(routed[-1].action, cs.Ended)
    assert one.is_ended and not two.is_ended
    assert list(line.calls) == ["p2"]  # the ended call is let go
    # A line is free again: a third caller rings.
    assert isinstance(ring(line, "p3", 3.0)[0].action, IncomingCall)


def test_local_events_go_to_the_call_named() -> None:
    line = Line("bot", TIMEOUTS, max_calls=2)
    one = ring(line, "p1")[0].call
    two = ring(line, "p2")[0].call
    assert one is not None and two is not None
    assert line.handle_local(cs.LocalReject("declined"), 1.0, one)[-1] == cs.Ended(
        Outcome.REJECTED, "declined", 1.0, by="local")
    assert two.state is S.RINGING
    assert line.handle_local(cs.LocalAccept(), 1.0, one) == []  # that call is over


def test_dial_several_peers_and_not_the_same_twice() -> None:
    line = Line("alice", TIMEOUTS, max_calls=2)
    line.dial("bob", 0.0)
    with pytest.raises(LineBusy, match="bob"):
        line.dial("bob", 0.5)
    line.dial("carol", 1.0)
    with pytest.raises(LineBusy, match="all 2 lines"):
        line.dial("dave", 1.0)
    assert line.deadline() == 30.0  # bob's ring timeout comes first
    routed = line.timers(30.0)
    assert routed[-1].action == cs.Ended(Outcome.NO_ANSWER, "no-answer", 30.0, by="timeout")
    assert [r.call.peer for r in routed if r.call is not None] == ["bob"] * len(routed)
    assert list(line.calls) == ["carol"] and line.deadline() == 31.0


def test_hub_lost_reaches_every_call() -> None:
    line = Line("bot", TIMEOUTS, max_calls=2)
    ring(line, "p1")
    ring(line, "p2")
    routed = line.hub_lost(1.0)
    ended = [r for r in routed if isinstance(r.action, cs.Ended)]
    assert sorted(r.call.peer for r in ended if r.call is not None) == ["p1", "p2"]
    assert line.active == [] and line.calls == {}


def test_offline_for_one_of_many_calls() -> None:
    line = Line("alice", TIMEOUTS, max_calls=2)
    line.dial("bob", 0.0)
    line.dial("carol", 0.0)
    # Naming nobody (the original hub): with two calls, nobody can tell whose it is.
    error = HubError("offline", "", None, None)
    assert line.route(error, 0.25) == [Routed(None, HubProblem(error))]
    assert len(line.active) == 2
    routed = line.route(HubError(ErrorCode.OFFLINE, "carol is gone", "call-request", "carol"),
                        0.5)
    assert routed[-1].action == cs.Ended(Outcome.OFFLINE, None, 0.5, by="network")
    assert routed[-1].call is not None and routed[-1].call.peer == "carol"
    assert [c.peer for c in line.active] == ["bob"]


def test_glare_with_one_of_many_calls() -> None:
    line = Line("zed", TIMEOUTS, max_calls=3)
    line.dial("amy", 0.0)
    line.dial("bob", 0.0)
    routed = ring(line, "amy", 1.0)
    assert isinstance(routed[-1].action, IncomingCall)
    old = [r for r in routed if isinstance(r.action, cs.Ended)]
    assert old and old[0].call is not routed[-1].call and old[0].call is not None
    assert old[0].call.peer == "amy" and old[0].call.is_ended
    assert line.calls["amy"].role is cs.Role.CALLEE
    assert line.calls["bob"].state is S.DIALING


def test_a_long_lived_line_keeps_only_calls_in_progress() -> None:
    line = Line("bot", TIMEOUTS, max_calls=4)
    for n in range(500):
        call = ring(line, f"p{n}", float(n))[0].call
        assert call is not None
        line.handle_local(cs.LocalReject(), float(n), call)
    assert line.calls == {} and line.call is not None and line.call.peer == "p499"
    assert len(line._told) <= 6  # (the peers of the last few seconds' calls)
