"""The Python API at its edges, with real parts: two phones in one process through our
hub on real sockets, real aiortc peer connections.

What a user does a moment too early or too late (keys as the peer hangs up, a second
accept, an accept of a missed call, a dial before connecting or after closing, a
next_call the phone can no longer answer) gets one typed exception at once, and
leaves nothing half-changed or open behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from softphone import CallEnded, CallStateError, LineBusy, Phone, ToneSource
from softphone.client.phone import PhoneClosed
from softphone.core import callstate as cs
from softphone.core.dtmf import DtmfSender
from softphone.core.line import Line
from softphone.core.protocol import ErrorCode
from softphone.hub.server import Hub

from ..conftest import hub_url, phone_pair

pytestmark = pytest.mark.e2e


class NotedSink:
    """A sink that counts what it is given and whether it was closed."""

    def __init__(self) -> None:
        self.samples = 0
        self.closed = False

    def write(self, samples: Any) -> None:
        self.samples += int(np.asarray(samples).size)

    def close(self) -> None:
        self.closed = True


class NotedSource(ToneSource):
    """A tone that notes whether it was stopped."""

    stopped = False

    def stop(self) -> None:
        self.stopped = True
        super().stop()


class NotedOutput:
    """An output (a speaker's methods) that notes whether it was stopped; no sink."""

    stopped = False

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture
async def phones(hub: Hub) -> AsyncIterator[tuple[Phone, Phone]]:
    async with phone_pair(hub, max_calls=2) as pair:
        yield pair


async def hangs_up_on_hash(b: Phone) -> None:
    """``b`` answers, and hangs up as soon as it hears ``#`` (an IVR's "done")."""
    call = await asyncio.wait_for(b.next_call(), 10)
    await call.accept(ToneSource(660))
    with contextlib.suppress(CallEnded):
        while (await call.next_digit()).digit != "#":
            pass
        await call.hangup()


# -- 1, 7: keys as the call ends ---------------------------------------------------


async def test_keys_then_the_peer_hangs_up_on_the_last_one(phones: tuple[Phone, Phone]
                                                           ) -> None:
    a, b = phones
    for _ in range(2):  # (it raced: InvalidStateError three times in three)
        bot = asyncio.create_task(hangs_up_on_hash(b))
        call = await a.dial("b", ToneSource(440))
        await asyncio.wait_for(call.connected(), 20)
        await asyncio.wait_for(call.send_dtmf("1#"), 10)  # every key out: no error
        result = await asyncio.wait_for(call.ended(), 10)
        assert (result.outcome, result.ended_by) == (cs.Outcome.COMPLETED, "remote")
        await bot
        # Over: keys raise CallEnded, as next_digit does (not DtmfUnavailable).
        with pytest.raises(CallEnded) as ended:
            await asyncio.wait_for(call.send_dtmf("1"), 5)
        assert ended.value.result is result
        with pytest.raises(CallEnded):
            await asyncio.wait_for(call.next_digit(), 5)


async def test_keys_cut_short_by_the_end_raise_call_ended(phones: tuple[Phone, Phone]
                                                          ) -> None:
    a, b = phones
    bot = asyncio.create_task(hangs_up_on_hash(b))
    call = await a.dial("b", ToneSource(440))
    await asyncio.wait_for(call.connected(), 20)
    with pytest.raises(CallEnded) as ended:  # the bot hangs up after '#': 9s not sent
        await asyncio.wait_for(call.send_dtmf("#999999", duration_ms=200), 15)
    assert ended.value.result.outcome is cs.Outcome.COMPLETED
    await bot


async def test_keys_after_the_end_raise_call_ended_as_next_digit_does(
        phones: tuple[Phone, Phone]) -> None:
    a, b = phones
    call = await a.dial("b", ToneSource(440))
    answered = await asyncio.wait_for(b.next_call(), 10)
    await answered.accept(ToneSource(660))
    await asyncio.wait_for(call.connected(), 20)
    await call.hangup()
    with pytest.raises(CallEnded):  # (it was DtmfUnavailable("the call is over"))
        await asyncio.wait_for(call.send_dtmf("1"), 5)
    with pytest.raises(CallEnded):
        await asyncio.wait_for(call.next_digit(), 5)


def test_keys_out_once_the_last_tone_ended() -> None:
    sender = DtmfSender(8000)
    sender.insert("1", duration_ms=40)
    assert not sender.keys_out
    ticks = 0
    while not sender.keys_out:
        sender.tick(ticks * 160)
        ticks += 1
    assert ticks == 2 and not sender.idle  # (the end packet's copies are still due)


# -- 2: accept ---------------------------------------------------------------------


async def test_a_second_accept_changes_nothing_and_closes_what_it_was_given(
        phones: tuple[Phone, Phone]) -> None:
    a, b = phones
    call_a = await a.dial("b", ToneSource(440))
    call_b = await asyncio.wait_for(b.next_call(), 10)
    first, second, tone2 = NotedSink(), NotedSink(), NotedSource(880)
    tone1 = NotedSource(660)
    await call_b.accept(tone1, [first])
    audio = call_b.audio
    assert audio is not None
    with pytest.raises(CallStateError, match="LocalAccept is not allowed"):
        await call_b.accept(tone2, [second, first])  # (first: the call's, kept open)
    assert call_b.audio is audio
    assert second.closed and tone2.stopped  # given to a refused accept: closed
    assert not first.closed and not tone1.stopped  # the call's: still in use
    await asyncio.wait_for(call_b.connected(), 20)
    with pytest.raises(CallStateError):  # connected: still refused, still the same audio
        await call_b.accept(ToneSource(880))
    call_b.mute()
    assert audio.muted and call_b.muted
    await asyncio.sleep(0.5)
    await call_a.hangup()
    await asyncio.wait_for(call_b.ended(), 10)
    assert first.samples > 0 and first.closed and second.samples == 0


async def test_accepting_a_missed_call_raises_call_ended(phones: tuple[Phone, Phone]) -> None:
    a, b = phones
    call_a = await a.dial("b", ToneSource(440))
    call_b = await asyncio.wait_for(b.next_call(), 10)
    await call_a.hangup()  # the caller gives up while it rings
    await asyncio.wait_for(call_b.ended(), 10)
    sink, tone = NotedSink(), NotedSource(660)
    with pytest.raises(CallEnded) as ended:
        await asyncio.wait_for(call_b.accept(tone, [sink]), 5)
    assert ended.value.result.outcome is cs.Outcome.MISSED
    assert sink.closed and tone.stopped and call_b.audio is None


async def test_accepting_our_own_call_is_refused(phones: tuple[Phone, Phone]) -> None:
    a, _ = phones
    call_a = await a.dial("b", ToneSource(440))
    sink = NotedSink()
    with pytest.raises(CallStateError):
        await call_a.accept(None, [sink])
    assert sink.closed
    await call_a.hangup()
    await asyncio.wait_for(call_a.ended(), 10)


# -- 3, 5, 6: dial -------------------------------------------------------------------


async def test_dial_before_connect_and_after_close_raise_phone_closed(hub: Hub) -> None:
    phone = Phone("c", hub_url(hub))
    sink = NotedSink()
    with pytest.raises(PhoneClosed, match="not connected: use `async with Phone"):
        await phone.dial("b", sinks=[sink])
    assert sink.closed and phone.calls == []
    with pytest.raises(PhoneClosed, match="not connected"):
        await phone.next_call()
    async with phone:
        pass
    with pytest.raises(PhoneClosed, match="closed"):
        await phone.dial("b")
    with pytest.raises(PhoneClosed, match="closed"):
        await phone.next_call()
    with pytest.raises(PhoneClosed, match="make a new Phone"):  # (it connected again)
        await phone.connect()


async def test_dialing_oneself_is_a_value_error_at_once(phones: tuple[Phone, Phone]) -> None:
    a, _ = phones
    sink = NotedSink()
    began = time.monotonic()
    with pytest.raises(ValueError, match="cannot call yourself"):
        await a.dial("a", sinks=[sink])
    assert time.monotonic() - began < 1 and sink.closed and a.calls == []
    with pytest.raises(ValueError, match="cannot call yourself"):
        Line("a").dial("a", 0.0)


async def test_a_sink_that_is_not_one_is_refused_and_what_was_given_closed(
        phones: tuple[Phone, Phone]) -> None:
    """A speaker handed as a sink (it is a call's output=): TypeError at once, and the
    source, the good sink and the output given are closed, as for any refused dial."""
    a, b = phones
    good, tone, speaker, output = NotedSink(), NotedSource(440), NotedOutput(), NotedOutput()
    with pytest.raises(TypeError, match="is not a sink"):
        await a.dial("b", tone, [good, speaker], output=output)  # type: ignore[list-item,arg-type]
    assert good.closed and tone.stopped and output.stopped and a.calls == []
    call = await a.dial("b", ToneSource(440))
    incoming = await asyncio.wait_for(b.next_call(), 10)
    good, tone = NotedSink(), NotedSource(660)
    with pytest.raises(TypeError, match="is not a sink"):
        await incoming.accept(tone, [good, speaker])  # type: ignore[list-item]
    assert good.closed and tone.stopped and incoming.audio is None
    await incoming.accept(ToneSource(660))  # refused, it changed nothing
    await asyncio.wait_for(call.connected(), 20)
    await call.hangup()
    await asyncio.wait_for(call.ended(), 10)


async def test_one_call_per_peer_says_why(phones: tuple[Phone, Phone]) -> None:
    _, b = phones  # b: two lines
    call = await b.dial("a", ToneSource(440))
    with pytest.raises(LineBusy, match=r"one call per peer .*addresses calls by peer id"):
        await b.dial("a")
    await call.hangup()
    await asyncio.wait_for(call.ended(), 10)


def test_a_refused_local_event_is_checked_without_a_change() -> None:
    machine = cs.CallMachine(cs.Role.CALLER, "b", 0.0)
    with pytest.raises(CallStateError, match="LocalAccept is not allowed when the caller"):
        machine.check(cs.LocalAccept)
    machine.check(cs.LocalHangup)
    assert machine.state is cs.CallState.DIALING


# -- 4: next_call ----------------------------------------------------------------------


async def test_next_call_raises_when_the_phone_closes(phones: tuple[Phone, Phone]) -> None:
    a, _ = phones
    waiting = asyncio.create_task(a.next_call())
    await asyncio.sleep(0.2)
    await a.close()
    with pytest.raises(PhoneClosed, match="closed"):
        await asyncio.wait_for(waiting, 5)


async def test_next_call_raises_when_another_phone_takes_the_id(hub: Hub) -> None:
    first, second = Phone("dup", hub_url(hub)), Phone("dup", hub_url(hub))
    await first.connect()
    try:
        waiting = asyncio.create_task(first.next_call())
        await asyncio.sleep(0.2)
        await second.connect()
        with pytest.raises(PhoneClosed, match="refused") as closed:
            await asyncio.wait_for(waiting, 10)
        assert closed.value.refusal is not None
        assert closed.value.refusal.code == ErrorCode.REPLACED
        # (a dial is let through: it ends at once, as the CLI reports a refusal)
        call = await first.dial("b")
        await asyncio.wait_for(call.ended(), 10)
    finally:
        await first.close()
        await second.close()
