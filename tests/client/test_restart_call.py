"""Media restart in a call (issue 16), with real parts: two phones in one process
through our hub on real sockets, real aiortc peer connections, tones checked by
frequency.

The media path is killed from inside (:func:`blackhole`: the peer connection's
sockets drop everything they receive and send, RTP, RTCP, DTLS and STUN alike),
as a network that went away would; the hub connection stays up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from softphone import Phone, ToneSource
from softphone.client.call import Call
from softphone.client.signaling import HubClient
from softphone.core import restart as r
from softphone.core.callstate import ExitCode, Outcome
from softphone.core.protocol import IceCandidate, make
from softphone.core.restart_events import RestartSettings
from softphone.hub.server import Hub
from softphone.media import pathcheck
from softphone.media.audio import SAMPLE_RATE
from softphone.media.audiopath import MediaConfig
from softphone.media.rtc import MediaSession
from softphone.media.tracks import CaptureSink

from ..conftest import hub_url
from ..support.emulators import OriginalPage
from ..support.helpers import assert_tone

pytestmark = pytest.mark.e2e

A_TONE, B_TONE = 440.0, 660.0


def blackhole(session: Any) -> None:
    """Every socket of ``session``'s ICE connection drops what it receives and sends."""
    connection = pathcheck.ice_connection(session)
    assert connection is not None, "no ICE connection"
    for protocol in list(connection._protocols):
        protocol.datagram_received = lambda data, addr: None
        if protocol.transport is not None:
            protocol.transport.sendto = lambda *args, **kwargs: None


class Side:
    """One phone in the call: its call, its events, what it heard."""

    def __init__(self, phone: Phone) -> None:
        self.phone = phone
        self.events: list[dict[str, Any]] = []
        self.heard = CaptureSink(30.0)
        self.call: Call | None = None

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]

    async def wait_for(self, kind: str, within: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        end = loop.time() + within
        while not self.of(kind):
            assert loop.time() < end, f"{self.phone.client_id}: no {kind} event in " \
                                      f"{within} s: {self.events}"
            await asyncio.sleep(0.02)
        return self.of(kind)[0]

    def last(self, seconds: float) -> np.ndarray:
        samples = self.heard.samples()
        return samples[-int(seconds * SAMPLE_RATE):]


async def call_pair(url: str, media: MediaConfig | None = None,
                    factory_b: Callable[..., Any] | None = None) -> tuple[Side, Side]:
    """``a`` calls ``b``; each sends its tone and keeps what it hears; both connected."""
    a = Side(Phone("a", url, media=media))
    b = Side(Phone("b", url, media=media, media_factory=factory_b))
    await a.phone.connect()
    await b.phone.connect()
    a.call = await a.phone.dial("b", ToneSource(A_TONE), [a.heard], on_event=a.events.append)
    b.call = await b.phone.next_call()
    b.call.on_event(b.events.append)
    await b.call.accept(ToneSource(B_TONE), [b.heard])
    await asyncio.wait_for(a.call.connected(), 20)
    await asyncio.wait_for(b.call.connected(), 20)
    return a, b


async def close(*sides: Side) -> None:
    for side in sides:
        await side.phone.close()


def check_restarted(side: Side, far: float) -> dict[str, Any]:
    """``side`` reported a restart (with its gap) and hears ``far`` again, steadily.

    How long the gap was is the phone's wall-clock figure: reported, not bounded
    here (a loaded machine stretches it); that the tone came back is checked on
    the audio."""
    restarts = side.of("media-restart")
    assert len(restarts) == 1, side.events
    event = restarts[0]
    assert isinstance(event["reason"], str) and event["generation"] >= 1, event
    assert isinstance(event["gap_ms"], int) and event["gap_ms"] >= 0, event
    assert event["attempts"] >= 1 and event.get("sas"), event
    assert_tone(side.last(1.5), far, skip=0.0, min_seconds=1.0, max_gap=0.1,
                what=f"{side.phone.client_id} after the restart")
    return event


async def late_candidates_go_by_generation(a: Side, b: Side, generation: int) -> None:
    """``b`` trickles a late candidate of the first connection (closed by now), then one of
    ``generation``: ``a``'s current connection gets only the second (docs/protocol.md)."""
    assert a.call is not None and a.call.media is not None
    added: list[IceCandidate] = []
    arrived = asyncio.Event()

    def add_candidate(candidate: IceCandidate) -> None:
        added.append(candidate)
        arrived.set()

    a.call.media.add_candidate = add_candidate  # type: ignore[method-assign]
    late = IceCandidate("candidate:9 1 udp 1 192.0.2.9 9 typ host", "0", 0)
    await b.phone.hub.send(make("candidate", "a", late.to_wire()))
    await b.phone.hub.send(make("candidate", "a", {**late.to_wire(), "restart": generation}))
    await asyncio.wait_for(arrived.wait(), 5.0)
    await asyncio.sleep(0.1)  # (anything else on its way)
    assert added == [late], "the current connection got a candidate of another generation"


@pytest.mark.parametrize("pipeline", ["softphone", "aiortc"])
async def test_a_dead_media_path_is_restarted_and_the_call_completes(hub: Hub,
                                                                     pipeline: str) -> None:
    a, b = await call_pair(hub_url(hub), MediaConfig(pipeline=pipeline))
    try:
        assert a.call is not None and b.call is not None
        assert "restart" in a.call.peer_features and "restart" in b.call.peer_features
        await asyncio.sleep(1.5)
        first = a.call.media
        code = a.call.sas
        assert code is not None and code == b.call.sas
        assert_tone(a.last(1.0), B_TONE, skip=0.0, min_seconds=0.9, what="a before")
        blackhole(b.call.media)  # b's network is gone (both directions)
        await a.wait_for("media-restart", 10.0)
        await b.wait_for("media-restart", 10.0)
        await asyncio.sleep(2.0)
        event_a = check_restarted(a, B_TONE)
        event_b = check_restarted(b, A_TONE)
        assert event_a["generation"] == event_b["generation"]
        # The fresh connections keep the call's first DTLS certificates: the code the
        # users read to each other did not change.
        assert event_a["sas"] == event_b["sas"] == a.call.sas == b.call.sas == code
        assert a.call.media is not first and isinstance(a.call.media, MediaSession)
        assert isinstance(first, MediaSession)
        assert a.call.media.certificate is first.certificate
        await late_candidates_go_by_generation(a, b, event_a["generation"])
        assert [e["reason"] for e in a.of("media-lost")], a.events
        await a.call.hangup()
        result_a = await asyncio.wait_for(a.call.ended(), 10)
        result_b = await asyncio.wait_for(b.call.ended(), 10)
        for result in (result_a, result_b):
            assert result.outcome is Outcome.COMPLETED and result.exit_code == 0, result
        # The figures cover both connections: about 50 packets a second for ~5 s.
        assert result_a.stats.packets_received > 150, result_a.stats
    finally:
        await close(a, b)


async def test_glare_both_sides_restart_at_once_one_connection_wins(hub: Hub) -> None:
    a, b = await call_pair(hub_url(hub))
    try:
        assert a.call is not None and b.call is not None
        await asyncio.sleep(1.0)
        link_a, link_b = a.call.restart_link, b.call.restart_link
        assert link_a is not None and link_b is not None
        blackhole(a.call.media)
        blackhole(b.call.media)
        # Both notice in the same instant: both offer generation 1 before either
        # offer arrives (they cross in the hub).
        link_a.feed(r.ConnectionChanged(0, r.PeerState.FAILED))
        link_b.feed(r.ConnectionChanged(0, r.PeerState.FAILED))
        await a.wait_for("media-restart", 10.0)
        await b.wait_for("media-restart", 10.0)
        await asyncio.sleep(2.0)
        event_a = check_restarted(a, B_TONE)
        event_b = check_restarted(b, A_TONE)
        assert link_a.machine is not None and link_b.machine is not None
        assert link_a.machine.current == link_b.machine.current == event_a["generation"] \
            == event_b["generation"]
        assert a.call.sas == b.call.sas
        await b.call.hangup()
        for side in (a, b):
            assert side.call is not None
            result = await asyncio.wait_for(side.call.ended(), 10)
            assert result.outcome is Outcome.COMPLETED, result
    finally:
        await close(a, b)


def dead_after_first(sessions: list[MediaSession]) -> Callable[..., MediaSession]:
    """A media factory whose every connection after the first is dead from the start."""
    def factory(*args: Any, **kwargs: Any) -> MediaSession:
        session = MediaSession(*args, **kwargs)
        sessions.append(session)
        if len(sessions) > 1:
            pregather = session.pregather

            def dead_pregather() -> None:
                pregather()
                assert session._gathering is not None
                session._gathering.add_done_callback(lambda _: blackhole(session))

            session.pregather = dead_pregather  # type: ignore[method-assign]
        return session
    return factory


async def test_a_peer_that_never_comes_back_ends_the_call_media_lost(hub: Hub) -> None:
    give_up = 6.0
    media = MediaConfig(restart=RestartSettings(give_up=give_up))
    sessions: list[MediaSession] = []
    a, b = await call_pair(hub_url(hub), media, dead_after_first(sessions))
    try:
        assert a.call is not None and b.call is not None
        await asyncio.sleep(1.0)
        blackhole(b.call.media)
        # Hang guards, not speed checks: the give-up ends it some 8 s after the kill.
        result_a = await asyncio.wait_for(a.call.ended(), 80)
        result_b = await asyncio.wait_for(b.call.ended(), 30)
        # The give-up ended it (media-lost is its outcome only), on both sides.
        for result in (result_a, result_b):
            assert result.outcome is Outcome.MEDIA_LOST, result
            assert result.exit_code == ExitCode.MEDIA_LOST == 14
        assert len(sessions) > 1  # b did try (answered a's offers, or offered)
        assert not a.of("media-restart") and a.of("media-lost"), a.events
    finally:
        await close(a, b)


async def test_with_the_original_page_lost_media_is_only_watched_then_given_up(
        hub: Hub) -> None:
    """The original page announces no features: nothing of the restart is sent to it,
    and a media path that dies ends the call media-lost after --give-up."""
    page = OriginalPage(hub_url(hub), "c", "a", tone=B_TONE)
    await page.connect()
    a = Side(Phone("a", hub_url(hub), media=MediaConfig(restart=RestartSettings(give_up=3.0))))
    await a.phone.connect()
    try:
        a.call = await a.phone.dial("c", ToneSource(A_TONE), [a.heard],
                                    on_event=a.events.append)
        await asyncio.wait_for(a.call.connected(), 20)
        assert a.call.peer_features == frozenset()
        await asyncio.sleep(1.0)
        assert_tone(a.last(0.8), B_TONE, skip=0.0, min_seconds=0.7, what="a from the page")
        blackhole(a.call.media)
        result = await asyncio.wait_for(a.call.ended(), 15)
        assert result.outcome is Outcome.MEDIA_LOST and result.exit_code == 14, result
        lost = a.of("media-lost")
        assert lost and lost[0]["restarting"] is False, a.events
        assert not a.of("media-restart")
        # The page got the call's messages and the hangup, and nothing about restarts.
        for message in page.received:
            data = message.get("data")
            assert not (isinstance(data, dict) and "restart" in data), message
        assert [m["data"] for m in page.received if m["type"] == "hangup"] == [
            {"reason": "media-lost"}]
    finally:
        await a.phone.close()
        await page.close()


def crash(side: Side) -> None:
    """``side``'s phone dies as with kill -9: nothing more is sent (no hangup), its media
    goes silent and the kernel closes its hub connection (the hub gives it its short
    closed-connection grace)."""
    phone = side.phone
    phone._closing = True  # (its reader does not reconnect)
    for task in phone._tasks:
        task.cancel()
    assert side.call is not None
    blackhole(side.call.media)
    assert isinstance(phone.hub, HubClient)
    phone.hub.abort()


async def test_a_peer_started_again_under_its_id_ends_the_call_at_once(hub: Hub) -> None:
    """b is killed mid-call and started again within the hub's peer grace (4 s): the
    new b has no call with a, so it answers a's restart offers with a hangup
    (no-such-call), and a's call ends at once, not after --give-up (media-lost, as when
    the hub says the peer is gone: the media never came back)."""
    media = MediaConfig(restart=RestartSettings(give_up=40.0))
    a, b = await call_pair(hub_url(hub), media)
    new_b = Phone("b", hub_url(hub))
    try:
        assert a.call is not None
        crash(b)
        await asyncio.sleep(0.5)
        await new_b.connect()
        result = await asyncio.wait_for(a.call.ended(), 15)  # (the give-up is 40 s)
        assert result.outcome is Outcome.MEDIA_LOST and result.ended_by == "remote", result
        assert result.reason == "no-such-call" and result.exit_code == 14, result
        assert a.of("media-lost"), a.events  # (it was restarting the media)
        assert new_b.current_call is None
    finally:
        await close(a, b)
        await new_b.close()


async def test_a_peer_started_again_that_calls_at_once_gets_through(hub: Hub) -> None:
    """a is killed mid-call, started again and calls b at once: b's old call ends (its
    media was lost: media-lost) and the new call rings and connects, instead of being
    ignored as a repeated request until b's give-up."""
    media = MediaConfig(restart=RestartSettings(give_up=40.0))
    a, b = await call_pair(hub_url(hub), media)
    new_a = Phone("a", hub_url(hub), media=media)
    try:
        assert b.call is not None
        crash(a)
        await asyncio.sleep(0.5)
        await new_a.connect()
        again = await new_a.dial("b", ToneSource(A_TONE))
        incoming = await asyncio.wait_for(b.phone.next_call(), 10)
        old = await asyncio.wait_for(b.call.ended(), 5)
        assert old.reason == "no-such-call" and old.ended_by == "remote", old
        assert incoming.peer == "a" and incoming is not b.call
        await incoming.accept(ToneSource(B_TONE))
        await asyncio.wait_for(again.connected(), 20)
    finally:
        await close(a, b)
        await new_a.close()


async def test_hanging_up_while_the_media_is_restarted_is_our_hangup(hub: Hub) -> None:
    """Ctrl-C while the media is down and being restarted: the call ends as our
    hangup (completed), not media-lost; the peer hears a hangup."""
    media = MediaConfig(restart=RestartSettings(give_up=40.0))
    a, b = await call_pair(hub_url(hub), media)
    try:
        assert a.call is not None and b.call is not None
        blackhole(b.call.media)
        await a.wait_for("media-lost", 10)
        await a.call.hangup("interrupted")
        result = await asyncio.wait_for(a.call.ended(), 10)
        assert result.outcome is Outcome.COMPLETED and result.ended_by == "local", result
        assert result.exit_code == 0 and result.reason == "interrupted", result
        far = await asyncio.wait_for(b.call.ended(), 10)
        assert far.outcome is Outcome.COMPLETED and far.ended_by == "remote", far
        assert far.reason == "interrupted", far
    finally:
        await close(a, b)


async def test_a_phone_replaced_under_its_id_ends_its_calls_at_once(hub: Hub) -> None:
    """A bot started again while the old one still has a call (the hub gives the id to
    the new one: the old is refused, replaced): the old phone can hear nothing more of
    its calls, so it ends them at once (hub-unreachable, reason replaced), not after
    --give-up; the caller's call ends soon after (the new phone has no such call)."""
    media = MediaConfig(restart=RestartSettings(give_up=40.0))
    a, b = await call_pair(hub_url(hub), media)
    new_b = Phone("b", hub_url(hub), media=media)
    try:
        assert a.call is not None and b.call is not None
        await new_b.connect()
        old = await asyncio.wait_for(b.call.ended(), 5)
        assert old.outcome is Outcome.HUB_UNREACHABLE and old.reason == "replaced", old
        assert b.phone.refused.is_set()
        caller = await asyncio.wait_for(a.call.ended(), 15)  # (the give-up is 40 s)
        assert caller.ended_by == "remote", caller
    finally:
        await close(a, b)
        await new_b.close()
