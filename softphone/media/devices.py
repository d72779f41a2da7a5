"""The machine's microphone and speaker, through sounddevice (PortAudio).

- :class:`MicSource`: an aiortc ``MediaStreamTrack`` of 20 ms frames at
  48 kHz mono, paced by the device's clock: PortAudio's callback forms each
  frame, cleans it with the call's voice processor (echo cancellation,
  noise suppression, gain: :mod:`softphone.media.apm`) and queues it the
  moment its last sample is captured. What the microphone captures before
  the call starts sending is thrown away, and at most ``max_backlog``
  seconds ever wait, so the call never lags behind the microphone.
- :class:`SpeakerDriver` (:mod:`softphone.media.speaker`, re-exported
  here): plays received audio, as a call's output
  (``call.accept(source, sinks, output=SpeakerDriver())``). Its output
  callback *pulls* the next stretch (a frame, or a pause played shorter)
  from the call's playout buffer when it has played the last one
  (:meth:`softphone.media.tracks.AudioReceiver.play`): the speaker is the
  clock and the playout is the only buffer before the device. Each frame
  it pulls is the echo canceller's reference. Its device buffer starts at
  10 ms, grows only if the device underruns and shrinks back after a calm
  spell (:mod:`softphone.media.devicebuffer`).
- :func:`attach_voice_processor`: a call's processor, given to both.

Both resample when the device does not take 48 kHz, mix down or copy to
the channels of a device that is not mono, and notice a device that stops
mid-call (PortAudio's callbacks just stop when the audio server dies): the
call's audio path is told with a one-line message on the event loop (and
``on_lost``, if given), the microphone then sends silence and the receiver
goes back to its own clock; the call goes on. Neither callback takes a
lock of its own (the speaker's pull takes the playout's, briefly): frames
cross threads through ``deque`` (atomic append and popleft).

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
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError

from softphone.media.apm import VoiceProcessor, VoiceSettings, open_voice_processor
from softphone.media.audio import FRAME_SAMPLES, SAMPLE_RATE, Int16Array, to_mono_int16
from softphone.media.delay import Smoothed, as_ms, sane_delay
from softphone.media.pcm import Resampler as Resampler
from softphone.media.pcm import SampleFifo

# (Re-exported: what PortAudio sees is part of this module's interface.)
from softphone.media.sounddev import ALTERNATIVES as ALTERNATIVES
from softphone.media.sounddev import INSTALL_PORTAUDIO as INSTALL_PORTAUDIO
from softphone.media.sounddev import DeviceError as DeviceError
from softphone.media.sounddev import DeviceInfo as DeviceInfo
from softphone.media.sounddev import Kind as Kind
from softphone.media.sounddev import WatchedDevice, close_stream, device_format, open_stream
from softphone.media.sounddev import find_device as find_device
from softphone.media.sounddev import list_devices as list_devices
from softphone.media.sounddev import load_sounddevice as load_sounddevice
from softphone.media.speaker import SPEAKER_LATENCIES as SPEAKER_LATENCIES
from softphone.media.speaker import SpeakerDriver as SpeakerDriver
from softphone.media.tracks import AudioSource, LostCallback

log = logging.getLogger(__name__)


#: Device buffer (seconds) asked of PortAudio for the microphone. Measured through
#: the ALSA pulse plugin: callbacks of 5 ms, delivered steadily; 10 ms only makes
#: callbacks twice as frequent for about a millisecond less delay.
DEFAULT_LATENCY = 0.02


class MicSource(AudioSource, WatchedDevice):
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
        WatchedDevice.__init__(self, info, stall_timeout)
        if on_lost is not None:
            self.add_lost_listener(on_lost)
        self.rate, self.channels = device_format(sd, info, "input", samplerate, channels)
        self._resample = None if self.rate == SAMPLE_RATE else Resampler(self.rate, SAMPLE_RATE)
        self._voice: VoiceProcessor | None = None
        #: 48 kHz mono not yet a whole frame (PortAudio's thread only).
        self._forming = SampleFifo(SAMPLE_RATE)
        #: Finished frames, PortAudio's thread -> the event loop (append/popleft: atomic).
        self._frames: deque[tuple[Int16Array, float]] = deque(maxlen=50)  # (, when done)
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
        #: (``delay``: seconds from the sound to the callback that completes its frame.)
        #: Then seconds until the call takes the frame.
        self.queued = Smoothed()
        self._taken = self._made = 0  # device samples in, 48 kHz samples out (PortAudio's)
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

    def device_stats(self) -> dict[str, Any]:
        """The microphone's figures (status line, ``--json``)."""
        return {"mic_rate": self.rate, "mic_channels": self.channels,
                "mic_latency_ms": round(self.latency * 1000, 1),
                "mic_delay_ms": as_ms(self.delay.value),
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
        # (The block's first sample, on the clock of the samples pushed so far.)
        block_at = self._taken / self.rate
        self._taken += frames
        self._made += samples.size
        forming = self._forming
        forming.push(samples)
        ready = False
        now = time_info.currentTime
        while forming.size >= FRAME_SAMPLES:
            if now:  # how long ago the frame's last sample was captured (a resampler
                # holds some back: counted on both sides' clocks, not from this block)
                last_at = (self._made - forming.size + FRAME_SAMPLES - 1) / SAMPLE_RATE
                self.delay.add(sane_delay(now - time_info.inputBufferAdcTime
                                          - (last_at - block_at)))
            frame = forming.take(FRAME_SAMPLES)
            assert frame is not None
            if voice is not None:  # even before sending, and muted: it keeps adapting
                frame = voice.capture(frame)
            if self._sending:
                if len(self._frames) == self._frames.maxlen:
                    self.dropped += FRAME_SAMPLES
                self._frames.append((frame, self.last_callback))
                ready = True
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

    def _tell_lost(self, message: str) -> bool:
        return AudioSource._tell_lost(self, message)

    def _take_frame(self) -> Int16Array | None:
        frames = self._frames
        while len(frames) > self._max_waiting:  # the loop was stalled: keep the newest
            frames.popleft()
            self.dropped += FRAME_SAMPLES
        try:
            frame, done = frames.popleft()
        except IndexError:
            return None
        self.queued.add(time.monotonic() - done)
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
