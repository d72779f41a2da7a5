"""A bot that has answered many calls holds what it held after the first few.

Everything is real and in this process, so that its file descriptors,
threads, asyncio tasks and memory can be read: the hub, a bot
:class:`~softphone.Phone` answering up to four calls at once (a prompt
encoded once, every caller recorded to its own WAV file), and four callers
calling it again and again. After a warm-up of 24 calls and again after 56:
the same fds, threads and tasks, no more of a call's objects (peer
connections, calls, audio paths: each phone keeps only its latest call),
and RSS within a bound (the allocator settles during
the warm-up; measured here: +5 MB over the first 40 calls, then flat to
120). (The 300-call version is ``python benchmarks/capacity.py --soak 300``.)

A call's OpenSSL connection and SRTP sessions (in C, ~170 kB a call) are
let go as it ends (``aiortc_seams.release_closed``), and none of its objects
is left in a reference cycle (``aiortc_seams.unlink_closed``, and the call
letting go of what refers back to it): left to the garbage collector, some
60 ended calls at a time, they grew a bot's heap by 10-20 % over 300 calls
(issue 15). The last two waves run with the collector off to check that:
the DTLS state goes as each call ends; every object of the next-to-last
wave's calls (both sides) is gone once the last wave has replaced them as
each phone's latest call.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from softphone import Phone, RecorderSink
from softphone.client.call import Call
from softphone.core.callstate import Outcome
from softphone.hub.server import Hub
from softphone.media.encoded import PromptSource, SharedPrompt
from softphone.media.recording import RecordingThread

from ..conftest import hub_url

WAVES = (6, 14)  # warm-up waves, all waves (4 calls each)
#: Objects every call makes, none of which may outlive it.
PER_CALL = ("RTCPeerConnection", "Call", "CallAudio", "MediaSession", "CallMachine",
            "DtmfChannel", "RecorderSink", "PromptSource")


def wav_files(folder: Path) -> int:
    return len(list(folder.glob("*.wav")))


def call_parts(call: Call) -> list[object]:
    """A call and the objects it made: freed by reference counting when it ends."""
    media: Any = call.media
    audio: Any = call.audio
    return [call, media, media.pc, *media.pc.getTransceivers(), audio, audio.handover,
            media.generation, call.restart_link]


def dtls_state(call: Call) -> list[object]:
    """The call's OpenSSL connection and SRTP sessions (aiortc's DTLS transport's)."""
    media: Any = call.media
    dtls = media.pc.getTransceivers()[0].receiver.transport
    return [x for x in (dtls._ssl, dtls._rx_srtp, dtls._tx_srtp) if x is not None]


def vitals() -> dict[str, int]:
    gc.collect()
    status = Path("/proc/self/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines()
                  if line.startswith("VmRSS:"))
    alive = sum(1 for o in gc.get_objects() if type(o).__name__ in PER_CALL)
    return {"fds": len(os.listdir("/proc/self/fd")), "threads": threading.active_count(),
            "tasks": len(asyncio.all_tasks()), "call_objects": alive, "rss_kb": rss_kb}


async def test_fifty_six_calls_leave_nothing_behind(hub: Hub, tmp_path: Path) -> None:
    prompt = SharedPrompt(np.tile(SharedPrompt.tone(700).frames.reshape(-1), 3))
    bot = Phone("bot", hub_url(hub), max_calls=4)
    recordings = RecordingThread()  # one writer thread for every call's recording
    callers = [Phone(f"caller{i}", hub_url(hub)) for i in range(4)]
    for phone in (bot, *callers):
        await phone.connect()
    answered = 0
    serving: set[asyncio.Task[None]] = set()
    in_c: weakref.WeakSet[object] = weakref.WeakSet()  # the last wave's (both sides)
    watched = 0
    parts: list[weakref.ref[object]] = []  # the next-to-last wave's (both sides)

    async def answer() -> None:
        nonlocal answered
        while True:
            call = await bot.next_call()
            answered += 1
            await call.accept(PromptSource(prompt),
                              [RecorderSink(tmp_path / f"{call.peer}-{answered}.wav",
                                            thread=recordings)])
            task = asyncio.create_task(call.ended())  # type: ignore[arg-type]
            serving.add(task)
            task.add_done_callback(serving.discard)

    async def one(phone: Phone, watch: bool, whole: bool) -> Outcome:
        nonlocal watched
        call: Call = await phone.dial("bot", PromptSource(SharedPrompt.tone(400), loop=True))
        await asyncio.wait_for(call.connected(), 20)
        await asyncio.sleep(0.4)
        if whole:
            for part in call_parts(call) + [x for c in bot.calls if c.peer == phone.client_id
                                            for x in call_parts(c)]:
                parts.append(weakref.ref(part))
        if watch:
            assert 1 <= len(bot.frame_clock) <= 4  # the bot's calls play out on one clock
            for state in dtls_state(call) + [x for c in bot.calls if c.peer == phone.client_id
                                             for x in dtls_state(c)]:
                in_c.add(state)
                watched += 1
        await call.hangup()
        return (await call.ended()).outcome

    answering = asyncio.create_task(answer())
    marks = []
    try:
        for wave in range(1, WAVES[1] + 1):
            last = wave == WAVES[1]
            whole = wave == WAVES[1] - 1
            if whole:
                gc.disable()
            outcomes = await asyncio.gather(*(one(p, last, whole) for p in callers))
            assert outcomes == [Outcome.COMPLETED] * 4, outcomes
            if serving:  # the bot's side of each call is finished too
                await asyncio.wait(set(serving))
            assert bot.calls == []
            assert len(bot.frame_clock) == 0
            if last:  # gone with the calls, the collector off: not left to it
                assert watched == 4 * 2 * 3, watched
                assert len(in_c) == 0, f"{len(in_c)} of {watched} left: {list(in_c)[:3]}"
                # Each phone's latest call is the last wave's: the wave before is gone.
                assert len(parts) == 4 * 2 * 8, len(parts)  # (one transceiver each)
                left = [part for ref in parts if (part := ref()) is not None]
                assert not left, f"{len(left)} of {len(parts)} left in cycles: {left[:6]}"
                gc.enable()
            if wave in WAVES:
                await asyncio.sleep(0.5)  # threads of the last calls exit
                marks.append(vitals())
    finally:
        gc.enable()
        answering.cancel()
        for phone in (bot, *callers):
            await phone.close()
        recordings.close()
    assert answered == 4 * WAVES[1]
    assert wav_files(tmp_path) == answered
    before, after = marks
    flat = ("fds", "threads", "tasks", "call_objects")
    assert [after[k] for k in flat] == [before[k] for k in flat], marks
    grown_mb = (after["rss_kb"] - before["rss_kb"]) / 1024
    assert grown_mb < 8, f"RSS grew {grown_mb:.1f} MB over {4 * (WAVES[1] - WAVES[0])} " \
                         f"calls: {marks}"
