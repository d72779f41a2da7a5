"""What a call sends and what it does with what it receives.

Sources are aiortc ``MediaStreamTrack``s that hand out 20 ms frames of 48 kHz
mono int16, paced by the clock from the moment the call starts sending
(nothing is queued before, so a call starts without a backlog):
:class:`ToneSource`, :class:`FileSource`, :class:`SilenceSource`.

:class:`AudioReceiver` reads the remote track and hands each frame, as mono
int16 at 48 kHz, to its sinks (a :class:`~softphone.media.recording.WavWriter`, an
analysis buffer, a speaker), and keeps the figures a call reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from softphone.media.audio import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    Int16Array,
    ToneGenerator,
    rms_dbfs,
    to_mono_int16,
)
from softphone.media.recording import WavWriter

log = logging.getLogger(__name__)

_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
#: Below this level a received frame does not count as "audio arrived".
AUDIO_THRESHOLD_DBFS = -50.0


class PacedSource(MediaStreamTrack):
    """Base of our audio sources: real-time pacing and frame packaging."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._start: float | None = None
        self._pts = 0
        self.muted = False
        self.level_dbfs = float("-inf")

    def next_samples(self, count: int) -> Int16Array:
        raise NotImplementedError

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            due = self._start + self._pts / SAMPLE_RATE
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > 0.2:
                # The loop was stalled: skip ahead rather than send a burst.
                self._start = now - self._pts / SAMPLE_RATE
        return self.package(self.next_samples(FRAME_SAMPLES))

    def package(self, samples: Int16Array) -> av.AudioFrame:
        """20 ms of samples -> the next frame (silent if muted); keeps the level."""
        return package_frame(self, samples)


class _Framed(Protocol):
    muted: bool
    level_dbfs: float
    _pts: int


def package_frame(track: _Framed, samples: Int16Array) -> av.AudioFrame:
    """A source's next 20 ms as an aiortc frame: mute, level meter, timestamps."""
    if track.muted:
        samples = np.zeros(FRAME_SAMPLES, dtype=np.int16)
    track.level_dbfs = rms_dbfs(samples)
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    frame.pts = track._pts
    frame.time_base = _TIME_BASE
    track._pts += FRAME_SAMPLES
    return frame


class SilenceSource(PacedSource):
    def next_samples(self, count: int) -> Int16Array:
        return np.zeros(count, dtype=np.int16)


class ToneSource(PacedSource):
    """A sine tone (default 440 Hz) for as long as the call lasts."""

    def __init__(self, frequency: float = 440.0, amplitude: float = 0.3) -> None:
        super().__init__()
        self.generator = ToneGenerator(frequency, amplitude)
        self.frequency = frequency

    def next_samples(self, count: int) -> Int16Array:
        return self.generator.next(count)


class AudioFileError(ValueError):
    """A file that cannot be played."""


def load_audio_file(path: str | Path, rate: int = SAMPLE_RATE) -> Int16Array:
    """Decode any audio file PyAV (FFmpeg) reads into mono int16 at ``rate``."""
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"{path}: no such file")
    chunks: list[Int16Array] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioFileError(f"{path}: no audio stream in this file")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1).astype(np.int16))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1).astype(np.int16))
    except AudioFileError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise AudioFileError(f"{path}: cannot decode audio ({exc})") from exc
    if not chunks:
        raise AudioFileError(f"{path}: the file holds no audio")
    return np.concatenate(chunks).astype(np.int16, copy=False)


class FileSource(PacedSource):
    """Plays decoded samples once (or looped), then silence; ``finished`` is set at the end."""

    def __init__(self, samples: Int16Array, loop: bool = False) -> None:
        super().__init__()
        self.samples = samples
        self.loop = loop
        self.position = 0
        self.finished = asyncio.Event()

    @classmethod
    def from_file(cls, path: str | Path, loop: bool = False) -> FileSource:
        return cls(load_audio_file(path), loop)

    def next_samples(self, count: int) -> Int16Array:
        out = np.zeros(count, dtype=np.int16)
        filled = 0
        while filled < count:
            left = self.samples.size - self.position
            if left <= 0:
                if self.loop and self.samples.size:
                    self.position = 0
                    continue
                self.finished.set()
                break
            take = min(left, count - filled)
            out[filled: filled + take] = self.samples[self.position: self.position + take]
            self.position += take
            filled += take
        return out


class EchoSource(PacedSource):
    """Sends back what it is given (see :meth:`write`): the echo test.

    It is both a source (for the call) and a sink (for the receiver). At
    most ``max_frames`` frames wait; older ones are dropped so the echo never
    lags behind more than that.
    """

    def __init__(self, max_frames: int = 10) -> None:
        super().__init__()
        self._frames: deque[Int16Array] = deque(maxlen=max_frames)
        self._pending = np.zeros(0, dtype=np.int16)

    def write(self, samples: Int16Array) -> None:
        self._frames.append(samples)

    def next_samples(self, count: int) -> Int16Array:
        buf = self._pending
        while buf.size < count and self._frames:
            buf = np.concatenate((buf, self._frames.popleft()))
        if buf.size < count:
            self._pending = np.zeros(0, dtype=np.int16)
            return np.concatenate((buf, np.zeros(count - buf.size, dtype=np.int16)))
        self._pending = buf[count:]
        return buf[:count]


class TrackPlayout:
    """aiortc's decoded frames, pulled in real time: silence when none is ready.

    This is how a sound card would play aiortc's own pipeline; lost frames
    are missing time, not shorter audio.
    """

    def __init__(self, track: MediaStreamTrack,
                 convert: Callable[[av.AudioFrame], Int16Array]) -> None:
        self._frames: deque[Int16Array] = deque(maxlen=200)
        self._pending = np.zeros(0, dtype=np.int16)
        self._convert = convert
        self.underruns = 0
        self._task = asyncio.create_task(self._read(track), name="aiortc-track-reader")

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if isinstance(frame, av.AudioFrame):
                self._frames.append(self._convert(frame))

    def pull(self) -> Int16Array:
        buf = self._pending
        while buf.size < FRAME_SAMPLES and self._frames:
            buf = np.concatenate((buf, self._frames.popleft()))
        if buf.size < FRAME_SAMPLES:
            if self._frames or buf.size:
                self._pending = buf
            self.underruns += 1
            return np.zeros(FRAME_SAMPLES, dtype=np.int16)
        self._pending = buf[FRAME_SAMPLES:]
        return buf[:FRAME_SAMPLES]

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class PullSource(Protocol):
    """Anything that hands out the next 20 ms of audio on demand (see voice.Playout)."""

    def pull(self) -> Int16Array: ...


class Sink(Protocol):
    def write(self, samples: Int16Array) -> None: ...


@runtime_checkable
class PlayoutDriver(Protocol):
    """A device that plays received audio and is its clock (``devices.SpeakerDriver``).

    :meth:`drive` is called on the event loop; the device then calls ``pull()``
    from its own thread for every 20 ms it plays, and ``stopped()`` (on the
    loop) if it dies. Passed among a call's sinks, it is taken out of them.
    """

    def drive(self, pull: Callable[[], Int16Array], stopped: Callable[[], None]) -> None: ...

    def stop(self) -> None: ...


class RecorderSink:
    """Writes received audio to a WAV file (see :class:`WavWriter`)."""

    def __init__(self, path: str | Path) -> None:
        self.writer = WavWriter(path)

    def write(self, samples: Int16Array) -> None:
        self.writer.write(samples.tobytes())

    def close(self) -> None:
        self.writer.close()


class CaptureSink:
    """Keeps the most recent ``seconds`` of received audio in memory (for analysis)."""

    def __init__(self, seconds: float = 10.0) -> None:
        self._buffer = np.zeros(int(seconds * SAMPLE_RATE), dtype=np.int16)
        self._pos = 0  # next write index
        self._filled = 0

    def write(self, samples: Int16Array) -> None:
        buf = self._buffer
        if samples.size >= buf.size:
            buf[:] = samples[-buf.size:]
            self._pos, self._filled = 0, buf.size
            return
        end = self._pos + samples.size
        if end <= buf.size:
            buf[self._pos:end] = samples
        else:
            split = buf.size - self._pos
            buf[self._pos:] = samples[:split]
            buf[: end - buf.size] = samples[split:]
        self._pos = end % buf.size
        self._filled = min(buf.size, self._filled + samples.size)

    def samples(self) -> Int16Array:
        """What was kept, oldest first."""
        buf = self._buffer
        if self._filled < buf.size:
            return buf[: self._filled].copy()
        return np.concatenate((buf[self._pos:], buf[: self._pos]))


class AudioReceiver:
    """Reads a remote audio track until it ends, feeding sinks and counting."""

    def __init__(self, sinks: list[Sink] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 driver: PlayoutDriver | None = None) -> None:
        sinks = list(sinks or [])
        self.driver = driver or next((s for s in sinks if isinstance(s, PlayoutDriver)), None)
        self.sinks: list[Sink] = [s for s in sinks if s is not cast(Any, self.driver)]
        self.clock = clock
        self.frames = 0
        self.first_frame_at: float | None = None
        self.first_audio_at: float | None = None
        self.level_dbfs = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._resampler: Any = None
        self.track_playout: TrackPlayout | None = None

    def start(self, track: MediaStreamTrack) -> None:
        """Play aiortc's own decoded frames (its pipeline) in real time, like a speaker."""
        self.track_playout = TrackPlayout(track, self._mono)
        self.start_playout(self.track_playout)

    def start_playout(self, playout: PullSource, driver: PlayoutDriver | None = None) -> None:
        """Play ``playout``: the speaker (``driver``) pulls it, else a 20 ms clock does.

        With a driver, each frame it pulls also goes to the sinks, handed to
        the event loop; if the driver dies, the 20 ms clock takes over.
        """
        driver = driver or self.driver
        if driver is None:
            self._start_clock(playout)
            return
        self.driver = driver
        loop = asyncio.get_running_loop()

        def pull() -> Int16Array:  # on the device's thread
            samples = playout.pull()
            with contextlib.suppress(RuntimeError):  # loop closed: the call is over
                loop.call_soon_threadsafe(self.feed, samples)
            return samples

        def stopped() -> None:
            if self._task is None:
                log.info("speaker stopped: playing out on a 20 ms clock")
                self._start_clock(playout)

        driver.drive(pull, stopped)

    def _start_clock(self, playout: PullSource) -> None:
        self._task = asyncio.create_task(self._clock(playout), name="audio-playout-clock")

    async def _clock(self, playout: PullSource) -> None:
        loop = asyncio.get_running_loop()
        period = FRAME_SAMPLES / SAMPLE_RATE
        due = loop.time()
        while True:
            self.feed(playout.pull())
            due += period
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -0.2:  # the loop was stalled: do not catch up with a burst
                due = loop.time()

    def _mono(self, frame: av.AudioFrame) -> Int16Array:
        if frame.sample_rate != SAMPLE_RATE or frame.format.name != "s16":
            if self._resampler is None:
                self._resampler = av.AudioResampler(format="s16", layout="mono",
                                                    rate=SAMPLE_RATE)
            parts = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
            return np.concatenate(parts).astype(np.int16) if parts else np.zeros(0, np.int16)
        channels = len(frame.layout.channels)
        return to_mono_int16(frame.to_ndarray(), channels)

    def feed(self, samples: Int16Array) -> None:
        now = self.clock()
        self.frames += 1
        if self.first_frame_at is None:
            self.first_frame_at = now
        self.level_dbfs = rms_dbfs(samples)
        if self.first_audio_at is None and self.level_dbfs > AUDIO_THRESHOLD_DBFS:
            self.first_audio_at = now
        for sink in self.sinks:
            sink.write(samples)

    async def stop(self) -> None:
        if self.driver is not None:
            self.driver.stop()
        if self.track_playout is not None:
            await self.track_playout.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

