"""The machine's microphone and speaker, through sounddevice (PortAudio).

- :func:`list_devices` / :func:`find_device`: what PortAudio sees; pick by
  index or by a piece of the name.
- :class:`MicSource`: an aiortc ``MediaStreamTrack`` of 20 ms frames at
  48 kHz mono, paced by the device's clock. What the microphone captures
  before the call starts sending is thrown away, and at most
  ``max_backlog`` seconds ever wait, so the call never lags behind the
  microphone.
- :class:`SpeakerDriver`: plays received audio, as a call's output
  (``call.accept(source, sinks, output=SpeakerDriver())``). Its output
  callback *pulls* the next 20 ms from the call's playout buffer
  (:meth:`softphone.media.tracks.AudioReceiver.play`): the speaker is the
  clock and the playout is the only buffer before the device.

Both resample when the device does not take 48 kHz, and both notice a
device that stops mid-call (PortAudio's callbacks just stop when the audio
server dies): the call's audio path is told with a one-line message on the
event loop (and ``on_lost``, if given), the microphone then sends silence
and the receiver goes back to its own clock; the call goes on.

sounddevice is imported lazily (:func:`load_sounddevice`): without the
PortAudio library or without devices, callers get
:class:`~softphone.core.errors.MissingDependency` with the fix in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError

from softphone.core.errors import MissingDependency
from softphone.media.audio import FRAME_SAMPLES, SAMPLE_RATE, Int16Array
from softphone.media.pcm import Resampler as Resampler
from softphone.media.pcm import SampleFifo
from softphone.media.tracks import AudioSource, LostCallback, tell_lost

log = logging.getLogger(__name__)

Kind = Literal["input", "output"]

#: What to do instead of the machine's devices (said in every device error).
ALTERNATIVES = "--tone/--play to send, --record to keep what you hear, or --no-audio"
INSTALL_PORTAUDIO = "apt-get install libportaudio2"


#: Device buffer (seconds) asked of PortAudio for microphone and speaker. Measured
#: through the ALSA pulse plugin (benchmarks/mouth_to_ear.py): 'low' (about 9 ms)
#: underran into silence on a loaded machine, 10 ms underran often, 'high'
#: (about 35 ms) cost 20 ms more mouth to ear than 20 ms.
DEFAULT_LATENCY = 0.02


class DeviceError(ValueError):
    """A device that does not exist or cannot be opened (one-line message)."""


def load_sounddevice() -> ModuleType:
    """``import sounddevice``, or :class:`MissingDependency` naming the fix."""
    try:
        import sounddevice
    except OSError as exc:  # the module is there, libportaudio is not
        raise MissingDependency(
            f"no PortAudio library ({exc}): {INSTALL_PORTAUDIO}, or use {ALTERNATIVES}"
        ) from exc
    except ImportError as exc:
        raise MissingDependency(
            f"the sounddevice module is missing ({exc}): pip install sounddevice, "
            f"or use {ALTERNATIVES}") from exc
    module: ModuleType = sounddevice
    return module


@dataclass(frozen=True)
class DeviceInfo:
    """One PortAudio device."""

    index: int
    name: str
    hostapi: str
    inputs: int
    outputs: int
    default_rate: float
    default_input: bool = False
    default_output: bool = False

    def has(self, kind: Kind) -> bool:
        return (self.inputs if kind == "input" else self.outputs) > 0

    def __str__(self) -> str:
        return f"{self.index}: {self.name} ({self.hostapi})"


def list_devices() -> list[DeviceInfo]:
    """Every device PortAudio sees (may be empty)."""
    sd = load_sounddevice()
    try:
        raw = sd.query_devices()
        hostapis = sd.query_hostapis()
        default_in, default_out = sd.default.device
    except sd.PortAudioError as exc:
        raise DeviceError(f"PortAudio cannot list devices: {exc}") from exc
    out: list[DeviceInfo] = []
    for index, dev in enumerate(raw):
        api = hostapis[dev["hostapi"]]["name"] if dev["hostapi"] < len(hostapis) else "?"
        out.append(DeviceInfo(index, str(dev["name"]), str(api),
                              int(dev["max_input_channels"]), int(dev["max_output_channels"]),
                              float(dev["default_samplerate"]),
                              index == default_in, index == default_out))
    return out


def find_device(spec: str | int | None, kind: Kind) -> DeviceInfo:
    """The ``kind`` device for ``spec``: an index, a piece of its name, or None (the default).

    Raises :class:`MissingDependency` when there is no such device at all,
    :class:`DeviceError` when ``spec`` matches none or several.
    """
    devices = [d for d in list_devices() if d.has(kind)]
    what = "microphone (input)" if kind == "input" else "speaker (output)"
    if not devices:
        raise MissingDependency(
            f"no audio {what} device: PortAudio sees none (no sound card, or no audio server; "
            f"with PulseAudio check PULSE_SERVER); use {ALTERNATIVES}")
    if spec is None or spec == "":
        chosen = next((d for d in devices if (d.default_input if kind == "input"
                                              else d.default_output)), devices[0])
        return chosen
    text = str(spec).strip()
    if text.isdigit():
        index = int(text)
        for d in devices:
            if d.index == index:
                return d
        raise DeviceError(f"no {what} device with index {index} (softphone devices lists them)")
    matches = [d for d in devices if text.lower() in d.name.lower()]
    exact = [d for d in matches if d.name.lower() == text.lower()]
    if len(exact) == 1:
        return exact[0]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise DeviceError(f"no {what} device named like {text!r} (softphone devices lists them)")
    names = ", ".join(repr(d.name) for d in matches[:5])
    raise DeviceError(f"{text!r} matches several {what} devices ({names}): use an index")


def _device_rate(sd: ModuleType, device: DeviceInfo, kind: Kind) -> int:
    """48 kHz if the device takes it, else its own default rate (we then resample)."""
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    try:
        check(device=device.index, channels=1, dtype="int16", samplerate=SAMPLE_RATE)
        return SAMPLE_RATE
    except (sd.PortAudioError, ValueError):
        rate = int(device.default_rate)
        try:
            check(device=device.index, channels=1, dtype="int16", samplerate=rate)
        except (sd.PortAudioError, ValueError) as exc:
            raise DeviceError(f"{device.name}: cannot use it for mono 16-bit audio: {exc}"
                              ) from exc
        return rate


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


def _open(sd: ModuleType, cls_name: str, device: DeviceInfo, **kw: Any) -> Any:
    try:
        stream = getattr(sd, cls_name)(device=device.index, channels=1, dtype="int16", **kw)
        stream.start()
    except (sd.PortAudioError, ValueError) as exc:
        raise DeviceError(f"cannot open {device.name}: {exc}") from exc
    return stream


class MicSource(AudioSource, _Watched):
    """The microphone as the call's audio track, paced by the device clock."""

    direction: Kind = "input"

    def __init__(self, device: str | int | None = None, *, latency: str | float = DEFAULT_LATENCY,
                 max_backlog: float = 0.06, stall_timeout: float = 1.0,
                 on_lost: LostCallback | None = None) -> None:
        sd = load_sounddevice()
        info = find_device(device, "input")
        AudioSource.__init__(self)
        _Watched.__init__(self, info, stall_timeout)
        if on_lost is not None:
            self.add_lost_listener(on_lost)
        self.rate = _device_rate(sd, info, "input")
        self._resample = None if self.rate == SAMPLE_RATE else Resampler(self.rate, SAMPLE_RATE)
        self._capture_lock = threading.Lock()
        #: What PortAudio delivered (device rate), filled on its thread; at most
        #: ``max_backlog`` seconds, the oldest giving way.
        self._captured = SampleFifo(int(max_backlog * self.rate) + 1)
        #: At 48 kHz, waiting to be sent in 20 ms frames (on the event loop).
        self._pending = SampleFifo(SAMPLE_RATE // 4)
        self._window_min = 1 << 30
        self._window_frames = 0
        self._sending = False
        self._send_loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._silence_start: float | None = None
        #: Samples thrown away because the call did not take them in time.
        self.dropped = 0
        #: Blocks PortAudio delivered.
        self.callbacks = 0
        self.stream = _open(sd, "InputStream", info, samplerate=self.rate, latency=latency,
                            callback=self._callback, finished_callback=self._finished)
        log.info("microphone %s at %d Hz", info, self.rate)

    # PortAudio's thread ------------------------------------------------------

    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        self.last_callback = time.monotonic()
        self.callbacks += 1
        loop = self._send_loop
        if not self._sending or loop is None:
            return  # before the call sends: discard, so it starts without a backlog
        with self._capture_lock:
            self.dropped += self._captured.push(indata[:, 0])
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
        with self._capture_lock:
            data = self._captured.take(self._captured.size) if self._captured.size else None
        pending = self._pending
        if data is not None:
            if self._resample is not None:
                data = self._resample(data)
            self.dropped += pending.push(data)
            if pending.size > FRAME_SAMPLES + int(0.06 * SAMPLE_RATE):
                self.dropped += pending.drop(pending.size - FRAME_SAMPLES)
        frame = pending.take(FRAME_SAMPLES)
        if frame is not None:
            self._trim_standing_backlog()
        return frame

    def _trim_standing_backlog(self) -> None:
        """Drop audio that has waited all along for a second: a backlog that never drains.

        A burst from the device leaves audio waiting; since the call takes
        exactly what the device gives, it would wait (and delay every word)
        for the rest of the call. What was always waiting, over 50 frames,
        minus a 5 ms margin, is dropped once, oldest first.
        """
        self._window_min = min(self._window_min, self._pending.size)
        self._window_frames += 1
        if self._window_frames < 50:
            return
        excess = self._window_min - SAMPLE_RATE // 200
        if excess > 0:
            self.dropped += self._pending.drop(excess)
            log.debug("microphone: dropped a standing backlog of %.1f ms",
                      excess * 1000 / SAMPLE_RATE)
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
        _close(self.stream)


class SpeakerDriver(_Watched):
    """The speaker, pulling each 20 ms it plays from the call's playout.

    Give it to a call as its output (``call.accept(source, sinks,
    output=SpeakerDriver())``); :class:`~softphone.media.tracks.AudioReceiver`
    hands it the playout through :meth:`drive`. Until then, and after the
    call, it plays silence.
    """

    direction: Kind = "output"

    def __init__(self, device: str | int | None = None, *, latency: str | float = DEFAULT_LATENCY,
                 stall_timeout: float = 1.0, on_lost: LostCallback | None = None) -> None:
        sd = load_sounddevice()
        info = find_device(device, "output")
        super().__init__(info, stall_timeout)
        self._lost_listeners: list[LostCallback] = [] if on_lost is None else [on_lost]
        self.rate = _device_rate(sd, info, "output")
        self._resample = None if self.rate == SAMPLE_RATE else Resampler(SAMPLE_RATE, self.rate)
        self._pull: Callable[[], Int16Array] | None = None
        #: Device-rate samples pulled but not played yet (a device block is not 20 ms).
        self._waiting = SampleFifo(self.rate)
        self._watchdog: asyncio.Task[None] | None = None
        self._closed = False
        #: Output buffers PortAudio reported as underflowed (we were late).
        self.underflows = 0
        self.stream = _open(sd, "OutputStream", info, samplerate=self.rate, latency=latency,
                            callback=self._callback)
        log.info("speaker %s at %d Hz, output latency %.1f ms", info, self.rate,
                 float(self.stream.latency) * 1000)

    def drive(self, pull: Callable[[], Int16Array], lost: LostCallback) -> None:
        """From now on, play what ``pull()`` returns (20 ms each); ``lost(message)`` if we stop.

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
        if status.output_underflow:
            self.underflows += 1
        pull = self._pull
        waiting = self._waiting
        if pull is None or frames > waiting.capacity // 2:
            outdata.fill(0)
            return
        while waiting.size < frames:
            samples = pull()
            waiting.push(samples if self._resample is None else self._resample(samples))
        waiting.take_into(outdata[:, 0])

    async def _watch(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.stall_timeout / 4)
            silent_for = time.monotonic() - self.last_callback
            if silent_for >= self.stall_timeout or not self.stream.active:
                self._pull = None
                self._declare_lost(f"stopped playing ({silent_for:.1f} s without a callback)")
                return

    def stop(self) -> None:
        """Stop playing and close the device (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._pull = None
        if self._watchdog is not None:
            self._watchdog.cancel()
        _close(self.stream)


def _close(stream: Any) -> None:
    """Close a PortAudio stream (once) without letting a dead device raise."""
    try:
        stream.abort(ignore_errors=True)
        stream.close(ignore_errors=True)
    except Exception as exc:  # a device already gone
        log.debug("closing %s: %s", stream, exc)
