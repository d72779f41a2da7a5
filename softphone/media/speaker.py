"""The speaker, through sounddevice (PortAudio): :class:`SpeakerDriver`
(re-exported by :mod:`softphone.media.devices`, with the microphone).

Its output callback *pulls* the next stretch (a frame, or a pause played
shorter) from the call's playout when it has played the last one
(:meth:`softphone.media.tracks.AudioReceiver.play`): the speaker is the
clock and the playout is the only buffer before the device. Each frame it
pulls is the echo canceller's reference. Its device buffer starts at
10 ms, grows only if the device underruns and shrinks back once it has been
calm (:class:`~softphone.media.devicebuffer.DeviceBuffer` decides).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from softphone.media.apm import VoiceProcessor
from softphone.media.audio import SAMPLE_RATE, Int16Array
from softphone.media.delay import as_ms, sane_delay
from softphone.media.devicebuffer import SPEAKER_LATENCIES as SPEAKER_LATENCIES
from softphone.media.devicebuffer import BufferSteps, DeviceBuffer, PauseWatch
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

#: Times a resized stream is tried before the speaker is given up as lost, waiting
#: 20 ms, then twice as long each time, between tries (0.6 s at most in all):
#: PulseAudio's ALSA plugin refuses one now and then, a few in a row under load.
REOPEN_TRIES = 6


class SpeakerDriver(WatchedDevice):
    """The speaker, pulling what it plays from the call's playout as it needs it.

    Give it to a call as its output (``call.accept(source, sinks,
    output=SpeakerDriver())``); :class:`~softphone.media.tracks.AudioReceiver`
    hands it the playout through :meth:`drive`. Until then, and after the
    call, it plays silence. Every frame pulled is also handed to the call's
    voice processor (:meth:`use_voice_processor`) as the echo canceller's
    reference: exactly what the speaker plays, at 48 kHz mono, before it is
    resampled or copied to the device's channels.

    The device buffer starts as small as ``buffer_steps`` allows
    (:data:`~softphone.media.devicebuffer.SPEAKER_LATENCIES` by default),
    grows a step (the stream reopened) when PortAudio reports repeated
    underruns and shrinks back a step after a calm spell
    (:class:`~softphone.media.devicebuffer.DeviceBuffer`); a ``latency``
    given stays as it is.
    """

    direction: Kind = "output"

    def __init__(self, device: str | int | None = None, *, latency: str | float | None = None,
                 blocksize: int = 0, samplerate: int | None = None, channels: int | None = None,
                 stall_timeout: float = 1.0, on_lost: LostCallback | None = None,
                 buffer_steps: BufferSteps | None = None) -> None:
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
        #: What decides the device buffer (None: the ``latency`` given, for good).
        self.buffer: DeviceBuffer | None = None
        self._asked: str | float
        if latency is None:
            self.buffer = DeviceBuffer(buffer_steps or BufferSteps())
            self._asked = self.buffer.latency
        else:
            self._asked = latency
        #: Output buffers PortAudio reported as underflowed (we were late).
        self.underflows = 0
        #: (While the buffer may step back) whether it plays a pause now.
        self.pause = PauseWatch(self.buffer.settings if self.buffer else BufferSteps())
        #: A resize is under way (:meth:`_resize`); the worker thread reopening the
        #: stream owns it meanwhile (``_reopening``, under ``_owner``: see :meth:`stop`).
        self.resizing = False
        self._reopening = False
        self._owner = threading.Lock()
        #: The longest block PortAudio asked for (seconds): the playout leaves that much
        #: of a packet's wait uncut (:meth:`StretchPlayout.pull_chunk`).
        self.block = 0.0
        #: (``delay``: seconds from a pull to its sound.)
        self._pulled = self._produced = 0  # 48 kHz samples pulled, device samples made
        self.stream = self._open_stream()

    def _open_stream(self) -> Any:
        self._starting = True  # (a new stream's first callback may say it underran)
        stream = open_stream(self._sd, "OutputStream", self.device, samplerate=self.rate,
                       latency=self._asked, blocksize=self._blocksize,
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
                "speaker_underruns": self.underflows, "speaker_grown": self.grown,
                "speaker_shrunk": 0 if self.buffer is None else self.buffer.shrunk}

    @property
    def grown(self) -> int:
        """How often the device buffer was made larger after underruns."""
        return 0 if self.buffer is None else self.buffer.grown

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

    def _tell_lost(self, message: str) -> bool:
        return tell_lost(self._lost_listeners, message)

    def _callback(self, outdata: Any, frames: int, time_info: Any, status: Any) -> None:
        self.last_callback = now = time.monotonic()
        pull = self._pull
        if status.output_underflow and pull is not None and not self._starting:
            self.underflows += 1  # (not a stream's start: the first drive, a reopen)
        self._starting = False
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
            pause = self.pause
            if pause.watching and samples.size:  # (only while a step back is possible)
                pause.feed(max(int(samples.max()), -int(samples.min())), now)
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
            await self._resize()

    async def _resize(self) -> None:
        """The device buffer :attr:`buffer` says, if another: the stream reopened on
        a worker thread (PortAudio's close and open block for a few ms, more when
        they have to be tried again)."""
        buffer = self.buffer
        if buffer is None:
            return
        step, pause, now = buffer.step, self.pause, time.monotonic()
        latency = buffer.update(self.underflows, now, quiet=pause.quiet)
        if latency is None:
            if buffer.may_shrink and not pause.watching:
                pause.start(now)
            return
        if buffer.may_shrink:  # (a change: what was a pause before it counts no more)
            pause.start(now)
        else:
            pause.stop()
        self._asked = latency
        began = time.monotonic()
        self.resizing = True
        try:
            with self._owner:  # (the worker owns the streams until it is done: stop())
                self._reopening = True
            await asyncio.to_thread(self._reopen, self.stream)
        except DeviceError as exc:
            self._pull = None
            self._declare_lost(f"could not be reopened ({exc})")
            return
        finally:
            self.resizing = False
        log.info("speaker: %s; device buffer now %.0f ms (reopened in %.1f ms)",
                 "repeated underruns" if buffer.step > step else "calm since the last change",
                 self.latency * 1000, (time.monotonic() - began) * 1000)
        if self._voice is not None:
            self._voice.set_device_latency(self.latency, self._mic_latency)

    def _reopen(self, old: Any) -> None:
        """(On a worker thread.) ``old`` closed and a stream at the new size open, tried
        :data:`REOPEN_TRIES` times (PulseAudio's ALSA plugin now and then refuses one).
        If the speaker was stopped meanwhile, the new stream is closed here: until
        this returns, the streams are this thread's, not :meth:`stop`'s."""
        new = None
        try:
            close_stream(old)  # (its callback has returned once this does)
            self.block = 0.0  # (the new stream's blocks: measured again)
            for attempt in range(1, REOPEN_TRIES + 1):
                try:
                    new = self._open_stream()
                    break
                except DeviceError as exc:
                    if attempt == REOPEN_TRIES:
                        raise
                    log.info("speaker: reopening failed (%s); trying again", exc)
                    time.sleep(0.02 * 2 ** (attempt - 1))
        finally:
            with self._owner:
                self._reopening = False
                stopped = self._closed
                if new is not None and not stopped:
                    self.stream = new
            if new is not None and stopped:
                close_stream(new)

    def stop(self) -> None:
        """Stop playing and close the device (idempotent)."""
        with self._owner:
            if self._closed:
                return
            self._closed = True
            mine = not self._reopening  # (else the reopening thread closes what it has)
        self._pull = None
        if self._watchdog is not None:
            self._watchdog.cancel()
        if mine:
            close_stream(self.stream)
