"""Microphone and speaker through sounddevice, on real PulseAudio virtual devices.

Each phone is a softphone process whose default microphone and speaker are
its own virtual devices on a private PulseAudio server (tests/support/pulse.py):
a tone played into A's microphone (pacat) must come out of B's speaker
(parec on its monitor) at that frequency, and the reverse at the same time.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from softphone.hub.server import Hub
from softphone.media.audio import SAMPLE_RATE

from ..conftest import hub_url
from ..support.helpers import Proc, assert_tone, read_wav, softphone_command
from ..support.pulse import PulseLab, read_all

pytestmark = pytest.mark.e2e


def loud_part(samples: npt.NDArray[np.int16], rate: int = SAMPLE_RATE) -> npt.NDArray[np.int16]:
    """The recording without its silent head and tail (before/after the call)."""
    window = rate // 50
    n = samples.size // window
    levels = np.abs(samples[: n * window].reshape(n, window)).max(axis=1)
    loud = np.flatnonzero(levels > 1000)
    if loud.size == 0:
        return samples[:0]
    return samples[loud[0] * window: (loud[-1] + 1) * window]


async def test_call_carries_audio_both_ways_between_virtual_devices(
        hub: Hub, pulse: PulseLab, procs: list[Proc]) -> None:
    heard_by_b = pulse.record_speaker("b")
    heard_by_a = pulse.record_speaker("a")
    pulse.play_tone("a", 440, 12)
    pulse.play_tone("b", 660, 12)
    # Devices by default (bob, env SOFTPHONE_INPUT naming one), by name and by index (alice).
    bob = Proc("listen", "--as", "b", "--server", hub_url(hub), "--auto-accept", "--once",
               env={**pulse.env_for("b"), "SOFTPHONE_INPUT": "default"})
    procs.append(bob)
    await bob.wait_for_output("listening as b")
    alice = Proc("call", "b", "--as", "a", "--server", hub_url(hub), "--duration", "4",
                 "--input", "pulse", "--output", "0", env=pulse.env_for("a"))
    procs.append(alice)
    assert await alice.wait(40) == 0, alice.stdout + alice.stderr
    assert await bob.wait(20) == 0, bob.stdout + bob.stderr
    assert "sending silence" not in alice.stderr + bob.stderr, alice.stderr + bob.stderr
    for recording, expected, who in ((heard_by_b, 440, "b"), (heard_by_a, 660, "a")):
        assert_tone(loud_part(read_all(recording)), expected, skip=0.5, until=-0.5,
                    min_purity=0.8, what=f"{who}'s speaker")


def test_devices_lists_the_virtual_devices(pulse: PulseLab) -> None:
    out = subprocess.run(softphone_command("devices"), env={**os.environ, **pulse.env},
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "microphones (--input):" in out.stdout and "speakers (--output):" in out.stdout
    assert "pulse" in out.stdout and "* default" in out.stdout


def test_unknown_device_is_a_usage_error(pulse: PulseLab) -> None:
    out = subprocess.run(softphone_command("call", "b", "--as", "a", "--input", "no-such-mic"),
                         env={**os.environ, **pulse.env}, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2
    assert "no microphone (input) device named like 'no-such-mic'" in out.stderr
    assert "Traceback" not in out.stderr


def test_no_portaudio_is_one_line_naming_the_fix() -> None:
    # sounddevice raises OSError when libportaudio is missing: make its import do that.
    code = ("import sys, builtins\n"
            "real = builtins.__import__\n"
            "def fake(name, *a, **k):\n"
            "    if name == 'sounddevice':\n"
            "        raise OSError('PortAudio library not found')\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = fake\n"
            "from softphone.cli.main import main\n"
            "sys.argv = ['softphone', 'call', 'b', '--as', 'a', '--input', 'pulse']\n"
            "main()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "apt-get install libportaudio2" in lines[0] and "--no-audio" in lines[0]


async def test_no_device_is_one_line_and_default_falls_back(hub: Hub, procs: list[Proc],
                                                          tmp_path: Path) -> None:
    env = {"PULSE_SERVER": f"unix:{tmp_path}/nothing", "XDG_RUNTIME_DIR": str(tmp_path)}
    named = Proc("call", "b", "--as", "a", "--tone", "440", "--output", "pulse",
                 "--server", hub_url(hub),
                 env=env)
    listing = Proc("devices", env=env)
    # No --input/--output: no devices is not an error, a notice says what happens instead.
    default = Proc("call", "nobody", "--as", "a", "--server", hub_url(hub), env=env)
    procs.extend((named, listing, default))
    assert await named.wait() == 2  # (README's exit codes: --output naming no device)
    assert named.stderr.count("\n") == 1 and "no audio speaker (output) device" in named.stderr
    assert await listing.wait() == 1 and "no audio devices" in listing.stderr
    assert await default.wait() == 6, default.stderr  # offline: the call was placed
    assert "softphone: no audio microphone (input) device: sending silence" in default.stderr
    assert "softphone: no audio speaker (output) device: not playing" in default.stderr


async def test_device_lost_mid_call_is_reported_and_the_call_goes_on(
        hub: Hub, pulse: PulseLab, procs: list[Proc]) -> None:
    import asyncio

    bob = Proc("listen", "--as", "b", "--server", hub_url(hub), "--auto-accept", "--once",
               "--tone", "660", "--no-audio")
    procs.append(bob)
    await bob.wait_for_output("listening as b")
    alice = Proc("call", "b", "--as", "a", "--server", hub_url(hub), "--duration", "5",
                 "--json", env=pulse.env_for("a"))
    procs.append(alice)
    await alice.wait_for_output('"state":"connected"')
    await asyncio.sleep(1.0)
    pulse.kill_server()  # the audio server (and with it A's microphone and speaker) vanishes
    assert await alice.wait(40) == 0, alice.stdout + alice.stderr
    assert await bob.wait(20) == 0, bob.stdout + bob.stderr
    # (each said once: by the CLI, not also as the library's warning)
    assert alice.stderr.count("microphone lost") == 1, alice.stderr
    assert alice.stderr.count("speaker lost") == 1, alice.stderr
    lines = alice.stderr.splitlines()
    mic = next(line for line in lines if "microphone lost" in line)
    speaker = next(line for line in lines if "speaker lost" in line)
    assert "--tone/--play to send" in mic and "--tone" not in speaker, alice.stderr
    assert "--record to keep what you hear" in speaker, alice.stderr
    assert '"event":"device-lost"' in alice.stdout
    assert "Traceback" not in alice.stderr
    assert "call completed" in alice.stderr


async def test_listen_echo_sends_each_callers_audio_back(hub: Hub, procs: list[Proc],
                                                         tmp_path: Path) -> None:
    echo = Proc("listen", "--as", "echo", "--server", hub_url(hub), "--auto-accept", "--once",
                "--echo", "--no-audio")
    procs.append(echo)
    await echo.wait_for_output("listening as echo")
    rec = tmp_path / "echoed.wav"
    me = Proc("call", "echo", "--as", "me", "--server", hub_url(hub), "--tone", "523",
              "--no-audio", "--record", str(rec), "--duration", "3")
    procs.append(me)
    assert await me.wait() == 0, me.stdout + me.stderr
    assert await echo.wait() == 0, echo.stdout + echo.stderr
    samples, rate = read_wav(rec)
    assert_tone(samples, 523, rate=rate, skip=1.0, min_purity=0.8, what="the echo")


def test_resampler_keeps_the_tone_and_the_duration() -> None:
    """Devices that do not take 48 kHz are resampled, streaming, frame by frame."""
    from softphone.media.audio import ToneGenerator
    from softphone.media.devices import Resampler

    to_device = Resampler(SAMPLE_RATE, 44_100)
    back = Resampler(44_100, SAMPLE_RATE)
    tone = ToneGenerator(1000)
    device_side = [to_device(tone.next(960)) for _ in range(100)]  # 2 s in 20 ms frames
    out = np.concatenate([back(chunk) for chunk in device_side])
    assert abs(sum(c.size for c in device_side) - 2 * 44_100) < 100
    assert abs(out.size - 2 * SAMPLE_RATE) < 200
    assert_tone(out, 1000, skip=0.1, tolerance=2, min_purity=0.95, what="resampled twice")


def test_device_format_falls_back_to_the_devices_own_rate_and_channels() -> None:
    """Adapter test with a fake sounddevice (it says what it takes): 48 kHz mono if the
    device takes it, else its own rate, else stereo; a device that takes nothing asked
    is one line."""
    from softphone.media.sounddev import DeviceError, DeviceInfo, device_format

    class FakeSd:
        PortAudioError = RuntimeError

        def __init__(self, rates: set[int], channels: set[int]) -> None:
            self.rates, self.channels = rates, channels

        def check_input_settings(self, *, device: int, channels: int, dtype: str,
                                 samplerate: int) -> None:
            if samplerate not in self.rates or channels not in self.channels:
                raise self.PortAudioError(f"Invalid sample rate or channels ({samplerate}, "
                                          f"{channels})")

        check_output_settings = check_input_settings

    info = DeviceInfo(3, "USB headset", "ALSA", 2, 2, 44100.0)
    sd = FakeSd({48000, 44100}, {1, 2})
    assert device_format(sd, info, "input", None, None) == (48000, 1)  # type: ignore[arg-type]
    sd = FakeSd({44100}, {2})
    assert device_format(sd, info, "output", None, None) == (44100, 2)  # type: ignore[arg-type]
    assert device_format(sd, info, "input", 44100, 2) == (44100, 2)  # type: ignore[arg-type]
    with pytest.raises(DeviceError) as err:
        device_format(sd, info, "input", 48000, 1)  # type: ignore[arg-type]
    assert "\n" not in str(err.value) and "USB headset" in str(err.value)


# A speaker whose callback is made late (pull() sleeps past the 10 ms device buffer)
# until its device buffer has grown: PortAudio reports real underruns, and the buffer
# grows a step. Then (CALM seconds of calm given) it is on time again and waits for the
# buffer to shrink back, and plays on for a second. ("refuse": the first reopen is
# refused, as PulseAudio's ALSA plugin now and then does: a fault injected. "talk":
# once grown, it plays a tone for 2.5 s, then silence again. "noise": once grown, it
# plays a noise at -30 dBFS for good (a pause's patience of 2 s). "stop": the speaker is
# stopped while the reopen is held in its open; every stream opened is closed once.)
LATE_SPEAKER = """
import asyncio, json, sys, threading, time
import numpy as np
import softphone.media.speaker as speaker_module
from softphone.media.devicebuffer import BufferSteps
from softphone.media.devices import SpeakerDriver
from softphone.media.sounddev import DeviceError

CALM = float(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] != "0" else None
opened, streams, closes, held, release = [0], [], {}, threading.Event(), threading.Event()
real_open, real_close = speaker_module.open_stream, speaker_module.close_stream
def open_stream(*args, **kwargs):
    opened[0] += 1
    if opened[0] == 2 and "refuse" in sys.argv:
        raise DeviceError("cannot open default: Illegal combination of I/O devices")
    if opened[0] == 2 and "stop" in sys.argv:
        held.set()
        release.wait(10)
    stream = real_open(*args, **kwargs)
    streams.append(stream)
    return stream
def close_stream(stream):
    closes[id(stream)] = closes.get(id(stream), 0) + 1
    real_close(stream)
speaker_module.open_stream, speaker_module.close_stream = open_stream, close_stream

async def main():
    patience = {"pause_patience": 2.0} if "noise" in sys.argv else {}  # (talk: 10 s)
    steps = BufferSteps(calm=CALM, **patience) if CALM else None
    speaker = SpeakerDriver(buffer_steps=steps)
    first = speaker.latency
    told, seen = [], []

    class Told:  # what the voice processor is told
        def set_device_latency(self, output_s, input_s):
            told.append(output_s)
        def render(self, frame):
            pass

    speaker.use_voice_processor(Told(), 0.02)
    calls = [0]
    talk = [None]  # (when the talk ends)
    tone = (8000 * np.sin(np.arange(960) * 2 * np.pi * 500 / 48000)).astype(np.int16)
    hiss = np.random.default_rng(1).integers(-1000, 1001, (10, 960)).astype(np.int16)
    noisy = [None]  # (when the noise began)

    def pull():
        calls[0] += 1
        if calls[0] % 25 == 0 and speaker.grown == 0:
            time.sleep(0.05)  # late: the device runs dry
        if "talk" in sys.argv and speaker.grown:
            if talk[0] is None:
                talk[0] = time.monotonic() + 2.5
            if time.monotonic() < talk[0]:
                return tone
        if "noise" in sys.argv and speaker.grown:  # (-30 dBFS for good: never a pause
            if noisy[0] is None:                   # under -40 dBFS)
                noisy[0] = time.monotonic()
            return hiss[calls[0] % 10]
        return np.zeros(960, np.int16)

    speaker.drive(pull, print)
    for _ in range(250):  # (under load the underruns come later: up to 15 s)
        await asyncio.sleep(0.1)
        seen.append(speaker.latency)
        if (speaker.buffer.shrunk and speaker.buffer.step == 0) if CALM else speaker.grown:
            break  # (CALM: back at its first step, after one step or two)
    if "stop" in sys.argv:  # stopped while the reopen is held, then it goes on
        await asyncio.to_thread(held.wait, 10)
        speaker.stop()
        release.set()
        await asyncio.sleep(0.5)
        print(json.dumps({"opened": len(streams), "closes": [closes.get(id(s), 0)
                                                              for s in streams]}))
        return
    while speaker.resizing:  # (the reopen it decided on: done)
        await asyncio.sleep(0.01)
    before = calls[0]
    shrunk_at = time.monotonic()
    if CALM:
        await asyncio.sleep(1.0)  # (and it keeps playing on the small buffer: 50 frames)
    print(json.dumps({"first": first, "now": speaker.latency, "told": told,
                      "most": max(seen), "pulled": calls[0] - before,
                      "active": speaker.stream.active, "lost": speaker.lost,
                      "opened": opened[0], "after_talk": talk[0] and shrunk_at - talk[0],
                      "after_noise": noisy[0] and shrunk_at - noisy[0],
                      **speaker.device_stats()}))
    speaker.stop()

asyncio.run(main())
"""


def late_speaker(pulse: PulseLab, *args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", LATE_SPEAKER, *args], env={
        **os.environ, **pulse.env_for("a")}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return report


def test_speaker_buffer_grows_a_step_after_underruns(pulse: PulseLab) -> None:
    report = late_speaker(pulse)
    assert report["first"] == pytest.approx(0.010, abs=0.002), report
    assert report["speaker_underruns"] >= 2 and report["speaker_grown"] == 1, report
    assert report["now"] == pytest.approx(0.020, abs=0.004), report
    assert report["told"][-1] == report["now"], report


def test_a_refused_reopen_is_tried_again(pulse: PulseLab) -> None:
    report = late_speaker(pulse, "0", "refuse")
    assert report["lost"] is None and report["active"], report
    assert report["speaker_grown"] == 1 and report["opened"] == 3, report
    assert report["now"] == pytest.approx(0.020, abs=0.004), report


def test_a_speaker_stopped_while_reopening_closes_every_stream_once(pulse: PulseLab) -> None:
    """Neither the new stream left open (playing for the rest of the process) nor the
    old one closed twice at once (PortAudio handed a freed stream)."""
    report = late_speaker(pulse, "0", "stop")
    assert report == {"opened": 2, "closes": [1, 1]}, report


def test_speaker_buffer_steps_back_only_in_a_pause(pulse: PulseLab) -> None:
    """A second of calm would do, but someone talks for 2.5 s: the step back (a gap)
    waits for the pause after it."""
    report = late_speaker(pulse, "1.0", "talk")
    assert report["speaker_shrunk"] >= 1 and report["lost"] is None, report
    # (after the talk, not during it; soon after unless a loaded machine underruns)
    assert 0 <= report["after_talk"] < 10, report


def test_speaker_buffer_steps_back_in_a_far_end_noise_that_never_pauses(
        pulse: PulseLab) -> None:
    """After growing, the far end plays a steady noise at -30 dBFS: no stretch is ever
    under -40 dBFS (the step back waited for that, for the rest of the call). After
    the pause's patience (2 s here, 10 by default) its quietest stretches do."""
    report = late_speaker(pulse, "1.0", "noise")
    assert report["speaker_shrunk"] >= 1 and report["lost"] is None, report
    assert report["now"] == pytest.approx(report["first"], abs=0.002), report
    assert 1.5 <= report["after_noise"] < 15, report


def test_speaker_buffer_shrinks_back_after_a_calm_spell(pulse: PulseLab) -> None:
    """A moment of lateness grew it; a second of calm (30 s by default) takes it back,
    the voice processor is told, and it plays on at its first size."""
    report = late_speaker(pulse, "1.0")
    assert report["speaker_grown"] >= 1 and report["speaker_shrunk"] >= 1, report
    assert report["most"] >= 0.016, report  # (grown: a step, two on a loaded machine)
    assert report["now"] == pytest.approx(report["first"], abs=0.002), report
    assert report["told"][-1] == report["now"], report
    assert report["active"] and 40 <= report["pulled"] <= 60, report


# A speaker playing a tone with pauses (0.4 s on, 0.2 s off) from our playout, its
# packets pushed in real time, each (from the second on) 18 ms before the device pulls
# it (counted from when it pulled the first): a frame phase of 18 ms, 13 over the floor.
PHASED_SPEAKER = """
import asyncio, json, time
import numpy as np
from softphone.media.audio import FRAME_SAMPLES as N, ToneGenerator
from softphone.media.devices import SpeakerDriver
from softphone.media.opus import EncoderSettings, OpusEncoder
from softphone.media.playout import StretchPlayout
from softphone.media.tracks import AudioReceiver

async def main():
    encoder = OpusEncoder(EncoderSettings(adapt=False, bitrate=64_000, fec=False,
                                          expected_loss=0))
    tone = ToneGenerator(440.0, amplitude=0.3)
    packets = [encoder.encode(tone.next(N) if i % 30 < 20 else np.zeros(N, np.int16))
               for i in range(200)]
    playout = StretchPlayout()
    arrived, waits = {}, []
    playout.on_played = lambda ts, at: waits.append((ts // N, at - arrived[ts // N]))
    speaker = SpeakerDriver()
    receiver = AudioReceiver(output=speaker)
    receiver.play(playout)
    await asyncio.sleep(0.3)  # past the stream's start (its first callbacks fill it at once)
    arrived[0] = time.monotonic()
    playout.push(1, 0, 0, packets[0])
    while not waits:  # frame 0 is played: the device's pulls are every 20 ms from then
        await asyncio.sleep(0.001)
    first = arrived[0] + waits[0][1]
    for i, packet in enumerate(packets[1:], 1):
        await asyncio.sleep(max(0.0, first + i * 0.02 - 0.018 - time.monotonic()))
        arrived[i] = time.monotonic()
        playout.push(1, i, i * N, packet)
    await asyncio.sleep(0.3)
    await receiver.stop()
    print(json.dumps({"waits": waits, "trimmed": playout.stretch_stats.trimmed,
                      "block": speaker.block, "target": playout.buffer.target,
                      "delay": speaker.delay.value, "latency": speaker.latency}))

asyncio.run(main())
"""


def test_a_speaker_s_frame_phase_is_cut_in_the_first_pause(pulse: PulseLab) -> None:
    """On a real (virtual) speaker: the packets wait about 18 ms for their turn until
    a pause comes after the first second (the first frame, pulled at once, waited
    almost nothing: the cut looks at the last second's waits); from the third pause
    on they wait at least 4 ms less, and no more than the target, the device's block
    and the margin (2.5 ms each here) and some scheduling; the tone comes out of the
    speaker."""
    heard = pulse.record_speaker("a")
    out = subprocess.run([sys.executable, "-c", PHASED_SPEAKER], env={**os.environ,
                         **pulse.env_for("a")}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    waits = report["waits"]
    assert report["block"] == pytest.approx(0.0025), report["block"]
    # From a pull to its sound, from PortAudio's timestamps: about the device buffer.
    assert report["delay"] is not None, report
    assert report["latency"] - 0.005 <= report["delay"] <= report["latency"] + 0.01, report
    before = [w for i, w in waits if 2 <= i < 20]
    after = [w for i, w in waits if i >= 80]
    assert report["trimmed"] >= 1 and len(after) > 50, report["trimmed"]
    # (A packet pushed late by the event loop waits less: the cut leaves that much too.)
    assert float(np.median(before)) > 0.015, before
    assert float(np.median(after)) <= min(float(np.median(before)) - 0.004,
                                          report["target"] + 0.0025 + 0.0025 + 0.005), after
    assert_tone(loud_part(read_all(heard)), 440, skip=0.2, until=-0.2, min_purity=0.8,
                what="a's speaker")


SHM_PROBE = """
import asyncio
import numpy as np
from softphone.media.devices import SpeakerDriver

async def main():
    speaker = SpeakerDriver()
    speaker.drive(lambda: np.zeros(960, np.int16), print)
    await asyncio.sleep(0.3)
    print("memfd:pulseaudio" in open("/proc/self/maps").read())
    speaker.stop()

asyncio.run(main())
"""


def test_the_labs_clients_send_audio_without_shared_memory(pulse: PulseLab) -> None:
    """The tests' lab turns client shared memory off (PulseLab(client_shm=False): PulseAudio
    16 aborts now and then when such a connection closes under load); a phone's speaker
    in it maps no PulseAudio memfd (with it on, every one did)."""
    out = subprocess.run([sys.executable, "-c", SHM_PROBE], env={**os.environ,
                         **pulse.env_for("a")}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout


REOPEN_AFTER_SERVER_DIED = """
import asyncio, sys
from softphone.media.devices import SpeakerDriver
from softphone.media.sounddev import DeviceError

SpeakerDriver().stop()  # (the server is there)
print("opened", flush=True)
sys.stdin.readline()  # (the server is killed meanwhile)
try:
    SpeakerDriver()
except DeviceError as exc:
    print(exc)
"""


def test_a_speaker_opened_after_the_sound_server_died_says_so(pulse: PulseLab) -> None:
    """PortAudio says 'Illegal combination of I/O devices' for any ALSA open that fails;
    through PulseAudio's plugin that is a server that refused (or is gone): said so."""
    child = subprocess.Popen([sys.executable, "-c", REOPEN_AFTER_SERVER_DIED],
                             env={**os.environ, **pulse.env_for("a")}, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stdin is not None
    try:
        ready, _, _ = select.select([child.stdout], [], [], 30)
        assert ready, "the speaker did not open in 30 s"
        assert child.stdout.readline().strip() == "opened"
        pulse.kill_server()
        out, err = child.communicate("go\n", timeout=30)
    finally:
        child.kill()
    assert child.returncode == 0, err
    said = (out.strip().splitlines() or [""])[-1]  # (refused already at the format check)
    assert "is the sound server running?" in said, said
    assert "Illegal combination of I/O devices" in said, said  # (PortAudio's words kept)
