"""Echo cancellation, noise suppression and gain, through real calls on virtual devices.

A is the laptop in a room: a softphone on PulseAudio virtual devices whose
speaker is heard again by its own microphone (tests/support/echolab.py:
``module-loopback``, 40 ms, -6 dB, sample-locked). B is the far end with a
headset: ``softphone call a --play far.wav --record heard.wav --no-audio``.
Everything B records is what A sent; B's own speech in it (by correlation
with what B played) is the echo A's processing left. A's near-end voice is
played into A's microphone with the echo.

Nothing is faked but the missing package in the last test (an import
that fails, said there).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from softphone.hub.server import Hub
from softphone.media.audio import SAMPLE_RATE, ToneGenerator

from ..conftest import hub_url, need_command
from ..support.echolab import EchoLab, component_db, speech
from ..support.helpers import Proc, assert_tone, read_wav, softphone_command
from ..support.pulse import need_pulse

pytestmark = pytest.mark.e2e

Samples = npt.NDArray[np.int16]

FAR_TEXT = ("The birch canoe slid on the smooth planks. Glue the sheet to the dark blue "
            "background. It is easy to tell the depth of a well. These days a chicken leg is "
            "a rare dish.")
NEAR_TEXT = "Rice is often served in round bowls. The juice of lemons makes fine punch."
#: When A's near-end voice starts, seconds after B's call connected.
NEAR_AT = 6.0
#: B's speech comes back after a round trip (B -> A's room -> B) of this many seconds.
ROUND_TRIP = (0.0, 0.8)


@dataclass(frozen=True)
class Voices:
    far: Samples  # what B sends (1 s of silence first)
    far_wav: Path
    near: Samples  # A's near-end voice (another speaker)


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> Voices:
    espeak = need_command("espeak-ng", "espeak-ng")
    sox = need_command("sox", "sox")
    far = speech(FAR_TEXT, "en-us", -6.0, lead=1.0, espeak=espeak, sox=sox)
    near = speech(NEAR_TEXT, "en-gb+f3", -8.0, espeak=espeak, sox=sox)
    path = tmp_path_factory.mktemp("voices") / "far.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(far.astype("<i2").tobytes())
    return Voices(far, path, near)


@pytest.fixture
def echolab() -> Iterator[EchoLab]:
    """A's speaker back into A's microphone: 40 ms, -6 dB."""
    need_pulse()
    lab = EchoLab(("a", "b"), echo=("a",), client_shm=False).start()
    try:
        yield lab
    finally:
        lab.stop()


@dataclass
class Talk:
    heard: Samples  # what B recorded: all A sent
    a: Proc
    stats: list[dict[str, Any]]  # A's periodic stats events

    @property
    def last_voice(self) -> dict[str, Any]:
        found = [s["voice_processing"] for s in self.stats if s.get("voice_processing")]
        assert found, f"no voice_processing in A's stats: {self.a.stdout[-2000:]}"
        last: dict[str, Any] = found[-1]
        return last


async def talk(hub: Hub, lab: EchoLab, procs: list[Proc], tmp: Path, voices: Voices,
               flags: tuple[str, ...] = (), *, near: Samples | None = None,
               a_argv: list[str] | None = None) -> Talk:
    """One call: A listens on the echo lab's devices, B plays the far voice and records."""
    url = hub_url(hub)
    args = ("listen", "--as", "a", "--server", url, "--auto-accept", "--once", "--json",
            *flags)
    a = Proc(*args, env=lab.env_for("a"),
             argv=None if a_argv is None else [*a_argv, *args])
    procs.append(a)
    await a.wait_for_output('"event":"listening"', within=30)
    heard = tmp / "heard.wav"
    seconds = voices.far.size / SAMPLE_RATE + 1.0
    b = Proc("call", "a", "--as", "b", "--server", url, "--play", str(voices.far_wav),
             "--record", str(heard), "--duration", f"{seconds:.1f}", "--no-audio", "--json",
             env=lab.env)
    procs.append(b)
    await b.wait_for_output('"state":"connected"', within=30)
    if near is not None:
        await asyncio.sleep(NEAR_AT)
        lab.play_into_mic("a", near)
    assert await b.wait(seconds + 40) == 0, b.stdout + b.stderr
    assert await a.wait(30) == 0, a.stdout + a.stderr
    assert "Traceback" not in a.stderr, a.stderr
    samples, rate = read_wav(heard)
    assert rate == SAMPLE_RATE
    stats = [e for e in map(_json, a.stdout.splitlines()) if e.get("event") == "stats"]
    return Talk(samples, a, stats)


def _json(line: str) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}


def placed(samples: Samples, at: float, length: int) -> Samples:
    """``samples`` starting ``at`` seconds into silence ``length`` samples long."""
    out: Samples = np.zeros(length, dtype=np.int16)
    a = int(at * SAMPLE_RATE)
    n = min(samples.size, length - a)
    out[a: a + n] = samples[:n]
    return out


def speech_end(samples: Samples) -> float:
    """Seconds to the last sample above -50 dBFS."""
    return float(np.flatnonzero(np.abs(samples) > 100)[-1]) / SAMPLE_RATE


async def test_echo_is_removed_and_the_near_voice_comes_through_double_talk(
        hub: Hub, echolab: EchoLab, procs: list[Proc], tmp_path: Path, voices: Voices) -> None:
    """Defaults: B's own speech comes back 25 dB down or more; A's voice gets through it."""
    t = await talk(hub, echolab, procs, tmp_path, voices, near=voices.near)
    far = placed(voices.far, 0.0, t.heard.size)
    # B talks alone from 1 s; A's voice starts NEAR_AT s after B connected.
    echo = component_db(t.heard, far, 2.5, NEAR_AT - 0.5, ROUND_TRIP)
    assert echo <= -25, f"B's speech came back only {-echo:.1f} dB down"
    near = placed(voices.near, NEAR_AT, t.heard.size)
    end = NEAR_AT + speech_end(voices.near)
    double_talk_end = min(end, speech_end(voices.far))
    assert double_talk_end - NEAR_AT > 2.0  # the two really overlap
    kept = component_db(t.heard, near, NEAR_AT + 0.5, double_talk_end)
    assert kept >= -10, f"A's voice lost {-kept:.1f} dB while B talked too"
    # (The echo left in double talk is not measured here: with two voices in what B
    # hears, B's own speech correlates with A's at some lag about as well as a -15 dB
    # echo would. benchmarks/echo.py measures it against the voice alone.)
    voice = t.last_voice
    assert voice["aec"] and voice["ns"] and voice["agc"], voice
    history = [(v["state"], v["erle_db"], v["echo_db"], v["frames"]) for v in
               (s["voice_processing"] for s in t.stats if s.get("voice_processing"))]
    assert voice["state"] == "converged" and voice["converged"], history
    assert voice["echo_delay_ms"] is not None, voice
    # Its own estimate of the echo left, while B talked alone (2 s stats events).
    alone = [s["voice_processing"] for s in t.stats
             if 3.0 <= s["time"] - t.stats[0]["time"] <= NEAR_AT - 1.0]
    assert alone and alone[-1]["echo_db"] is not None and alone[-1]["echo_db"] <= -25, alone
    assert "aec converged" in t.a.stderr, t.a.stderr[-2000:]  # the plain status line
    devices = t.stats[-1]["devices"]
    assert devices["mic_rate"] == SAMPLE_RATE and devices["speaker_channels"] == 1, devices
    assert "speaker_underruns" in devices and "mic_overflows" in devices, devices
    # Where A's share of the delay goes: its devices' delays from PortAudio's timestamps
    # (the microphone's is a block or two through PulseAudio, the speaker's its buffer
    # and a block), the processing's 16 ms (430 + 334 samples), the frame, Opus's
    # look-ahead; the packets' wait in its jitter buffer; half the round trip.
    delay = t.stats[-1]["delay"]
    assert devices["mic_delay_ms"] is not None and devices["speaker_delay_ms"] is not None
    assert 0.0 <= devices["mic_delay_ms"] <= delay["mic_ms"] <= 15.0, (delay, devices)
    assert delay["speaker_ms"] == devices["speaker_delay_ms"], (delay, devices)
    assert devices["speaker_latency_ms"] - 5 <= delay["speaker_ms"] <= \
        devices["speaker_latency_ms"] + 10, (delay, devices)
    assert (delay["processing_ms"], delay["frame_ms"], delay["codec_ms"]) == (15.9, 20.0, 6.5)
    assert 0.0 <= delay["jitter_buffer_ms"] <= 100.0, delay
    assert delay["network_ms"] is not None and 0.0 <= delay["network_ms"] < 20.0, delay
    assert delay["send_ms"] == pytest.approx(delay["mic_ms"] + 42.4, abs=0.15), delay
    assert delay["receive_ms"] == pytest.approx(
        delay["jitter_buffer_ms"] + delay["speaker_ms"], abs=0.15), delay


async def test_no_aec_really_turns_the_echo_canceller_off(
        hub: Hub, echolab: EchoLab, procs: list[Proc], tmp_path: Path, voices: Voices) -> None:
    """--no-aec (noise suppression and gain still on): B hears itself back, about -6 dB."""
    t = await talk(hub, echolab, procs, tmp_path, voices, ("--no-aec",))
    far = placed(voices.far, 0.0, t.heard.size)
    echo = component_db(t.heard, far, 2.5, speech_end(voices.far), ROUND_TRIP)
    assert echo >= -15, f"without echo cancellation the echo was still {-echo:.1f} dB down"
    voice = t.last_voice
    assert voice["state"] == "off" and not voice["aec"] and voice["ns"], voice
    assert "aec off" in t.a.stderr, t.a.stderr[-2000:]
    assert t.stats[-1]["delay"]["processing_ms"] == 7.0, t.stats[-1]["delay"]  # (334 samples)


# A's side through the Python API: a microphone at 44.1 kHz stereo and a speaker at
# 32 kHz stereo (the ALSA pulse plugin converts to the lab's 48 kHz mono devices).
API_PHONE = """
import asyncio, json, sys
from softphone.client.phone import Phone
from softphone.media.apm import VoiceSettings
from softphone.media.audiopath import MediaConfig
from softphone.media.devices import MicSource, SpeakerDriver

async def main():
    phone = Phone("a", sys.argv[1], ice_servers=[],
                  media=MediaConfig(voice_processing=VoiceSettings()))
    await phone.connect()
    print('{"event":"listening"}', flush=True)
    call = await phone.next_call()
    mic = MicSource(samplerate=44100, channels=2)
    speaker = SpeakerDriver(samplerate=32000, channels=2)
    await call.accept(mic, [], output=speaker)
    await call.ended()
    print(json.dumps({"event": "stats", "voice_processing": call.audio.voice_stats().as_dict(),
                      "devices": call.audio.device_stats()}), flush=True)
    await phone.close()

asyncio.run(main())
"""


async def test_devices_at_other_rates_and_channels_still_cancel_the_echo(
        hub: Hub, echolab: EchoLab, procs: list[Proc], tmp_path: Path, voices: Voices) -> None:
    """A 44.1 kHz stereo microphone, a 32 kHz stereo speaker: the echo still goes, a tone
    played into the microphone still comes out at its frequency."""
    url = hub_url(hub)
    a = Proc(argv=[sys.executable, "-c", API_PHONE, url], env=echolab.env_for("a"))
    procs.append(a)
    await a.wait_for_output('"event":"listening"', within=30)
    heard = tmp_path / "heard.wav"
    seconds = voices.far.size / SAMPLE_RATE + 4.0
    b = Proc("call", "a", "--as", "b", "--server", url, "--play", str(voices.far_wav),
             "--record", str(heard), "--duration", f"{seconds:.1f}", "--no-audio", "--json",
             env=echolab.env)
    procs.append(b)
    await b.wait_for_output('"state":"connected"', within=30)
    await asyncio.sleep(voices.far.size / SAMPLE_RATE)
    echolab.play_tone("a", 700, 3.0, amplitude=0.2)  # after B's speech
    assert await b.wait(seconds + 40) == 0, b.stdout + b.stderr
    assert await a.wait(30) == 0, a.stdout + a.stderr
    samples, _ = read_wav(heard)
    far = placed(voices.far, 0.0, samples.size)
    echo = component_db(samples, far, 2.5, speech_end(voices.far), ROUND_TRIP)
    assert echo <= -25, f"B's speech came back only {-echo:.1f} dB down"
    tail = samples[int((voices.far.size / SAMPLE_RATE) * SAMPLE_RATE):]
    assert_tone(tail[np.flatnonzero(np.abs(tail) > 1000)[0]:], 700, skip=0.3, until=-0.3,
                min_seconds=1.5, min_purity=0.8, what="A's microphone at 44.1 kHz stereo")
    report = [_json(line) for line in a.stdout.splitlines()][-1]
    devices = report["devices"]
    assert (devices["mic_rate"], devices["mic_channels"]) == (44100, 2), devices
    assert (devices["speaker_rate"], devices["speaker_channels"]) == (32000, 2), devices
    assert report["voice_processing"]["converged"], report
    # The devices' delays, measured through the resamplers too.
    assert devices["mic_delay_ms"] is not None and 0.0 <= devices["mic_delay_ms"] <= 15.0
    assert devices["speaker_delay_ms"] is not None, devices
    assert devices["speaker_latency_ms"] - 5 <= devices["speaker_delay_ms"] <= \
        devices["speaker_latency_ms"] + 10, devices


# The package missing: its import fails (faked here, the only fake in this file), the
# rest of softphone is the real CLI.
NO_BINDING = """
import builtins, sys
real = builtins.__import__
def without_binding(name, *args, **kwargs):
    if name == "pywebrtc_audio" or name.startswith("pywebrtc_audio."):
        raise ImportError("No module named 'pywebrtc_audio'")
    return real(name, *args, **kwargs)
builtins.__import__ = without_binding
from softphone.cli.main import main
sys.argv = ["softphone", *sys.argv[1:]]
main()
"""


async def test_missing_processor_is_one_line_and_the_call_goes_on(
        hub: Hub, echolab: EchoLab, procs: list[Proc], tmp_path: Path, voices: Voices) -> None:
    tone = ToneGenerator(600, 0.3).next(int(4 * SAMPLE_RATE))
    t = await talk(hub, echolab, procs, tmp_path, voices, near=tone,
                   a_argv=[sys.executable, "-c", NO_BINDING])
    notices = [line for line in t.a.stderr.splitlines() if "pywebrtc-audio" in line]
    assert len(notices) == 1, t.a.stderr
    assert notices[0].startswith("softphone: no echo cancellation") and \
        "pip install pywebrtc-audio" in notices[0], notices
    assert "call completed" in t.a.stderr, t.a.stderr
    voice = t.last_voice
    assert voice["state"] == "unavailable" and not voice["converged"], voice
    assert "aec n/a" in t.a.stderr, t.a.stderr[-2000:]
    # The call went on: A's microphone (the tone, and the echo: nothing cancels it) got through.
    start = int((NEAR_AT + 0.5) * SAMPLE_RATE)
    part = t.heard[start: start + 3 * SAMPLE_RATE]
    assert part.size == 3 * SAMPLE_RATE
    spectrum = np.abs(np.fft.rfft(part.astype(np.float64)))
    freqs = np.fft.rfftfreq(part.size, 1 / SAMPLE_RATE)
    near_600 = spectrum[(freqs > 590) & (freqs < 610)].max()
    assert near_600 > 20 * np.median(spectrum[(freqs > 200) & (freqs < 4000)]), \
        "the tone played into A's microphone did not reach B"
    far = placed(voices.far, 0.0, t.heard.size)
    echo = component_db(t.heard, far, 2.5, NEAR_AT - 0.5, ROUND_TRIP)
    assert echo >= -15, f"nothing cancels the echo, yet it was {-echo:.1f} dB down"


def test_the_config_file_and_environment_turn_the_processing_off(tmp_path: Path) -> None:
    """``[audio] aec = false`` in the file, SOFTPHONE_AUDIO_NS in the environment, --no-agc."""
    config = tmp_path / "config.toml"
    config.write_text("[audio]\naec = false\n")
    out = subprocess.run(
        softphone_command("--config", str(config), "--show-settings-json", "listen", "--as", "a",
                          "--no-agc"),
        env={**os.environ, "SOFTPHONE_AUDIO_NS": "false"}, capture_output=True, text=True,
        timeout=30)
    assert out.returncode == 0, out.stderr
    settings = json.loads(out.stdout)["settings"]
    assert settings["audio.aec"]["value"] is False and settings["audio.aec"]["source"] == "file"
    assert settings["audio.ns"]["value"] is False
    assert settings["audio.ns"]["source"] == "environment"
    assert settings["audio.agc"]["value"] is False and settings["audio.agc"]["source"] == "flag"
