"""``softphone listen --max-calls N``: one bot process answering many callers at once.

The bot is the real CLI in its own process; the callers are real
:class:`~softphone.Phone`\\ s (real aiortc peers) in the test's process, each
sending its own tone (encoded once, looped). What each caller hears is
checked by FFT: its own tone, and nothing of anyone else's.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from softphone import CaptureSink, Phone
from softphone.client.call import Call
from softphone.core.callstate import Outcome
from softphone.hub.server import Hub
from softphone.media.audio import dominant_frequency, tone_purity
from softphone.media.encoded import PromptSource, SharedPrompt

from ..conftest import Proc, hub_url, read_wav

RATE = 48_000


async def bot(procs: list[Proc], hub: Hub, client_id: str, *extra: str) -> Proc:
    proc = Proc("listen", "--as", client_id, "--server", hub_url(hub), "--auto-accept",
                "--json", "--no-audio", *extra)
    procs.append(proc)
    await proc.wait_for_output('"listening"', within=30)
    return proc


def events(proc: Proc) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


async def callers(hub: Hub, count: int, prefix: str = "c") -> list[Phone]:
    phones = [Phone(f"{prefix}{i}", hub_url(hub)) for i in range(count)]
    await asyncio.gather(*(p.connect() for p in phones))
    return phones


def tone(frequency: float) -> PromptSource:
    return PromptSource(SharedPrompt.tone(frequency), loop=True)


async def test_twenty_callers_into_one_echo_bot_each_hear_only_themselves(
        hub: Hub, procs: list[Proc]) -> None:
    echo = await bot(procs, hub, "echo", "--echo", "--max-calls", "20")
    frequencies = [310.0 + 47.0 * i for i in range(20)]  # 310 .. 1203 Hz, 47 Hz apart
    phones = await callers(hub, 20)
    captures = [CaptureSink(4.0) for _ in phones]
    try:
        calls = [await p.dial("echo", tone(f), [c])
                 for p, f, c in zip(phones, frequencies, captures, strict=True)]
        await asyncio.wait_for(asyncio.gather(*(c.connected() for c in calls)), 30)
        # All 20 lines taken: the next caller is told busy.
        extra = (await callers(hub, 1, "late"))[0]
        phones.append(extra)
        late = await extra.dial("echo", tone(2000.0))
        assert (await asyncio.wait_for(late.ended(), 15)).outcome is Outcome.BUSY
        await asyncio.sleep(3.0)
        for frequency, capture, call in zip(frequencies, captures, calls, strict=True):
            heard = capture.samples()[-2 * RATE:]
            assert heard.size == 2 * RATE, f"{call.peer}: only {heard.size} samples"
            found = dominant_frequency(heard, RATE)
            purity = tone_purity(heard, frequency, RATE, width=20.0)
            others = max(tone_purity(heard, f, RATE, width=10.0)
                         for f in frequencies if f != frequency)
            assert abs(found - frequency) < 5 and purity > 0.9 and others < 0.01, \
                f"caller at {frequency} Hz heard {found:.1f} Hz ({purity:.0%} its own, " \
                f"{others:.1%} of another's)"
            level = float(np.sqrt(np.mean(heard.astype(np.float64) ** 2)))
            assert level > 2000, f"caller at {frequency} Hz heard almost nothing ({level:.0f})"
        await asyncio.gather(*(c.hangup() for c in calls))
        results = await asyncio.gather(*(c.ended() for c in calls))
        assert all(r.outcome is Outcome.COMPLETED for r in results)
    finally:
        await asyncio.gather(*(p.close() for p in phones))
    # The bot said so, for each caller; it is still listening.
    for _ in range(20):
        await echo.wait_for_output('"event":"ended"', within=10)
    ended = [e for e in events(echo) if e.get("event") == "ended"]
    assert sorted(e["peer"] for e in ended) == sorted(f"c{i}" for i in range(20))
    assert echo.popen.poll() is None


async def test_answering_machine_bot_records_each_caller_to_its_own_file(
        hub: Hub, procs: list[Proc], tmp_path: Path) -> None:
    """--play to every caller, --record 'calls/{peer}-{n}.wav'; Ctrl-C hangs up every call."""
    prompt = tmp_path / "prompt.wav"
    samples = (0.4 * 32767 * np.sin(2 * np.pi * 1000 * np.arange(RATE * 3) / RATE))
    import wave

    with wave.open(str(prompt), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(samples.astype(np.int16).tobytes())
    folder = tmp_path / "calls"
    machine = await bot(procs, hub, "vm", "--max-calls", "4", "--play", str(prompt),
                        "--record", str(folder / "{peer}-{n}.wav"))
    frequencies = [400.0, 550.0, 700.0, 850.0]
    phones = await callers(hub, 4, "m")
    captures = [CaptureSink(4.0) for _ in phones]
    calls: list[Call] = []
    try:
        calls = [await p.dial("vm", tone(f), [c])
                 for p, f, c in zip(phones, frequencies, captures, strict=True)]
        await asyncio.wait_for(asyncio.gather(*(c.connected() for c in calls)), 30)
        await asyncio.sleep(2.5)
        for capture in captures:  # every caller hears the prompt
            heard = capture.samples()[-RATE:]
            assert abs(dominant_frequency(heard, RATE) - 1000) < 5
        machine.signal()  # Ctrl-C: the bot hangs up every call
        results = await asyncio.wait_for(asyncio.gather(*(c.ended() for c in calls)), 15)
        assert all(r.outcome is Outcome.COMPLETED and r.ended_by == "remote" for r in results)
        assert await machine.wait(15) == 0
    finally:
        await asyncio.gather(*(p.close() for p in phones))
    files = sorted(folder.glob("*.wav"))
    assert len(files) == 4, files
    heard_by_bot = {}
    for path in files:
        match = re.fullmatch(r"(m\d)-(\d+)\.wav", path.name)
        assert match is not None, path.name
        audio, rate = read_wav(path)
        assert audio.size > rate, f"{path.name}: {audio.size / rate:.2f} s"
        heard_by_bot[match.group(1)] = dominant_frequency(audio[rate // 2:], rate)
    assert sorted(int(re.fullmatch(r"m\d-(\d+)\.wav", p.name).group(1))  # type: ignore[union-attr]
                  for p in files) == [1, 2, 3, 4]
    for i, frequency in enumerate(frequencies):
        assert abs(heard_by_bot[f"m{i}"] - frequency) < 5, heard_by_bot
