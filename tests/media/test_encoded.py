"""Encoded sources: a prompt encoded once for every caller, and the packet echo.

Unit tests with a stand-in for the send loop's ``attach`` (a list that keeps
the frames handed over, as said in each docstring); the real send loop runs
in the call tests (tests/media/test_dtmf_rtp.py, tests/cli/test_many_calls.py).
"""

from __future__ import annotations

import asyncio

import numpy as np

from softphone.media import red
from softphone.media.audio import dominant_frequency
from softphone.media.encoded import EncodedFrame, PacketEcho, PromptSource, SharedPrompt
from softphone.media.opus import EncoderSettings, OpusDecoder

RATE = 48_000


def decode(payloads: list[bytes]) -> np.ndarray:
    decoder = OpusDecoder()
    return np.concatenate([decoder.decode(p).copy() for p in payloads])


def test_a_tone_prompt_loops_without_a_seam() -> None:
    prompt = SharedPrompt.tone(440.0)
    assert len(prompt) == 50 and prompt.seconds == 1.0
    pcm = decode(prompt.payloads * 3)
    assert abs(dominant_frequency(pcm[RATE:], RATE) - 440) < 1
    # A whole number of cycles in the loop: the last sample leads into the first.
    samples = prompt.frames.reshape(-1).astype(np.int64)
    assert abs(samples[-1] - samples[0]) < 0.1 * 32767


async def test_the_prompt_is_encoded_once_for_every_caller() -> None:
    """(Ticks by hand: the test never yields to the loop, so the ticker never runs.)"""
    prompt = SharedPrompt(np.zeros(RATE // 10, dtype=np.int16) + 1000)
    first = prompt.payloads
    assert prompt.payloads is first and len(first) == 5
    a, b = PromptSource(prompt), PromptSource(prompt)
    for source in (a, b):
        source.bind("audio/opus", {})
    sent: dict[str, list[EncodedFrame]] = {"a": [], "b": []}
    a.attach(lambda f: sent["a"].append(f) is None)
    b.attach(lambda f: sent["b"].append(f) is None)
    for _ in range(7):
        a.tick()
        b.tick()
    assert [f.payloads[0] for f in sent["a"]] == [f.payloads[0] for f in sent["b"]]
    assert sent["a"][4].payloads[0] is first[4]  # the very same bytes
    assert sent["a"][5].payloads[0] == prompt.silence  # then silence
    assert [f.timestamp for f in sent["a"]] == [960 * k for k in range(7)]
    assert a.finished.is_set()
    a.stop()
    b.stop()


async def test_play_switches_prompts_and_red_wraps_per_call() -> None:
    """Stand-in send loop: a call that agreed on RED gets RED around the shared payloads.
    (Ticks by hand: the test never yields to the loop.)"""
    one_copy = EncoderSettings(redundancy=1)
    menu = SharedPrompt.tone(1000.0, 0.2, settings=one_copy)
    choice = SharedPrompt.tone(660.0, 0.2, settings=one_copy)
    source = PromptSource(menu, loop=True)
    source.bind("audio/red", {"111/111": None})
    frames: list[EncodedFrame] = []
    source.attach(lambda f: frames.append(f) is None)
    for _ in range(3):
        source.tick()
    source.play(choice, loop=True)
    for _ in range(3):
        source.tick()
    primaries = [red.parse(f.payloads[0])[-1].data for f in frames]
    assert primaries == menu.payloads[:3] + choice.payloads[:3]
    blocks = red.parse(frames[4].payloads[0])
    assert [(b.payload_type, b.offset) for b in blocks] == [(111, 960), (111, 0)]
    assert blocks[0].data == choice.payloads[0]
    source.stop()
    assert not menu.ticker.members and not choice.ticker.members


async def test_one_timer_for_every_caller_of_a_prompt() -> None:
    prompt = SharedPrompt.tone(500.0)
    sent = [0, 0, 0]
    sources = [PromptSource(prompt, loop=True) for _ in sent]
    for i, source in enumerate(sources):
        source.bind("audio/opus", {})

        def count(frame: EncodedFrame, i: int = i) -> bool:
            sent[i] += 1
            return True

        source.attach(count)
    assert len(prompt.ticker.members) == 3
    await asyncio.sleep(0.5)
    assert all(20 <= n <= 30 for n in sent), sent  # 50 frames a second each
    sources[0].stop()
    sources[1].attach(None)
    before = list(sent)
    await asyncio.sleep(0.2)
    assert sent[:2] == before[:2] and sent[2] > before[2]
    sources[2].stop()
    assert not prompt.ticker.members


async def test_a_frame_the_loop_must_send_waits_for_it() -> None:
    """Stand-in send loop that cannot send at once (a TURN relay): frames queue."""
    prompt = SharedPrompt.tone(500.0, 0.1)
    source = PromptSource(prompt)
    source.bind("audio/opus", {})
    source.attach(lambda frame: False)
    source.tick()
    source.tick()
    assert (await source.next_encoded()).timestamp == 0
    assert (await source.next_encoded()).timestamp == 960
    source.stop()


def test_packet_echo_sends_each_packet_back_as_the_agreed_codec() -> None:
    """Stand-in send loop: Opus in, RED out (and RED in, Opus out); timestamps follow."""
    opus = SharedPrompt.tone(300.0, 0.1).payloads
    to_red = PacketEcho()
    to_red.bind("audio/red", {"109/109": None})
    out: list[EncodedFrame] = []
    to_red.attach(lambda f: out.append(f) is None)
    for k, payload in enumerate(opus[:3]):
        to_red.push(1234, 10 + k, 90_000 + 960 * k, payload, False)
    assert [f.timestamp for f in out] == [0, 960, 1920]
    assert [red.parse(f.payloads[0])[-1].data for f in out] == opus[:3]
    # A new stream (the caller's SSRC changed) goes on where the echo was.
    to_red.push(99, 1, 5, opus[3], False)
    assert out[-1].timestamp == 2880
    to_opus = PacketEcho()
    to_opus.bind("audio/opus", {})
    back: list[EncodedFrame] = []
    to_opus.attach(lambda f: back.append(f) is None)
    for frame in out:
        to_opus.push(1, 0, frame.timestamp, frame.payloads[0], True)
    assert [f.payloads[0] for f in back] == opus[:4]


def test_packet_echo_before_the_call_sends_echoes_nothing() -> None:
    echo = PacketEcho()
    echo.push(1, 1, 0, b"\xf8\xff\xfe", False)
    assert echo.echoed == 0
