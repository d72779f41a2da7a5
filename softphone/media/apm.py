"""Echo cancellation, noise suppression and gain control on the microphone path.

One :class:`VoiceProcessor` per call, fed from the two audio threads:

- ``render(frame)`` with every frame the speaker plays (the far-end
  reference), on the speaker's (PortAudio output) thread;
- ``capture(frame) -> frame`` with every microphone frame, on the one
  thread that forms the microphone frames (best: the PortAudio input
  callback, before anything is dropped); it returns the cleaned frame.

Frames are mono int16 at ``VoiceSettings.sample_rate`` (the call's 48 kHz:
render the frame before resampling it for the speaker, capture it after
resampling the microphone); a 2-D ``(samples, channels)`` frame is mixed
down to mono. Any length works; lengths that are whole 10 ms (the call's
20 ms frames) take the fast path.

Threads: render and capture never take a lock. The reference goes from the
speaker thread to the microphone thread through a ``deque`` (``append`` and
``popleft`` are atomic); everything else belongs to the capture thread,
and :meth:`VoiceProcessor.stats` returns an immutable snapshot that the
capture thread swaps in. The processing itself runs inside ``capture`` on
the caller's thread, with the GIL released: 0.3 ms of CPU per 20 ms frame
for the echo canceller alone, 0.45 ms with all three. It delays the
microphone by about 9 ms (AEC3's band split at 48 kHz) plus 7 ms (the noise
suppressor): that much more mouth to ear (:attr:`VoiceProcessor.delay`).

The binding is ``pywebrtc-audio`` (WebRTC's AEC3, noise suppressor and
AGC2, numpy only). Its ``AudioProcessor`` runs the noise suppressor at
48 kHz with about 7 dB of effect whatever ``ns_level`` says (the standalone
``NoiseSuppressor`` gives the level asked for), and its AGC2 starts at
+15 dB whatever the maximum gain and comes down slowly: so the three
stages are its separate classes, and AGC2 only decides the gain, which
:class:`~softphone.media.apm_signals.GainStage` applies (at most
``agc_max_gain_db``, never lifting the recent peak above -6 dBFS, rising
only while someone talks: a loud first word is not clipped, a pause does
not pump the noise). It takes the
reference and the capture in one call, paired sample for sample:
:class:`~softphone.media.apm_signals.ReferenceQueue` pairs them, and
:class:`~softphone.media.apm_signals.EchoMeter` estimates what the binding
does not report (echo level, ERLE, echo delay). Another binding (LiveKit's
``rtc.AudioProcessingModule``: ``process_reverse_stream`` in ``render``,
``process_stream`` in ``capture``, 10 ms frames, in place) would be another
class with the same methods. Without the package,
:func:`open_voice_processor` returns a :class:`PassThroughProcessor` whose
``notice`` says what to install; the call goes on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import numpy as np
import numpy.typing as npt

from softphone.core.errors import MissingDependency
from softphone.media.apm_signals import EchoMeter, GainStage, ReferenceQueue
from softphone.media.audio import SAMPLE_RATE, Int16Array

if TYPE_CHECKING:
    from pywebrtc_audio import EchoCanceller, GainController, NoiseSuppressor, VoiceDetector

log = logging.getLogger(__name__)

#: Rates the binding's separate stages take (the call runs at 48 kHz).
SUPPORTED_RATES = (16_000, 32_000, 48_000)
INSTALL = "pip install pywebrtc-audio"
NOTICE = ("no echo cancellation, noise suppression or gain control: the pywebrtc-audio "
          f"package is missing ({INSTALL}); the call goes on without them")

#: Samples by which the binding's echo canceller and noise suppressor delay the
#: microphone, at each rate (its band split, its blocks and the suppressor's overlap;
#: measured, and checked against the binding by tests/media/test_apm.py).
STAGE_DELAY: Final = MappingProxyType({16_000: (128, 96), 32_000: (260, 196),
                                       48_000: (430, 334)})

#: The echo canceller is "converged" from this ERLE (dB) or this echo level (dB) on.
CONVERGED_ERLE: Final = 12.0
CONVERGED_ECHO: Final = -45.0
#: Once converged, it says otherwise only this much lower in ERLE and higher in echo (dB).
LEAVE_ERLE_BY: Final = 6.0
LEAVE_ECHO_BY: Final = 10.0
#: A microphone this far (dB) under the far end before any processing holds no echo
#: to cancel (a headset, a muted or silent device).
NO_ECHO_DB: Final = -60.0

State = Literal["off", "unavailable", "waiting", "converging", "converged", "no-echo"]


@dataclass(frozen=True)
class VoiceSettings:
    """What a call does to its microphone (each on by default)."""

    aec: bool = True
    ns: bool = True
    agc: bool = True
    sample_rate: int = SAMPLE_RATE
    #: Noise suppression 0..3: at most 6, 12, 18 or 21 dB off stationary noise.
    ns_level: int = 2
    #: Gain control never adds more than this (the binding would start at +15 dB).
    agc_max_gain_db: float = 10.0
    #: Distance kept between the speech level the gain aims at and full scale.
    agc_headroom_db: float = 10.0
    #: The gain stops rising when the noise it would amplify reaches this level.
    agc_max_noise_dbfs: float = -70.0

    def __post_init__(self) -> None:
        if self.sample_rate not in SUPPORTED_RATES:
            rates = ", ".join(str(r) for r in SUPPORTED_RATES)
            raise ValueError(f"voice processing runs at {rates} Hz, not {self.sample_rate} Hz: "
                             f"resample the device's audio to the call's {SAMPLE_RATE} Hz first")
        if not 0 <= self.ns_level <= 3:
            raise ValueError(f"noise suppression level must be 0..3, not {self.ns_level}")
        if not 0.0 <= self.agc_max_gain_db <= 50.0:
            raise ValueError(f"gain control's maximum gain must be 0..50 dB, "
                             f"not {self.agc_max_gain_db}")

    @property
    def any(self) -> bool:
        return self.aec or self.ns or self.agc


@dataclass(frozen=True)
class VoiceStats:
    """A snapshot of the processor (status line, ``--json`` stats)."""

    state: State
    aec: bool
    ns: bool
    agc: bool
    #: Echo return loss enhancement: echo in the microphone over what the canceller left (dB).
    erle_db: float | None = None
    #: What is left of the far end's sound in what we send, relative to it (dB).
    echo_db: float | None = None
    #: Speaker reference -> its echo in the capture, measured (ms; None until found).
    echo_delay_ms: float | None = None
    #: The delay hint handed to the canceller (ms).
    delay_hint_ms: int = 0
    speech_probability: float | None = None
    gain_db: float | None = None
    frames: int = 0
    #: Times the capture found the reference short (the speaker was late) or too long.
    reference_underruns: int = 0
    reference_dropped_ms: float = 0.0
    #: CPU time of the processing per 20 ms of audio (ms, mean since the last snapshot).
    cpu_ms_per_20ms: float = 0.0
    #: How much later the microphone's sound goes out for the processing (ms).
    delay_ms: float = 0.0

    @property
    def converged(self) -> bool:
        return self.state == "converged"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["converged"] = self.converged
        return out


class VoiceProcessor(Protocol):
    """The microphone path's processing, whatever library does it."""

    @property
    def settings(self) -> VoiceSettings: ...

    @property
    def notice(self) -> MissingDependency | None:
        """Why the processing asked for does not run (one line), or None."""

    def render(self, frame: npt.NDArray[np.int16]) -> None:
        """On the speaker thread: ``frame`` is what the speaker plays now."""

    def capture(self, frame: npt.NDArray[np.int16]) -> Int16Array:
        """On the microphone thread: ``frame`` cleaned (same length, mono)."""

    def set_device_latency(self, output_s: float, input_s: float) -> None:
        """PortAudio's output and input latencies (seconds), for the delay hint."""

    @property
    def delay(self) -> float:
        """Seconds by which the processing delays the microphone (mouth to ear)."""

    def stats(self) -> VoiceStats: ...


def mono_int16(frame: npt.NDArray[Any]) -> Int16Array:
    """``frame`` as 1-D int16: 2-D ``(samples, channels)`` is mixed down."""
    if frame.dtype != np.int16:
        raise TypeError(f"voice processing takes int16 samples, not {frame.dtype}")
    if frame.ndim == 1:
        return frame
    if frame.ndim == 2:
        if frame.shape[1] == 1:
            return np.ascontiguousarray(frame[:, 0])
        mixed: Int16Array = frame.mean(axis=1, dtype=np.float32).astype(np.int16)
        return mixed
    raise ValueError(f"a frame is (samples,) or (samples, channels), not {frame.shape}")


def load_binding() -> ModuleType:
    """``import pywebrtc_audio``, or :class:`MissingDependency` with the one-line notice."""
    try:
        import pywebrtc_audio
    except ImportError as exc:
        raise MissingDependency(NOTICE) from exc
    module: ModuleType = pywebrtc_audio
    return module


def open_voice_processor(settings: VoiceSettings | None = None) -> VoiceProcessor:
    """The processor for ``settings``: pass-through when all is off or the package is missing."""
    settings = settings or VoiceSettings()
    if not settings.any:
        return PassThroughProcessor(settings)
    try:
        binding = load_binding()
    except MissingDependency as exc:
        # (Said once by whoever runs the calls: the CLI at start, an API user from .notice.)
        log.info("%s", exc)
        return PassThroughProcessor(settings, notice=exc)
    return WebRtcVoiceProcessor(settings, binding)


def echo_state(aec: bool, active_frames: int, erle: float | None, echo: float | None,
               was_converged: bool, mic: float | None = None) -> State:
    """The canceller's state from the meter's figures: ``active_frames`` of the far end
    alone so far, its ERLE and the echo left (dB). Converged from 12 dB of ERLE or
    -45 dB of echo; once converged, it takes 6 dB less ERLE and 10 dB more echo to
    say otherwise (the estimate wavers at the end of double talk; the state should
    not flap). ``mic``: the microphone before processing, relative to the far end
    (dB); at :data:`NO_ECHO_DB` or under, there is no echo to cancel ("no-echo")."""
    if not aec:
        return "off"
    if active_frames < 50:
        return "waiting" if active_frames == 0 else "converging"
    if mic is not None and mic <= NO_ECHO_DB:
        return "no-echo"
    erle_floor = CONVERGED_ERLE - (LEAVE_ERLE_BY if was_converged else 0.0)
    echo_ceiling = CONVERGED_ECHO + (LEAVE_ECHO_BY if was_converged else 0.0)
    if (erle is not None and erle >= erle_floor) or (echo is not None and echo <= echo_ceiling):
        return "converged"
    return "converging"


class PassThroughProcessor:
    """No processing: the microphone goes out as it came (mono)."""

    def __init__(self, settings: VoiceSettings | None = None,
                 notice: MissingDependency | None = None) -> None:
        self._settings = settings or VoiceSettings(aec=False, ns=False, agc=False)
        self._notice = notice
        self._frames = 0

    @property
    def settings(self) -> VoiceSettings:
        return self._settings

    @property
    def notice(self) -> MissingDependency | None:
        return self._notice

    def render(self, frame: npt.NDArray[np.int16]) -> None:
        pass

    def capture(self, frame: npt.NDArray[np.int16]) -> Int16Array:
        self._frames += 1
        return mono_int16(frame)

    def set_device_latency(self, output_s: float, input_s: float) -> None:
        pass

    @property
    def delay(self) -> float:
        return 0.0

    def stats(self) -> VoiceStats:
        return VoiceStats("unavailable" if self._notice else "off", False, False, False,
                          frames=self._frames)


class WebRtcVoiceProcessor:
    """:class:`VoiceProcessor` on ``pywebrtc-audio``: AEC3, then NS, then AGC2."""

    def __init__(self, settings: VoiceSettings, binding: ModuleType | None = None) -> None:
        wa = binding or load_binding()
        self._settings = s = settings
        rate = s.sample_rate
        self._chunk = rate // 100
        self._aec: EchoCanceller | None = wa.EchoCanceller(sample_rate=rate) if s.aec else None
        self._ns: NoiseSuppressor | None = (wa.NoiseSuppressor(sample_rate=rate, level=s.ns_level)
                                            if s.ns else None)
        self._agc: GainController | None = wa.GainController(
            sample_rate=rate, max_gain_db=s.agc_max_gain_db, headroom_db=s.agc_headroom_db,
            max_output_noise_level_dbfs=s.agc_max_noise_dbfs) if s.agc else None
        self._vad: VoiceDetector | None = (wa.VoiceDetector(sample_rate=rate)
                                           if not (s.ns or s.agc) else None)
        self._gain_stage = GainStage(rate, s.agc_max_gain_db)
        self._ref = ReferenceQueue(rate)
        self._meter = EchoMeter(rate, hangover=25 if s.aec else 0)
        self._latency_ms = 40.0
        self._hint = 0
        self._rem = np.zeros(0, dtype=np.int16)  # capture not yet a whole 10 ms
        self._out = np.zeros(0, dtype=np.int16)  # processed, not yet returned
        self._speech: float | None = None
        self._gain: float | None = None
        self._frames = 0
        self._cpu_ns = 0
        self._cpu_samples = 0
        self._converged = False
        self._stats = self._snapshot()
        self._set_hint(int(self._latency_ms))

    @property
    def settings(self) -> VoiceSettings:
        return self._settings

    @property
    def notice(self) -> MissingDependency | None:
        return None

    @property
    def delay(self) -> float:
        """The stages' delay (:data:`STAGE_DELAY`), and what ``capture`` holds back
        while it is given frames that are not whole 10 ms."""
        s = self._settings
        aec, ns = STAGE_DELAY[s.sample_rate]
        held = self._out.size + self._rem.size
        return (aec * s.aec + ns * s.ns + held) / s.sample_rate

    # speaker thread ------------------------------------------------------------

    def render(self, frame: npt.NDArray[np.int16]) -> None:
        self._ref.push(mono_int16(frame))

    # any thread ----------------------------------------------------------------

    def set_device_latency(self, output_s: float, input_s: float) -> None:
        self._latency_ms = (output_s + input_s) * 1000.0

    def stats(self) -> VoiceStats:
        return self._stats

    # microphone thread ---------------------------------------------------------

    def capture(self, frame: npt.NDArray[np.int16]) -> Int16Array:
        near = mono_int16(frame)
        n = near.size
        if n % self._chunk == 0 and self._rem.size == 0 and self._out.size == 0:
            return self._process(near)
        # Not whole 10 ms: process what is, return in order (delayed by under 10 ms).
        buf = np.concatenate((self._rem, near))
        whole = buf.size - buf.size % self._chunk
        self._rem = buf[whole:]
        if whole:
            self._out = np.concatenate((self._out, self._process(buf[:whole])))
        if self._out.size < n:
            self._out = np.concatenate((np.zeros(n - self._out.size, np.int16), self._out))
        result, self._out = self._out[:n], self._out[n:]
        return result

    def _process(self, near: Int16Array) -> Int16Array:
        n = near.size
        self._ref.cap = max(self._chunk, int((self._latency_ms - 5.0) * self._settings
                                             .sample_rate / 1000))
        far = self._ref.take(n)
        t0 = time.thread_time_ns()
        cancelled = self._aec.process(near, far) if self._aec is not None else near
        out = cancelled
        speech: float | None = None
        if self._ns is not None:
            out = self._ns.process(out)
            speech = float(self._ns.speech_probability)
        if self._agc is not None:
            # AGC2 measures and decides; the gain stage applies it without clipping
            # the first loud words (AGC2 starts at +15 dB and comes down slowly).
            self._agc.process(out, speech)
            if speech is None:
                speech = float(self._agc.speech_probability)
            out = self._gain_stage.apply(out, float(self._agc.gain_db), speech)
            self._gain = self._gain_stage.db
        if self._vad is not None:
            speech = float(self._vad.process(out))
        self._cpu_ns += time.thread_time_ns() - t0
        self._cpu_samples += n
        self._speech = speech
        self._meter.add(far, near, cancelled, out, speech)
        self._frames += 1
        if self._frames % 10 == 0:
            self._update_hint()
            self._stats = self._snapshot()
        return out

    def _update_hint(self) -> None:
        """Canceller's delay: the measured one, else the devices' latencies less our lag."""
        lag_ms = self._ref.lag * 1000.0 / self._settings.sample_rate
        measured = self._meter.delay_ms
        hint = measured if measured is not None else max(0.0, self._latency_ms - lag_ms)
        if abs(hint - self._hint) >= 5:
            self._set_hint(round(hint))

    def _set_hint(self, ms: int) -> None:
        self._hint = ms
        if self._aec is not None:
            self._aec.stream_delay_ms = ms

    def _snapshot(self) -> VoiceStats:
        s = self._settings
        meter = self._meter
        erle = meter.erle_db()
        echo = meter.echo_db()
        state = echo_state(s.aec, meter.active_frames, erle, echo, self._converged,
                           meter.mic_db())
        self._converged = state == "converged"
        lag_ms = self._ref.lag * 1000.0 / s.sample_rate
        cpu = (self._cpu_ns / 1e6 * (s.sample_rate * 0.02) / self._cpu_samples
               if self._cpu_samples else 0.0)
        self._cpu_ns = self._cpu_samples = 0
        return VoiceStats(
            state=state, aec=s.aec, ns=s.ns, agc=s.agc,
            erle_db=None if erle is None else round(erle, 1),
            echo_db=None if echo is None else round(echo, 1),
            echo_delay_ms=None if meter.delay_ms is None else round(meter.delay_ms + lag_ms, 1),
            delay_hint_ms=self._hint,
            speech_probability=None if self._speech is None else round(self._speech, 2),
            gain_db=None if self._gain is None else round(self._gain, 1),
            frames=self._frames, reference_underruns=self._ref.underruns,
            reference_dropped_ms=round(self._ref.dropped * 1000.0 / s.sample_rate, 1),
            cpu_ms_per_20ms=round(cpu, 3), delay_ms=round(self.delay * 1000.0, 1))
