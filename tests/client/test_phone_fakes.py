"""Adapter tests of :class:`Phone` and :class:`Call` against fakes (``tests/client/fakes.py``).

Between the pure core tests (``tests/core``) and the end-to-end runs: real
phones, with a fake hub connection (in-memory routing, the real wire format)
and fake media sessions (no peer connection). Each test checks that what a
user does, and what the hub and the media do, reach the right events and
:class:`CallResult`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from softphone.client import restart_link as restart_link_module
from softphone.client.call import Call, CallResult
from softphone.client.phone import Phone
from softphone.client.restart_conn import RestartConn
from softphone.client.restart_link import RestartLink
from softphone.core.callstate import CallState, CallTimeouts, Outcome
from softphone.core.protocol import Message
from softphone.core.restart_events import RestartDone, RestartReason
from softphone.media.audiopath import MediaConfig
from softphone.media.opus import EncoderSettings

from .fakes import FakeHub, FakeHubConnection, FakeMediaFactory, FakeMic, FakeOutput, FakeSink

TIMEOUTS = CallTimeouts(ring=2.0, setup=2.0)


class Lab:
    """Phones on one fake hub, each with its own fake media factory and event log."""

    def __init__(self) -> None:
        self.hub = FakeHub()
        self.phones: dict[str, Phone] = {}
        self.media: dict[str, FakeMediaFactory] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}

    async def phone(self, name: str, *, fail: str | None = None,
                    media: MediaConfig | None = None, max_calls: int = 1) -> Phone:
        self.media[name] = FakeMediaFactory(fail)
        phone = Phone(name, timeouts=TIMEOUTS, reconnect=False, media=media,
                      max_calls=max_calls, hub=self.hub.connection(name),
                      media_factory=self.media[name])
        await phone.connect()
        self.phones[name] = phone
        return phone

    def log(self, name: str) -> Callable[[dict[str, Any]], None]:
        events = self.events.setdefault(name, [])
        return events.append

    def kinds(self, name: str) -> list[str]:
        """The events of ``name``'s calls: states by name, the end as "result"."""
        names = {"state": None, "ended": "result"}
        return [names.get(e["event"], e["event"]) or e["state"]
                for e in self.events.get(name, [])]

    async def incoming(self, name: str) -> Call:
        call = await asyncio.wait_for(self.phones[name].next_call(), 2)
        call.on_event(self.log(name))
        return call


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    lab = Lab()
    try:
        yield lab
    finally:
        for phone in lab.phones.values():
            await phone.close()


async def ended(call: Call) -> CallResult:
    return await asyncio.wait_for(call.ended(), 5)


async def test_dial_accept_hangup(lab: Lab) -> None:
    """Fakes: a completed call; both results, the events, the messages, the audio closed."""
    a, _b = await lab.phone("a"), await lab.phone("b")
    output, sink = FakeOutput(), FakeSink()
    call_a = await a.dial("b", FakeMic(), [sink], on_event=lab.log("a"), output=output)
    assert call_a.state is CallState.DIALING and not call_a.is_ended
    call_b = await lab.incoming("b")
    assert call_b.peer == "a" and call_b.state is CallState.RINGING
    assert call_b.audio is None and call_b.mic_dbfs == float("-inf")
    await call_b.accept()
    await asyncio.wait_for(call_a.connected(), 2)
    await asyncio.wait_for(call_b.connected(), 2)
    assert call_a.setup_seconds is not None and call_a.setup_seconds >= 0
    assert call_a.connected_at is not None and call_a.connected_at >= call_a.started_at
    assert call_a.codec == "opus/48000" and call_a.candidate_pair is not None
    assert lab.media["a"].sessions[0].pregathered  # gathered while it rang
    await asyncio.sleep(0.1)
    assert call_a.talk_seconds > 0
    call_a.mute()
    assert call_a.muted and not call_b.muted
    await call_a.hangup()
    result_a, result_b = await ended(call_a), await ended(call_b)
    assert (result_a.outcome, result_a.ended_by, result_a.exit_code) == \
        (Outcome.COMPLETED, "local", 0)
    assert (result_b.outcome, result_b.ended_by, result_b.reason) == \
        (Outcome.COMPLETED, "remote", "hangup")
    assert result_a.setup_seconds == call_a.setup_seconds
    assert result_a.talk_seconds == pytest.approx(call_a.talk_seconds)
    assert call_a.is_ended and call_a.result == result_a
    assert lab.kinds("a") == ["dialing", "connecting", "connected", "media", "ended", "result"]
    assert lab.kinds("b") == ["connecting", "connected", "media", "ended", "result"]
    assert lab.hub.types() == ["call-request", "call-accept", "offer", "answer", "hangup"]
    # The call's audio path was closed with it: output device, source, sinks.
    assert output.stopped and sink.closed and call_a.audio is not None
    assert call_a.audio.source.readyState == "ended"
    assert all(s.closed for s in lab.media["a"].sessions + lab.media["b"].sessions)


async def test_reject(lab: Lab) -> None:
    """Fakes: the callee declines; no media is set up on its side."""
    a, _b = await lab.phone("a"), await lab.phone("b")
    call_a = await a.dial("b", on_event=lab.log("a"))
    call_b = await lab.incoming("b")
    await call_b.reject()
    result_a, result_b = await ended(call_a), await ended(call_b)
    assert (result_a.outcome, result_a.reason, result_a.ended_by, result_a.exit_code) == \
        (Outcome.REJECTED, "declined", "remote", 3)
    assert (result_b.outcome, result_b.ended_by) == (Outcome.REJECTED, "local")
    assert result_a.setup_seconds is None and result_a.talk_seconds == 0
    assert lab.media["b"].sessions == []
    assert lab.kinds("a") == ["dialing", "ended", "result"]


async def test_busy(lab: Lab) -> None:
    """Fakes: a third caller is told busy; the call in progress goes on."""
    a, b, c = await lab.phone("a"), await lab.phone("b"), await lab.phone("c")
    call_a = await a.dial("b")
    call_b = await lab.incoming("b")
    await call_b.accept()
    await asyncio.wait_for(call_a.connected(), 2)
    call_c = await c.dial("b")
    result_c = await ended(call_c)
    assert (result_c.outcome, result_c.reason, result_c.exit_code) == \
        (Outcome.BUSY, "busy", 4)
    assert call_a.state is call_b.state is CallState.CONNECTED
    assert b.current_call is call_b


async def test_glare(lab: Lab) -> None:
    """Fakes: both dial each other at once; the larger id gives way and answers instead."""
    a, b = await lab.phone("a"), await lab.phone("b")
    call_a, call_b = await asyncio.gather(a.dial("b"), b.dial("a"))
    result_b = await ended(call_b)
    assert (result_b.outcome, result_b.reason) == (Outcome.BUSY, "glare")
    incoming = await lab.incoming("b")
    assert incoming.peer == "a" and incoming is not call_b
    await incoming.accept()
    await asyncio.wait_for(call_a.connected(), 2)
    assert incoming.state is CallState.CONNECTED and not call_a.is_ended


async def test_offline(lab: Lab) -> None:
    """Fakes: nobody holds the id on the hub."""
    a = await lab.phone("a")
    result = await ended(await a.dial("nobody"))
    assert (result.outcome, result.exit_code) == (Outcome.OFFLINE, 6)


async def test_hub_lost_while_ringing(lab: Lab) -> None:
    """Fakes: the hub connection breaks before the call is answered: the call is over."""
    a, _ = await lab.phone("a"), await lab.phone("b")
    call_a = await a.dial("b")
    await lab.incoming("b")
    lab.hub.drop("a")
    result = await ended(call_a)
    assert (result.outcome, result.ended_by, result.exit_code) == \
        (Outcome.HUB_UNREACHABLE, "network", 7)
    assert not a.hub_connected.is_set()


async def test_hub_lost_in_a_call_keeps_talking(lab: Lab) -> None:
    """Fakes: media is peer to peer, so a call outlives its hub connection."""
    a, _b = await lab.phone("a"), await lab.phone("b")
    call_a = await a.dial("b")
    await (await lab.incoming("b")).accept()
    await asyncio.wait_for(call_a.connected(), 2)
    lab.hub.drop("a")
    await asyncio.sleep(0.1)
    assert call_a.state is CallState.CONNECTED
    await call_a.hangup()  # the hangup cannot reach b: still our call ends
    result = await ended(call_a)
    assert (result.outcome, result.ended_by) == (Outcome.COMPLETED, "local")


async def test_media_failure(lab: Lab) -> None:
    """Fakes: the callee's media fails; both sides end with media-failed."""
    a, _b = await lab.phone("a"), await lab.phone("b", fail="ice-failed")
    call_a = await a.dial("b")
    call_b = await lab.incoming("b")
    await call_b.accept()
    result_a, result_b = await ended(call_a), await ended(call_b)
    assert (result_b.outcome, result_b.reason, result_b.ended_by) == \
        (Outcome.MEDIA_FAILED, "ice-failed", "network")
    assert (result_a.outcome, result_a.ended_by, result_a.exit_code) == \
        (Outcome.MEDIA_FAILED, "remote", 8)


async def test_settings_are_per_call(lab: Lab) -> None:
    """Fakes: a call's settings reach its own media session; the phone's are the default."""
    low = MediaConfig(encoder=EncoderSettings(bitrate=32_000, redundancy=0))
    high = MediaConfig(encoder=EncoderSettings(bitrate=128_000))
    a, _b = await lab.phone("a", media=low), await lab.phone("b", media=low)
    call_a = await a.dial("b", media=high)
    call_b = await lab.incoming("b")
    await call_b.accept()
    await asyncio.wait_for(call_a.connected(), 2)
    assert lab.media["a"].sessions[0].audio.config is high
    assert lab.media["b"].sessions[0].audio.config is low
    assert call_a.audio is not None and call_a.audio.config.encoder.bitrate == 128_000


async def test_device_loss_is_an_event_of_the_call(lab: Lab) -> None:
    """Fakes: microphone and speaker losses reach the call's listeners; playout goes on."""
    a, _b = await lab.phone("a"), await lab.phone("b")
    mic, speaker = FakeMic(), FakeOutput()
    call_a = await a.dial("b", mic, on_event=lab.log("a"), output=speaker)
    await (await lab.incoming("b")).accept()
    await asyncio.wait_for(call_a.connected(), 2)
    assert speaker.lost is not None  # the playout drives the speaker
    audio = call_a.audio
    assert audio is not None and audio.receiver.frames == 0  # (this fake never pulls)
    mic.lose("microphone lost: fake mic stopped")
    speaker.lost("speaker lost: fake speaker stopped")
    await asyncio.sleep(0.2)
    assert audio.receiver.frames >= 5  # a 20 ms clock plays out instead
    lost = [e for e in lab.events["a"] if e["event"] == "device-lost"]
    assert lost == [
        {"event": "device-lost", "message": "microphone lost: fake mic stopped", "peer": "b"},
        {"event": "device-lost", "message": "speaker lost: fake speaker stopped", "peer": "b"}]
    assert audio.lost == [e["message"] for e in lost]
    assert call_a.state is CallState.CONNECTED


async def test_a_speaker_among_the_sinks_is_a_clear_error(lab: Lab) -> None:
    """Fakes: an output device is not a sink; nothing is sent to the hub."""
    a = await lab.phone("a")
    with pytest.raises(TypeError, match="output="):
        await a.dial("b", sinks=[FakeOutput()])  # type: ignore[list-item]
    assert lab.hub.log == [] and a.current_call is None


async def test_many_calls_at_once(lab: Lab) -> None:
    """Fakes: a bot with three lines: three callers talk at once, the fourth is busy;
    each call ends on its own; a freed line takes the next caller; closing the
    phone hangs up every call still in progress."""
    bot = await lab.phone("bot", max_calls=3)
    callers = [await lab.phone(f"p{i}") for i in range(5)]
    dialed = [await p.dial("bot") for p in callers[:3]]
    answered = [await lab.incoming("bot") for _ in range(3)]
    assert sorted(c.peer for c in answered) == ["p0", "p1", "p2"]
    for call in answered:
        await call.accept()
    for call in dialed:
        await asyncio.wait_for(call.connected(), 2)
    assert len(bot.calls) == 3 and bot.max_calls == 3
    assert {id(s.audio) for s in lab.media["bot"].sessions} == {id(c.audio) for c in answered}
    busy = await callers[3].dial("bot")
    assert (await ended(busy)).outcome is Outcome.BUSY
    await dialed[1].hangup()
    assert (await ended(answered[1])).ended_by == "remote"
    assert [c.peer for c in bot.calls] == ["p0", "p2"]
    assert all(c.state is CallState.CONNECTED for c in (dialed[0], dialed[2]))
    late = await callers[4].dial("bot")
    ringing = await lab.incoming("bot")
    assert ringing.peer == "p4" and late.state is CallState.DIALING
    await bot.close()
    results = [await ended(c) for c in (dialed[0], dialed[2], late)]
    assert [(r.outcome, r.ended_by) for r in results[:2]] == [(Outcome.COMPLETED, "remote")] * 2
    assert results[2].outcome is not Outcome.COMPLETED and ringing.is_ended
    assert all(c.is_ended for c in answered) and bot.calls == []


async def test_a_hangup_then_close_at_once_reaches_the_peer(lab: Lab) -> None:
    """Fakes: the hangup queued by the end of the last call goes out before the phone
    closes, though no call is left for close() to hang up (tests/client/test_close_call.py
    has it through the real hub)."""
    a, _b = await lab.phone("a"), await lab.phone("b")
    call_a = await a.dial("b")
    call_b = await lab.incoming("b")
    await call_b.accept()
    await asyncio.wait_for(call_a.connected(), 2)
    await call_a.hangup()
    assert a.calls == []
    await a.close()
    assert lab.hub.types()[-1] == "hangup"
    result_b = await asyncio.wait_for(call_b.ended(), 2)
    assert (result_b.outcome, result_b.ended_by, result_b.reason) == \
        (Outcome.COMPLETED, "remote", "hangup")


class StuckConnection(FakeHubConnection):
    """A hub connection that stops taking messages (its peer stopped reading)."""

    stuck = False

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.held: list[Message] = []  # taken, never sent

    async def send(self, message: Message) -> None:
        if self.stuck:
            self.held.append(message)
            await asyncio.Event().wait()  # never
        await super().send(message)


async def test_close_does_not_wait_long_for_a_hub_that_takes_nothing(lab: Lab) -> None:
    """Fakes: what is queued for the hub is waited for, but only a little: close
    gives up on it (its timeout path) rather than waiting for the hub."""
    await lab.phone("b")
    connection = StuckConnection(lab.hub, "a")
    a = lab.phones["a"] = Phone("a", timeouts=TIMEOUTS, reconnect=False, hub=connection,
                                media_factory=FakeMediaFactory())
    a.flush_wait = 0.3
    await a.connect()
    call_a = await a.dial("b")
    call_b = await lab.incoming("b")
    await call_b.accept()
    await asyncio.wait_for(call_a.connected(), 2)
    connection.stuck = True
    await call_a.hangup()
    # A hang guard, not a speed check: close waiting for this hub would wait forever.
    await asyncio.wait_for(a.close(), 30)
    assert connection.held  # close returned with what it waited for still not sent
    assert (await ended(call_a)).outcome is Outcome.COMPLETED


async def restarted_call(lab: Lab, monkeypatch: pytest.MonkeyPatch
                         ) -> tuple[Call, RestartLink, asyncio.Event]:
    """A connected call from ``a`` whose media restart is about to be done on a second
    (fake) connection; the ``media-restart`` event's code is derived once the returned
    event is set."""
    derived = asyncio.Event()

    async def slow_code(session: Any) -> str:
        await derived.wait()
        return "absurd baboon cobra dragon"

    monkeypatch.setattr(restart_link_module, "verification_code", slow_code)
    a, _b = await lab.phone("a"), await lab.phone("b")
    call_a = await a.dial("b", on_event=lab.log("a"))
    await (await lab.incoming("b")).accept()
    await asyncio.wait_for(call_a.connected(), 2)
    link = call_a.restart_link
    assert link is not None and call_a.audio is not None
    second = lab.media["a"]([], call_a.audio, relay_only=False, on_connected=lambda: None,
                            on_failed=lambda why: None)
    link._conns[1] = RestartConn(1, second)  # (as RestartLink._open makes it)
    return call_a, link, derived


RESTART_DONE = RestartDone(1, 300, RestartReason.ICE_FAILED, 1)


async def test_a_media_restart_done_as_the_call_ends_is_announced_before_the_end(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fakes: media came back (a new connection), then the call ended while the
    ``media-restart`` event waited for its verification code: the event is not lost,
    it comes before the end."""
    call_a, link, derived = await restarted_call(lab, monkeypatch)
    link._do([RESTART_DONE])
    await call_a.hangup()  # while the code is being derived
    await asyncio.sleep(0.2)  # the call has finished all but its events
    derived.set()
    result = await ended(call_a)
    assert result.outcome is Outcome.COMPLETED
    kinds = lab.kinds("a")  # (after the state "ended", before the end event, "result")
    assert kinds.count("media-restart") == 1 and kinds[-2:] == ["media-restart", "result"], \
        kinds
    restart = next(e for e in lab.events["a"] if e["event"] == "media-restart")
    assert (restart["generation"], restart["gap_ms"], restart["reason"], restart["sas"]) == \
        (1, 300, "ice-failed", "absurd baboon cobra dragon")


async def test_a_media_restart_event_not_announced_in_time_goes_before_the_end_without_code(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fakes: a code that takes too long is not waited for forever: the event goes
    without it, still before the end."""
    call_a, link, _never = await restarted_call(lab, monkeypatch)
    call_a.announce_wait = 0.2
    link._do([RESTART_DONE])
    await call_a.hangup()
    await ended(call_a)
    assert lab.kinds("a")[-2:] == ["media-restart", "result"], lab.kinds("a")
    restart = next(e for e in lab.events["a"] if e["event"] == "media-restart")
    assert "sas" not in restart and restart["generation"] == 1


async def test_a_media_restart_done_after_the_end_is_not_announced(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fakes: a restart the link finishes after the call ended (before the link is
    closed) is not an event of the call: nothing after the end."""
    call_a, link, derived = await restarted_call(lab, monkeypatch)
    derived.set()
    await call_a.hangup()
    link._do([RESTART_DONE])
    await ended(call_a)
    await asyncio.sleep(0.1)
    assert "media-restart" not in lab.kinds("a"), lab.kinds("a")
