"""The example bots, run as programs against a real hub and called by the CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from softphone.hub.server import Hub
from softphone.media.audio import dominant_frequency

from ..conftest import Proc, hub_url, read_wav

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(procs: list[Proc], name: str, *args: str) -> Proc:
    """Start an example program; it logs to stderr, so merge that into stdout."""
    proc = Proc(argv=[sys.executable, "-c",
                      "import sys, runpy; sys.stderr = sys.stdout; "
                      f"sys.argv = {[name, *args]!r}; "
                      f"runpy.run_path({str(EXAMPLES / name)!r}, run_name='__main__')"])
    procs.append(proc)
    return proc


async def test_echo_bot_sends_back_what_it_hears(hub: Hub, procs: list[Proc], tmp_path
                                                 ) -> None:
    bot = example(procs, "echo_bot.py", "--as", "echo", "--server", hub_url(hub))
    await bot.wait_for_output("ready")
    rec = tmp_path / "heard.wav"
    me = Proc("call", "echo", "--as", "me", "--server", hub_url(hub), "--tone", "523",
              "--record", str(rec), "--duration", "2.5")
    procs.append(me)
    assert await me.wait() == 0, me.stderr
    samples, rate = read_wav(rec)
    assert abs(dominant_frequency(samples[rate:], rate) - 523) < 5


async def test_answering_machine_records_the_message(hub: Hub, procs: list[Proc],
                                                     tmp_path) -> None:
    box = tmp_path / "box"
    bot = example(procs, "answering_machine.py", "--as", "vm", "--server", hub_url(hub),
                  "--dir", str(box))
    await bot.wait_for_output("ready")
    rec = tmp_path / "greeting.wav"
    me = Proc("call", "vm", "--as", "alice", "--server", hub_url(hub), "--tone", "700",
              "--record", str(rec), "--duration", "2.5")
    procs.append(me)
    assert await me.wait() == 0, me.stderr
    greeting, rate = read_wav(rec)
    loud = greeting[np.abs(greeting) > 1000]
    assert loud.size > 0 and abs(dominant_frequency(greeting[: rate], rate) - 1000) < 10
    await bot.wait_for_output("message from alice")
    (message,) = box.glob("alice-*.wav")
    samples, rate = read_wav(message)
    assert abs(dominant_frequency(samples[rate // 2:], rate) - 700) < 5
