"""softphone.core.restart and softphone.core.hold, sans I/O: media restart and hold decisions."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest

from softphone.core import hold as h
from softphone.core import restart as r
from softphone.core.restart import PeerState as P
from softphone.core.restart import RestartReason as Why

SETTINGS = r.RestartSettings()  # the defaults: silence 2 s, retry 2 s, give up 45 s


def connected(is_caller: bool = True, now: float = 0.0, enabled: bool = True,
              settings: r.RestartSettings = SETTINGS) -> r.RestartMachine:
    """A machine whose first connection (generation 0) is up and carrying RTP."""
    m = r.RestartMachine(is_caller, enabled, settings)
    assert m.handle(r.ConnectionChanged(0, P.CONNECTING), now) == []
    assert m.handle(r.ConnectionChanged(0, P.CONNECTED), now) == []
    assert m.handle(r.RtpReceived(0), now) == []
    assert m.armed and not m.restarting
    return m


def rtp_until(m: r.RestartMachine, start: float, end: float, generation: int = 0,
              step: float = 0.02) -> list[r.RestartAction]:
    """RTP every ``step`` on ``generation`` from ``start`` to ``end``, timers in between."""
    actions: list[r.RestartAction] = []
    t = start
    while t <= end + 1e-9:
        actions += m.handle(r.RtpReceived(generation), t)
        actions += m.handle_timer(t)
        t += step
    return actions


def lost(m: r.RestartMachine, now: float) -> list[r.RestartAction]:
    return m.handle(r.ConnectionChanged(0, P.FAILED), now)


def of(actions: list[r.RestartAction], kind: type[r.RestartAction]) -> list[r.RestartAction]:
    return [a for a in actions if isinstance(a, kind)]


# -- what starts a restart -------------------------------------------------------


def test_disconnected_restarts_at_once() -> None:
    m = connected()
    rtp_until(m, 0.0, 5.0)
    # The hub connection may have died with the path, silently: it is checked too.
    assert m.handle(r.ConnectionChanged(0, P.DISCONNECTED), 5.01) == [
        r.CheckSignaling(), r.StartRestart(Why.ICE_DISCONNECTED, 0),
        r.SendRestartOffer(1, Why.ICE_DISCONNECTED)]
    assert m.restarting and m.attempt is not None and m.attempt.generation == 1


def test_failed_restarts_at_once() -> None:
    m = connected()
    assert lost(m, 3.0) == [r.CheckSignaling(), r.StartRestart(Why.ICE_FAILED, 0),
                            r.SendRestartOffer(1, Why.ICE_FAILED)]
    # A second report of the same loss starts nothing more.
    assert m.handle(r.ConnectionChanged(0, P.DISCONNECTED), 3.1) == []
    assert lost(m, 3.2) == []


def test_rtp_silence_of_2_s_restarts_and_1_5_s_does_not() -> None:
    m = connected()
    assert rtp_until(m, 0.0, 10.0) == []
    # After 0.5 s the path is checked; it answers (the peer only paused sending).
    assert m.deadline() == pytest.approx(10.5)
    assert m.handle_timer(10.5) == [r.ProbePath(0)]
    assert m.handle(r.ProbeResult(0, ok=True), 10.6) == []
    assert m.deadline() == pytest.approx(12.0)
    assert m.handle_timer(11.5) == []  # 1.5 s of silence: a hiccup, not a dead path
    assert m.handle(r.RtpReceived(0), 11.5) == []
    assert m.handle_timer(12.0) == [r.ProbePath(0)]  # a new silence, a new check
    m.handle(r.ProbeResult(0, ok=True), 12.1)
    assert m.handle_timer(13.4) == []  # 1.9 s since the last packet
    assert m.handle_timer(13.5) == [r.CheckSignaling(), r.StartRestart(Why.RTP_SILENCE, 0),
                                    r.SendRestartOffer(1, Why.RTP_SILENCE)]


def test_a_short_silence_on_a_path_that_does_not_answer_restarts_at_once() -> None:
    """Both directions died at once (a NAT rebinding): no need to wait 2 s."""
    m = connected()
    rtp_until(m, 0.0, 10.0)
    assert m.handle_timer(10.5) == [r.ProbePath(0)]
    assert m.handle_timer(10.6) == []  # one check per silence
    assert m.handle(r.ProbeResult(0, ok=False), 11.0) == [
        r.CheckSignaling(), r.StartRestart(Why.PATH_DEAD, 0),
        r.SendRestartOffer(1, Why.PATH_DEAD)]


def test_a_failed_check_is_ignored_once_rtp_came_back() -> None:
    m = connected()
    rtp_until(m, 0.0, 10.0)
    assert m.handle_timer(10.5) == [r.ProbePath(0)]
    m.handle(r.RtpReceived(0), 10.7)
    assert m.handle(r.ProbeResult(0, ok=False), 11.0) == []
    assert m.handle(r.ProbeResult(5, ok=False), 11.3) == []  # not the current connection


def test_silence_counts_from_connected_before_the_first_packet() -> None:
    m = r.RestartMachine(is_caller=False)
    m.handle(r.ConnectionChanged(0, P.CONNECTED), 7.0)
    assert m.handle_timer(7.5) == [r.ProbePath(0)]
    assert m.handle_timer(8.9) == []
    assert of(m.handle_timer(9.0), r.StartRestart) == [r.StartRestart(Why.RTP_SILENCE, 0)]


def test_an_address_removed_restarts_and_checks_the_hub() -> None:
    m = connected()
    assert m.handle(r.AddressesChanged(frozenset({"10.1.0.2", "192.0.2.7"})), 1.0) == []
    # A new address beside the working one: no restart (no needless gap).
    assert m.handle(r.AddressesChanged(frozenset({"10.1.0.2", "192.0.2.7", "10.3.0.2"})),
                    1.5) == []
    assert m.handle(r.AddressesChanged(frozenset({"192.0.2.7", "10.3.0.2"})), 2.0) == [
        r.CheckSignaling(), r.StartRestart(Why.ADDRESS_CHANGE, 0),
        r.SendRestartOffer(1, Why.ADDRESS_CHANGE)]


def test_the_peers_packets_from_a_new_address_restart_at_once() -> None:
    """Its NAT rebound: we still hear it, but what we send to the old address is lost."""
    m = connected(is_caller=False)
    rtp_until(m, 0.0, 3.0)
    assert m.handle(r.RemoteAddressChanged(0), 3.02) == [
        r.CheckSignaling(), r.StartRestart(Why.PEER_ADDRESS_CHANGE, 0),
        r.SendRestartOffer(1, Why.PEER_ADDRESS_CHANGE)]
    assert m.handle(r.RemoteAddressChanged(0), 3.04) == []  # once per episode
    assert m.handle(r.RemoteAddressChanged(7), 3.05) == []  # not the current connection


def test_nothing_is_decided_before_the_first_connection() -> None:
    """Setup failures are the call machine's (setup timeout), not a restart."""
    m = r.RestartMachine(is_caller=True)
    assert m.handle(r.AddressesChanged(frozenset({"10.1.0.2"})), 0.0) == []
    assert m.handle(r.ConnectionChanged(0, P.FAILED), 1.0) == []
    assert m.handle(r.AddressesChanged(frozenset()), 2.0) == []
    assert m.deadline() is None and m.handle_timer(100.0) == []
    assert m.handle(r.RemoteRestartOffer(1, "v=0"), 3.0) == [
        r.IgnoreStale("offer", 1, "not connected yet")]


# -- a restart, start to end -------------------------------------------------------


def test_a_restart_switches_to_the_new_connection_and_reports_the_gap() -> None:
    m = connected()
    rtp_until(m, 0.0, 10.0)
    assert of(lost(m, 10.5), r.SendRestartOffer) == [r.SendRestartOffer(1, Why.ICE_FAILED)]
    assert m.handle(r.OfferSent(1), 10.6) == []
    assert m.handle(r.RemoteRestartAnswer(1, "v=0 answer"), 10.7) == [
        r.ApplyRestartAnswer(1, "v=0 answer")]
    assert m.handle(r.ConnectionChanged(1, P.CONNECTED), 11.0) == []  # RTP is the proof
    assert m.handle(r.RtpReceived(1), 11.2) == [
        r.RestartDone(1, gap_ms=1200, reason=Why.ICE_FAILED, attempts=1),
        r.CloseConnection(0)]
    assert m.current == 1 and not m.restarting
    # The old connection is history: its late events change nothing.
    assert m.handle(r.ConnectionChanged(0, P.FAILED), 11.3) == []
    assert m.handle(r.RtpReceived(0), 11.3) == []
    # Silence is now watched on generation 1.
    assert rtp_until(m, 11.2, 20.0, generation=1) == []
    assert of(m.handle_timer(22.0), r.SendRestartOffer) == [
        r.SendRestartOffer(2, Why.RTP_SILENCE)]


def test_the_old_path_coming_back_ends_the_episode_on_it() -> None:
    m = connected()
    rtp_until(m, 0.0, 10.0)
    assert of(m.handle_timer(12.0), r.SendRestartOffer)  # silence
    m.handle(r.OfferSent(1), 12.1)
    # RTP on the old connection again while our attempt is in flight: keep the
    # attempt (both sides head for it), but the audio gap is over.
    assert m.handle(r.RtpReceived(0), 12.5) == []
    assert rtp_until(m, 12.5, 14.2) == [r.CloseConnection(1), r.CheckSignaling(),
                                        r.RestartDone(0, 2500, Why.RTP_SILENCE, 1)]
    assert m.current == 0 and not m.restarting


def test_the_answering_side_of_a_restart() -> None:
    m = connected(is_caller=False)
    rtp_until(m, 0.0, 4.0)
    # The peer noticed first: we answer, and our own audio may still be flowing.
    assert m.handle(r.RemoteRestartOffer(1, "v=0 offer"), 4.1) == [
        r.StartRestart(Why.PEER, 0), r.AcceptRestartOffer(1, "v=0 offer")]
    assert m.handle(r.AnswerSent(1), 4.2) == []
    assert m.handle(r.RemoteRestartOffer(1, "v=0 offer"), 4.3) == [
        r.IgnoreStale("offer", 1, "repeated")]
    assert m.handle(r.RtpReceived(0), 4.3) == []
    assert m.handle(r.RtpReceived(1), 4.6) == [
        r.RestartDone(1, 300, Why.PEER, 1), r.CloseConnection(0)]


# -- glare and stale messages -----------------------------------------------------------


@dataclass
class Wire:
    """Two machines and the hub between them: delivers what each sends, in order."""

    caller: r.RestartMachine = field(default_factory=lambda: connected(True))
    callee: r.RestartMachine = field(default_factory=lambda: connected(False))
    log: list[tuple[str, r.RestartAction]] = field(default_factory=list)
    #: Connections both sides made and that are open, by generation.
    made: dict[str, set[int]] = field(default_factory=lambda: {"caller": {0}, "callee": {0}})

    def other(self, side: str) -> tuple[str, r.RestartMachine]:
        return ("callee", self.callee) if side == "caller" else ("caller", self.caller)

    def feed(self, side: str, actions: list[r.RestartAction], now: float) -> list[
            tuple[str, r.RestartEvent]]:
        """Carry out ``side``'s actions; return the messages now on their way to the other."""
        me = self.caller if side == "caller" else self.callee
        to_peer: list[tuple[str, r.RestartEvent]] = []
        peer, _ = self.other(side)
        for action in actions:
            self.log.append((side, action))
            if isinstance(action, r.SendRestartOffer):
                self.made[side].add(action.generation)
                to_peer.append((peer, r.RemoteRestartOffer(action.generation, f"o{side}")))
                self.feed(side, me.handle(r.OfferSent(action.generation), now), now)
            elif isinstance(action, r.AcceptRestartOffer):
                self.made[side].add(action.generation)
                to_peer.append((peer, r.RemoteRestartAnswer(action.generation, f"a{side}")))
                self.feed(side, me.handle(r.AnswerSent(action.generation), now), now)
            elif isinstance(action, r.ResendRestartOffer):
                to_peer.append((peer, r.RemoteRestartOffer(action.generation, f"o{side}")))
            elif isinstance(action, r.CloseConnection):
                self.made[side].discard(action.generation)
        return to_peer

    def deliver(self, messages: list[tuple[str, r.RestartEvent]], now: float) -> None:
        for side, event in messages:
            machine = self.caller if side == "caller" else self.callee
            self.deliver(self.feed(side, machine.handle(event, now), now), now)

    def media(self, now: float) -> None:
        """Whatever generation both sides have open connects and carries RTP."""
        for gen in sorted(self.made["caller"] & self.made["callee"] - {0}):
            for side, m in (("caller", self.caller), ("callee", self.callee)):
                self.feed(side, m.handle(r.ConnectionChanged(gen, P.CONNECTED), now), now)
                self.feed(side, m.handle(r.RtpReceived(gen), now), now)


def test_glare_both_ways_the_callers_offer_wins() -> None:
    w = Wire()
    # Both notice at the same moment and both offer generation 1.
    out = w.feed("caller", lost(w.caller, 5.0), 5.0)
    out += w.feed("callee", lost(w.callee, 5.0), 5.0)
    assert [type(e).__name__ for _, e in out] == ["RemoteRestartOffer"] * 2
    w.deliver(out, 5.05)  # the offers cross
    assert ("caller", r.IgnoreStale("offer", 1, "glare: our offer wins")) in w.log
    # The winner sends its offer again, in case the first copy was lost.
    assert ("caller", r.ResendRestartOffer(1)) in w.log
    assert ("callee", r.CloseConnection(1)) in w.log  # its own attempt, dropped
    assert ("callee", r.AcceptRestartOffer(1, "ocaller")) in w.log
    assert ("caller", r.ApplyRestartAnswer(1, "acallee")) in w.log
    w.media(5.3)
    for side, m in (("caller", w.caller), ("callee", w.callee)):
        assert m.current == 1 and not m.restarting, side
        done = [a for s, a in w.log if s == side and isinstance(a, r.RestartDone)]
        assert len(done) == 1 and done[0].generation == 1


def test_glare_a_higher_generation_beats_the_caller() -> None:
    """The callee's earlier attempts made its number higher: its offer wins, both agree."""
    w = Wire()
    w.feed("callee", lost(w.callee, 1.0), 1.0)  # offer 1: never delivered (hub down)
    # Unanswered: abandoned, and offer 2 made.
    callee_offer = w.feed("callee", w.callee.handle_timer(3.0), 3.0)
    assert callee_offer == [("caller", r.RemoteRestartOffer(2, "ocallee"))]
    out = w.feed("caller", lost(w.caller, 3.0), 3.0)  # the caller's offer 1
    w.deliver(out + callee_offer, 3.1)
    assert ("callee", r.IgnoreStale("offer", 1, "glare: our offer wins")) in w.log
    assert ("caller", r.AcceptRestartOffer(2, "ocallee")) in w.log
    w.media(3.4)
    assert w.caller.current == w.callee.current == 2


def test_stale_answers_and_offers_are_ignored() -> None:
    m = connected()
    lost(m, 1.0)
    m.handle(r.OfferSent(1), 1.0)
    # No answer within 2 s: abandoned, and the hub connection is suspect.
    assert m.handle_timer(3.0) == [r.CloseConnection(1), r.CheckSignaling(),
                                   r.SendRestartOffer(2, Why.ICE_FAILED)]
    m.handle(r.OfferSent(2), 3.0)
    assert m.handle(r.RemoteRestartAnswer(1, "late"), 3.2) == [
        r.IgnoreStale("answer", 1, "no offer of ours is waiting for it")]
    assert m.handle(r.RemoteRestartAnswer(2, "a2"), 3.3) == [r.ApplyRestartAnswer(2, "a2")]
    assert m.handle(r.RemoteRestartAnswer(2, "a2"), 3.4) == [
        r.IgnoreStale("answer", 2, "no offer of ours is waiting for it")]
    assert of(m.handle(r.RtpReceived(2), 3.6), r.RestartDone)
    # After the switch, offers of old generations are stale.
    for gen in (0, 1, 2):
        assert m.handle(r.RemoteRestartOffer(gen, "old"), 4.0) == [
            r.IgnoreStale("offer", gen, "stale (current is 2)")]


def test_an_offer_newer_than_the_one_we_answered_replaces_it() -> None:
    m = connected(is_caller=False)
    m.handle(r.RemoteRestartOffer(1, "o1"), 1.0)
    assert m.handle(r.RemoteRestartOffer(3, "o3"), 1.5) == [
        r.CloseConnection(1), r.AcceptRestartOffer(3, "o3")]
    assert m.handle(r.RemoteRestartOffer(2, "o2"), 1.6) == [
        r.IgnoreStale("offer", 2, "stale (a newer one was accepted)")]
    # Our own next offer, if any, takes a higher number than any seen.
    assert m.highest == 3


# -- retries, give-up ---------------------------------------------------------------------


def test_retries_are_spaced_one_at_a_time_then_give_up() -> None:
    m = connected()
    rtp_until(m, 0.0, 10.0)
    actions = lost(m, 10.0)
    timeline: list[tuple[float, r.RestartAction]] = [(10.0, a) for a in actions]
    t = 10.0
    while not m.ended and t < 100.0:
        for a in list(actions):
            if isinstance(a, r.SendRestartOffer):
                # The hub says the peer is offline (its process is gone).
                actions += m.handle(r.OfferSent(a.generation), t + 0.01)
                more = m.handle(r.PeerUnreachable(), t + 0.02)
                timeline += [(t + 0.02, b) for b in more]
        t = max(t + 0.01, m.deadline() or t + 0.01)
        actions = m.handle_timer(t)
        timeline += [(t, a) for a in actions]
    offers = [(when, a) for when, a in timeline if isinstance(a, r.SendRestartOffer)]
    starts = [when for when, _ in offers]
    assert all(b - a >= SETTINGS.retry_interval - 1e-9 for a, b in itertools.pairwise(starts))
    assert [a.generation for _, a in offers] == list(range(1, len(offers) + 1))
    # Never two in flight: every offer after the first follows its predecessor's close.
    opened: set[int] = {0}
    for _, a in timeline:
        if isinstance(a, r.SendRestartOffer):
            assert opened == {0}, "an attempt is still open"
            opened.add(a.generation)
        elif isinstance(a, r.CloseConnection):
            opened.discard(a.generation)
    give_up = [(when, a) for when, a in timeline if isinstance(a, r.GiveUp)]
    assert [a for _, a in give_up] == [r.GiveUp(r.MEDIA_LOST, Why.ICE_FAILED)]
    assert give_up[0][0] == pytest.approx(10.0 + SETTINGS.give_up)
    assert r.MEDIA_LOST == "media-lost"
    assert m.ended and m.deadline() is None
    assert m.handle(r.RemoteRestartOffer(99, "x"), 56.0) == []


def test_an_answer_that_comes_but_no_media_is_abandoned_after_the_connect_timeout() -> None:
    m = connected()
    lost(m, 1.0)
    m.handle(r.OfferSent(1), 1.0)
    m.handle(r.RemoteRestartAnswer(1, "a"), 1.1)
    assert m.handle_timer(3.5) == []  # past the answer timeout, but answered
    assert m.deadline() == pytest.approx(6.1)
    assert m.handle_timer(6.1) == [r.CloseConnection(1), r.SendRestartOffer(2, Why.ICE_FAILED)]


def test_a_failed_attempt_is_retried_after_the_interval() -> None:
    m = connected()
    lost(m, 1.0)
    m.handle(r.OfferSent(1), 1.0)
    m.handle(r.RemoteRestartAnswer(1, "a"), 1.1)
    assert m.handle(r.ConnectionChanged(1, P.FAILED), 1.5) == [r.CloseConnection(1)]
    assert m.deadline() == pytest.approx(3.0)
    assert m.handle_timer(3.0) == [r.SendRestartOffer(2, Why.ICE_FAILED)]


def test_a_restart_while_signaling_is_down_waits_for_it() -> None:
    m = connected()
    assert m.handle(r.SignalingChanged(False), 1.0) == []
    assert lost(m, 1.5) == [r.StartRestart(Why.ICE_FAILED, 0)]  # no offer, no check: no hub
    assert m.deadline() == pytest.approx(1.5 + SETTINGS.give_up)  # only the give-up
    assert m.handle_timer(10.0) == []
    assert m.handle(r.SignalingChanged(True), 12.0) == [r.SendRestartOffer(1, Why.ICE_FAILED)]


def test_signaling_back_replaces_an_offer_that_may_have_been_lost() -> None:
    m = connected()
    lost(m, 1.0)
    m.handle(r.OfferSent(1), 1.0)
    assert m.handle(r.SignalingChanged(False), 1.2) == []
    assert m.handle(r.SignalingChanged(True), 1.4) == [
        r.CloseConnection(1), r.SendRestartOffer(2, Why.ICE_FAILED)]  # at once, no backoff


def test_a_new_address_during_an_episode_retries_at_once() -> None:
    m = connected()
    m.handle(r.AddressesChanged(frozenset({"10.1.0.2"})), 0.5)
    assert of(m.handle(r.AddressesChanged(frozenset()), 1.0), r.SendRestartOffer) == [
        r.SendRestartOffer(1, Why.ADDRESS_CHANGE)]
    m.handle(r.OfferSent(1), 1.0)
    assert m.handle(r.AddressesChanged(frozenset({"10.3.0.2"})), 1.3) == [
        r.CloseConnection(1), r.SendRestartOffer(2, Why.ADDRESS_CHANGE)]


def test_a_peer_without_restart_is_only_watched() -> None:
    m = connected(enabled=False)
    rtp_until(m, 0.0, 3.0)
    assert m.handle_timer(5.1) == [r.MediaStalled(Why.RTP_SILENCE)]
    assert m.handle(r.RemoteRestartOffer(1, "o"), 5.2) == [
        r.IgnoreStale("offer", 1, "restart was not agreed")]
    assert m.deadline() == pytest.approx(50.1)
    # The old path may come back by itself...
    assert m.handle(r.RtpReceived(0), 9.0) == [r.RestartDone(0, 6000, Why.RTP_SILENCE, 0)]
    # ... and if it does not, the call ends as media-lost, never "completed".
    assert m.handle_timer(11.0) == [r.MediaStalled(Why.RTP_SILENCE)]
    assert m.handle_timer(56.0) == [r.GiveUp(r.MEDIA_LOST, Why.RTP_SILENCE)]


# -- hold ---------------------------------------------------------------------------------


def test_hold_does_not_trigger_a_restart_and_resume_rearms_the_silence_watch() -> None:
    m = connected()
    rtp_until(m, 0.0, 10.0)
    assert m.handle(r.HoldChanged(True), 10.0) == []
    assert m.deadline() is None  # no RTP is expected while held
    for t in range(11, 40):
        assert m.handle_timer(float(t)) == []
    assert m.handle(r.HoldChanged(False), 40.0) == []
    # The peer has a full silence period to resume sending (its path is checked).
    assert m.handle_timer(41.9) == [r.ProbePath(0)]
    assert of(m.handle_timer(42.0), r.StartRestart) == [r.StartRestart(Why.RTP_SILENCE, 0)]


def test_a_path_that_dies_while_held_is_restarted_and_done_when_connected() -> None:
    m = connected()
    m.handle(r.HoldChanged(True), 1.0)
    assert of(lost(m, 5.0), r.SendRestartOffer) == [r.SendRestartOffer(1, Why.ICE_FAILED)]
    m.handle(r.OfferSent(1), 5.0)
    m.handle(r.RemoteRestartAnswer(1, "a"), 5.1)
    # No RTP flows while held: connected is enough.
    assert m.handle(r.ConnectionChanged(1, P.CONNECTED), 5.4) == [
        r.RestartDone(1, 5400, Why.ICE_FAILED, 1), r.CloseConnection(0)]


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="silence must be a positive number"):
        r.RestartSettings(silence=0)
    with pytest.raises(ValueError, match="give_up"):
        r.RestartSettings(give_up=-1)
    with pytest.raises(ValueError, match="shorter than silence"):
        r.RestartSettings(silence=1.0, probe_after=1.0)
    with pytest.raises(ValueError, match="resend"):
        h.HoldMachine(resend=0)


def test_local_hold_is_sent_until_acknowledged() -> None:
    m = h.HoldMachine()
    assert m.handle(h.LocalHold(), 1.0) == [
        h.HoldChange("hold", "local"), h.SendHold(True, 1), h.SetMediaFlow(h.FlowMode.HELD)]
    assert m.handle(h.LocalHold(), 1.1) == []  # already held
    assert not m.expects_rtp
    assert m.deadline() == pytest.approx(2.0)
    assert m.handle_timer(2.0) == [h.SendHold(True, 1)]  # the ack was lost: again
    assert m.handle(h.RemoteHoldAck(1), 2.1) == []
    assert m.deadline() is None
    assert m.handle(h.LocalResume(), 5.0) == [
        h.HoldChange("resume", "local"), h.SendHold(False, 2),
        h.SetMediaFlow(h.FlowMode.FLOWING)]
    assert m.handle(h.RemoteHoldAck(1), 5.1) == []  # an old ack does not stop the resend
    assert m.handle_timer(6.0) == [h.SendHold(False, 2)]
    m.handle(h.RemoteHoldAck(2), 6.1)
    assert m.deadline() is None and m.expects_rtp


def test_remote_hold_is_acknowledged_and_repeats_change_nothing() -> None:
    m = h.HoldMachine()
    assert m.handle(h.RemoteHold(True, 1), 1.0) == [
        h.HoldChange("hold", "remote"), h.SendHoldAck(True, 1), h.SetMediaFlow(h.FlowMode.HELD)]
    assert m.handle(h.RemoteHold(True, 1), 1.5) == [h.SendHoldAck(True, 1)]
    assert m.handle(h.RemoteHold(False, 2), 3.0) == [
        h.HoldChange("resume", "remote"), h.SendHoldAck(False, 2),
        h.SetMediaFlow(h.FlowMode.FLOWING)]
    # A late copy of the first hold must not put the call back on hold.
    assert m.handle(h.RemoteHold(True, 1), 3.5) == [h.SendHoldAck(True, 1)]
    assert m.mode is h.FlowMode.FLOWING


def test_audio_flows_only_when_neither_side_holds() -> None:
    m = h.HoldMachine()
    m.handle(h.LocalHold(), 1.0)
    assert m.handle(h.RemoteHold(True, 1), 2.0) == [
        h.HoldChange("hold", "remote"), h.SendHoldAck(True, 1)]  # still HELD: no flow change
    assert m.handle(h.LocalResume(), 3.0) == [h.HoldChange("resume", "local"),
                                              h.SendHold(False, 2)]
    assert m.mode is h.FlowMode.HELD
    assert m.handle(h.RemoteHold(False, 2), 4.0)[-1] == h.SetMediaFlow(h.FlowMode.FLOWING)


def test_hold_with_a_peer_that_does_not_know_it_is_local_and_keeps_rtp_flowing() -> None:
    m = h.HoldMachine(enabled=False)
    assert m.handle(h.LocalHold(), 1.0) == [h.HoldChange("hold", "local"),
                                            h.SetMediaFlow(h.FlowMode.MUTED)]
    assert m.expects_rtp and m.deadline() is None
    assert m.handle(h.RemoteHold(True, 1), 2.0) == []
    assert m.handle(h.LocalResume(), 3.0) == [h.HoldChange("resume", "local"),
                                              h.SetMediaFlow(h.FlowMode.FLOWING)]
