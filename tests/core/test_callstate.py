"""softphone.core.callstate, sans I/O: the call state machine, driven by events and ``now``."""

from __future__ import annotations

import copy

import pytest

from softphone.core import callstate as cs
from softphone.core.callstate import (
    EXIT_CODES,
    TRANSITIONS,
    AddCandidate,
    ApplyAnswer,
    ApplyOffer,
    CallMachine,
    CallState,
    CallStateError,
    CallTimeouts,
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
    MidCall,
    OfferDue,
    Outcome,
    PeerOffline,
    RemoteAccept,
    RemoteAnswer,
    RemoteCandidate,
    RemoteHangup,
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
from softphone.core.midcall import RestartCandidate, RestartOffer
from softphone.core.protocol import IceCandidate, make

S = CallState
CALLER, CALLEE = Role.CALLER, Role.CALLEE

#: Binary-exact values, so deadlines can be compared with ==.
TIMEOUTS = CallTimeouts(ring=30.0, setup=16.0, offer_delay=0.5)

C1 = IceCandidate("candidate:1 1 udp 2122260223 192.0.2.1 50000 typ host", "0", 0)
C2 = IceCandidate("candidate:2 1 udp 1686052607 198.51.100.7 50001 typ srflx", "0", 0)
C3 = IceCandidate("", "0", 0)  # end of candidates

#: One instance of every event type.
SAMPLE_EVENTS: dict[type[Event], Event] = {
    LocalAccept: LocalAccept(),
    LocalReject: LocalReject(),
    LocalHangup: LocalHangup(),
    LocalDescription: LocalDescription("v=0 local"),
    RemoteAccept: RemoteAccept(media_ready=True),
    RemoteReject: RemoteReject("declined"),
    RemoteHangup: RemoteHangup(),
    RemoteOffer: RemoteOffer("v=0 offer"),
    RemoteAnswer: RemoteAnswer("v=0 answer"),
    RemoteCandidate: RemoteCandidate(C1),
    PeerOffline: PeerOffline(),
    HubLost: HubLost(),
    HubGone: HubGone(),
    MediaConnected: MediaConnected(),
    MediaFailed: MediaFailed(),
    RingTimeout: RingTimeout(),
    OfferDue: OfferDue(),
    SetupTimeout: SetupTimeout(),
    cs.RemoteMidCall: cs.RemoteMidCall(RestartOffer(1, "v=0 restart", "rtp-silence")),
    cs.MediaInterrupted: cs.MediaInterrupted(lost=True),
    cs.MediaGiveUp: cs.MediaGiveUp(),
}
LOCAL_EVENTS = (LocalAccept, LocalReject, LocalHangup, LocalDescription)


def all_event_types() -> set[type[Event]]:
    # slots=True makes a second class per dataclass: keep the ones the module exports.
    return {t for t in Event.__subclasses__() if getattr(cs, t.__name__, None) is t}


def machine(role: Role, state: CallState, now: float = 0.0) -> CallMachine:
    """A machine brought into ``state`` by a known path of events, starting at ``now``."""
    m = CallMachine(role, "bob" if role is CALLER else "alice", now, TIMEOUTS)
    m.start()
    path: list[Event]
    if state in (S.DIALING, S.RINGING):
        path = []
    elif state is S.CONNECTING:
        path = [RemoteAccept(media_ready=True) if role is CALLER else LocalAccept()]
    elif state is S.CONNECTED:
        path = [RemoteAccept(media_ready=True) if role is CALLER else LocalAccept(),
                MediaConnected()]
    else:
        path = [LocalHangup()]
    for event in path:
        now += 1.0
        m.handle(event, now)
    assert m.state is state
    return m


def caller(now: float = 0.0) -> tuple[CallMachine, list[cs.Action]]:
    m = CallMachine(CALLER, "bob", now, TIMEOUTS)
    return m, m.start()


def callee(now: float = 0.0, data: object = None) -> CallMachine:
    return CallMachine(CALLEE, "alice", now, TIMEOUTS, data)


def hangup(to: str, reason: str) -> Send:
    return Send(make("hangup", to, {"reason": reason}))


# ------------------------------------------------------------------ the table ---

REACHABLE = [(CALLER, S.DIALING), (CALLER, S.CONNECTING), (CALLER, S.CONNECTED),
             (CALLER, S.ENDED), (CALLEE, S.RINGING), (CALLEE, S.CONNECTING),
             (CALLEE, S.CONNECTED), (CALLEE, S.ENDED)]


def test_every_event_type_has_a_sample() -> None:
    assert set(SAMPLE_EVENTS) == all_event_types()
    assert set(LOCAL_EVENTS) == set(cs._LOCAL_EVENTS)


def test_table_only_uses_reachable_states_and_known_events() -> None:
    for (role, state, event_type), new_state in TRANSITIONS.items():
        assert (role, state) in REACHABLE
        assert (role, new_state) in REACHABLE
        assert state is not S.ENDED
        assert event_type in all_event_types()


@pytest.mark.parametrize(("key", "new_state"), list(TRANSITIONS.items()),
                         ids=[f"{r}-{s}-{e.__name__}" for (r, s, e) in TRANSITIONS])
def test_every_transition_of_the_table(key: tuple[Role, CallState, type[Event]],
                                       new_state: CallState) -> None:
    role, state, event_type = key
    m = machine(role, state, now=10.0)
    old_history = list(m.history)
    actions = m.handle(SAMPLE_EVENTS[event_type], 100.0)
    assert m.state is new_state
    changes = [a for a in actions if isinstance(a, StateChanged)]
    if new_state is state:
        assert changes == []
        assert m.history == old_history
    else:
        assert changes == [StateChanged(state, new_state, 100.0)]
        assert m.history == [*old_history, (new_state, 100.0)]
    ended = [a for a in actions if isinstance(a, Ended)]
    if new_state is S.ENDED:
        assert len(ended) == 1 and actions[-1] is ended[0]
        assert m.outcome is ended[0].outcome
        assert m.ended_at == 100.0
        assert m.deadline() is None
        assert (StopMedia() in actions) == (state in (S.CONNECTING, S.CONNECTED))
    else:
        assert ended == []
        assert m.outcome is None


@pytest.mark.parametrize(("role", "state"), REACHABLE, ids=[f"{r}-{s}" for r, s in REACHABLE])
def test_everything_not_in_the_table_is_refused_or_ignored(role: Role, state: CallState) -> None:
    for event_type, event in SAMPLE_EVENTS.items():
        if (role, state, event_type) in TRANSITIONS:
            continue
        m = machine(role, state, now=10.0)
        before = (m.state, list(m.history), m.outcome, m.deadline())
        if event_type in LOCAL_EVENTS:
            with pytest.raises(CallStateError, match=event_type.__name__):
                m.handle(event, 100.0)
        else:
            assert m.handle(event, 100.0) == [], event_type
        assert (m.state, list(m.history), m.outcome, m.deadline()) == before


# ------------------------------------------------------------------- caller ---


def test_caller_happy_path() -> None:
    m, actions = caller(now=100.0)
    assert actions == [Send(make("call-request", "bob"))]
    assert m.state is S.DIALING and m.started_at == 100.0
    assert m.deadline() == 130.0

    assert m.handle(RemoteAccept(media_ready=True), 101.0) == [
        StateChanged(S.DIALING, S.CONNECTING, 101.0), StartMedia(offerer=True)]
    assert m.deadline() == 117.0  # setup timeout; the ring timeout is gone

    assert m.handle(LocalDescription("v=0 offer"), 101.25) == [
        Send(make("offer", "bob", {"type": "offer", "sdp": "v=0 offer"}))]
    assert m.handle(RemoteCandidate(C1), 101.5) == []  # early: held
    assert m.handle(RemoteAnswer("v=0 answer"), 101.75) == [
        ApplyAnswer("v=0 answer"), AddCandidate(C1)]
    assert m.handle(RemoteCandidate(C2), 101.875) == [AddCandidate(C2)]

    assert m.handle(MediaConnected(), 102.0) == [StateChanged(S.CONNECTING, S.CONNECTED, 102.0)]
    assert m.connected_at == 102.0
    assert m.deadline() is None
    # A late trickle: routed by generation (0, the first connection's; core/midcall.py).
    assert m.handle(RemoteCandidate(C3), 103.0) == [MidCall(RestartCandidate(0, C3))]
    assert m.handle(HubLost(), 104.0) == []  # media is peer to peer
    assert m.state is S.CONNECTED
    gone = copy.deepcopy(m)  # refused for good: it ends, with no hangup to send
    assert [a for a in gone.handle(HubGone("replaced"), 105.0) if isinstance(a, Send)] == []
    assert gone.outcome is Outcome.HUB_UNREACHABLE and gone.reason == "replaced"

    assert m.handle(LocalHangup(), 160.0) == [
        hangup("bob", "hangup"), StopMedia(), StateChanged(S.CONNECTED, S.ENDED, 160.0),
        Ended(Outcome.COMPLETED, "hangup", 160.0, by="local")]
    assert (m.outcome, m.reason, m.ended_by, m.ended_at) == (
        Outcome.COMPLETED, "hangup", "local", 160.0)
    assert m.is_ended
    assert m.history == [(S.DIALING, 100.0), (S.CONNECTING, 101.0), (S.CONNECTED, 102.0),
                         (S.ENDED, 160.0)]
    assert (m.started_at, m.connected_at, m.ended_at) == (100.0, 102.0, 160.0)
    assert m.deadline() is None


def test_caller_request_data_goes_in_the_call_request() -> None:
    m = CallMachine(CALLER, "bob", 0.0, TIMEOUTS, {"name": "Alice"})
    assert m.start() == [Send(make("call-request", "bob", {"name": "Alice"}))]


def test_callee_start_does_nothing() -> None:
    m = callee()
    assert m.start() == []
    assert m.state is S.RINGING
    assert m.deadline() is None  # the callee has no ring timeout of its own


def test_offer_waits_for_the_offer_delay_after_a_plain_accept() -> None:
    m, _ = caller(now=0.0)
    assert m.handle(RemoteAccept(media_ready=False), 1.0) == [
        StateChanged(S.DIALING, S.CONNECTING, 1.0), StartMedia(offerer=True)]
    assert m.deadline() == 1.5
    assert m.handle(LocalDescription("v=0 offer"), 1.25) == []  # held
    assert m.handle_timer(1.375) == []  # too early
    assert m.deadline() == 1.5
    assert m.handle_timer(1.5) == [
        Send(make("offer", "bob", {"type": "offer", "sdp": "v=0 offer"}))]
    assert m.deadline() == 17.0  # only the setup timeout is left
    assert m.handle_timer(2.0) == []
    assert m.state is S.CONNECTING


def test_offer_made_after_the_delay_is_sent_at_once() -> None:
    m, _ = caller(now=0.0)
    m.handle(RemoteAccept(media_ready=False), 1.0)
    assert m.handle_timer(1.75) == []  # OfferDue fires, nothing to send yet
    assert m.deadline() == 17.0
    assert m.handle(LocalDescription("v=0 late"), 2.0) == [
        Send(make("offer", "bob", {"type": "offer", "sdp": "v=0 late"}))]


def test_accept_cancels_the_ring_timeout() -> None:
    m, _ = caller(now=0.0)
    m.handle(RemoteAccept(media_ready=True), 20.0)
    assert m.deadline() == 36.0  # setup timeout, later than the ring timeout (30.0) was
    assert m.handle_timer(30.0) == []
    assert m.state is S.CONNECTING


def test_media_ready_accept_has_no_offer_delay() -> None:
    m, _ = caller(now=0.0)
    m.handle(RemoteAccept(media_ready=True), 1.0)
    assert m.deadline() == 17.0


def test_late_handle_timer_fires_offer_then_setup_timeout_in_order() -> None:
    m, _ = caller(now=0.0)
    m.handle(RemoteAccept(media_ready=False), 1.0)
    m.handle(LocalDescription("v=0 offer"), 1.25)
    assert m.handle_timer(50.0) == [
        Send(make("offer", "bob", {"type": "offer", "sdp": "v=0 offer"})),
        hangup("bob", "media-failed"), StopMedia(),
        StateChanged(S.CONNECTING, S.ENDED, 50.0),
        Ended(Outcome.MEDIA_FAILED, "setup-timeout", 50.0, by="timeout")]


def test_second_answer_is_ignored() -> None:
    m = machine(CALLER, S.CONNECTING)
    assert m.handle(RemoteAnswer("first"), 5.0) == [ApplyAnswer("first")]
    assert m.handle(RemoteAnswer("second"), 6.0) == []


def test_remote_reject_busy() -> None:
    m, _ = caller(now=0.0)
    assert m.handle(RemoteReject("busy"), 2.0) == [
        StateChanged(S.DIALING, S.ENDED, 2.0), Ended(Outcome.BUSY, "busy", 2.0, by="remote")]
    assert (m.outcome, m.reason, m.ended_by) == (Outcome.BUSY, "busy", "remote")


@pytest.mark.parametrize("reason", [None, "declined", "other"])
def test_remote_reject_is_rejected(reason: str | None) -> None:
    m, _ = caller(now=0.0)
    assert m.handle(RemoteReject(reason), 2.0) == [
        StateChanged(S.DIALING, S.ENDED, 2.0),
        Ended(Outcome.REJECTED, reason, 2.0, by="remote")]


def test_remote_hangup_while_dialing_is_a_rejection() -> None:
    m, _ = caller(now=0.0)
    assert m.handle(RemoteHangup(), 2.0) == [
        StateChanged(S.DIALING, S.ENDED, 2.0), Ended(Outcome.REJECTED, None, 2.0, by="remote")]


def test_ring_timeout() -> None:
    m, _ = caller(now=10.0)
    assert m.deadline() == 40.0
    assert m.handle_timer(39.5) == []
    assert m.state is S.DIALING
    assert m.handle_timer(m.deadline() or 0.0) == [
        hangup("bob", "no-answer"), StateChanged(S.DIALING, S.ENDED, 40.0),
        Ended(Outcome.NO_ANSWER, "no-answer", 40.0, by="timeout")]
    assert (m.outcome, m.ended_by, m.ended_at) == (Outcome.NO_ANSWER, "timeout", 40.0)
    assert m.deadline() is None
    assert m.handle_timer(100.0) == []


def test_local_hangup_while_dialing_cancels() -> None:
    m, _ = caller(now=0.0)
    assert m.handle(LocalHangup(), 3.0) == [
        hangup("bob", "hangup"), StateChanged(S.DIALING, S.ENDED, 3.0),
        Ended(Outcome.CANCELLED, "hangup", 3.0, by="local")]  # no StopMedia: no media yet


def test_peer_offline_while_dialing() -> None:
    m, _ = caller(now=0.0)
    assert m.handle(PeerOffline(), 0.5) == [
        StateChanged(S.DIALING, S.ENDED, 0.5), Ended(Outcome.OFFLINE, None, 0.5, by="network")]


def test_hub_lost_while_dialing() -> None:
    m, _ = caller(now=0.0)
    assert m.handle(HubLost(), 4.0) == [
        StateChanged(S.DIALING, S.ENDED, 4.0),
        Ended(Outcome.HUB_UNREACHABLE, "hub-lost", 4.0, by="network")]


@pytest.mark.parametrize("role", [CALLER, CALLEE])
def test_hub_lost_while_connected_is_ignored(role: Role) -> None:
    m = machine(role, S.CONNECTED)
    assert m.handle(HubLost(), 50.0) == []
    assert m.state is S.CONNECTED
    assert m.outcome is None


@pytest.mark.parametrize("role", [CALLER, CALLEE])
def test_hub_lost_while_connecting(role: Role) -> None:
    m = machine(role, S.CONNECTING)
    assert m.handle(HubLost(), 5.0) == [
        StopMedia(), StateChanged(S.CONNECTING, S.ENDED, 5.0),
        Ended(Outcome.HUB_UNREACHABLE, "hub-lost", 5.0, by="network")]


# ------------------------------------------------------------------- callee ---


def test_callee_happy_path() -> None:
    m = callee(now=5.0, data={"name": "Alice"})
    assert m.request_data == {"name": "Alice"}
    assert m.state is S.RINGING and m.history == [(S.RINGING, 5.0)]

    assert m.handle(LocalAccept(), 6.0) == [
        Send(make("call-accept", "alice", {"media": "ready"})),
        StateChanged(S.RINGING, S.CONNECTING, 6.0), StartMedia(offerer=False)]
    assert m.deadline() == 22.0

    assert m.handle(RemoteCandidate(C1), 6.25) == []  # before the offer: held
    assert m.handle(RemoteOffer("v=0 offer"), 6.5) == [ApplyOffer("v=0 offer"), AddCandidate(C1)]
    assert m.handle(RemoteOffer("v=0 again"), 6.625) == []  # renegotiation: not supported
    assert m.handle(LocalDescription("v=0 answer"), 6.75) == [
        Send(make("answer", "alice", {"type": "answer", "sdp": "v=0 answer"}))]
    assert m.handle(RemoteCandidate(C2), 6.875) == [AddCandidate(C2)]

    assert m.handle(MediaConnected(), 7.0) == [StateChanged(S.CONNECTING, S.CONNECTED, 7.0)]
    assert m.connected_at == 7.0 and m.deadline() is None

    assert m.handle(RemoteHangup(), 20.0) == [
        StopMedia(), StateChanged(S.CONNECTED, S.ENDED, 20.0),
        Ended(Outcome.COMPLETED, "remote-hangup", 20.0, by="remote")]
    assert m.history == [(S.RINGING, 5.0), (S.CONNECTING, 6.0), (S.CONNECTED, 7.0),
                         (S.ENDED, 20.0)]
    assert (m.started_at, m.connected_at, m.ended_at, m.ended_by) == (5.0, 7.0, 20.0, "remote")


def test_callee_remote_hangup_with_reason_while_connected() -> None:
    m = machine(CALLEE, S.CONNECTED)
    actions = m.handle(RemoteHangup("bye"), 9.0)
    assert actions[-1] == Ended(Outcome.COMPLETED, "bye", 9.0, by="remote")


def test_callee_reject() -> None:
    m = callee(now=0.0)
    assert m.handle(LocalReject(), 2.0) == [
        Send(make("call-reject", "alice", {"reason": "declined"})),
        StateChanged(S.RINGING, S.ENDED, 2.0),
        Ended(Outcome.REJECTED, "declined", 2.0, by="local")]
    assert (m.outcome, m.reason, m.connected_at) == (Outcome.REJECTED, "declined", None)


def test_callee_local_hangup_while_ringing_is_a_reject() -> None:
    m = callee(now=0.0)
    assert m.handle(LocalHangup(), 2.0) == [
        Send(make("call-reject", "alice", {"reason": "hangup"})),
        StateChanged(S.RINGING, S.ENDED, 2.0),
        Ended(Outcome.REJECTED, "hangup", 2.0, by="local")]


def test_callee_missed_call() -> None:
    m = callee(now=0.0)
    assert m.handle(RemoteHangup(), 8.0) == [
        StateChanged(S.RINGING, S.ENDED, 8.0), Ended(Outcome.MISSED, None, 8.0, by="remote")]
    assert m.outcome is Outcome.MISSED


def test_callee_hub_lost_while_ringing() -> None:
    m = callee(now=0.0)
    assert m.handle(HubLost(), 1.0)[-1] == Ended(Outcome.HUB_UNREACHABLE, "hub-lost", 1.0,
                                                 by="network")


# ------------------------------------------------------- media and timeouts ---


@pytest.mark.parametrize(("role", "peer"), [(CALLER, "bob"), (CALLEE, "alice")])
def test_setup_timeout(role: Role, peer: str) -> None:
    m = machine(role, S.CONNECTING, now=0.0)  # entered CONNECTING at 1.0
    assert m.deadline() == 17.0
    assert m.handle_timer(16.5) == []
    assert m.handle_timer(17.0) == [
        hangup(peer, "media-failed"), StopMedia(), StateChanged(S.CONNECTING, S.ENDED, 17.0),
        Ended(Outcome.MEDIA_FAILED, "setup-timeout", 17.0, by="timeout")]
    assert m.deadline() is None


@pytest.mark.parametrize("state", [S.CONNECTING, S.CONNECTED])
@pytest.mark.parametrize(("role", "peer"), [(CALLER, "bob"), (CALLEE, "alice")])
def test_media_failed(role: Role, peer: str, state: CallState) -> None:
    m = machine(role, state)
    assert m.handle(MediaFailed(), 30.0) == [
        hangup(peer, "media-failed"), StopMedia(), StateChanged(state, S.ENDED, 30.0),
        Ended(Outcome.MEDIA_FAILED, "ice-failed", 30.0, by="network")]
    assert m.handle(MediaFailed("dtls-failed"), 31.0) == []  # already ended


def test_media_failed_reason_is_kept() -> None:
    m = machine(CALLER, S.CONNECTING)
    assert m.handle(MediaFailed("dtls-failed"), 3.0)[-1] == Ended(
        Outcome.MEDIA_FAILED, "dtls-failed", 3.0, by="network")


@pytest.mark.parametrize("role", [CALLER, CALLEE])
def test_remote_hangup_while_connecting(role: Role) -> None:
    m = machine(role, S.CONNECTING)
    assert m.handle(RemoteHangup(), 4.0) == [
        StopMedia(), StateChanged(S.CONNECTING, S.ENDED, 4.0),
        Ended(Outcome.CANCELLED, "remote-hangup", 4.0, by="remote")]


@pytest.mark.parametrize("role", [CALLER, CALLEE])
def test_remote_hangup_media_failed_while_connecting(role: Role) -> None:
    m = machine(role, S.CONNECTING)
    assert m.handle(RemoteHangup("media-failed"), 4.0)[-1] == Ended(
        Outcome.MEDIA_FAILED, "media-failed", 4.0, by="remote")


@pytest.mark.parametrize(("role", "peer"), [(CALLER, "bob"), (CALLEE, "alice")])
def test_local_hangup_while_connecting_cancels(role: Role, peer: str) -> None:
    m = machine(role, S.CONNECTING)
    assert m.handle(LocalHangup("changed-my-mind"), 4.0) == [
        hangup(peer, "changed-my-mind"), StopMedia(), StateChanged(S.CONNECTING, S.ENDED, 4.0),
        Ended(Outcome.CANCELLED, "changed-my-mind", 4.0, by="local")]


@pytest.mark.parametrize("role", [CALLER, CALLEE])
def test_peer_offline_while_connecting(role: Role) -> None:
    m = machine(role, S.CONNECTING)
    assert m.handle(PeerOffline(), 4.0) == [
        StopMedia(), StateChanged(S.CONNECTING, S.ENDED, 4.0),
        Ended(Outcome.OFFLINE, None, 4.0, by="network")]


# ------------------------------------------------------- not allowed / ended ---


def test_local_events_not_allowed_raise() -> None:
    m, _ = caller()
    with pytest.raises(CallStateError, match="LocalAccept is not allowed"):
        m.handle(LocalAccept(), 1.0)
    with pytest.raises(CallStateError):
        m.handle(LocalReject(), 1.0)
    with pytest.raises(CallStateError):
        m.handle(LocalDescription("v=0"), 1.0)  # no media yet
    assert m.state is S.DIALING
    c = callee()
    with pytest.raises(CallStateError):
        c.handle(LocalDescription("v=0"), 1.0)
    assert c.state is S.RINGING


def test_call_state_error_is_a_runtime_error() -> None:
    assert issubclass(CallStateError, RuntimeError)


def test_remote_events_not_allowed_are_ignored() -> None:
    m, _ = caller()
    assert m.handle(RemoteOffer("v=0"), 1.0) == []  # a caller never gets an offer
    assert m.handle(RemoteCandidate(C1), 1.0) == []  # nothing to add it to, not held
    assert m.handle(MediaConnected(), 1.0) == []
    assert m.state is S.DIALING
    m.handle(RemoteAccept(media_ready=True), 2.0)
    assert m.handle(RemoteAnswer("v=0"), 3.0) == [ApplyAnswer("v=0")]  # C1 was not held
    assert m.handle(RemoteAccept(), 3.0) == []
    c = callee()
    assert c.handle(RemoteAnswer("v=0"), 1.0) == []
    assert c.handle(PeerOffline(), 1.0) == []


@pytest.mark.parametrize("role", [CALLER, CALLEE])
def test_nothing_happens_after_ended(role: Role) -> None:
    m = machine(role, S.ENDED)
    history = list(m.history)
    outcome, ended_at = m.outcome, m.ended_at
    for event_type, event in SAMPLE_EVENTS.items():
        if event_type in LOCAL_EVENTS:
            with pytest.raises(CallStateError):
                m.handle(event, 500.0)
        else:
            assert m.handle(event, 500.0) == []
    assert m.handle_timer(10_000.0) == []
    assert m.deadline() is None
    assert (m.state, m.history, m.outcome, m.ended_at) == (S.ENDED, history, outcome, ended_at)


def test_deadline_is_none_after_ending_from_every_state() -> None:
    for role, state in REACHABLE:
        if state is S.ENDED:
            continue
        m = machine(role, state)
        m.handle(LocalHangup(), 9.0)
        assert m.deadline() is None
        assert m.is_ended


def test_default_timeouts() -> None:
    t = CallTimeouts()
    assert (t.ring, t.setup, t.offer_delay) == (30.0, 15.0, 0.3)
    m = CallMachine(CALLER, "bob", 1000.0)
    assert m.deadline() == 1030.0


# ---------------------------------------------------------------- outcomes ---


def test_exit_codes_are_distinct_for_every_outcome() -> None:
    assert set(EXIT_CODES) == set(Outcome)
    assert len(set(EXIT_CODES.values())) == len(Outcome)
    assert EXIT_CODES[Outcome.COMPLETED] == 0
    assert all(code != 0 for outcome, code in EXIT_CODES.items()
               if outcome is not Outcome.COMPLETED)
    assert all(isinstance(code, int) and 0 <= code < 256 for code in EXIT_CODES.values())
