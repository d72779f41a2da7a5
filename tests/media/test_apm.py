"""The voice processor adapter (softphone/media/apm.py, apm_signals.py), pure unit tests.

These are unit tests of the adapter with synthetic signals and no devices:
the "room" is arithmetic. The far end's speech (espeak-ng) goes through a
simulated echo path (one tap, 40 ms, -6 dB) into the microphone signal,
possibly with the near end's own speech (another voice) on top; frames
are handed to ``render``/``capture`` as the speaker and microphone
callbacks would. The real WebRTC processing (``pywebrtc-audio``) runs. The
residual echo is measured by correlation with the far end's signal.
Where a test fakes something (the package missing) it says so. The same
checks on real (virtual) devices through a call are benchmarks/echo.py's
and, once the media path calls the processor, the e2e tests'.
"""

from __future__ import annotations

import fractions
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from softphone.cli.status_text import voice_status
from softphone.core.errors import MissingDependency
from softphone.media.apm import (
    PassThroughProcessor,
    VoiceProcessor,
    VoiceSettings,
    WebRtcVoiceProcessor,
    echo_state,
    open_voice_processor,
)
from softphone.media.apm_signals import EchoMeter, GainStage, ReferenceQueue

from ..conftest import need, need_command

RATE = 48_000
FRAME = 960
DELAY = int(0.040 * RATE)  # the echo path: 40 ms ...
ECHO_GAIN = 10 ** (-6 / 20)  # ... and -6 dB

FAR_TEXT = ("The birch canoe slid on the smooth planks. Glue the sheet to the dark blue "
            "background. It is easy to tell the depth of a well. These days a chicken leg "
            "is a rare dish.")
NEAR_TEXT = ("Rice is often served in round bowls. The juice of lemons makes fine punch. "
             "The box was thrown beside the parked truck.")

Signal = npt.NDArray[np.float64]


def _binding() -> None:
    try:
        import pywebrtc_audio  # noqa: F401
    except ImportError:
        need(False, "the pywebrtc-audio package", "pip install pywebrtc-audio")


def _speak(text: str, voice: str, rate: int = RATE) -> Signal:
    espeak = need_command("espeak-ng", "espeak-ng")
    sox = need_command("sox", "sox")
    wav = subprocess.run([espeak, "-v", voice, "-s", "150", "--stdout", text],
                         check=True, capture_output=True).stdout
    raw = subprocess.run([sox, "-t", "wav", "-", "-t", "raw", "-r", str(rate), "-e", "signed",
                          "-b", "16", "-c", "1", "-"], input=wav, check=True,
                         capture_output=True).stdout
    x = np.frombuffer(raw, dtype=np.int16).astype(np.float64)
    out: Signal = x / np.max(np.abs(x))
    return out


@pytest.fixture(scope="module")
def far() -> Signal:
    """The far end's speech, peaks at -6 dBFS."""
    return _speak(FAR_TEXT, "en-us") * 0.5 * 32767


@pytest.fixture(scope="module")
def near() -> Signal:
    """The near end's speech (another voice), peaks at -8 dBFS."""
    return _speak(NEAR_TEXT, "en-gb+f3") * 0.4 * 32767


def echo_of(far: Signal, delay: int = DELAY, gain: float = ECHO_GAIN) -> Signal:
    return np.concatenate((np.zeros(delay), far[:-delay])) * gain


def i16(x: Signal) -> npt.NDArray[np.int16]:
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def run(vp: VoiceProcessor, far: Signal, mic: Signal, frame: int = FRAME) -> Signal:
    """Speaker frame then microphone frame, as the two callbacks would, one frame at a time."""
    out = np.zeros(len(mic) // frame * frame)
    for i in range(len(mic) // frame):
        s = slice(i * frame, (i + 1) * frame)
        vp.render(i16(far[s]))
        out[s] = vp.capture(i16(mic[s]))
    return out


def component_db(out: Signal, ref: Signal, max_lag: int = RATE * 30 // 1000) -> float:
    """Level of what in ``out`` correlates with ``ref`` (least squares), relative to ``ref``.

    ``out`` may lag ``ref`` by up to ``max_lag`` samples: the processing
    itself delays the microphone (about 9 ms for AEC3's band split at 48 kHz,
    7 ms more for the noise suppressor); the best lag is taken.
    """
    n = min(len(out), len(ref))
    o, r = out[:n], ref[:n]
    size = 1 << int(np.ceil(np.log2(2 * n)))
    cc = np.fft.irfft(np.fft.rfft(o, size) * np.conj(np.fft.rfft(r, size)), size)[: max_lag + 1]
    lag = int(np.argmax(np.abs(cc)))
    g = float(cc[lag] / np.dot(r[: n - lag], r[: n - lag]))
    return 20 * float(np.log10(abs(g) + 1e-12))


def level_db(x: Signal) -> float:
    return 10 * float(np.log10(float(np.mean(x * x)) + 1e-12))


def segment(x: Signal, start_s: float, end_s: float | None = None) -> Signal:
    return x[int(start_s * RATE): None if end_s is None else int(end_s * RATE)]


# --- echo ---------------------------------------------------------------------------------


def test_echo_removed_after_convergence(far: Signal) -> None:
    """Far end alone: after 2 s what is left is >= 25 dB under the echo, by correlation too."""
    _binding()
    echo = echo_of(far)
    vp = open_voice_processor(VoiceSettings(ns=False, agc=False))
    out = run(vp, far, echo)
    after = (segment(out, 2.0), segment(echo, 2.0), segment(far, 2.0 - DELAY / RATE))
    residual_db = level_db(after[0]) - level_db(after[1])  # everything left, not only echo
    correlated_db = component_db(after[0], after[1])  # the echo's own share
    assert residual_db <= -25, f"residual {residual_db:.1f} dB"
    assert correlated_db <= -25, f"correlated residual {correlated_db:.1f} dB"
    st = vp.stats()
    assert st.converged and st.state == "converged"
    assert st.erle_db is not None and st.erle_db >= 20
    assert st.echo_db is not None and st.echo_db <= -25
    assert st.echo_delay_ms is not None and abs(st.echo_delay_ms - 40) <= 10
    assert st.cpu_ms_per_20ms > 0


def test_echo_removed_with_noise_suppression_and_gain(far: Signal) -> None:
    """The defaults (all three on): the gain control does not bring the echo back."""
    _binding()
    echo = echo_of(far)
    out = run(open_voice_processor(), far, echo)
    assert level_db(segment(out, 2.0)) - level_db(segment(echo, 2.0)) <= -25


def test_double_talk_keeps_the_near_speech(far: Signal, near: Signal) -> None:
    """Both talk at once: the near voice comes through, the echo still goes.

    A harsh case: the echo (-6 dB) is nearly as loud as the near voice.
    AEC3's suppressor takes some of the near voice where the echo is
    strong: measured 5 dB by level, 8 dB by correlation with the voice.
    """
    _binding()
    n = min(len(far), len(near) + 3 * RATE)
    echo = echo_of(far)[:n]
    talk = np.zeros(n)
    talk[3 * RATE:] = near[: n - 3 * RATE]  # starts after the canceller had 3 s of far end
    aec_only = VoiceSettings(ns=False, agc=False)
    both = segment(run(open_voice_processor(aec_only), far[:n], echo + talk), 3.0)
    alone = segment(run(open_voice_processor(aec_only), np.zeros(n), talk), 3.0)
    voice = segment(talk, 3.0)[: len(both)]
    lost = level_db(alone) - level_db(both)
    assert lost <= 6, f"near speech {lost:.1f} dB lower than alone in double talk"
    kept = component_db(both, voice)
    assert kept >= -10, f"near speech lost {-kept:.1f} dB (by correlation) in double talk"
    echo_left = component_db(both, segment(echo, 3.0)[: len(both)])
    assert echo_left <= -20, f"echo only {-echo_left:.1f} dB down in double talk"
    # The defaults (noise suppression and gain too): nothing lost against the voice alone.
    both = segment(run(open_voice_processor(), far[:n], echo + talk), 3.0)
    alone = segment(run(open_voice_processor(), np.zeros(n), talk), 3.0)
    lost = level_db(alone) - level_db(both)
    assert lost <= 6, f"defaults: near speech {lost:.1f} dB lower than alone in double talk"


def test_without_aec_the_echo_passes(far: Signal) -> None:
    """``aec=False`` (with noise suppression and gain on): the echo is really still there."""
    _binding()
    echo = echo_of(far)
    vp = open_voice_processor(VoiceSettings(aec=False))
    out = run(vp, far, echo)
    kept = component_db(segment(out, 2.0), segment(echo, 2.0))
    assert -6 <= kept <= 12, f"echo changed by {kept:.1f} dB without echo cancellation"
    assert vp.stats().state == "off"
    assert vp.stats().echo_db is not None and vp.stats().echo_db > -15  # type: ignore[operator]
    plain = open_voice_processor(VoiceSettings(aec=False, ns=False, agc=False))
    assert isinstance(plain, PassThroughProcessor) and plain.notice is None
    assert np.array_equal(run(plain, far, echo), i16(echo)[: len(echo) // FRAME * FRAME])


# --- devices that are not 48 kHz mono -------------------------------------------------------


def test_44k1_device_resampled_to_the_call_rate(far: Signal) -> None:
    """A 44.1 kHz device: its audio resampled to 48 kHz (FFmpeg, uneven chunks) is cleaned."""
    _binding()
    import av

    def resampler(rate_in: int) -> Callable[[npt.NDArray[np.int16]], npt.NDArray[np.int16]]:
        rs = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        pts = [0]

        def go(x: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
            f = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="s16", layout="mono")
            f.sample_rate, f.pts, f.time_base = rate_in, pts[0], fractions.Fraction(1, rate_in)
            pts[0] += x.size
            parts = [p.to_ndarray().reshape(-1) for p in rs.resample(f)]
            return np.concatenate(parts) if parts else np.zeros(0, np.int16)
        return go

    far44 = _speak(FAR_TEXT, "en-us", 44_100) * 0.5 * 32767
    mic44 = echo_of(far44, int(0.040 * 44_100))
    vp = open_voice_processor()
    spk_rs, mic_rs = resampler(44_100), resampler(44_100)
    out: list[npt.NDArray[np.int16]] = []
    sizes = set()
    block = 441 * 2  # the device's 20 ms
    for i in range(len(far44) // block):
        s = slice(i * block, (i + 1) * block)
        vp.render(spk_rs(i16(far44[s])))
        m = mic_rs(i16(mic44[s]))
        sizes.add(m.size)
        out.append(vp.capture(m))
    got = np.concatenate(out).astype(np.float64)
    assert len(sizes) > 1  # uneven chunk lengths, not whole 10 ms
    ref = echo_of(far)  # the same echo at 48 kHz, for its level
    assert level_db(segment(got, 2.5)) - level_db(segment(ref, 2.5)) <= -25
    with pytest.raises(ValueError, match="not 44100 Hz: resample"):
        VoiceSettings(sample_rate=44_100)


def test_stereo_frames_are_mixed_down(far: Signal) -> None:
    """A stereo device's (samples, 2) frames: mixed to mono, the echo still removed."""
    _binding()
    echo = echo_of(far)
    vp = open_voice_processor(VoiceSettings(ns=False, agc=False))
    out = np.zeros(len(echo) // FRAME * FRAME)
    for i in range(len(echo) // FRAME):
        s = slice(i * FRAME, (i + 1) * FRAME)
        vp.render(np.stack((i16(far[s]), i16(far[s])), axis=1))
        got = vp.capture(np.stack((i16(echo[s]), i16(echo[s] * 0.5)), axis=1))
        assert got.shape == (FRAME,)
        out[s] = got
    mixed = echo * 0.75
    assert level_db(segment(out, 2.0)) - level_db(segment(mixed, 2.0)) <= -25
    with pytest.raises(TypeError, match="int16"):
        vp.capture(np.zeros(FRAME, dtype=np.float32))  # type: ignore[arg-type, unused-ignore]


# --- threads --------------------------------------------------------------------------------


@pytest.mark.parametrize("mic_phase_ms", [7, -7])
def test_two_threads_in_real_time(far: Signal, mic_phase_ms: int) -> None:
    """Speaker and microphone callbacks on their own threads, every 20 ms.

    The microphone thread's echo comes from the samples the speaker thread
    played (by index: sample-locked, as in the PulseAudio lab), but the two
    threads run unsynchronised, the microphone's a few ms after or before
    the speaker's, so the reference arrives early or late. The echo comes
    back 80 ms after the speaker's callback: the 40 ms room plus the 20 ms
    device latency each way the processor is told of.
    """
    _binding()
    seconds = 6.0
    n = int(seconds * RATE) // FRAME
    echo = echo_of(far, int(0.080 * RATE))
    vp = WebRtcVoiceProcessor(VoiceSettings(ns=False, agc=False))
    vp.set_device_latency(0.020, 0.020)
    out = np.zeros(n * FRAME)
    start = time.monotonic() + 0.05 + 0.01
    errors: list[BaseException] = []

    def speaker() -> None:
        for i in range(n):
            time.sleep(max(0.0, start + i * 0.02 - time.monotonic()))
            vp.render(i16(far[i * FRAME:(i + 1) * FRAME]))

    def microphone() -> None:
        try:
            for i in range(n):
                time.sleep(max(0.0, start + mic_phase_ms / 1000 + i * 0.02 - time.monotonic()))
                s = slice(i * FRAME, (i + 1) * FRAME)
                out[s] = vp.capture(i16(echo[s]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=speaker), threading.Thread(target=microphone)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 10)
    assert not errors
    residual = level_db(segment(out, 2.5)) - level_db(segment(echo, 2.5, n * FRAME / RATE))
    st = vp.stats()
    assert residual <= -25, f"residual {residual:.1f} dB, phase {mic_phase_ms} ms ({st})"
    assert st.converged


# --- the pieces -----------------------------------------------------------------------------


def test_reference_queue_pairs_and_bounds_the_lag() -> None:
    """Pure logic: held back a frame; a late reference is silence, then dropped; a cap."""
    q = ReferenceQueue(RATE)
    q.cap = RATE
    assert not q.take(FRAME).any() and q.underruns == 0  # nothing played yet: not an underrun
    q.push(np.full(FRAME, 1, np.int16))
    assert not q.take(FRAME).any() and q.lag == FRAME  # the first frame is held back
    q.push(np.full(FRAME, 2, np.int16))
    assert (q.take(FRAME) == 1).all() and q.lag == FRAME
    assert (q.take(FRAME) == 2).all() and q.lag == 0 and q.underruns == 0
    q.push(np.full(FRAME // 2, 3, np.int16))
    c = q.take(FRAME)  # the speaker's callback is late: half a frame
    assert (c[: FRAME // 2] == 3).all() and not c[FRAME // 2:].any() and q.underruns == 1
    q.push(np.full(FRAME // 2, 4, np.int16))  # ... the late half: its time has passed
    q.push(np.full(FRAME, 5, np.int16))
    assert (q.take(FRAME) == 5).all() and q.lag == 0 and q.dropped == FRAME // 2
    q.cap = FRAME
    for k in range(5):
        q.push(np.full(FRAME, 10 + k, np.int16))
    assert (q.take(FRAME) == 13).all() and q.lag == FRAME and q.dropped == FRAME // 2 + 3 * FRAME
    assert (q.take(FRAME) == 14).all()
    q.take(FRAME)
    q.take(FRAME)  # the speaker stopped (or its callback now comes after the microphone's)
    q.push(np.full(FRAME, 20, np.int16))
    assert (q.take(FRAME) == 20).all()  # not dropped: the pairing takes the shift
    q.push(np.full(FRAME, 21, np.int16))
    assert (q.take(FRAME) == 21).all()


def test_reference_queue_cuts_a_standing_lag() -> None:
    """A lag that stood for 2 s above 20 ms is cut back to 20 ms."""
    q = ReferenceQueue(RATE)
    q.cap = RATE  # (the cap is the other test's)
    for _ in range(3):
        q.push(np.zeros(FRAME, np.int16))
    for _ in range(101):  # (the first take only holds the reference back)
        q.push(np.zeros(FRAME, np.int16))
        q.take(FRAME)
    assert q.lag == RATE // 50 and q.dropped == 4 * FRAME - RATE // 50


def test_meter_finds_the_echo_delay(far: Signal) -> None:
    """The envelope correlation finds a 120 ms echo path within one 5 ms step."""
    m = EchoMeter(RATE)
    echo = echo_of(far, int(0.120 * RATE))
    for i in range(int(4 * RATE) // FRAME):
        s = slice(i * FRAME, (i + 1) * FRAME)
        e = i16(echo[s])
        m.add(i16(far[s]), e, e, e, None)
    assert m.delay_ms is not None and abs(m.delay_ms - 120) <= 5
    assert m.erle_db() == pytest.approx(0.0, abs=0.01)
    assert m.echo_db() == pytest.approx(-6.0, abs=2.0)


def test_meter_waits_for_the_end_of_near_speech_with_a_hangover(far: Signal) -> None:
    """Pure logic: frames just after the near end spoke are not taken as echo."""
    m = EchoMeter(RATE, hangover=25)
    loud = i16(far[RATE: RATE + FRAME])
    for speech in (0.9, *([0.1] * 25)):  # talk, then 25 frames of hangover
        m.add(loud, loud, loud, loud, speech)
    assert m.active_frames == 0
    m.add(loud, loud, loud, loud, 0.1)
    assert m.active_frames == 1


def test_gain_stage_does_not_lift_a_loud_first_word_into_clipping() -> None:
    """Pure logic: the controller wants +10 dB from the start (as AGC2 does, after silence);
    a word peaking at -8 dBFS is raised at most to the -6 dBFS peak guard, at once."""
    g = GainStage(RATE, max_gain_db=10.0)
    quiet = np.zeros(FRAME, np.int16)
    for _ in range(100):
        g.apply(quiet, 10.0, speech=0.9)
    assert g.db == pytest.approx(10.0)  # nothing to clip yet: the wish is granted
    word = (np.sin(np.arange(FRAME) * 2 * np.pi * 200 / RATE) * 32768 * 10 ** (-8 / 20)
            ).astype(np.int16)
    out = g.apply(word, 10.0, speech=0.9)
    assert g.db == pytest.approx(2.0, abs=0.1)
    assert 20 * np.log10(np.abs(out.astype(float)).max() / 32768) == pytest.approx(-6, abs=0.2)


def test_gain_stage_rises_slowly_in_speech_and_not_at_all_in_pauses() -> None:
    """Pure logic: a quiet voice (-30 dBFS peaks) is raised at 6 dB/s while it talks;
    in a pause (speech probability low) the gain holds, so the noise is not pumped."""
    g = GainStage(RATE, max_gain_db=10.0)
    voice = (np.sin(np.arange(FRAME) * 2 * np.pi * 200 / RATE) * 32768 * 10 ** (-30 / 20)
             ).astype(np.int16)
    for _ in range(25):  # 0.5 s of speech
        out = g.apply(voice, 10.0, speech=0.9)
    assert g.db == pytest.approx(3.0, abs=0.05)
    ramp = out.astype(float) / np.where(voice == 0, 1, voice)
    assert ramp[voice > 100][0] < ramp[voice > 100][-1]  # a ramp across the frame, no step
    noise = (np.random.default_rng(1).standard_normal(FRAME) * 30).astype(np.int16)
    for _ in range(100):  # 2 s of pause
        g.apply(noise, 10.0, speech=0.05)
    assert g.db == pytest.approx(3.0, abs=0.05)
    g.apply(noise, 0.0, speech=0.05)  # the controller wants less: at once
    assert g.db == 0.0


def test_settings_are_checked_in_one_line() -> None:
    for kw in ({"ns_level": 4}, {"agc_max_gain_db": 60.0}, {"sample_rate": 8000}):
        with pytest.raises(ValueError) as err:
            VoiceSettings(**kw)  # type: ignore[arg-type, unused-ignore]
        assert "\n" not in str(err.value)


# --- the package missing --------------------------------------------------------------------


def test_missing_package_passes_through_with_a_notice(monkeypatch: pytest.MonkeyPatch,
                                                      far: Signal) -> None:
    """Faked: ``pywebrtc_audio`` made unimportable. A one-line notice, and the call goes on."""
    monkeypatch.setitem(sys.modules, "pywebrtc_audio", None)
    vp = open_voice_processor()
    assert isinstance(vp, PassThroughProcessor)
    assert isinstance(vp.notice, MissingDependency)
    text = str(vp.notice)
    assert "\n" not in text and "pip install pywebrtc-audio" in text and "goes on" in text
    mic = i16(echo_of(far)[:FRAME * 10])
    for i in range(10):
        s = slice(i * FRAME, (i + 1) * FRAME)
        vp.render(i16(far[s]))
        assert np.array_equal(vp.capture(mic[s]), mic[s])
    st = vp.stats()
    assert st.state == "unavailable" and not st.converged and st.frames == 10


def test_the_echo_state_enters_converged_at_12_db_and_leaves_it_only_well_below() -> None:
    """Converged from ERLE 12 dB (or echo -45 dB) after 50 frames of the far end alone;
    once there, a dip of the estimate (the end of double talk) does not flap it back:
    it takes ERLE under 6 dB and echo over -35 dB."""
    assert echo_state(False, 500, 40.0, -80.0, False) == "off"
    assert echo_state(True, 0, None, None, False) == "waiting"
    assert echo_state(True, 49, 40.0, -80.0, False) == "converging"
    assert echo_state(True, 50, 12.0, -20.0, False) == "converged"
    assert echo_state(True, 50, 3.0, -45.0, False) == "converged"
    assert echo_state(True, 50, 9.0, -40.0, False) == "converging"  # not yet
    assert echo_state(True, 500, 9.0, -40.0, True) == "converged"  # a dip
    assert echo_state(True, 500, 6.0, -20.0, True) == "converged"  # the edges
    assert echo_state(True, 500, 3.0, -35.0, True) == "converged"
    assert echo_state(True, 500, 5.9, -34.9, True) == "converging"  # really lost
    assert echo_state(True, 500, None, None, True) == "converging"


def test_a_microphone_that_hears_no_far_end_is_no_echo_not_converged(far: Signal) -> None:
    """A headset or a silent microphone: the far end plays, the microphone holds nothing of
    it. The state says there is no echo, not that a canceller converged on -120 dB; and
    the line says so. An echo that then comes (the headset unplugged) is measured."""
    assert echo_state(True, 50, 0.0, -120.0, False, mic=-120.0) == "no-echo"
    assert echo_state(True, 50, 0.0, -120.0, False, mic=-60.0) == "no-echo"
    assert echo_state(True, 49, 0.0, -120.0, False, mic=-120.0) == "converging"  # not yet
    assert echo_state(True, 50, 40.0, -70.0, False, mic=-6.0) == "converged"
    assert echo_state(False, 500, None, None, False, mic=-120.0) == "off"
    _binding()
    vp = open_voice_processor(VoiceSettings())
    three = int(3 * RATE)
    run(vp, far[:three], np.zeros(three))
    st = vp.stats()
    assert st.state == "no-echo" and not st.converged, st
    assert voice_status(st, {}) == ["aec no echo"]
    run(vp, far[three:], echo_of(far)[three:])  # the same far end, now with its echo
    st = vp.stats()
    assert st.state == "converged" and st.echo_db is not None and st.echo_db < -40, st
    assert voice_status(st, {}) == [f"aec converged echo {st.echo_db:.0f}dB"]


@pytest.mark.parametrize("rate", [16_000, 32_000, 48_000])
def test_the_delay_it_reports_is_the_delay_it_adds(rate: int) -> None:
    """Through the real binding, stage by stage: the microphone's sound comes out of
    the processing as late as ``delay`` says (the lag of the best match of output and
    input, to the sample), in whole 10 ms frames and in 7 ms ones (held back too)."""
    _binding()
    rng = np.random.default_rng(3)
    mic = rng.standard_normal(rate * 3) * 3000.0
    ten, seven = rate // 100, rate * 7 // 1000
    for aec, ns, agc, chunk in ((True, False, False, ten), (False, True, False, ten),
                                (True, True, True, ten), (True, True, True, seven)):
        vp = open_voice_processor(VoiceSettings(aec=aec, ns=ns, agc=agc, sample_rate=rate))
        outs, delays = [], []
        for i in range(0, mic.size - chunk + 1, chunk):
            vp.render(np.zeros(chunk, np.int16))
            outs.append(vp.capture(i16(mic[i:i + chunk])))
            delays.append(round(vp.delay * rate))
        out = np.concatenate(outs).astype(np.float64)
        seg = mic[rate:2 * rate]
        lag = max(range(rate // 20), key=lambda d: float(np.dot(out[rate + d:2 * rate + d], seg)))
        expected = delays[-1]
        assert abs(lag - expected) <= 1, (aec, ns, chunk, lag, expected)
        if chunk == ten:  # (uneven frames: it grows to its most, then stays)
            assert set(delays) == {expected}
            assert vp.stats().delay_ms == pytest.approx(expected / rate * 1000, abs=0.06)
    assert open_voice_processor(VoiceSettings(aec=False, ns=False, agc=False)).delay == 0.0
