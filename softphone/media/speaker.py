"""The speaker, through sounddevice (PortAudio): :class:`SpeakerDriver`
(re-exported by :mod:`softphone.media.devices`, with the microphone).

Its output callback *pulls* the next stretch (a frame, or a pause played
shorter) from the call's playout when it has played the last one
(:meth:`softphone.media.tracks.AudioReceiver.play`): the speaker is the
clock and the playout is the only buffer before the device. Each frame it
pulls is the echo canceller's reference. Its device buffer starts at
10 ms and grows only if the device underruns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from softphone.media.apm import VoiceProcessor
from softphone.media.audio import SAMPLE_RATE, Int16Array
from softphone.media.delay import as_ms, sane_delay
from softphone.media.pcm import Resampler, SampleFifo
from softphone.media.sounddev import (
    DeviceError,
    Kind,
    WatchedDevice,
    close_stream,
    device_format,
    find_device,
    load_sounddevice,
    open_stream,
)
from softphone.media.tracks import LostCallback, tell_lost

log = logging.getLogger(__name__)

#: The speaker's device buffer, first to last: each costs its size in mouth to ear
#: (10 ms instead of 20 ms saved about 15 ms through the ALSA pulse plugin), so it
#: starts small and grows a step only when the device underruns
#: (:data:`UNDERRUNS_TO_GROW` within :data:`UNDERRUN_WINDOW` seconds).
SPEAKER_LATENCIES: tuple[float, ...] = (0.01, 0.02, 0.04)
UNDERRUNS_TO_GROW = 2
UNDERRUN_WINDOW = 10.0


class SpeakerDriver(WatchedDevice):
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
        #: (``delay``: seconds from a pull to its sound.)
        self._pulled = self._produced = 0  # 48 kHz samples pulled, device samples made
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

    def device_stats(self) -> dict[str, Any]:
        """The speaker's figures (status line, ``--json``)."""
        return {"speaker_rate": self.rate, "speaker_channels": self.channels,
                "speaker_latency_ms": round(self.latency * 1000, 1),
                "speaker_delay_ms": as_ms(self.delay.value),
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
            # What is pulled now plays after this block's start, what still waits, and
            # what a resampler holds back (48 kHz in, less device samples out).
            held = self._pulled / SAMPLE_RATE - self._produced / self.rate
            self.delay.add(sane_delay(time_info.outputBufferDacTime - time_info.currentTime
                                      + waiting.size / self.rate + held))
        while waiting.size < frames:
            samples = pull()
            voice = self._voice
            if voice is not None:
                voice.render(samples)
            out = samples if self._resample is None else self._resample(samples)
            self._pulled += samples.size
            self._produced += out.size
            waiting.push(out)
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
