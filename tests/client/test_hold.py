"""Hold and resume in real calls: two phones in one process, a real hub, real aiortc peers.

Each side sends its own tone (a: 440 Hz, b: 660 Hz) and records what it hears
(:class:`RecorderSink`, which notes the held spans in ``FILE.json``). What is
checked is the audio: silent while held (from the spans the recorder noted),
the far tone again after the resume; and that nothing was sent while held
(the packet counters stand still), that both sides saw the events, and that
the silence of a hold started no media restart.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from softphone import Phone, RecorderSink, ToneSource
from softphone.client.call import Call, CallResult
from softphone.hub.server import Hub
from softphone.media.audio import rms_dbfs

from ..conftest import hub_url, phone_pair
from ..support.emulators import OriginalPage
from ..support.helpers import assert_tone, read_wav

pytestmark = pytest.mark.e2e

#: Seconds of a recording's edges of a held span not checked (the audio in flight).
EDGE = 0.15


@dataclass
class Side:
    """One phone in the call: its call, its events and its recording."""

    phone: Phone
    call: Call
    recording: Path
    events: list[dict[str, Any]] = field(default_factory=list)

    def holds(self) -> list[tuple[str, str]]:
        return [(e["event"], e["by"]) for e in self.events if e["event"] in ("hold", "resume")]

    async def packets_sent(self) -> int:
        return (await self.call.stats()).packets_sent

    async def wait_event(self, event: str, by: str, within: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while (event, by) not in self.holds():
            assert loop.time() < deadline, f"no {event} by {by}: {self.events}"
            await asyncio.sleep(0.01)

    def held_spans(self) -> list[list[float]]:
        """The spans the recorder noted (seconds of the recording)."""
        notes = json.loads(self.recording.with_name(self.recording.name + ".json").read_text())
        assert notes["recording"] == self.recording.name and notes["rate"] == 48_000
        spans: list[list[float]] = notes["held"]
        return spans


@dataclass
class Pair:
    a: Side
    b: Side

    async def end(self) -> tuple[CallResult, CallResult]:
        await self.a.call.hangup()
        return (await asyncio.wait_for(self.a.call.ended(), 10),
                await asyncio.wait_for(self.b.call.ended(), 10))


@pytest.fixture
async def phones(hub: Hub) -> AsyncIterator[tuple[Phone, Phone]]:
    async with phone_pair(hub) as pair:
        yield pair


async def call_up(a: Phone, b: Phone, tmp_path: Path) -> Pair:
    """``a`` (440 Hz) calls ``b`` (660 Hz); both record; both connected."""
    rec_a, rec_b = tmp_path / "heard-by-a.wav", tmp_path / "heard-by-b.wav"
    events_a: list[dict[str, Any]] = []
    call_a = await a.dial("b", ToneSource(440), [RecorderSink(rec_a)], on_event=events_a.append)
    call_b = await asyncio.wait_for(b.next_call(), 10)
    side_b = Side(b, call_b, rec_b)
    call_b.on_event(side_b.events.append)
    await call_b.accept(ToneSource(660), [RecorderSink(rec_b)])
    await asyncio.wait_for(call_a.connected(), 20)
    await asyncio.wait_for(call_b.connected(), 20)
    return Pair(Side(a, call_a, rec_a, events_a), side_b)


def assert_silent(recording: Path, start: float, end: float) -> None:
    samples, rate = read_wav(recording)
    body = samples[int((start + EDGE) * rate): int((end - EDGE) * rate)]
    assert body.size >= 0.5 * rate, (recording, start, end, samples.size / rate)
    level = rms_dbfs(body)
    assert level < -60, f"{recording}: {level:.1f} dBFS while held ({start}..{end})"


def assert_tone_between(recording: Path, frequency: float, start: float,
                        end: float | None = None) -> None:
    samples, _ = read_wav(recording)
    assert_tone(samples, frequency, skip=start, until=end, min_seconds=0.8,
                what=f"{recording.name} {start}..{end}")


def no_restart(side: Side) -> None:
    restarts = [e for e in side.events if str(e.get("event", "")).startswith("media-")
                and e["event"] != "media"]
    assert not restarts, restarts


async def test_hold_silences_both_ways_and_resume_brings_the_tones_back(
        phones: tuple[Phone, Phone], tmp_path: Path) -> None:
    pair = await call_up(*phones, tmp_path)
    a, b = pair.a, pair.b
    await asyncio.sleep(1.5)
    await a.call.hold()
    assert a.call.on_hold and not a.call.held_by_remote
    await b.wait_event("hold", "remote")
    assert b.call.held_by_remote and not b.call.on_hold
    await asyncio.sleep(0.3)  # what was in flight has arrived
    sent = await a.packets_sent(), await b.packets_sent()
    await asyncio.sleep(2.5)  # longer than the media restart's 2 s silence watch
    # Nothing was sent either way (RTCP and consent checks are not RTP packets).
    assert (await a.packets_sent(), await b.packets_sent()) == sent
    await a.call.resume()
    assert not a.call.on_hold
    await b.wait_event("resume", "remote")
    await asyncio.sleep(2.0)
    result_a, result_b = await pair.end()

    assert a.holds() == [("hold", "local"), ("resume", "local")]
    assert b.holds() == [("hold", "remote"), ("resume", "remote")]
    for side, result, far in ((a, result_a, 660), (b, result_b, 440)):
        no_restart(side)
        assert result.exit_code == 0, result
        [(start, end)] = side.held_spans()
        assert 2.5 < end - start < 4.0, (start, end)
        assert_tone_between(side.recording, far, 0.3, start - EDGE)
        assert_silent(side.recording, start, end)
        assert_tone_between(side.recording, far, end + 0.3)
        [(held_from, held_to)] = result.held  # in the result too: seconds since connected
        assert 2.5 < held_to - held_from < 4.0
        assert result.to_json()["held"] == [[held_from, held_to]]


async def test_both_hold_and_audio_flows_only_when_both_resumed(
        phones: tuple[Phone, Phone], tmp_path: Path) -> None:
    pair = await call_up(*phones, tmp_path)
    a, b = pair.a, pair.b
    await asyncio.sleep(1.0)
    await a.call.hold()
    await b.wait_event("hold", "remote")
    await b.call.hold()  # b holds too, while a holds
    await a.wait_event("hold", "remote")
    await asyncio.sleep(1.0)
    await a.call.resume()  # a is back, b still holds: no audio either way
    await b.wait_event("resume", "remote")
    assert b.call.on_hold and not b.call.held_by_remote
    await asyncio.sleep(0.3)
    sent = await a.packets_sent(), await b.packets_sent()
    await asyncio.sleep(1.5)
    assert (await a.packets_sent(), await b.packets_sent()) == sent
    await b.call.resume()
    await a.wait_event("resume", "remote")
    await asyncio.sleep(2.0)
    result_a, result_b = await pair.end()

    assert a.holds() == [("hold", "local"), ("hold", "remote"), ("resume", "local"),
                         ("resume", "remote")]
    assert b.holds() == [("hold", "remote"), ("hold", "local"), ("resume", "remote"),
                         ("resume", "local")]
    for side, result, far in ((a, result_a, 660), (b, result_b, 440)):
        no_restart(side)
        assert result.exit_code == 0
        # One span without audio: from a's hold to b's resume.
        [(start, end)] = side.held_spans()
        assert end - start > 2.5, (start, end)
        assert_silent(side.recording, start, end)
        assert_tone_between(side.recording, far, end + 0.3)
        assert len(result.held) == 1


async def test_hold_with_a_peer_that_does_not_know_hold_is_local(
        phones: tuple[Phone, Phone], hub: Hub, tmp_path: Path) -> None:
    """The peer is the original page (tests/support/emulators.py: it announces no
    features): a's hold is not signaled; a sends silence (RTP goes on, so the page sees a
    live stream) and plays nothing of what arrives."""
    a_phone, _ = phones
    page = OriginalPage(hub_url(hub), "c", "a", tone=660)
    await page.connect()
    try:
        rec_a = tmp_path / "heard-by-a.wav"
        a = Side(a_phone, await a_phone.dial("c", ToneSource(440), [RecorderSink(rec_a)]),
                 rec_a)
        a.call.on_event(a.events.append)
        await asyncio.wait_for(a.call.connected(), 20)
        assert a.call.peer_features == frozenset()
        await asyncio.sleep(1.5)
        await a.call.hold()
        assert a.call.on_hold
        await asyncio.sleep(0.3)
        sent = await a.packets_sent()
        await asyncio.sleep(2.0)
        assert await a.packets_sent() - sent > 50  # RTP flows (silence)
        await a.call.resume()
        await asyncio.sleep(2.0)
        heard_by_page = page.received_samples()
        await a.call.hangup()
        result = await asyncio.wait_for(a.call.ended(), 10)
    finally:
        await page.close()

    assert a.holds() == [("hold", "local"), ("resume", "local")]
    assert result.exit_code == 0 and len(result.held) == 1
    assert not [m for m in page.received if isinstance(m.get("data"), dict)
                and "hold" in m["data"]], "the page was sent hold messages"
    no_restart(a)
    [(start, end)] = a.held_spans()
    assert_silent(a.recording, start, end)  # a played nothing while held...
    assert_tone_between(a.recording, 660, end + 0.3)
    # ...and the page heard silence from a meanwhile, then the tone again.
    loud = np.abs(heard_by_page.astype(np.int32)) > 1000
    frames = loud[: loud.size // 960 * 960].reshape(-1, 960).any(axis=1)
    tone_from, tone_to = np.flatnonzero(frames)[[0, -1]]
    # The hold is the longest run of quiet frames between the first and last loud one
    # (not simply the last quiet frame: one frame lost on a loaded machine after the
    # resume would leave nothing to check after it).
    quiet = ~frames[tone_from:tone_to]
    edges = np.flatnonzero(np.diff(np.concatenate(([0], quiet.astype(np.int8), [0]))))
    starts, ends = edges[0::2], edges[1::2]
    assert starts.size, "the page did not hear a's silence"
    longest = int(np.argmax(ends - starts))
    assert (ends[longest] - starts[longest]) * 0.02 > 1.8, "the page did not hear a's silence"
    assert_tone(heard_by_page, 440, skip=(tone_from + ends[longest]) * 0.02 + 0.3,
                min_seconds=1.0, what="the page after the resume")
