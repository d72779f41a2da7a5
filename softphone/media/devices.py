"""The machine's microphone and speaker, through sounddevice (PortAudio).

- :class:`MicSource`: an aiortc ``MediaStreamTrack`` of 20 ms frames at
  48 kHz mono, paced by the device's clock: PortAudio's callback forms each
  frame, cleans it with the call's voice processor (echo cancellation,
  noise suppression, gain: :mod:`softphone.media.apm`) and queues it the
  moment its last sample is captured. What the microphone captures before
  the call starts sending is thrown away, and at most ``max_backlog``
  seconds ever wait, so the call never lags behind the microphone.
- :class:`SpeakerDriver`: plays received audio, as a call's output
  (``call.accept(source, sinks, output=SpeakerDriver())``). Its output
  callback *pulls* the next stretch (a frame, or a pause played shorter)
  from the call's playout buffer when it has played the last one
  (:meth:`softphone.media.tracks.AudioReceiver.play`): the speaker is the
  clock and the playout is the only buffer before the device. Each frame
  it pulls is the echo canceller's reference. Its device buffer starts at
  10 ms and grows only if the device underruns.
- :func:`attach_voice_processor`: a call's processor, given to both.

Both resample when the device does not take 48 kHz, mix down or copy to
the channels of a device that is not mono, and notice a device that stops
mid-call (PortAudio's callbacks just stop when the audio server dies): the
call's audio path is told with a one-line message on the event loop (and
``on_lost``, if given), the microphone then sends silence and the receiver
goes back to its own clock; the call goes on. Neither callback takes a
lock: frames cross threads through ``deque`` (atomic append and popleft).

What PortAudio sees (:func:`list_devices`, :func:`find_device`, imported
lazily: :func:`load_sounddevice`) is :mod:`softphone.media.sounddev`'s,
re-exported here: without the PortAudio library or without devices,
callers get :class:`~softphone.core.errors.MissingDependency` with the fix
in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError

from softphone.media.apm import VoiceProcessor, VoiceSettings, open_voice_processor
from softphone.media.audio import FRAME_SAMPLES, SAMPLE_RATE, Int16Array, to_mono_int16
from softphone.media.delay import Smoothed
from softphone.media.pcm import Resampler as Resampler
from softphone.media.pcm import SampleFifo

# (Re-exported: what PortAudio sees is part of this module's interface.)
from softphone.media.sounddev import ALTERNATIVES as ALTERNATIVES
from softphone.media.sounddev import INSTALL_PORTAUDIO as INSTALL_PORTAUDIO
from softphone.media.sounddev import DeviceError as DeviceError
from softphone.media.sounddev import DeviceInfo as DeviceInfo
from softphone.media.sounddev import Kind as Kind
from softphone.media.sounddev import close_stream, device_format, open_stream
from softphone.media.sounddev import find_device as find_device
from softphone.media.sounddev import list_devices as list_devices
from softphone.media.sounddev import load_sounddevice as load_sounddevice
from softphone.media.tracks import AudioSource, LostCallback, tell_lost

log = logging.getLogger(__name__)


#: Device buffer (seconds) asked of PortAudio for the microphone. Measured through
#: the ALSA pulse plugin: callbacks of 5 ms, delivered steadily; 10 ms only makes
#: callbacks twice as frequent for about a millisecond less delay.
DEFAULT_LATENCY = 0.02
#: The speaker's device buffer, first to last: each costs its size in mouth to ear
#: (10 ms instead of 20 ms saved about 15 ms through the ALSA pulse plugin), so it
#: starts small and grows a step only when the device underruns
#: (:data:`UNDERRUNS_TO_GROW` within :data:`UNDERRUN_WINDOW` seconds).
SPEAKER_LATENCIES: tuple[float, ...] = (0.01, 0.02, 0.04)
UNDERRUNS_TO_GROW = 2
UNDERRUN_WINDOW = 10.0
#: The devices' delays are means over about this many frames.
FRAMES_MEAN = 50


class _Watched:
    """Shared by mic and speaker: the device's name and its loss (told once)."""

    direction: Kind

    def __init__(self, device: DeviceInfo, stall_timeout: float) -> None:
        self.device = device
        self.stall_timeout = stall_timeout
        self.lost: str | None = None
        self.last_callback = time.monotonic()

    def _tell_lost(self, message: str) -> None:
        raise NotImplementedError

    def _declare_lost(self, why: str) -> None:
        """On the event loop: mark the device lost and tell whoever listens, once."""
        if self.lost is not None:
            return
        role = "microphone" if self.direction == "input" else "speaker"
        effect = "sending silence" if self.direction == "input" \
            else "no longer playing what you hear"
        self.lost = (f"{role} lost: {self.device.name} {why}; the call goes on, {effect} "
                     f"(check the device, or use {ALTERNATIVES})")
        log.warning("%s", self.lost)
        self._tell_lost(self.lost)


class MicSource(AudioSource, _Watched):
    """The microphone as the call's audio track, paced by the device clock.

    PortAudio's callback does all the per-sample work on its own thread:
    mix to mono, resample to 48 kHz, form 20 ms frames, and hand each frame
    to the call's voice processor (:meth:`use_voice_processor`: echo
    cancellation, noise suppression, gain) before it is queued. A frame is
    queued the moment its last sample is captured, so what the call sends
    is paced by the device's clock, not by when the event loop gets round
    to it; the queue is a ``deque`` (no lock on the audio thread). The
    event loop only takes finished frames: at most ``max_backlog`` seconds
    wait, and a backlog that stands for a second is dropped.

    ``samplerate``/``channels``: open the device so (default: 48 kHz mono
    if it takes them, else its own rate, else stereo); ``latency`` and
    ``blocksize`` go to PortAudio as they are.
    """

    direction: Kind = "input"

    def __init__(self, device: str | int | None = None, *, latency: str | float = DEFAULT_LATENCY,
                 blocksize: int = 0, samplerate: int | None = None, channels: int | None = None,
                 max_backlog: float = 0.06, stall_timeout: float = 1.0,
                 on_lost: LostCallback | None = None) -> None:
        sd = load_sounddevice()
        info = find_device(device, "input")
        AudioSource.__init__(self)
        _Watched.__init__(self, info, stall_timeout)
        if on_lost is not None:
            self.add_lost_listener(on_lost)
        self.rate, self.channels = device_format(sd, info, "input", samplerate, channels)
        self._resample = None if self.rate == SAMPLE_RATE else Resampler(self.rate, SAMPLE_RATE)
        self._voice: VoiceProcessor | None = None
        #: 48 kHz mono not yet a whole frame (PortAudio's thread only).
        self._forming = SampleFifo(SAMPLE_RATE)
        #: Finished frames, PortAudio's thread -> the event loop (append/popleft: atomic).
        self._frames: deque[Int16Array] = deque(maxlen=50)
        self._max_waiting = max(1, round(max_backlog * SAMPLE_RATE / FRAME_SAMPLES))
        self._window_min = 1 << 30
        self._window_frames = 0
        self._sending = False
        self._send_loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._silence_start: float | None = None
        #: Samples thrown away because the call did not take them in time.
        self.dropped = 0
        #: Blocks PortAudio delivered, and those it said it had lost (we were late).
        self.callbacks = 0
        self.overflows = 0
        #: Seconds from the sound to the callback that completes its frame (PortAudio's
        #: timestamps; :mod:`softphone.media.delay`).
        self.delay = Smoothed(FRAMES_MEAN)
        self.stream = open_stream(sd, "InputStream", info, samplerate=self.rate,
                                  latency=latency, blocksize=blocksize, channels=self.channels,
                                  callback=self._callback, finished_callback=self._finished)
        self._latency = float(self.stream.latency)
        log.info("microphone %s at %d Hz, %d channel(s), input latency %.1f ms", info,
                 self.rate, self.channels, self.latency * 1000)

    def use_voice_processor(self, processor: VoiceProcessor | None) -> None:
        """Clean every frame with ``processor`` from now on (None: no more)."""
        self._voice = processor

    @property
    def voice_processor(self) -> VoiceProcessor | None:
        return self._voice

    @property
    def latency(self) -> float:
        """PortAudio's input latency (seconds; kept: a closed stream has none)."""
        return self._latency

    def device_stats(self) -> dict[str, Any]:
        """The microphone's figures (status line, ``--json``)."""
        return {"mic_rate": self.rate, "mic_channels": self.channels,
                "mic_latency_ms": round(self.latency * 1000, 1),
                "mic_overflows": self.overflows,
                "mic_dropped_ms": round(self.dropped * 1000 / SAMPLE_RATE, 1)}

    # PortAudio's thread ------------------------------------------------------

    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        self.last_callback = time.monotonic()
        self.callbacks += 1
        if status.input_overflow and self._sending:
            self.overflows += 1
        voice = self._voice
        if not self._sending and voice is None:
            return  # before the call sends: discard, so it starts without a backlog
        samples = indata[:, 0] if self.channels == 1 else to_mono_int16(indata, self.channels)
        if self._resample is not None:
            samples = self._resample(samples)
        forming = self._forming
        forming.push(samples)
        ready = formed = False
        while forming.size >= FRAME_SAMPLES:
            frame = forming.take(FRAME_SAMPLES)
            assert frame is not None
            formed = True
            if voice is not None:  # even before sending, and muted: it keeps adapting
                frame = voice.capture(frame)
            if self._sending:
                if len(self._frames) == self._frames.maxlen:
                    self.dropped += FRAME_SAMPLES
                self._frames.append(frame)
                ready = True
        if formed and time_info.currentTime:
            # How long ago the frame's last sample was captured (the rest waited in it).
            self.delay.add(max(0.0, time_info.currentTime - time_info.inputBufferAdcTime
                               - (samples.size - 1 - forming.size) / SAMPLE_RATE))
        loop = self._send_loop
        if ready and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the call is over
                loop.call_soon_threadsafe(self._wake.set)

    def _finished(self) -> None:
        loop = self._send_loop
        if loop is not None and self.readyState == "live":
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._declare_lost, "stopped")

    # the event loop ----------------------------------------------------------

    def _tell_lost(self, message: str) -> None:
        AudioSource._tell_lost(self, message)

    def _take_frame(self) -> Int16Array | None:
        frames = self._frames
        while len(frames) > self._max_waiting:  # the loop was stalled: keep the newest
            frames.popleft()
            self.dropped += FRAME_SAMPLES
        try:
            frame = frames.popleft()
        except IndexError:
            return None
        self._trim_standing_backlog()
        return frame

    def _trim_standing_backlog(self) -> None:
        """Drop frames that have waited all along for a second: a backlog that never drains.

        After a stall, frames wait; since the call takes exactly what the
        device gives, they would wait (and delay every word) for the rest of
        the call. What was always waiting, over 50 frames, is dropped once.
        """
        self._window_min = min(self._window_min, len(self._frames))
        self._window_frames += 1
        if self._window_frames < 50:
            return
        for _ in range(self._window_min):
            with contextlib.suppress(IndexError):
                self._frames.popleft()
                self.dropped += FRAME_SAMPLES
        if self._window_min:
            log.debug("microphone: dropped a standing backlog of %d frame(s)", self._window_min)
        self._window_min = 1 << 30
        self._window_frames = 0

    async def _silence(self) -> Int16Array:
        """After the device was lost: silence on the wall clock."""
        now = time.monotonic()
        if self._silence_start is None:
            self._silence_start = now - self._pts / SAMPLE_RATE
        due = self._silence_start + self._pts / SAMPLE_RATE
        if due > now:
            await asyncio.sleep(due - now)
        return np.zeros(FRAME_SAMPLES, dtype=np.int16)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if not self._sending:
            self._send_loop = asyncio.get_running_loop()
            self._frames.clear()
            self._sending = True
            self.last_callback = time.monotonic()
        samples: Int16Array | None = None
        while samples is None:
            if self.lost is not None:
                samples = await self._silence()
                break
            self._wake.clear()
            samples = self._take_frame()
            if samples is not None:
                break
            try:
                await asyncio.wait_for(self._wake.wait(), self.stall_timeout)
            except TimeoutError:
                if time.monotonic() - self.last_callback >= self.stall_timeout:
                    self._declare_lost(f"gave no audio for {self.stall_timeout:g} s")
            if self.readyState != "live":
                raise MediaStreamError
        return self.package(samples)

    def stop(self) -> None:
        """Stop sending and close the device (idempotent)."""
        if self.readyState == "ended":
            return
        super().stop()
        close_stream(self.stream)


class SpeakerDriver(_Watched):
    """The speaker, pulling what it plays from the call's playout as it needs it.

    Give it to a call as its output (``call.accept(source, sinks,
    output=SpeakerDriver())``); :class:`~softphone.media.tracks.AudioReceiver`
    hands it the playout through :meth:`drive`. Until then, and after the
    call, it plays silence. Every frame pulled is also handed to the call's
    voice processor (:meth:`use_voice_processor`) as the echo canceller's
    reference: exactly what the speaker plays, at 48 kHz mono, before it is
    resampled or copied to the device's channels.

    The device buffer starts as small as :data:`SPEAKER_LATENCIES` allows
    and grows a step (the stream reopened, once per step) when PortAudio
    reports :data:`UNDERRUNS_TO_GROW` underruns within
    :data:`UNDERRUN_WINDOW` seconds; a ``latency`` given stays as it is.
    """

    direction: Kind = "output"

    def __init__(self, device: str | int | None = None, *, latency: str | float | None = None,
                 blocksize: int = 0, samplerate: int | None = None, channels: int | None = None,
                 stall_timeout: float = 1.0, on_lost: LostCallback | None = None) -> None:
        self._sd = sd = load_sounddevice()
        info = find_device(device, "output")
        super().__init__(info, stall_timeout)
        self._lost_listeners: list[LostCallback] = [] if on_lost is None else [on_lost]
        self.rate, self.channels = device_format(sd, info, "output", samplerate, channels)
        self._resample = None if self.rate == SAMPLE_RATE else Resampler(SAMPLE_RATE, self.rate)
        self._pull: Callable[[], Int16Array] | None = None
        self._voice: VoiceProcessor | None = None
        self._mic_latency = 0.0
        #: Device-rate samples pulled but not played yet (a device block is not 20 ms).
        self._waiting = SampleFifo(self.rate)
        self._block: Int16Array = np.zeros(self.rate // 2, dtype=np.int16)  # for channels > 1
        self._watchdog: asyncio.Task[None] | None = None
        self._closed = False
        self._blocksize = blocksize
        self._steps: tuple[str | float, ...] = SPEAKER_LATENCIES if latency is None \
            else (latency,)
        self._step = 0
        self._recent: deque[float] = deque()  # when underruns were seen (event loop)
        self._counted = 0
        #: Output buffers PortAudio reported as underflowed (we were late), and how
        #: often the device buffer was made larger because of them.
        self.underflows = 0
        self.grown = 0
        #: The longest block PortAudio asked for (seconds): the playout leaves that much
        #: of a packet's wait uncut (:meth:`StretchPlayout.pull_chunk`).
        self.block = 0.0
        #: Seconds from a pull to its sound (PortAudio's timestamps).
        self.delay = Smoothed(FRAMES_MEAN)
        self.stream = self._open_stream()

    def _open_stream(self) -> Any:
        stream = open_stream(self._sd, "OutputStream", self.device, samplerate=self.rate,
                       latency=self._steps[self._step], blocksize=self._blocksize,
                       channels=self.channels, callback=self._callback)
        self._latency = float(stream.latency)
        log.info("speaker %s at %d Hz, %d channel(s), output latency %.1f ms", self.device,
                 self.rate, self.channels, self._latency * 1000)
        return stream

    def use_voice_processor(self, processor: VoiceProcessor | None,
                            mic_latency: float = 0.0) -> None:
        """Hand every frame played to ``processor`` as its far-end reference (None: stop).

        ``mic_latency``: the microphone's (seconds); with the speaker's, the
        processor's first estimate of the echo delay (told again if the
        speaker's grows).
        """
        self._mic_latency = mic_latency
        self._voice = processor
        if processor is not None:
            processor.set_device_latency(self.latency, mic_latency)

    @property
    def latency(self) -> float:
        """PortAudio's output latency (seconds; kept: a closed stream has none)."""
        return self._latency

    def device_stats(self) -> dict[str, Any]:
        """The speaker's figures (status line, ``--json``)."""
        return {"speaker_rate": self.rate, "speaker_channels": self.channels,
                "speaker_latency_ms": round(self.latency * 1000, 1),
                "speaker_underruns": self.underflows, "speaker_grown": self.grown}

    def drive(self, pull: Callable[[], Int16Array], lost: LostCallback) -> None:
        """From now on, play what ``pull()`` returns (20 ms or any other length, each
        pulled when the last has been played); ``lost(message)`` if we stop.

        Called on the event loop; ``pull`` is then called on PortAudio's thread.
        """
        self._lost_listeners.append(lost)
        self.last_callback = time.monotonic()
        self._pull = pull
        self._watchdog = asyncio.get_running_loop().create_task(self._watch(),
                                                                name="speaker-watchdog")

    def _tell_lost(self, message: str) -> None:
        tell_lost(self._lost_listeners, message)

    def _callback(self, outdata: Any, frames: int, time_info: Any, status: Any) -> None:
        self.last_callback = time.monotonic()
        pull = self._pull
        if status.output_underflow and pull is not None:  # (not the stream's start)
            self.underflows += 1
        waiting = self._waiting
        if pull is None or frames > waiting.capacity // 2:
            outdata.fill(0)
            return
        if frames > self.block * self.rate:
            self.block = frames / self.rate
        if waiting.size < frames and time_info.currentTime:
            # What is pulled now plays after this block's start and what still waits.
            self.delay.add(time_info.outputBufferDacTime - time_info.currentTime
                           + waiting.size / self.rate)
        while waiting.size < frames:
            samples = pull()
            voice = self._voice
            if voice is not None:
                voice.render(samples)
            waiting.push(samples if self._resample is None else self._resample(samples))
        if self.channels == 1:
            waiting.take_into(outdata[:, 0])
        else:
            block = self._block[:frames]
            waiting.take_into(block)
            outdata[:] = block[:, None]

    async def _watch(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.stall_timeout / 4)
            silent_for = time.monotonic() - self.last_callback
            if silent_for >= self.stall_timeout or not self.stream.active:
                self._pull = None
                self._declare_lost(f"stopped playing ({silent_for:.1f} s without a callback)")
                return
            self._grow_on_underruns()

    def _grow_on_underruns(self) -> None:
        """On the event loop: a larger device buffer after repeated underruns."""
        now = time.monotonic()
        new = self.underflows - self._counted
        self._counted = self.underflows
        self._recent.extend([now] * new)
        while self._recent and now - self._recent[0] > UNDERRUN_WINDOW:
            self._recent.popleft()
        if len(self._recent) < UNDERRUNS_TO_GROW or self._step + 1 >= len(self._steps):
            return
        old = self.stream
        self._step += 1
        self._recent.clear()
        close_stream(old)  # (its callback has returned once this does)
        try:
            self.stream = self._open_stream()
        except DeviceError as exc:
            self.stream = old
            self._pull = None
            self._declare_lost(f"could not be reopened ({exc})")
            return
        self.grown += 1
        log.info("speaker: %d underruns in %g s; device buffer now %.0f ms", UNDERRUNS_TO_GROW,
                 UNDERRUN_WINDOW, self.latency * 1000)
        if self._voice is not None:
            self._voice.set_device_latency(self.latency, self._mic_latency)

    def stop(self) -> None:
        """Stop playing and close the device (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._pull = None
        if self._watchdog is not None:
            self._watchdog.cancel()
        close_stream(self.stream)


def attach_voice_processor(source: object, output: object,
                           settings: VoiceSettings) -> VoiceProcessor | None:
    """A call's voice processor, given to its microphone and speaker before they play.

    Only when ``source`` is a :class:`MicSource` (a real microphone): a
    tone or a file has no echo and no room noise. The speaker (``output``,
    if a :class:`SpeakerDriver`) hands it what it plays; PortAudio's
    latencies of both give the canceller its first delay estimate. The
    processor is a pass-through (with a ``notice``) when the binding is
    missing, and when ``settings`` turn everything off.
    """
    if not isinstance(source, MicSource):
        return None
    processor = open_voice_processor(settings)
    if isinstance(output, SpeakerDriver):
        output.use_voice_processor(processor, source.latency)
    else:
        processor.set_device_latency(0.0, source.latency)
    source.use_voice_processor(processor)
    return processor


def device_stats(source: object, output: object) -> dict[str, Any]:
    """The figures of whichever of ``source`` and ``output`` are sound devices."""
    out: dict[str, Any] = {}
    for device in (source, output):
        if isinstance(device, MicSource | SpeakerDriver):
            out.update(device.device_stats())
    return out
