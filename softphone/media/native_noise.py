"""PortAudio's own messages, off the terminal and into the log.

Debian's PortAudio writes its internal errors straight to file descriptor 2
(``Expression 'PaAlsaStream_WaitForFrames( stream, &framesAvail, &xrun )' failed
in 'src/hostapi/alsa/pa_linux_alsa.c', line: 4285``), half a dozen lines each
time the sound server goes away, over a call's status line. It has no hook
for them (``PaUtil_SetDebugPrintFunction`` is not exported). So, for a program
that owns its terminal (the CLI), :func:`portaudio_messages_to_log` puts a pipe
in front of descriptor 2: a thread passes every line on to the terminal
except PortAudio's (:func:`is_portaudio_line`), which go to this module's log
at debug level. Python's own ``sys.stderr`` writes straight to the terminal,
not through the pipe, so nothing Python says waits on the thread or is lost
at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import logging
import os
import sys
import threading
from typing import Final

log = logging.getLogger(__name__)

#: Pieces of the lines PortAudio (and its ALSA host API) writes on its own.
_PORTAUDIO_MARKS: Final = (b"Expression '", b"pa_linux_alsa.c", b"PaAlsa", b"pa_unix_util.c",
                           b"pa_process.c", b"pa_front.c")


def is_portaudio_line(line: bytes) -> bool:
    """Whether ``line`` is one of PortAudio's own messages."""
    return any(mark in line for mark in _PORTAUDIO_MARKS)


def portaudio_messages_to_log() -> bool:
    """Filter PortAudio's lines out of descriptor 2 when it is a terminal (see the
    module). Process-wide; whether the filter is now in place."""
    try:
        if not os.isatty(2):
            return False
        terminal = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
    except OSError as exc:
        log.debug("PortAudio's messages stay on the terminal: %s", exc)
        return False
    # Python's own writes skip the pipe (the logging handler made before this, too:
    # it holds the old sys.stderr object, whose descriptor is now the pipe; so the
    # object is replaced in place where it can be).
    sys.stderr.flush()
    sys.stderr = os.fdopen(os.dup(terminal), "w", buffering=1, encoding=sys.stderr.encoding,
                           errors="backslashreplace")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(
                handler.stream, "fileno", None) is not None:
            try:
                if handler.stream.fileno() == 2:
                    handler.setStream(sys.stderr)
            except (OSError, ValueError):
                continue
    if faulthandler.is_enabled():  # (a crash's traceback straight to the terminal)
        faulthandler.enable(file=sys.stderr)
    thread = threading.Thread(target=_pass_on, args=(read_end, terminal),
                              name="stderr-filter", daemon=True)
    thread.start()
    atexit.register(_drain, terminal, thread)
    return True


def _drain(terminal: int, thread: threading.Thread) -> None:
    """At exit: descriptor 2 is the terminal again, so the pipe ends and the thread
    passes on what is still in it (a last line without its newline too)."""
    with contextlib.suppress(OSError):
        os.dup2(terminal, 2)
    thread.join(timeout=1.0)


def _pass_on(read_end: int, terminal: int) -> None:
    """The filter's thread: lines from the pipe to the terminal, PortAudio's to the log.
    Should it stop, descriptor 2 is the terminal again (writers never block on a pipe
    nobody reads)."""
    pending = b""
    try:
        while True:
            chunk = os.read(read_end, 4096)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                _forward(line + b"\n", terminal)
        if pending:
            _forward(pending, terminal)
    except Exception as exc:  # (a broken pipe or terminal: give fd 2 back)
        log.debug("the stderr filter stopped: %s", exc)
    finally:
        with contextlib.suppress(OSError):
            if os.fstat(2).st_ino != os.fstat(terminal).st_ino:
                os.dup2(terminal, 2)
        with contextlib.suppress(OSError):
            os.close(read_end)


def _forward(line: bytes, terminal: int) -> None:
    if is_portaudio_line(line):
        log.debug("PortAudio: %s", line.rstrip().decode(errors="replace"))
        return
    try:
        os.write(terminal, line)
    except OSError:
        pass
