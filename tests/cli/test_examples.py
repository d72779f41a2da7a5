"""The example bots, run as programs against a real hub and called by the CLI."""

from __future__ import annotations

import asyncio
import signal
import sys
import wave
from pathlib import Path

import numpy as np

from softphone import Outcome, Phone, SilenceSource, ToneSource
from softphone.hub.server import Hub
from softphone.media.audio import dominant_frequency

from ..conftest import Proc, hub_url, read_wav

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def write_tone(path: Path, seconds: float) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48000)
        t = np.arange(int(seconds * 48000))
        out.writeframes((np.sin(t * 0.06) * 8000).astype("<i2").tobytes())


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


async def test_the_announcer_stops_when_the_callee_hangs_up_during_it(
        hub: Hub, procs: list[Proc], tmp_path) -> None:
    """A 20 s announcement, the callee hangs up after 1 s: the announcer says so and
    exits at once with the call's code (0, completed); it waited for the file's end
    forever before."""
    announcement = tmp_path / "long.wav"
    write_tone(announcement, 20)
    async with Phone("bob", hub_url(hub)) as bob:
        bot = example(procs, "announcer.py", "bob", str(announcement), "--server",
                      hub_url(hub))
        call = await asyncio.wait_for(bob.next_call(), 15)
        await call.accept(SilenceSource())
        await asyncio.wait_for(call.connected(), 15)
        await asyncio.sleep(1)
        await call.hangup()
        assert await bot.wait(within=8) == 0, bot.stdout
    assert "bob hung up during the announcement: completed" in bot.stdout, bot.stdout
    assert "Traceback" not in bot.stdout


async def test_sigterm_hangs_up_the_menu_bots_callers(hub: Hub, procs: list[Proc]) -> None:
    """systemd stops a bot with SIGTERM: its caller's call ends as hung up by the bot
    (completed), not as the bot vanishing (peer-disconnected, media-lost)."""
    bot = example(procs, "ivr.py", "--as", "menu", "--server", hub_url(hub))
    await bot.wait_for_output("ready")
    async with Phone("me", hub_url(hub)) as me:
        call = await me.dial("menu", ToneSource(300))
        await asyncio.wait_for(call.connected(), 15)
        await asyncio.sleep(0.5)
        bot.popen.send_signal(signal.SIGTERM)
        result = await asyncio.wait_for(call.ended(), 10)
        assert (result.outcome, result.ended_by) == (Outcome.COMPLETED, "remote"), result
        assert result.reason == "closing", result
    assert await bot.wait(within=10) == 0, bot.stdout
    assert "call from me: completed" in bot.stdout and "Traceback" not in bot.stdout, \
        bot.stdout


async def test_the_answering_machine_takes_callers_at_once(hub: Hub, procs: list[Proc],
                                                           tmp_path) -> None:
    """Two callers at the same time each leave a message (the second was told busy
    when it took one caller at a time)."""
    box = tmp_path / "box"
    bot = example(procs, "answering_machine.py", "--as", "vm", "--server", hub_url(hub),
                  "--dir", str(box))
    await bot.wait_for_output("ready")
    callers = {peer: Proc("call", "vm", "--as", peer, "--server", hub_url(hub), "--tone",
                          str(hz), "--no-audio", "--duration", "2.5")
               for peer, hz in (("alice", 700), ("carol", 900))}
    procs.extend(callers.values())
    for caller in callers.values():
        assert await caller.wait() == 0, caller.stdout
    said = [f"message from {peer}: completed" for peer in callers]
    for _ in range(100):  # (in either order)
        if all(line in bot.stdout for line in said):
            break
        await asyncio.sleep(0.1)
    assert all(line in bot.stdout for line in said), bot.stdout
    for peer, hz in (("alice", 700), ("carol", 900)):
        (message,) = box.glob(f"{peer}-*.wav")
        samples, rate = read_wav(message)
        assert abs(dominant_frequency(samples[rate // 2:], rate) - hz) < 5
