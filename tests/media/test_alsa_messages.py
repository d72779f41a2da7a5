"""ALSA's own messages (``ALSA lib pcm.c:...: underrun occurred``, written by the
library PortAudio uses on Linux straight to the terminal, mid-call) go to the log
once the CLI has called :func:`softphone.media.sounddev.alsa_messages_to_log`.
The real libasound, made to complain by opening a PCM that does not exist."""

from __future__ import annotations

import ctypes.util
import subprocess
import sys

import pytest

from ..conftest import need

COMPLAIN = """
import ctypes, logging, sys
if "debug" in sys.argv:
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
if "to-log" in sys.argv:
    from softphone.media.sounddev import alsa_messages_to_log
    assert alsa_messages_to_log()
pcm = ctypes.c_void_p()
assert ctypes.CDLL("libasound.so.2").snd_pcm_open(ctypes.byref(pcm), b"no_such_pcm", 0, 0) < 0
"""


def complain(*args: str) -> str:
    need(ctypes.util.find_library("asound") is not None, "libasound (ALSA)",
         "install it: apt-get install libasound2")
    out = subprocess.run([sys.executable, "-c", COMPLAIN, *args], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stderr


@pytest.mark.parametrize("args, on_terminal, in_log", [
    ((), True, False),  # (ALSA's default: straight to stderr)
    (("to-log",), False, False),  # (the CLI's default verbosity: not shown)
    (("to-log", "debug"), False, True),  # (-vv: one log line)
])
def test_alsa_messages_go_to_the_log(args: tuple[str, ...], on_terminal: bool,
                                     in_log: bool) -> None:
    said = complain(*args)
    assert ("ALSA lib pcm.c" in said) is on_terminal, said
    assert ("DEBUG:softphone.media.sounddev:ALSA pcm.c" in said
            and "Unknown PCM" in said) is in_log, said


@pytest.mark.parametrize(("command", "quiet"), [("call", True), ("listen", True),
                                               ("serve", False), ("token", False)])
def test_the_cli_sends_them_to_the_log(command: str, quiet: bool) -> None:
    """The logging setup of the commands that open devices installs it (the CLI's -vv
    shows them); the others (the hub, tokens, completion) do not load ALSA at all."""
    need(ctypes.util.find_library("asound") is not None, "libasound (ALSA)",
         "install it: apt-get install libasound2")
    code = ("import ctypes; from softphone.cli.main import setup_logging; "
            f"setup_logging(0, {command!r}); p = ctypes.c_void_p(); "
            "ctypes.CDLL('libasound.so.2').snd_pcm_open(ctypes.byref(p), b'no_such_pcm', 0, 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert ("ALSA lib" not in out.stderr) is quiet, out.stderr
