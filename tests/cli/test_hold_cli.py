"""Hold on the terminal phone: the ``p`` key in a real pseudo-terminal (pexpect), a real
hub, a real ``softphone listen`` at the other end; ``--json`` events both sides and the
listener's recording (silent while held, the tone after, the span noted beside it).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from softphone.cli.status_text import hold_text, status_text
from softphone.hub.server import Hub
from softphone.media.audio import rms_dbfs

from ..conftest import Proc, hub_url, read_wav
from ..support.helpers import assert_tone
from .test_tui import expect, finish, terminal, terminals  # noqa: F401 (a fixture)


def events(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_the_status_line_says_who_holds_and_what_the_key_does() -> None:
    def line(held: str, on_hold: bool) -> str:
        return status_text(state="connected", seconds=5, codec="opus/48000", stats=None,
                           mic_dbfs=float("-inf"), speaker_dbfs=float("-inf"), muted=False,
                           keys=True, held=held, on_hold=on_hold)

    assert line("", False).startswith("connected  0:05")
    assert "m:mute h:hangup p:hold 0-9*#:keys" in line("", False)
    assert line("local", True).startswith("connected  on hold (local)  0:05")
    assert "h:hangup p:resume" in line("local", True)
    assert line("remote", False).startswith("connected  on hold (remote)  0:05")
    assert "p:hold" in line("remote", False)
    assert hold_text("hold", "remote", "bob") == "bob put the call on hold"
    assert hold_text("resume", "local", "bob") == "call resumed"


@pytest.mark.e2e
async def test_the_hold_key(hub: Hub, procs: list[Proc], tmp_path,  # type: ignore[no-untyped-def]
                            terminals: list) -> None:  # type: ignore[type-arg]  # noqa: F811
    heard = tmp_path / "heard-by-b.wav"
    bob = Proc("listen", "--as", "b", "--server", hub_url(hub), "--auto-accept", "--once",
               "--tone", "660", "--no-audio", "--record", str(heard), "--json")
    procs.append(bob)
    await bob.wait_for_output('"event":"listening"')
    alice = terminal(terminals, "call", "b", "--as", "a", "--server", hub_url(hub),
                     "--tone", "440", "--no-audio", "--json", columns=160)
    await expect(alice, "connected to b")
    await expect(alice, r"h:hangup p:hold")
    await asyncio.sleep(1.0)
    alice.send("p")
    await expect(alice, r'"event":"hold","by":"local"')
    await expect(alice, r"connected  on hold \(local\)  0:0")
    await expect(alice, r"p:resume")
    await bob.wait_for_output('"event":"hold","by":"remote"')
    await asyncio.sleep(2.0)
    alice.send("p")
    await expect(alice, r'"event":"resume","by":"local"')
    await bob.wait_for_output('"event":"resume","by":"remote"')
    await asyncio.sleep(2.0)
    alice.send("h")
    assert await finish(alice) == 0
    assert await bob.wait() == 0, bob.describe()
    assert "a put the call on hold" in bob.stderr and "a resumed the call" in bob.stderr
    [ended] = [e for e in events(bob.stdout) if e["event"] == "ended"]
    [(start, end)] = ended["held"]  # seconds since connected
    assert 1.5 < end - start < 3.5, ended

    notes = json.loads((tmp_path / "heard-by-b.wav.json").read_text())
    [(start, end)] = notes["held"]  # seconds of the recording
    samples, rate = read_wav(heard)
    assert rms_dbfs(samples[int((start + 0.15) * rate): int((end - 0.15) * rate)]) < -60
    assert_tone(samples, 440, skip=0.3, until=start - 0.15, min_seconds=0.5, what="before")
    assert_tone(samples, 440, skip=end + 0.3, min_seconds=1.0, what="after the resume")
