"""The example bots, run as programs against a real hub and called by the CLI."""

from __future__ import annotations

import sys
import wave
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


async def test_menu_bot_plays_each_choice_and_hangs_up_on_hash(hub: Hub, procs: list[Proc],
                                                               tmp_path) -> None:
    """A real caller (the CLI) listens to the menu for 2 s, presses 2, listens 2 s,
    presses #: it hears the menu's 1 kHz beeps, then choice 2 (660 Hz), then the bot
    says goodbye and hangs up."""
    bot = example(procs, "ivr.py", "--as", "menu", "--server", hub_url(hub))
    await bot.wait_for_output("ready")
    rec = tmp_path / "heard.wav"
    me = Proc("call", "menu", "--as", "me", "--server", hub_url(hub), "--tone", "300",
              "--record", str(rec), "--dtmf", ",2,#", "--no-audio")
    procs.append(me)
    assert await me.wait(within=30) == 0, me.stderr
    assert "they hung up" in me.stdout, me.stdout
    samples, rate = read_wav(rec)
    assert 4.0 < samples.size / rate < 6.0, f"{samples.size / rate:.1f} s recorded"
    menu = samples[int(0.3 * rate): int(1.9 * rate)]
    assert abs(dominant_frequency(menu, rate) - 1000) < 5
    # The menu beeps: half of each 0.8 s is silence.
    frames = menu[: menu.size // 960 * 960].reshape(-1, 960)
    assert 0.3 < np.mean(np.abs(frames).max(axis=1) < 100) < 0.7
    choice = samples[int(2.6 * rate): int(4.0 * rate)]
    assert abs(dominant_frequency(choice, rate) - 660) < 5
    assert np.abs(choice).max() > 3000
    await bot.wait_for_output("me pressed 2")
    await bot.wait_for_output("me pressed #")
    await bot.wait_for_output("call from me: completed")


async def test_the_bots_say_a_bad_file_or_hub_in_one_line(hub: Hub, procs: list[Proc],
                                                          tmp_path) -> None:
    """announcer.py keeps softphone's exit codes (1: a file it cannot play, 7: no hub);
    answering_machine.py says a bad greeting in one line. No traceback, and nothing
    but that line (the library's and aiortc's INFO lines are not the bots' to show)."""
    missing = str(tmp_path / "nope.wav")
    tone = tmp_path / "tone.wav"
    with wave.open(str(tone), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48000)
        out.writeframes((np.sin(np.arange(24000) * 0.06) * 8000).astype("<i2").tobytes())
    bad_file = example(procs, "announcer.py", "bob", missing, "--server", hub_url(hub))
    unreachable = example(procs, "announcer.py", "bob", str(tone), "--server",
                          "http://127.0.0.1:9")
    greeting = example(procs, "answering_machine.py", "--greeting", missing, "--dir",
                       str(tmp_path / "box"), "--server", hub_url(hub))
    assert await bad_file.wait(within=20) == 1, bad_file.stdout
    assert await unreachable.wait(within=20) == 7, unreachable.stdout
    assert await greeting.wait(within=20) == 1, greeting.stdout
    for proc, said in ((bad_file, "announcer: "), (unreachable, "announcer: cannot reach"),
                       (greeting, "answering_machine: ")):
        lines = proc.stdout.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(said), proc.stdout


async def test_a_bot_whose_id_another_phone_takes_stops_in_one_line(
        hub: Hub, procs: list[Proc]) -> None:
    """The hub gives an id to its newest connection: the echo bot, replaced, stops with
    one line saying so (its next_call() waited forever before)."""
    bot = example(procs, "echo_bot.py", "--as", "echo", "--server", hub_url(hub))
    await bot.wait_for_output("ready")
    usurper = Proc("listen", "--as", "echo", "--server", hub_url(hub), "--no-audio",
                   "--auto-accept")
    procs.append(usurper)
    await usurper.wait_for_output("listening as echo")
    assert await bot.wait(within=20) == 1, bot.stdout
    last = bot.stdout.strip().splitlines()[-1]
    assert last.startswith("echo_bot: ") and "replaced" in last, bot.stdout
    assert "Traceback" not in bot.stdout
