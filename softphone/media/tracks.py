"""What a call sends, where what it hears goes, and how that is played.

Sources are :class:`AudioSource`\\ s: aiortc ``MediaStreamTrack``\\ s that hand
out 20 ms frames of 48 kHz mono int16 with a mute switch and a level meter.
:class:`PacedSource`\\ s are paced by the clock from the moment the call
starts sending (nothing is queued before, so a call starts without a
backlog): :class:`ToneSource`, :class:`FileSource`, :class:`SilenceSource`,
:class:`EchoSource`; :class:`softphone.media.devices.MicSource` is paced by
its device.

Sinks (:class:`~softphone.media.sinks.Sink`, in :mod:`softphone.media.sinks`,
re-exported here) get everything played: ``RecorderSink``, ``CaptureSink``.
:class:`AudioReceiver` plays a call's received audio: an output device
(:class:`AudioOutput`, e.g. the speaker) pulls it and is the clock, or a 20 ms
clock does; what is played goes to the sinks.
:class:`softphone.media.audiopath.CallAudio` puts these together for a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, Protocol

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from softphone.media.audio import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    Int16Array,
    ToneGenerator,
    rms_dbfs,
)
from softphone.media.frameclock import FrameClock
from softphone.media.pcm import MonoConverter, SampleFifo
from softphone.media.sinks import CaptureSink as CaptureSink
from softphone.media.sinks import HeldNoting as HeldNoting
from softphone.media.sinks import RecorderSink as RecorderSink
from softphone.media.sinks import Sink as Sink

log = logging.getLogger(__name__)

_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
#: Below this level a received frame does not count as "audio arrived".
AUDIO_THRESHOLD_DBFS = -50.0
#: What a muted source sends (read only: PyAV copies it into each frame).
_MUTED: Final[Int16Array] = np.zeros(FRAME_SAMPLES, dtype=np.int16)
_MUTED.flags.writeable = False
#: What a call on hold plays (read only).
_SILENT: Final[Int16Array] = _MUTED

#: Told (on the event loop, with a one-line message) that a device stopped.
LostCallback = Callable[[str], None]


def tell_lost(listeners: Sequence[LostCallback], message: str) -> bool:
    """Tell each listener that a device stopped; one that fails does not stop the others.
    Whether there was anyone to tell."""
    for callback in listeners:
        try:
            callback(message)
        except Exception:
            log.exception("device-lost listener failed")
    return bool(listeners)


class AudioSource(MediaStreamTrack):
    """Base of what a call sends: 20 ms mono frames, a mute switch, a level meter.

    A source backed by a device (the microphone) tells the listeners added
    with :meth:`add_lost_listener` when the device stops; others never do.
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.muted = False
        #: Silent frames while a call is on hold towards a peer that does not know hold
        #: (set by the call's audio path; the user's :attr:`muted` is left as it is).
        self.silenced = False
        #: Level of the last frame handed out (dBFS; silent while muted).
        self.level_dbfs = float("-inf")
        self._pts = 0
        self._lost_listeners: list[LostCallback] = []

    def add_lost_listener(self, callback: LostCallback) -> None:
        """Call ``callback(message)`` on the event loop if the device behind this stops."""
        self._lost_listeners.append(callback)

    def remove_lost_listener(self, callback: LostCallback) -> None:
        """Stop telling ``callback`` (nothing if it was not told): a call's audio
        path, once it ends, lets go of a source that outlives it."""
        with contextlib.suppress(ValueError):
            self._lost_listeners.remove(callback)

    def _tell_lost(self, message: str) -> bool:
        return tell_lost(self._lost_listeners, message)

    def package(self, samples: Int16Array) -> av.AudioFrame:
        """20 ms of samples -> the next frame (silent if muted); keeps the level."""
        if self.muted or self.silenced:
            samples = _MUTED
        self.level_dbfs = rms_dbfs(samples)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        frame.time_base = _TIME_BASE
        self._pts += FRAME_SAMPLES
        return frame


class PacedSource(AudioSource):
    """Base of the sources paced by the clock: override :meth:`next_samples`."""

    def __init__(self) -> None:
        super().__init__()
        self._start: float | None = None

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
    if path.is_dir():
        raise AudioFileError(f"{path}: a folder, not an audio file")
    if not path.is_file():
        raise AudioFileError(f"{path}: no such file")
    chunks: list[Int16Array] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioFileError(f"{path}: no audio stream in this file")
            convert = MonoConverter(rate)
            chunks.extend(convert(frame) for frame in container.decode(audio=0))
            chunks.append(convert.flush())
    except AudioFileError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise AudioFileError(f"{path}: cannot decode audio ({exc})") from exc
    samples: Int16Array = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    if not samples.size:
        raise AudioFileError(f"{path}: the file holds no audio")
    return samples


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


# ---------------------------------------------------- a source that is a sink ---


class EchoSource(PacedSource):
    """Sends back what it is given (see :meth:`write`): the echo test.

    It is both a source and a sink: pass it as both
    (``call.accept(echo, [echo])``). At most ``max_frames`` frames wait;
    older ones are dropped so the echo never lags behind more than that.
    """

    def __init__(self, max_frames: int = 10) -> None:
        super().__init__()
        self._heard = SampleFifo(max_frames * FRAME_SAMPLES)

    def write(self, samples: Int16Array) -> None:
        self._heard.push(samples)

    def close(self) -> None:
        """Nothing to close (a sink's duty)."""

    def next_samples(self, count: int) -> Int16Array:
        return self._heard.take_padded(count)


# ---------------------------------------------------------------- playing ---


class PullSource(Protocol):
    """Anything that hands out the next 20 ms of audio on demand (see voice.Playout).

    One that also has ``pull_chunk()`` (:class:`~softphone.media.playout.StretchPlayout`)
    is pulled with it by a device: the next stretch to play, of any length.
    """

    def pull(self) -> Int16Array: ...


class AudioOutput(Protocol):
    """A device that plays a call's received audio and is its clock (``devices.SpeakerDriver``).

    :meth:`drive` is called on the event loop; the device then calls ``pull()``
    from its own thread whenever it has played what the last one gave (20 ms,
    or any other length: a playout may play a frame shorter or longer), and
    ``lost(message)`` (on the loop, once) if it stops. :meth:`stop` closes it
    (idempotent).
    """

    def drive(self, pull: Callable[[], Int16Array], lost: LostCallback) -> None: ...

    def stop(self) -> None: ...


class TrackPlayout:
    """aiortc's decoded frames, pulled in real time: silence when none is ready.

    This is how a sound card would play aiortc's own pipeline; lost frames
    are missing time, not shorter audio. Frames arrive on the event loop and
    may be pulled from a device's thread.
    """

    def __init__(self, track: MediaStreamTrack) -> None:
        self._waiting = SampleFifo(200 * FRAME_SAMPLES)
        self._lock = threading.Lock()
        self._convert = MonoConverter()
        self.underruns = 0
        self._task = asyncio.create_task(self._read(track), name="aiortc-track-reader")

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            samples = self._convert(frame)
            with self._lock:
                self._waiting.push(samples)

    def pull(self) -> Int16Array:
        with self._lock:
            out = self._waiting.take(FRAME_SAMPLES)
        if out is None:
            self.underruns += 1
            return np.zeros(FRAME_SAMPLES, dtype=np.int16)
        return out

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class AudioReceiver:
    """Plays received audio and hands every frame played to the sinks, counting.

    With an ``output`` (the speaker), the device pulls what it plays and is the
    clock; without one, or once it is lost (``on_output_lost`` is told), a
    20 ms clock on the event loop pulls instead.
    """

    def __init__(self, sinks: Sequence[Sink] = (), clock: Callable[[], float] = time.monotonic,
                 *, output: AudioOutput | None = None,
                 on_output_lost: LostCallback | None = None,
                 frame_clock: FrameClock | None = None) -> None:
        self.sinks = list(sinks)
        #: What pulls the playout without a speaker: shared with the phone's other
        #: calls (one timer for all), else this receiver's own.
        self.frame_clock = frame_clock if frame_clock is not None else FrameClock()
        self.output = output
        self.on_output_lost = on_output_lost
        self.clock = clock
        self._samples = 0  # played
        self.first_frame_at: float | None = None
        self.first_audio_at: float | None = None
        self._last: Int16Array | None = None  # the last frame played (its level, on demand)
        #: Play silence (the call is on hold); the playout is still pulled, so it stays
        #: in step with what arrives.
        self.silenced = False
        self._pulling: _ClockPull | None = None
        self.track_playout: TrackPlayout | None = None

    @property
    def frames(self) -> int:
        """20 ms frames played (a device may pull stretches of other lengths)."""
        return self._samples // FRAME_SAMPLES

    @property
    def level_dbfs(self) -> float:
        """Level of the last frame played (dBFS): the speaker's meter.

        Measured when read (a meter reads it a few times a second; a bot with
        many calls never does), not for every frame.
        """
        return float("-inf") if self._last is None else rms_dbfs(self._last)

    def start(self, track: MediaStreamTrack) -> None:
        """Play aiortc's own decoded frames (its pipeline) in real time, like a speaker."""
        self.track_playout = TrackPlayout(track)
        self.play(self.track_playout)

    def play(self, playout: PullSource) -> None:
        """Play ``playout``: the output device pulls it, else a 20 ms clock does."""
        output = self.output
        if output is None:
            self._start_clock(playout)
            return
        loop = asyncio.get_running_loop()
        feed = self.feed
        # A device pulls again when it runs out: the next stretch, of any length
        # (its longest block, if it says, is left uncut with the wait).
        chunk = getattr(playout, "pull_chunk", None)

        def pull() -> Int16Array:  # on the device's thread
            samples: Int16Array = playout.pull() if chunk is None \
                else chunk(getattr(output, "block", 0.0))
            if self.silenced:
                samples = _SILENT if samples.size == _SILENT.size else np.zeros_like(samples)
            with contextlib.suppress(RuntimeError):  # loop closed: the call is over
                loop.call_soon_threadsafe(feed, samples)
            return samples

        def lost(message: str) -> None:
            if self._pulling is None:
                log.info("speaker stopped: playing out on a 20 ms clock")
                self._start_clock(playout)
            if self.on_output_lost is not None:
                self.on_output_lost(message)

        output.drive(pull, lost)

    def _start_clock(self, playout: PullSource) -> None:
        if self._pulling is not None:
            self.frame_clock.remove(self._pulling)
        self._pulling = _ClockPull(self, playout)
        self.frame_clock.add(self._pulling)

    def feed(self, samples: Int16Array) -> None:
        now = self.clock()
        self._samples += samples.size
        if self.first_frame_at is None:
            self.first_frame_at = now
        self._last = samples
        if self.first_audio_at is None and rms_dbfs(samples) > AUDIO_THRESHOLD_DBFS:
            self.first_audio_at = now
        for sink in self.sinks:
            sink.write(samples)

    async def stop(self) -> None:
        """Stop playing: close the output device, stop the clock (the sinks stay open)."""
        if self.output is not None:
            self.output.stop()
        if self.track_playout is not None:
            await self.track_playout.stop()
        if self._pulling is not None:
            self.frame_clock.remove(self._pulling)
            self._pulling = None


class _ClockPull:
    """Pulls one receiver's playout on the frame clock (no speaker): what a sound
    card would do, every 20 ms; frames skipped in a stall are not pulled."""

    __slots__ = ("playout", "receiver")

    def __init__(self, receiver: AudioReceiver, playout: PullSource) -> None:
        self.receiver = receiver
        self.playout = playout

    def tick(self, skipped: int = 0) -> None:
        receiver = self.receiver
        samples = self.playout.pull()
        receiver.feed(_SILENT if receiver.silenced else samples)
