"""softphone.core.midcall and its use by the call machine and the line, sans I/O:
features, restart and hold messages inside a call, and the ``media-lost`` outcome."""

from __future__ import annotations

from typing import Any

import pytest

from softphone.core import callstate as cs
from softphone.core import midcall as mc
from softphone.core.line import Line, Routed
from softphone.core.protocol import IceCandidate, Message, ProtocolError, make

FEATURES = ("restart", "hold")


def received(kind: str, data: Any, sender: str = "alice") -> Message:
    return make(kind, "bob", data).with_sender(sender)


# ---------------------------------------------------------------- features ---


def test_announced_features() -> None:
    assert mc.announced() == FEATURES
    assert mc.announced(restart=False) == ("hold",)
    assert mc.announced(restart=False, hold=False) == ()


@pytest.mark.parametrize(("data", "features"), [
    (None, frozenset()),  # the original pages send no data
    ("text", frozenset()),
    ({"media": "ready"}, frozenset()),
    ({"features": "restart"}, frozenset()),  # not a list
    ({"features": ["restart", "hold", 3, "", "x" * 33, "ice-restart"]},
     frozenset({"restart", "hold", "ice-restart"})),
])
def test_features_of(data: Any, features: frozenset[str]) -> None:
    assert mc.features_of(data) == features


def test_with_features_keeps_what_the_caller_gave() -> None:
    assert mc.with_features(None, FEATURES) == {"features": ["restart", "hold"]}
    assert mc.with_features({"subject": "hi"}, FEATURES) == {
        "subject": "hi", "features": ["restart", "hold"]}
    assert mc.with_features({"features": ["mine"]}, FEATURES) == {"features": ["mine"]}
    assert mc.with_features("text", FEATURES) == "text"
    assert mc.with_features(None, ()) is None


# ---------------------------------------------------------------- classify ---


def test_classify_restart_and_hold_messages() -> None:
    offer = received("offer", {"type": "offer", "sdp": "v=0 o", "restart": 3,
                               "reason": "rtp-silence"})
    assert mc.classify(offer) == mc.RestartOffer(3, "v=0 o", "rtp-silence")
    answer = received("answer", {"type": "answer", "sdp": "v=0 a", "restart": 3})
    assert mc.classify(answer) == mc.RestartAnswer(3, "v=0 a")
    cand = received("candidate", {"candidate": "candidate:1 1 udp 1 192.0.2.1 5 typ host",
                                  "sdpMid": "0", "sdpMLineIndex": 0, "restart": 2})
    assert mc.classify(cand) == mc.RestartCandidate(2, IceCandidate(
        "candidate:1 1 udp 1 192.0.2.1 5 typ host", "0", 0))
    assert mc.classify(received("offer", {"type": "offer", "hold": True, "seq": 1})) == \
        mc.HoldMessage("offer", True, 1)
    assert mc.classify(received("answer", {"type": "answer", "hold": False, "seq": 2})) == \
        mc.HoldMessage("answer", False, 2)
    # The first connection's, and other types: not mid-call messages.
    assert mc.classify(received("offer", {"type": "offer", "sdp": "v=0"})) is None
    assert mc.classify(received("candidate", {"candidate": ""})) is None
    assert mc.classify(received("hangup", {"restart": 1})) is None


@pytest.mark.parametrize("data", [
    {"type": "offer", "sdp": "v=0", "restart": 0},
    {"type": "offer", "sdp": "v=0", "restart": 2**31},
    {"type": "offer", "sdp": "v=0", "restart": True},
    {"type": "offer", "restart": 1},  # no sdp
    {"type": "answer", "sdp": "v=0", "restart": 1},  # the wrong type inside
    {"type": "offer", "hold": "yes", "seq": 1},
    {"type": "offer", "hold": True, "seq": 0},
])
def test_malformed_mid_call_messages_are_protocol_errors(data: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        mc.classify(received("offer", data))


# ------------------------------------------------------------ the machine ---


def connected(role: cs.Role, features: tuple[str, ...] = FEATURES,
              peer: Any = None) -> cs.CallMachine:
    m = cs.CallMachine(role, "alice", 0.0, request_data=peer if role is cs.Role.CALLEE
                       else None, features=features)
    m.start()
    if role is cs.Role.CALLER:
        m.handle(cs.RemoteAccept(True, mc.features_of(peer)), 1.0)
    else:
        m.handle(cs.LocalAccept(), 1.0)
    m.handle(cs.MediaConnected(), 2.0)
    assert m.state is cs.CallState.CONNECTED
    return m


def test_features_go_out_with_the_request_and_the_accept() -> None:
    caller = cs.CallMachine(cs.Role.CALLER, "bob", 0.0, features=FEATURES)
    assert caller.start() == [cs.Send(make("call-request", "bob",
                                           {"features": ["restart", "hold"]}))]
    assert caller.peer_features == frozenset()
    caller.handle(cs.RemoteAccept(True, frozenset({"hold"})), 1.0)
    assert caller.peer_features == {"hold"}
    callee = cs.CallMachine(cs.Role.CALLEE, "alice", 0.0,
                            request_data={"features": ["restart"]}, features=FEATURES)
    assert callee.peer_features == {"restart"}
    actions = callee.handle(cs.LocalAccept(("hold",)), 1.0)
    assert actions[0] == cs.Send(make("call-accept", "alice",
                                      {"media": "ready", "features": ["hold"]}))
    assert callee.features == ("hold",)
    # Without features (an old peer's view): as before.
    plain = cs.CallMachine(cs.Role.CALLER, "bob", 0.0)
    assert plain.start() == [cs.Send(make("call-request", "bob"))]


def test_mid_call_messages_are_handed_on() -> None:
    m = connected(cs.Role.CALLER)
    offer = mc.RestartOffer(1, "v=0", "path-dead")
    assert m.handle(cs.RemoteMidCall(offer), 3.0) == [cs.MidCall(offer)]


@pytest.mark.parametrize("role", list(cs.Role))
def test_a_call_whose_media_is_lost_never_completes(role: cs.Role) -> None:
    m = connected(role)
    m.handle(cs.MediaInterrupted(lost=True), 3.0)
    m.handle(cs.RemoteHangup(cs.REASON_PEER_DISCONNECTED), 4.0)
    assert m.outcome is cs.Outcome.MEDIA_LOST
    # A hangup without a reason (the original pages'), or media-failed: the same.
    for reason in (None, cs.REASON_MEDIA_FAILED):
        m = connected(role)
        m.handle(cs.MediaInterrupted(lost=True), 3.0)
        m.handle(cs.RemoteHangup(reason), 4.0)
        assert m.outcome is cs.Outcome.MEDIA_LOST, reason
    # The peer gave up on the media: the same outcome here.
    m = connected(role)
    m.handle(cs.RemoteHangup(cs.REASON_MEDIA_LOST), 4.0)
    assert m.outcome is cs.Outcome.MEDIA_LOST
    # Restored: completed as usual.
    m = connected(role)
    m.handle(cs.MediaInterrupted(lost=True), 3.0)
    m.handle(cs.MediaInterrupted(lost=False), 3.5)
    m.handle(cs.RemoteHangup(), 4.0)
    assert m.outcome is cs.Outcome.COMPLETED


@pytest.mark.parametrize("role", list(cs.Role))
def test_hanging_up_while_media_is_restarted_is_a_hangup(role: cs.Role) -> None:
    """Ctrl-C during a restart episode: our hangup, as at any other time in the call
    (media-lost is for giving up); likewise a peer's deliberate hangup then."""
    m = connected(role)
    assert m.handle(cs.MediaInterrupted(lost=True), 3.0) == []
    actions = m.handle(cs.LocalHangup("interrupted"), 4.0)
    peer = m.peer
    assert actions[0] == cs.Send(make("hangup", peer, {"reason": "interrupted"}))
    assert actions[-1] == cs.Ended(cs.Outcome.COMPLETED, "interrupted", 4.0, "local")
    assert int(cs.ExitCode.for_outcome(m.outcome)) == 0
    for reason in ("interrupted", "hangup"):
        m = connected(role)
        m.handle(cs.MediaInterrupted(lost=True), 3.0)
        actions = m.handle(cs.RemoteHangup(reason), 4.0)
        assert actions[-1] == cs.Ended(cs.Outcome.COMPLETED, reason, 4.0, "remote")
    # A peer with no such call any more (killed and run again): the media never came
    # back, as when the hub says peer-disconnected; with media, the peer hung up.
    m = connected(role)
    m.handle(cs.MediaInterrupted(lost=True), 3.0)
    actions = m.handle(cs.RemoteHangup("no-such-call"), 4.0)
    assert actions[-1] == cs.Ended(cs.Outcome.MEDIA_LOST, "no-such-call", 4.0, "remote")
    m = connected(role)
    actions = m.handle(cs.RemoteHangup("no-such-call"), 4.0)
    assert actions[-1] == cs.Ended(cs.Outcome.COMPLETED, "no-such-call", 4.0, "remote")


def test_giving_up_ends_the_call_media_lost_and_tells_the_peer() -> None:
    m = connected(cs.Role.CALLEE)
    actions = m.handle(cs.MediaGiveUp("media-lost"), 50.0)
    assert actions[0] == cs.Send(make("hangup", "alice", {"reason": "media-lost"}))
    assert cs.StopMedia() in actions
    assert actions[-1] == cs.Ended(cs.Outcome.MEDIA_LOST, "media-lost", 50.0, "network")
    assert int(cs.ExitCode.for_outcome(cs.Outcome.MEDIA_LOST)) == 14


# ---------------------------------------------------------------- the line ---


def test_the_line_routes_features_and_mid_call_messages() -> None:
    line = Line("bob", features=FEATURES)
    [incoming] = line.route(received("call-request", {"features": ["restart", "hold"]}), 0.0)
    call = incoming.call
    assert call is not None and call.peer_features == {"restart", "hold"}
    call.handle(cs.LocalAccept(), 1.0)
    call.handle(cs.MediaConnected(), 2.0)
    offer = received("offer", {"type": "offer", "sdp": "v=0", "restart": 1, "reason": "x"})
    assert line.route(offer, 3.0) == [Routed(call, cs.MidCall(mc.RestartOffer(1, "v=0", "x")))]
    # A malformed one is ignored (logged), as other malformed messages are.
    assert line.route(received("offer", {"type": "offer", "restart": 1}), 3.1) == []
    caller_line = Line("alice", features=("hold",))
    actions = caller_line.dial("bob", 0.0, features=FEATURES)
    assert actions == [cs.Send(make("call-request", "bob", {"features": ["restart", "hold"]}))]
    accept = received("call-accept", {"media": "ready", "features": ["hold"]}, sender="bob")
    caller_line.route(accept, 1.0)
    assert caller_line.call is not None and caller_line.call.peer_features == {"hold"}


def test_a_late_candidate_is_routed_by_generation_and_never_to_a_newer_connection() -> None:
    """``docs/protocol.md``: a ``candidate`` carries its generation (absent: 0); candidates
    of a generation that is not open are dropped. In the call, the machine hands the first
    connection's on as generation 0, so the restart adapter, which knows which connections
    are open, drops one that arrives after a restart closed that connection."""
    line = Line("bob", features=FEATURES)
    [incoming] = line.route(received("call-request", {"features": ["restart", "hold"]}), 0.0)
    call = incoming.call
    assert call is not None
    call.handle(cs.LocalAccept(), 1.0)
    first = IceCandidate("candidate:1 1 udp 1 192.0.2.1 5000 typ host", "0", 0)
    # While media is set up: the call machine's, added to its one connection.
    call.handle(cs.RemoteOffer("v=0"), 1.5)
    assert line.route(received("candidate", first.to_wire()), 1.6) == [
        Routed(call, cs.AddCandidate(first))]
    call.handle(cs.MediaConnected(), 2.0)
    # In the call: by generation; without "restart" it is the first connection's (0).
    late = IceCandidate("candidate:2 1 udp 1 192.0.2.1 5001 typ host", "0", 0)
    assert line.route(received("candidate", late.to_wire()), 9.0) == [
        Routed(call, cs.MidCall(mc.RestartCandidate(0, late)))]
    restarted = received("candidate", {**late.to_wire(), "restart": 2})
    assert line.route(restarted, 9.1) == [Routed(call, cs.MidCall(mc.RestartCandidate(2, late)))]
