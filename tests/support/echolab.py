"""The PulseAudio echo lab: each phone's speaker heard again by its own microphone.

Builds on :class:`tests.support.pulse.PulseLab` (a private server; per
phone a speaker null sink, and a microphone remapped from a feed null
sink's monitor). :class:`EchoLab` adds, for the phones asked, the room:
``module-loopback`` from ``<phone>_speaker.monitor`` into
``<phone>_mic_feed`` with ``adjust_time=0`` (no rate adjustment, so the
echo lag stays sample-locked instead of drifting several ms a minute) and
``latency_msec`` for the delay, attenuated by the loopback stream's own
volume. What the phone plays comes back in its microphone, mixed with
whatever else is played into the feed sink: the near end's speech and
noise (:meth:`EchoLab.play_into_mic`, :func:`pink_noise`).

:meth:`EchoLab.measure_echo` checks the path with pacat/parec alone: noise
bursts, one a second, into the speaker; the speaker's monitor and the
microphone recorded. Each burst's place in the microphone recording less
its place in the monitor's is sample-exact (both run on the sinks' clock,
gaps in what is played included): its changes are the drift. Their
arrival times (both parec streams stamped on one clock) give the delay,
their amplitudes the attenuation.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from softphone.media.audio import SAMPLE_RATE

from .pulse import PulseLab, Recording

Samples = npt.NDArray[np.int16]


def pink_noise(seconds: float, level_dbfs: float = -50.0, seed: int = 7) -> Samples:
    """Stationary pink (1/f) noise at ``level_dbfs`` RMS, int16 48 kHz mono."""
    n = int(seconds * SAMPLE_RATE)
    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spectrum.size, dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spectrum / np.sqrt(f), n)
    x *= 32767.0 * 10 ** (level_dbfs / 20) / np.std(x)
    out: Samples = np.clip(x, -32768, 32767).astype(np.int16)
    return out


def speech(text: str, voice: str = "en-us", peak_dbfs: float = -6.0, lead: float = 0.25,
           espeak: str = "espeak-ng", sox: str = "sox") -> Samples:
    """``text`` spoken by espeak-ng in ``voice``, int16 48 kHz mono, ``lead`` s of silence first."""
    wav = subprocess.run([espeak, "-v", voice, "-s", "160", "--stdout", text], check=True,
                         capture_output=True, timeout=60).stdout
    raw = subprocess.run([sox, "-t", "wav", "-", "-t", "raw", "-r", str(SAMPLE_RATE), "-e",
                          "signed", "-b", "16", "-c", "1", "-"], input=wav, check=True,
                         capture_output=True, timeout=60).stdout
    x = np.frombuffer(raw, dtype=np.int16).astype(np.float64)
    x = x / np.max(np.abs(x)) * 32767 * 10 ** (peak_dbfs / 20)
    out: Samples = np.concatenate((np.zeros(int(lead * SAMPLE_RATE)), x)).astype(np.int16)
    return out


def _xcorr(rec: npt.NDArray[np.float64], ref: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Cross-correlation of ``rec`` against ``ref`` at lags 0..len(rec)-len(ref) (FFT)."""
    size = 1 << int(np.ceil(np.log2(rec.size + ref.size)))
    cc = np.fft.irfft(np.fft.rfft(rec, size) * np.conj(np.fft.rfft(ref, size)), size)
    out: npt.NDArray[np.float64] = cc[: rec.size - ref.size + 1]
    return out


def component_db(rec: npt.NDArray[np.int16], ref: npt.NDArray[np.int16], start: float,
                 end: float, lags: tuple[float, float] = (-1.0, 2.0),
                 block: float = 0.5) -> float:
    """How strongly ``ref[start:end]`` (seconds) comes back in ``rec``, in dB (0: as loud).

    Block by block (``block`` s, silent blocks left out), the least-squares
    gain of the reference block at the lag, within ``lags`` seconds, where
    it correlates best with ``rec``; the gains are averaged in power,
    weighted by the blocks' energy. Taking the best lag of every block
    makes it robust to the jitter buffers moving the delay, and an upper
    bound for what is left of a cancelled echo.
    """
    sec = SAMPLE_RATE
    r = rec.astype(np.float64)
    f = ref.astype(np.float64)
    hit = total = 0.0
    for b0 in np.arange(start, end - block / 2, block):
        a, b = int(b0 * sec), int(min(b0 + block, end) * sec)
        piece = f[a:b]
        energy = float(np.dot(piece, piece))
        if energy < piece.size * 100.0:  # below -50 dBFS: a pause
            continue
        lo, hi = max(0, a + int(lags[0] * sec)), min(r.size, b + int(lags[1] * sec))
        if hi - lo < piece.size:
            continue
        g = float(np.max(np.abs(_xcorr(r[lo:hi], piece)))) / energy
        hit += g * g * energy
        total += energy
    if not total:
        raise ValueError(f"nothing to compare between {start} and {end} s")
    return 10 * float(np.log10(hit / total + 1e-12))


@dataclass(frozen=True)
class EchoPath:
    """One loaded echo path (a ``module-loopback``)."""

    phone: str
    module: int
    sink_input: int
    delay_ms: int
    gain_db: float


@dataclass(frozen=True)
class EchoMeasurement:
    """What :meth:`EchoLab.measure_echo` found."""

    bursts: int
    #: Speaker -> microphone, from parec arrival stamps (median, ms).
    delay_ms: float
    #: Spread of those stamps (max - min, ms): parec's jitter, not the path's.
    delay_spread_ms: float
    #: Largest deviation of a burst from its sample-exact place in the mic recording.
    drift_samples: int
    #: Microphone burst level against the speaker's (median, dB).
    gain_db: float
    gain_spread_db: float


class EchoLab(PulseLab):
    """:class:`PulseLab` plus an echo path from each ``echo`` phone's speaker to its mic."""

    def __init__(self, phones: Iterable[str] = ("a", "b"), *, echo: Iterable[str] = ("a",),
                 delay_ms: int = 40, gain_db: float = -6.0, client_shm: bool = True) -> None:
        super().__init__(phones, client_shm=client_shm)
        self.echo_phones = list(echo)
        self.delay_ms = delay_ms
        self.gain_db = gain_db
        self.paths: dict[str, EchoPath] = {}

    def start(self) -> EchoLab:
        super().start()
        try:
            for phone in self.echo_phones:
                self.add_echo(phone)
        except BaseException:
            self.stop()  # no server left behind
            raise
        return self

    def pactl(self, *args: str) -> str:
        done = subprocess.run(["pactl", *args], env={**os.environ, **self.env},
                              capture_output=True, text=True, timeout=20)
        if done.returncode != 0:
            raise RuntimeError(f"pactl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def add_echo(self, phone: str, delay_ms: int | None = None,
                 gain_db: float | None = None) -> EchoPath:
        """Load the speaker -> microphone path of ``phone`` (replacing one already there)."""
        if phone in self.paths:
            self.remove_echo(phone)
        delay = self.delay_ms if delay_ms is None else delay_ms
        gain = self.gain_db if gain_db is None else gain_db
        name = f"{phone}-echo-path"
        module = int(self.pactl(
            "load-module", "module-loopback", f"source={self.speaker(phone)}.monitor",
            f"sink={self.feed(phone)}", f"latency_msec={delay}", "adjust_time=0",
            "source_dont_move=true", "sink_dont_move=true", "rate=48000", "channels=1",
            "remix=false", f"sink_input_properties=media.name={name}",
            f"source_output_properties=media.name={name}").strip())
        sink_input = self._sink_input_of(module)
        # A linear factor (it has a dot): pactl would read "-6dB" as an option.
        self.pactl("set-sink-input-volume", str(sink_input), f"{10 ** (gain / 20):.6f}")
        path = EchoPath(phone, module, sink_input, delay, gain)
        self.paths[phone] = path
        return path

    def remove_echo(self, phone: str) -> None:
        path = self.paths.pop(phone)
        self.pactl("unload-module", str(path.module))

    def _sink_input_of(self, module: int) -> int:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for entry in json.loads(self.pactl("--format=json", "list", "sink-inputs")):
                if str(entry.get("owner_module")) == str(module):
                    return int(entry["index"])
            time.sleep(0.05)
        raise RuntimeError(f"module-loopback #{module} made no sink input")

    # what the near end says -------------------------------------------------------

    def play_into_mic(self, phone: str, samples: Samples) -> subprocess.Popen[bytes]:
        """Near-end sound (speech, noise) into ``phone``'s microphone, mixed with the echo."""
        return self.play(self.feed(phone), samples)

    # checking the path --------------------------------------------------------------

    def measure_echo(self, phone: str, seconds: float = 60.0,
                     burst_dbfs: float = -20.0) -> EchoMeasurement:
        """One noise burst a second into the speaker; where and how loud each comes back."""
        rng = np.random.default_rng(11)
        burst_len = SAMPLE_RATE // 20
        # Speech band only: the loopback's resampler takes off 1 dB at 16-20 kHz, 7 dB above.
        spectrum = np.fft.rfft(rng.standard_normal(burst_len))
        spectrum[np.fft.rfftfreq(burst_len, 1 / SAMPLE_RATE) > 8000] = 0
        burst = np.fft.irfft(spectrum, burst_len) * np.hanning(burst_len)
        burst *= 32767 * 10 ** (burst_dbfs / 20) / np.sqrt(np.mean(burst**2))
        period = SAMPLE_RATE
        count = int(seconds)
        signal = np.zeros(period * (count + 1))
        for k in range(count):
            signal[period // 2 + k * period: period // 2 + k * period + burst_len] = burst
        monitor = _Stamped(self.record(f"{self.speaker(phone)}.monitor", latency_ms=10))
        mic = _Stamped(self.record(self.mic(phone), latency_ms=10))
        time.sleep(0.5)
        player = self.play(self.speaker(phone), signal.astype(np.int16), latency_ms=200)
        player.wait(seconds + 30)
        time.sleep(0.5)
        mon_pos, mon_amp = _find_bursts(monitor.stop(), burst, count)
        mic_pos, mic_amp = _find_bursts(mic.stop(), burst, count)
        n = min(len(mon_pos), len(mic_pos))
        if n < count * 0.9:
            raise RuntimeError(f"only {n} of {count} bursts came back")
        mon_t = np.array([monitor.time_of(p) for p in mon_pos[:n]])
        mic_t = np.array([mic.time_of(p) for p in mic_pos[:n]])
        lags = (mic_t - mon_t) * 1000.0
        offsets = np.asarray(mic_pos[:n]) - np.asarray(mon_pos[:n])  # both on the sinks' clock
        drift = int(np.max(np.abs(offsets - offsets[0])))
        gains = 20 * np.log10(np.asarray(mic_amp[:n]) / np.asarray(mon_amp[:n]))
        return EchoMeasurement(
            bursts=n, delay_ms=float(np.median(lags)),
            delay_spread_ms=float(np.max(lags) - np.min(lags)), drift_samples=drift,
            gain_db=float(np.median(gains)), gain_spread_db=float(np.ptp(gains)))


class _Stamped:
    """A parec recording whose chunks are stamped with their arrival time (monotonic)."""

    def __init__(self, rec: Recording) -> None:
        self.rec = rec
        self.stamps: list[tuple[float, int]] = []  # (arrival, samples so far)
        self._stop = False
        self._thread = threading.Thread(target=self._watch, daemon=True, name="parec-stamp")
        self._thread.start()

    def _watch(self) -> None:
        seen = total = 0
        while not self._stop:
            chunks = self.rec.chunks
            while seen < len(chunks):
                total += len(chunks[seen]) // 2
                seen += 1
                self.stamps.append((time.monotonic(), total))
            time.sleep(0.0005)

    def stop(self) -> npt.NDArray[np.int16]:
        samples = self.rec.stop()
        time.sleep(0.01)
        self._stop = True
        self._thread.join(2)
        return samples

    def time_of(self, index: int) -> float:
        """When sample ``index`` was captured: its chunk's arrival less what followed it."""
        ends = [s[1] for s in self.stamps]
        k = int(np.searchsorted(ends, index, side="right"))
        arrived, end = self.stamps[min(k, len(self.stamps) - 1)]
        return arrived - (end - index) / SAMPLE_RATE


def _find_bursts(rec: npt.NDArray[np.int16], burst: npt.NDArray[np.float64],
                 count: int) -> tuple[list[int], list[float]]:
    """Start index and amplitude (relative to ``burst``) of each burst found in ``rec``."""
    x = rec.astype(np.float64)
    size = 1 << int(np.ceil(np.log2(x.size + burst.size)))
    cc = np.fft.irfft(np.fft.rfft(x, size) * np.conj(np.fft.rfft(burst, size)), size)[: x.size]
    energy = float(np.dot(burst, burst))
    floor = float(np.max(np.abs(cc))) * 0.3
    positions: list[int] = []
    amps: list[float] = []
    start = 0
    while start < x.size and len(positions) < count:
        window = cc[start: start + SAMPLE_RATE]
        if window.size == 0:
            break
        k = int(np.argmax(window))
        if window[k] < floor:
            start += SAMPLE_RATE
            continue
        positions.append(start + k)
        amps.append(float(window[k]) / energy)
        start += k + SAMPLE_RATE // 2
    return positions, amps
