"""The terminal phone: live status line, single-key commands, device choice.

On a terminal (stdin and the human output both ttys), a call shows one
status line redrawn in place (state, duration, codec, RTT, jitter, loss,
playout buffer, microphone and speaker meters, the last keys pressed each
way, our voice's delay to the peer's ear when the peer says its part, the
verification code, "on hold (local)"/"on hold (remote)"; ``restarting`` instead
of ``connected``, without the dead path's figures, while the media is being
restarted) and reads keys:
``m`` mutes/unmutes, ``p`` puts the call on hold and takes it off, ``h`` (or Ctrl-C)
hangs up, ``0``-``9``, ``*`` and ``#`` press that key on the call (DTMF); incoming
calls are answered with ``a``/``y`` or rejected with ``r``/``n``. Elsewhere (pipes, files,
CI) the same status comes as a plain line every few seconds and nothing is
read from the keyboard. Terminal handling is prompt_toolkit's (raw mode,
key parsing, cursor and erase sequences), not escape codes of our own.

This module also turns ``--input``/``--output``/``--no-audio`` into devices
for the CLI (:func:`open_mic`, :func:`open_speaker`). It reads a call only
through its public API (:class:`softphone.client.call.Call`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from softphone._tasks import spawn
from softphone.cli.status_text import (
    KEYS_SHOWN,
    held_by,
    hold_text,
    media_text,
    status_text,
)
from softphone.core.errors import MissingDependency

if TYPE_CHECKING:
    from softphone.client.call import Call
    from softphone.media.apm import VoiceStats
    from softphone.media.delay import DelayParts
    from softphone.media.devices import MicSource, SpeakerDriver
    from softphone.media.rtc import MediaStats

log = logging.getLogger(__name__)
_Device = TypeVar("_Device")

#: Seconds between two plain status lines when the output is not a terminal.
PLAIN_EVERY = 5.0
#: Seconds between two ``stats`` JSON events (--json) during a call.
JSON_STATS_EVERY = 2.0
#: Seconds between two redraws of the live line.
REDRAW_EVERY = 0.2
#: Keys that press a DTMF key on the call; how many keys the status line shows.
DTMF_KEYS = frozenset("0123456789*#")


class Sayer(Protocol):
    """What the CLI's Output offers (human lines and JSON events)."""

    def say(self, text: str) -> None: ...

    def event(self, event: dict[str, Any]) -> None: ...


# ---------------------------------------------------------------- devices ---


def open_mic(spec: str | None, *, required: bool) -> tuple[MicSource | None, str | None]:
    """The microphone for ``--input`` (None: default), or (None, why) if optional and missing.

    With ``required`` (the user named a device) errors propagate:
    :class:`MissingDependency` or :class:`softphone.media.devices.DeviceError`.
    """
    from softphone.media.devices import MicSource

    return _open(MicSource, spec, required, "sending silence")


def open_speaker(spec: str | None, *, required: bool
                 ) -> tuple[SpeakerDriver | None, str | None]:
    """The speaker for ``--output`` (a call's output); like :func:`open_mic`."""
    from softphone.media.devices import SpeakerDriver

    return _open(SpeakerDriver, spec, required, "not playing what you hear")


def _open(device: Callable[[str | None], _Device], spec: str | None, required: bool,
          instead: str) -> tuple[_Device | None, str | None]:
    from softphone.media.devices import DeviceError

    try:
        return device(spec), None
    except (MissingDependency, DeviceError) as exc:
        if required:
            raise
        return None, f"{_short(exc)}: {instead}"


def _short(exc: Exception) -> str:
    """A device error for a notice (what to do instead is said by the caller): a
    missing dependency's first clause ("no audio microphone (input) device"); a
    device that cannot be used in full, its reason kept ("is the sound server
    running?"), without the other ways to send and PortAudio's own words."""
    from softphone.media.devices import ALTERNATIVES, INSTALL_PORTAUDIO

    if isinstance(exc, MissingDependency):
        text = str(exc).split(":", 1)[0]
        return f"{text} ({INSTALL_PORTAUDIO})" if "PortAudio" in text else text
    text = str(exc)
    for advice in (f", or use {ALTERNATIVES}", f"; use {ALTERNATIVES}"):
        text = text.removesuffix(advice)
    reason, raw, _ = text.partition("running?) [")  # (open_stream: "... [PortAudio's]")
    return reason + "running?)" if raw else text


# ---------------------------------------------------------------- figures ---


def is_terminal(stream: Any) -> bool:
    """Keys and a live line: stdin and ``stream`` are terminals (and TERM is not dumb)."""
    try:
        return (sys.stdin is not None and sys.stdin.isatty() and stream.isatty()
                and os.environ.get("TERM", "") != "dumb")
    except (AttributeError, ValueError):
        return False


class Keys:
    """Single keys from the terminal in raw mode (prompt_toolkit), delivered on the loop."""

    def __init__(self, on_key: Callable[[str], None]) -> None:
        self.on_key = on_key
        self._stack = contextlib.ExitStack()
        self._input: Any = None

    def start(self) -> None:
        from prompt_toolkit.input import create_input

        self._input = create_input(sys.stdin)
        self._stack.enter_context(self._input.raw_mode())
        self._stack.enter_context(self._input.attach(self._readable))

    def _readable(self) -> None:
        for press in self._input.read_keys():
            key = press.key if isinstance(press.key, str) else press.key.value
            self.on_key(key)

    def stop(self) -> None:
        self._stack.close()


class Line:
    """One line of the terminal redrawn in place (prompt_toolkit's output)."""

    def __init__(self, stream: Any) -> None:
        from prompt_toolkit.output import create_output

        self.out = create_output(stdout=stream)
        self.text = ""

    def width(self) -> int:
        """The characters a line may have (the terminal's columns, less the last one)."""
        return max(20, self.out.get_size().columns - 1)

    def draw(self, text: str) -> None:
        self.text = text[:self.width()]
        self.out.write_raw("\r")
        self.out.erase_end_of_line()
        self.out.write(self.text)
        self.out.flush()

    def say(self, text: str, status: str | None = None) -> None:
        """Print a line above the status line, then redraw it (as ``status`` if given:
        the line as it is now, not as it was last drawn)."""
        self.out.write_raw("\r")
        self.out.erase_end_of_line()
        self.out.write(text)
        self.out.write_raw("\r\n")
        self._redraw(status)

    def above(self, write: Callable[[], None], status: str | None = None) -> None:
        """Clear the status line, let ``write`` print on the same terminal (a JSON line
        on stdout), then redraw the status line (as ``status`` if given)."""
        self.out.write_raw("\r")
        self.out.erase_end_of_line()
        self.out.flush()
        write()
        self._redraw(status)

    def _redraw(self, status: str | None) -> None:
        if status is not None and self.text:
            self.text = status[:self.width()]
        if self.text:
            self.out.write(self.text)
        self.out.flush()

    def clear(self) -> None:
        self.out.write_raw("\r")
        self.out.erase_end_of_line()
        self.out.flush()
        self.text = ""


class CallScreen:
    """The status line and keys of one call (see the module docstring)."""

    def __init__(self, call: Call, out: Sayer, stream: Any,
                 interactive: bool | None = None) -> None:
        self.call = call
        self.out = out
        self.stream = stream
        self.interactive = is_terminal(stream) if interactive is None else interactive
        self.line: Line | None = None
        self.keys: Keys | None = None
        self._task: asyncio.Task[None] | None = None
        self._stats: MediaStats | None = None
        self._voice: VoiceStats | None = None
        self._devices: dict[str, Any] = {}
        self._delay: DelayParts | None = None
        self._codec = "?"
        self.heard = ""  # DTMF keys the peer pressed
        self.pressed = ""  # DTMF keys we pressed
        #: The ``media-lost`` event while the media is down (None once it is back).
        self.media_down: dict[str, Any] | None = None

    # life --------------------------------------------------------------------

    def start(self) -> None:
        self.call.on_event(self._on_call_event)
        if self.interactive:
            try:
                self.line = Line(self.stream)
                self.keys = Keys(self._on_key)
                self.keys.start()
            except Exception as exc:  # not a usable terminal after all
                log.info("no terminal UI: %s", exc)
                self.line = self.keys = None
                self.interactive = False
        self._task = asyncio.create_task(self._run(), name="call-screen")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.keys is not None:
            self.keys.stop()
            self.keys = None
        if self.line is not None:
            self.line.clear()
            self.line = None

    def say(self, text: str) -> bool:
        """Print above the live line; False when there is none (print it yourself)."""
        if self.line is None:
            return False
        self.line.say(text, self.text())
        return True

    def above(self, write: Callable[[], None]) -> bool:
        """Run ``write`` (it prints a JSON event on stdout, maybe this terminal) with the
        live line cleared, then redraw it; False when there is none (just write)."""
        if self.line is None:
            return False
        self.line.above(write, self.text())
        return True

    # events ------------------------------------------------------------------

    def _on_call_event(self, event: dict[str, Any]) -> None:
        # (The call's own listeners print the JSON event; this says it to the user.)
        kind = event.get("event")
        if kind == "device-lost":
            self.out.say(str(event["message"]))
        elif kind == "dtmf":
            self.heard = (self.heard + str(event["digit"]))[-KEYS_SHOWN:]
            self._redraw()
        elif kind == "dtmf-sent":
            self.pressed = (self.pressed + str(event["digit"]))[-KEYS_SHOWN:]
            self._redraw()
        elif kind in ("hold", "resume"):
            self.out.say(hold_text(kind, str(event.get("by")), self.call.peer))
            self._redraw()
        elif kind in ("media-lost", "media-restart"):
            # While it is down the state says so, and the figures of the dead path go.
            self.media_down = event if kind == "media-lost" else None
            self._stats = None
            self.out.say(media_text(event))
            self._redraw()

    def _on_key(self, key: str) -> None:
        if key in ("m", "M"):
            muted = not self.call.muted
            self.call.mute(muted)
            self.out.event({"event": "muted" if muted else "unmuted", "peer": self.call.peer})
            self._redraw()
        elif key in ("h", "H", "c-c", "c-d"):
            spawn(self.call.hangup("hangup"), name="hangup-key")
        elif key in ("p", "P") and str(self.call.state) == "connected":
            spawn(self._toggle_hold(), name="hold-key")
        elif key in DTMF_KEYS and str(self.call.state) == "connected":
            spawn(self._press(key), name="dtmf-key")

    async def _toggle_hold(self) -> None:
        from softphone.client.call import CallEnded

        with contextlib.suppress(CallEnded):
            await (self.call.resume() if self.call.on_hold else self.call.hold())

    async def _press(self, key: str) -> None:
        from softphone.client.call import CallEnded
        from softphone.media.dtmf_rtp import DtmfUnavailable

        try:
            await self.call.send_dtmf(key)
        except DtmfUnavailable as exc:
            self.out.say(f"cannot send DTMF: {exc}")
        except CallEnded:
            pass

    # drawing -----------------------------------------------------------------

    def state(self) -> str:
        """The call's state for the line: ``restarting`` (or ``media lost`` when no
        restart was agreed) while a connected call's media is down."""
        state = str(self.call.state)
        if state == "connected" and self.media_down is not None:
            return "restarting" if self.media_down.get("restarting") else "media lost"
        return state

    def text(self) -> str:
        call = self.call
        if self._codec == "?":
            self._codec = call.codec or "?"
        return status_text(state=self.state(), seconds=call.talk_seconds, codec=self._codec,
                           stats=self._stats, mic_dbfs=call.mic_dbfs,
                           speaker_dbfs=call.speaker_dbfs, muted=call.muted,
                           keys=self.line is not None, heard=self.heard,
                           pressed=self.pressed, voice=self._voice, devices=self._devices,
                           sas=call.sas, held=held_by(call), on_hold=call.on_hold,
                           delay=self._delay,
                           width=None if self.line is None else self.line.width())

    def _read_audio(self) -> None:
        """The voice processor's and the devices' figures (no await: they are snapshots)."""
        audio = self.call.audio
        if audio is not None:
            self._voice = audio.voice_stats()
            self._devices = audio.device_stats()
            self._delay = audio.delay_parts(None if self._stats is None else self._stats.rtt_ms)

    def _json_stats(self) -> None:
        """The periodic ``stats`` event (--json): media, voice processing, devices, and
        this end's parts of the delay."""
        self.out.event({"event": "stats", "peer": self.call.peer,
                        "media": None if self._stats is None else self._stats.to_json(),
                        "voice_processing": None if self._voice is None
                        else self._voice.as_dict(),
                        "devices": self._devices,
                        "delay": None if self._delay is None else self._delay.to_json()})

    def _redraw(self) -> None:
        if self.line is not None:
            self.line.draw(self.text())

    async def _run(self) -> None:
        last_stats = last_plain = last_json = 0.0
        while True:
            now = time.monotonic()
            if self._codec == "?":
                self._codec = self.call.codec or "?"
            if now - last_stats >= 1.0 and not self.call.is_ended:
                last_stats = now
                if self.media_down is None:  # (no figures of a dead path)
                    with contextlib.suppress(Exception):
                        stats = await self.call.stats()
                        self._stats = None if self.media_down is not None else stats
                self._read_audio()
            if now - last_json >= JSON_STATS_EVERY and str(self.call.state) == "connected":
                last_json = now
                self._json_stats()
            if self.line is not None:
                self._redraw()
            elif now - last_plain >= PLAIN_EVERY and str(self.call.state) == "connected":
                last_plain = now
                self.out.say("status: " + self.text())
            await asyncio.sleep(REDRAW_EVERY)


async def ask_key(call: Call, out: Sayer,
                  interrupt: Callable[[], None] | None = None) -> bool | None:
    """Ask accept/reject with one key; None if the caller gave up first.

    Ctrl-C (a key here: the terminal is in raw mode) rejects the call and calls
    ``interrupt``, so that it is the Ctrl-C it is everywhere else.
    """
    answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def on_key(key: str) -> None:
        if answer.done():
            return
        if key in ("a", "A", "y", "Y"):
            answer.set_result(True)
        elif key in ("r", "R", "n", "N", "c-c"):
            answer.set_result(False)
            if key == "c-c" and interrupt is not None:
                interrupt()

    out.say(f"incoming call from {call.peer}: [a]ccept or [r]eject?")
    keys = Keys(on_key)
    keys.start()
    ended: asyncio.Future[Any] = asyncio.ensure_future(call.ended())
    try:
        await asyncio.wait({answer, ended}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        keys.stop()
        ended.cancel()
    if answer.done():
        out.say("accepted" if answer.result() else "rejected")
        return bool(answer.result())
    answer.cancel()
    return None
