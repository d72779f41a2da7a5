"""The terminal phone through a real pseudo-terminal (pexpect), a real hub and a real peer.

Keys (``m`` mute, ``h`` and Ctrl-C hang up, ``a``/``r`` answer) and the
live status line are driven exactly as a person at a terminal would; the
audio that results is checked at the other end.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pexpect
import pytest

from softphone.hub.server import Hub
from softphone.media.audio import dominant_frequency, rms_dbfs

from ..conftest import Proc, hub_url, need, read_wav
from ..support.pulse import PulseLab

pytestmark = pytest.mark.e2e





@pytest.fixture
def terminals() -> Iterator[list]:  # type: ignore[type-arg]
    started: list = []  # type: ignore[type-arg]
    yield started
    for term in started:
        if term.isalive():
            term.terminate(force=True)
        term.close()


def terminal(terminals: list, *args: str, env: dict[str, str] | None = None,  # type: ignore[no-untyped-def,type-arg]
             columns: int = 120):
    """``softphone ARGS`` on a fresh pseudo-terminal, ``columns`` wide."""
    need(sys.platform != "win32", "a pseudo-terminal", "run on Linux")
    term = pexpect.spawn(sys.executable, ["-m", "softphone", *args], encoding="utf-8",
                         dimensions=(24, columns), timeout=30,
                         env={**os.environ, "TERM": "xterm-256color", **(env or {})})
    terminals.append(term)
    return term


async def expect(term, pattern: str, within: float = 30) -> str:  # type: ignore[no-untyped-def]
    await term.expect(pattern, timeout=within, async_=True)
    return str(term.before) + str(term.after)


async def finish(term, within: float = 30) -> int:  # type: ignore[no-untyped-def]
    await term.expect(pexpect.EOF, timeout=within, async_=True)
    term.close()
    return int(term.exitstatus)


async def test_status_line_and_mute_key(hub: Hub, pulse: PulseLab, procs: list[Proc],
                                        terminals: list, tmp_path: Path) -> None:  # type: ignore[type-arg]
    heard = tmp_path / "heard-by-b.wav"
    pulse.play_tone("a", 440, 30)
    bob = Proc("listen", "--as", "b", "--server", hub_url(hub), "--auto-accept", "--once",
               "--no-audio", "--record", str(heard))
    procs.append(bob)
    await bob.wait_for_output("listening as b")
    alice = terminal(terminals, "call", "b", "--as", "a", "--server", hub_url(hub),
                     env=pulse.env_for("a"), columns=200)
    await expect(alice, "connected to b")
    # The live line: state, duration, codec (two softphones agree on Opus with RED),
    # figures, both meters, the keys.
    line = await expect(alice, r"connected  0:0[2-9]  opus/48000\+red  "
                               r"rtt [0-9.]+ms  jit [0-9.]+ms  loss [0-9.]+%  buf [0-9.]+ms  "
                               r"mic \[#+-*\]  spk \[[#-]+\]  "
                               r"m:mute h:hangup")
    assert "MUTED" not in line
    # Our voice's way to b's ear, once b's XR has said its part (b plays to no device:
    # its jitter buffer only), within a few seconds; after the keys (cut first). At
    # least our sending's 42 ms (processing, frame, look-ahead), less than 200.
    await expect(alice, r"m:mute h:hangup p:hold 0-9\*#:keys  delay ([4-9][0-9]|1[0-9]{2})ms")
    alice.send("m")
    await expect(alice, r"connected  0:[0-9]+  MUTED  opus/48000\+red  .*mic \[-+\]  spk")
    await asyncio.sleep(2.5)
    alice.send("h")
    assert await finish(alice) == 0
    assert "call completed with b" in str(alice.before)
    assert await bob.wait() == 0, bob.stdout + bob.stderr
    samples, rate = read_wav(heard)
    loud = np.flatnonzero(np.abs(samples) > 1000)
    assert loud.size, "bob heard nothing"
    tone = samples[loud[0]: loud[-1]]
    assert abs(dominant_frequency(tone[: rate]) - 440) < 5
    # Muted for the last 2.5 s: the far end heard silence.
    tail = samples[-2 * rate:]
    assert rms_dbfs(tail) < -60, rms_dbfs(tail)


async def test_incoming_call_answered_with_a_key_and_ctrl_c_hangs_up(
        hub: Hub, procs: list[Proc], terminals: list, tmp_path: Path) -> None:  # type: ignore[type-arg]
    bob = terminal(terminals, "listen", "--as", "b", "--server", hub_url(hub), "--once",
                   "--tone", "660", "--no-audio")
    await expect(bob, "listening as b")
    rec = tmp_path / "heard-by-a.wav"
    alice = Proc("call", "b", "--as", "a", "--server", hub_url(hub), "--tone", "440",
                 "--no-audio", "--record", str(rec))
    procs.append(alice)
    await expect(bob, r"incoming call from a: \[a\]ccept or \[r\]eject\?")
    bob.send("a")
    await expect(bob, "connected to a")
    await expect(bob, r"connected  0:0[6-9]", within=20)  # long enough for a plain line at A
    bob.sendcontrol("c")
    assert await finish(bob) == 0
    assert await alice.wait() == 0, alice.stdout + alice.stderr
    assert "they hung up" in alice.stdout
    # A's output is a pipe: no live line, plain status lines instead.
    assert "status: connected  0:0" in alice.stdout, alice.stdout
    samples, rate = read_wav(rec)
    assert abs(dominant_frequency(samples[rate:]) - 660) < 5


async def test_incoming_call_rejected_with_a_key(hub: Hub, procs: list[Proc],
                                                 terminals: list) -> None:  # type: ignore[type-arg]
    bob = terminal(terminals, "listen", "--as", "b", "--server", hub_url(hub), "--once",
                   "--no-audio")
    await expect(bob, "listening as b")
    alice = Proc("call", "b", "--as", "a", "--server", hub_url(hub), "--no-audio")
    procs.append(alice)
    await expect(bob, r"\[a\]ccept or \[r\]eject\?")
    bob.send("r")
    assert await alice.wait() == 3, alice.stdout + alice.stderr  # rejected
    assert "b rejected the call" in alice.stdout
    assert await finish(bob) == 3


async def test_keys_press_dtmf_and_the_status_line_shows_keys_both_ways(
        hub: Hub, procs: list[Proc], terminals: list) -> None:  # type: ignore[type-arg]
    """b answers on the terminal; a's CLI presses 7 and * (--dtmf, after 1 s): b's
    status line shows them; b presses 3 and #: a's JSON events have them."""
    bob = terminal(terminals, "listen", "--as", "b", "--server", hub_url(hub), "--once",
                   "--tone", "660", "--no-audio", columns=132)
    await expect(bob, "listening as b")
    alice = Proc("call", "b", "--as", "a", "--server", hub_url(hub), "--tone", "440",
                 "--no-audio", "--json", "--dtmf", ",7*", "--duration", "6")
    procs.append(alice)
    await expect(bob, r"\[a\]ccept or \[r\]eject\?")
    bob.send("a")
    await expect(bob, "connected to a")
    await expect(bob, r"0-9\*#:keys")
    await expect(bob, r"dtmf in 7\*", within=15)
    bob.send("3")
    await expect(bob, r"dtmf in 7\* out 3")
    bob.send("#")
    await expect(bob, r"dtmf in 7\* out 3#")
    assert await alice.wait() == 0, alice.stderr
    assert await finish(bob) == 0
    heard = [json.loads(line) for line in alice.stdout.splitlines() if line.startswith("{")]
    assert [e["digit"] for e in heard if e.get("event") == "dtmf"] == ["3", "#"]
    assert [e["digit"] for e in heard if e.get("event") == "dtmf-sent"] == ["7", "*"]
