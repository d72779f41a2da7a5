"""What PortAudio sees, and opening and closing its streams (through sounddevice).

- :func:`load_sounddevice`: the module, or the fix in one line when
  PortAudio or the module is missing;
- :func:`list_devices` / :func:`find_device`: the devices; pick by index or
  by a piece of the name;
- :func:`device_format`: the rate and channel count to open a device with
  (48 kHz mono if it takes them);
- :func:`open_stream` / :func:`close_stream`;
- :class:`WatchedDevice`: an open device's name, and its loss told once.

Used by :mod:`softphone.media.devices` (the microphone),
:mod:`softphone.media.speaker`, ``softphone devices`` and ``softphone doctor``.
"""

from __future__ import annotations

import ctypes
import logging
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final, Literal

from softphone.core.errors import MissingDependency
from softphone.media.audioformat import SAMPLE_RATE
from softphone.media.delay import Smoothed

log = logging.getLogger(__name__)

Kind = Literal["input", "output"]

#: What to do instead of the machine's devices (said in every device error).
ALTERNATIVES = "--tone/--play to send, --record to keep what you hear, or --no-audio"
INSTALL_PORTAUDIO = "apt-get install libportaudio2"


class DeviceError(ValueError):
    """A device that does not exist or cannot be opened (one-line message)."""


def _alsa_said(file: bytes | None, line: int, function: bytes | None, err: int,
               fmt: bytes | None) -> None:
    log.debug("ALSA %s:%d %s (%d): %s", (file or b"").decode(errors="replace"), line,
              (function or b"").decode(errors="replace"), err,
              (fmt or b"").decode(errors="replace"))


#: ALSA's error handler type (variadic in C: the arguments after ``fmt`` are not read).
_ALSA_HANDLER: Final = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                                        ctypes.c_int, ctypes.c_char_p)
#: Kept for the life of the process: ALSA holds a pointer to it once installed.
_ALSA_TO_LOG: Final = _ALSA_HANDLER(_alsa_said)


def alsa_messages_to_log() -> bool:
    """Send ALSA's own messages (``ALSA lib pcm.c:...: underrun occurred``, written to
    the terminal mid-call by the library PortAudio uses on Linux) to this module's
    log at debug level. Process-wide (ALSA has one handler): for a program that owns
    its terminal, such as the CLI. Whether ALSA was found. (The log has ALSA's
    format string, not its arguments: C's variadic arguments are not read.) On a
    terminal, PortAudio's own lines go to the log too
    (:mod:`softphone.media.native_noise`)."""
    from softphone.media.native_noise import portaudio_messages_to_log

    portaudio_messages_to_log()  # (PortAudio's own lines too, on a terminal)
    try:
        ctypes.CDLL("libasound.so.2").snd_lib_error_set_handler(_ALSA_TO_LOG)
    except (OSError, AttributeError) as exc:
        log.debug("ALSA's messages stay on the terminal: %s", exc)
        return False
    return True


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


#: PortAudio's code for an ALSA device that would not open, whatever ALSA said
#: (pa_linux_alsa.c, AlsaOpen): "Illegal combination of I/O devices". Through the
#: ALSA pulse plugin: the sound server refused the connection (here: it had died).
_ALSA_OPEN_REFUSED: Final = -9993


def device_format(sd: ModuleType, device: DeviceInfo, kind: Kind, rate: int | None,
                   channels: int | None) -> tuple[int, int]:
    """The rate and channel count to open ``device`` with.

    Asked for (``rate``/``channels``), or: 48 kHz if the device takes it,
    else its own default rate (we then resample); mono if it takes it, else
    stereo, else as many channels as it has (we mix down, or copy the
    mono to every channel).
    """
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    most = device.inputs if kind == "input" else device.outputs
    rates = [rate] if rate else list(dict.fromkeys((SAMPLE_RATE, int(device.default_rate))))
    counts = [channels] if channels else list(dict.fromkeys((1, min(2, most), most)))
    error: Exception | None = None
    for r in rates:
        for c in counts:
            try:
                check(device=device.index, channels=c, dtype="int16", samplerate=r)
            except (sd.PortAudioError, ValueError) as exc:
                error = exc
                continue
            return r, c
    asked = f"{rates[0]} Hz, {counts[0]} channel(s)" if rate or channels else "16-bit audio"
    hint = " (or the sound system refused it; through PulseAudio or PipeWire: is the " \
           "sound server running?)" \
        if _refused(sd, error) else ""
    raise DeviceError(f"{device.name}: cannot use it for {asked}: {error}{hint}")


def open_stream(sd: ModuleType, cls_name: str, device: DeviceInfo, **kw: Any) -> Any:
    try:
        stream = getattr(sd, cls_name)(device=device.index, dtype="int16", **kw)
        stream.start()
    except (sd.PortAudioError, ValueError) as exc:
        why = f"the sound system refused it (through PulseAudio or PipeWire: is the " \
              f"sound server running?) [{exc}]" \
            if _refused(sd, exc) else str(exc)
        raise DeviceError(f"cannot open {device.name}: {why}") from exc
    return stream


def _refused(sd: ModuleType, exc: Exception | None) -> bool:
    return isinstance(exc, sd.PortAudioError) and len(exc.args) > 1 \
        and exc.args[1] == _ALSA_OPEN_REFUSED


def close_stream(stream: Any) -> None:
    """Close a PortAudio stream (once) without letting a dead device raise."""
    try:
        stream.abort(ignore_errors=True)
        stream.close(ignore_errors=True)
    except Exception as exc:  # a device already gone
        log.debug("closing %s: %s", stream, exc)


class WatchedDevice:
    """Shared by mic and speaker: the device's name, its loss (told once), and its delay:
    PortAudio's latency for the stream, and the delay measured from its timestamps."""

    direction: Kind

    def __init__(self, device: DeviceInfo, stall_timeout: float) -> None:
        self.device = device
        self.stall_timeout = stall_timeout
        self.lost: str | None = None
        self.last_callback = time.monotonic()
        #: PortAudio's latency of the open stream (seconds; set when it opens).
        self._latency = 0.0
        #: Seconds measured from PortAudio's timestamps (:mod:`softphone.media.delay`).
        self.delay = Smoothed()

    @property
    def latency(self) -> float:
        """PortAudio's latency of the stream (input or output; seconds; kept: a closed
        stream has none)."""
        return self._latency

    @property
    def measured_delay(self) -> float:
        """The delay as measured, else as PortAudio gave its buffer (seconds)."""
        value = self.delay.value
        return self._latency if value is None else value

    def _tell_lost(self, message: str) -> bool:
        """Tell the listeners; whether there were any."""
        raise NotImplementedError

    def _declare_lost(self, why: str) -> None:
        """On the event loop: mark the device lost and tell whoever listens, once."""
        if self.lost is not None:
            return
        role = "microphone" if self.direction == "input" else "speaker"
        effect = "sending silence" if self.direction == "input" \
            else "no longer playing what you hear"
        instead = "--tone/--play to send" if self.direction == "input" \
            else "--record to keep what you hear"
        self.lost = (f"{role} lost: {self.device.name} {why}; the call goes on, {effect} "
                     f"(check the device; or use {instead}, or --no-audio)")
        # (a warning only if nobody is told: a listener, such as the CLI, says it itself)
        told = self._tell_lost(self.lost)
        log.log(logging.INFO if told else logging.WARNING, "%s", self.lost)
