"""PortAudio's own lines off the terminal (softphone.media.native_noise): a real
process on a real pseudo-terminal, whose descriptor 2 gets PortAudio's kind of line,
another C-level line, and Python's own."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import textwrap

from softphone.media.native_noise import is_portaudio_line

PORTAUDIO = (b"Expression 'PaAlsaStream_WaitForFrames( stream, &framesAvail, &xrun )' "
             b"failed in 'src/hostapi/alsa/pa_linux_alsa.c', line: 4285\n")


def test_portaudio_lines_are_told_apart() -> None:
    assert is_portaudio_line(PORTAUDIO)
    assert is_portaudio_line(b"Expression 'AlsaOpen( hostApi, parameters, streamDir, &pcm )' "
                             b"failed in 'src/hostapi/alsa/pa_linux_alsa.c', line: 1904\n")
    assert not is_portaudio_line(b"softphone: warning: the hub is far away\n")


def test_on_a_terminal_only_portaudio_lines_leave_it() -> None:
    code = textwrap.dedent(f"""
        import logging, os, sys
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        from softphone.media.sounddev import alsa_messages_to_log
        alsa_messages_to_log()
        os.write(2, {PORTAUDIO!r})
        os.write(2, b"a C library's own line\\n")
        print("python's stderr", file=sys.stderr)
        logging.getLogger("softphone.test").warning("a warning")
        os.write(2, {PORTAUDIO!r})
        os.write(2, b"last words, no newline")  # (the process ends at once: all passed on)
    """)
    master, slave = pty.openpty()
    done = subprocess.run([sys.executable, "-c", code], stdin=slave, stdout=slave,
                          stderr=slave, timeout=60, check=False)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # (EIO: the other end is closed)
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    text = out.replace(b"\r\n", b"\n").decode()
    assert done.returncode == 0, text
    assert "a C library's own line" in text and "python's stderr" in text, text
    assert "a warning" in text and "last words, no newline" in text, text
    assert "Expression" not in text and "pa_linux_alsa" not in text, text
