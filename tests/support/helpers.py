"""What tests share: one process wrapper, one WAV reader, one tone assertion.

- :class:`Proc` runs ``softphone`` (or any ``argv``) as a subprocess and keeps
  its output for assertions; the ``procs`` fixture (tests/conftest.py) stops
  every one a test started.
- :func:`serve_app` serves a stand-in hub (an aiohttp app) on a free port.
- :func:`read_wav` reads a 16-bit WAV as mono int16 samples.
- :func:`assert_tone` / :func:`assert_wav_tone` check that audio carries a
  tone: its frequency, how pure it is, how long, optionally that it has no
  silent gaps; :func:`tone_windows` says, window by window, where it is.
- :func:`connect_peers` connects two aiortc peer connections on this machine
  (:func:`both_connected` waits for it).

(The coturn launcher is in tests/support/coturn.py.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import wave
from collections.abc import Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from aiohttp import web

from softphone.media.audio import SAMPLE_RATE, dominant_frequency, silent_gaps, tone_purity

if TYPE_CHECKING:
    from aiortc import RTCPeerConnection

#: The venv's ``softphone`` script, next to the interpreter running the tests.
SOFTPHONE_SCRIPT = Path(sys.executable).with_name("softphone")


def softphone_command(*args: str) -> list[str]:
    """``softphone ARGS``: the installed entry point, else ``python -m softphone``."""
    if SOFTPHONE_SCRIPT.is_file() and os.access(SOFTPHONE_SCRIPT, os.X_OK):
        return [str(SOFTPHONE_SCRIPT), *args]
    return [sys.executable, "-m", "softphone", *args]


def softphone_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment without anything that would change softphone's defaults."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("SOFTPHONE_ID", "SOFTPHONE_SERVER")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class Proc:
    """A ``softphone ARGS`` subprocess (or ``argv``) whose output is kept for assertions.

    stdout and stderr go to unnamed temporary files, so a chatty process
    (``-v``) never blocks on a full pipe while the test waits for something
    else; :attr:`stdout` and :attr:`stderr` are everything written so far.
    Put it in the ``procs`` fixture's list (or call :func:`stop_all`) so it is
    killed and reaped at the end of the test.
    """

    def __init__(self, *args: str, stdin: bool = False, env: dict[str, str] | None = None,
                 argv: list[str] | None = None) -> None:
        self.args = args
        self.argv = argv or softphone_command(*args)
        self._out: IO[bytes] = tempfile.TemporaryFile()
        self._err: IO[bytes] = tempfile.TemporaryFile()
        self._seen = 0  # where the next wait_for_output starts looking
        self._final: tuple[str, str] | None = None  # the output once it has exited
        self.popen = subprocess.Popen(
            self.argv, stdout=self._out, stderr=self._err,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            env=softphone_env(env), text=True)

    @staticmethod
    def _read(file: IO[bytes]) -> str:
        # pread: our offset is the child's too (one open file); leave it alone.
        fd = file.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    @property
    def stdout(self) -> str:
        return self._final[0] if self._final else self._read(self._out)

    @property
    def stderr(self) -> str:
        return self._final[1] if self._final else self._read(self._err)

    def _close(self) -> None:
        """Once it has exited: keep its output, close the files."""
        if self._final is None:
            self._final = (self.stdout, self.stderr)
            self._out.close()
            self._err.close()
            if self.popen.stdin is not None:
                self.popen.stdin.close()

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def describe(self) -> str:
        """Everything about the process, for assertion messages."""
        return (f"{' '.join(self.argv)} (exit {self.returncode})\n"
                f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr[-4000:]}")

    async def wait(self, within: float = 30.0) -> int:
        """The exit code; kills the process and fails if it runs longer than ``within`` s."""
        loop = asyncio.get_running_loop()
        try:
            code = await loop.run_in_executor(None, lambda: self.popen.wait(within))
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"did not exit within {within} s:\n{self.describe()}"
                                 ) from None
        self._close()
        return code

    async def wait_for_output(self, text: str, within: float = 15.0, *,
                              stderr: bool = False) -> None:
        """Wait until ``text`` appears on stdout after what earlier waits matched (or
        anywhere on stderr); fail if the process exits first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            exited = self.popen.poll() is not None  # before reading: all output is in
            if stderr:
                if text in self.stderr:
                    return
            elif (found := self.stdout.find(text, self._seen)) >= 0:
                self._seen = found + len(text)
                return
            if exited:
                raise AssertionError(f"exited before printing {text!r}:\n{self.describe()}")
            if loop.time() > deadline:
                raise AssertionError(f"{text!r} not printed in {within} s:\n{self.describe()}")
            await asyncio.sleep(0.05)

    def send(self, text: str) -> None:
        """Type ``text`` on its stdin (started with ``stdin=True``)."""
        assert self.popen.stdin is not None, "started without stdin=True"
        self.popen.stdin.write(text)
        self.popen.stdin.flush()

    def signal(self, sig: int = signal.SIGINT) -> None:
        self.popen.send_signal(sig)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()

    def stop(self) -> None:
        """Kill it if it still runs, reap it, close its files. Idempotent."""
        self.kill()
        self.popen.wait(5)
        self._close()


def stop_all(procs: Iterable[Proc]) -> None:
    for proc in procs:
        proc.stop()


async def serve_app(app: web.Application, host: str = "127.0.0.1",
                    port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve an aiohttp ``app`` (a stand-in hub) on ``host:port``, 0 for any free
    port: its runner (``cleanup()`` stops it) and the port."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert server is not None
    return runner, int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]


def read_wav(path: str | Path) -> tuple[npt.NDArray[np.int16], int]:
    """A 16-bit WAV file -> (mono int16 samples, sample rate); the first channel if more."""
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2, f"{path}: not 16-bit"
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        channels = w.getnchannels()
        if channels > 1:
            data = data.reshape(-1, channels)[:, 0]
        return data.copy(), w.getframerate()


#: Received frequency must be within this many Hz of the tone sent.
TOLERANCE_HZ = 5.0


def assert_tone(samples: npt.NDArray[np.int16], expected: float, *, rate: int = SAMPLE_RATE,
                skip: float = 0.5, until: float | None = None, min_seconds: float = 1.0,
                min_purity: float = 0.5, tolerance: float = TOLERANCE_HZ,
                max_gap: float | None = None, what: str = "audio") -> None:
    """``samples`` carry ``expected`` Hz between ``skip`` and ``until`` seconds.

    ``until`` None is the end; a negative ``until`` counts from the end. The
    part checked must last ``min_seconds``, its strongest frequency be within
    ``tolerance`` Hz of ``expected`` with more than ``min_purity`` of its
    energy near it, and, with ``max_gap``, no silent gap in it be that long.
    """
    end = None if until is None else int(until * rate)
    body = samples[int(skip * rate): end]
    seconds = body.size / rate
    assert seconds >= min_seconds, (
        f"{what}: {seconds:.2f} s to check of {samples.size / rate:.2f} s received "
        f"(want {min_seconds:.1f} s after the first {skip} s)")
    found = dominant_frequency(body, rate)
    purity = tone_purity(body, expected, rate)
    assert abs(found - expected) <= tolerance and purity > min_purity, \
        f"{what}: expected {expected} Hz, found {found:.1f} Hz ({100 * purity:.0f}% in band)"
    if max_gap is not None:
        gaps = silent_gaps(body, rate)
        assert max(gaps, default=0.0) < max_gap, f"{what}: silent gaps {gaps}"


def assert_wav_tone(path: str | Path, expected: float, *, what: str | None = None,
                    skip: float = 0.5, until: float | None = None, min_seconds: float = 1.0,
                    min_purity: float = 0.5, max_gap: float | None = None) -> None:
    """:func:`assert_tone` on a 48 kHz WAV file."""
    samples, rate = read_wav(path)
    assert rate == SAMPLE_RATE, f"{path}: {rate} Hz"
    assert_tone(samples, expected, rate=rate, skip=skip, until=until, min_seconds=min_seconds,
                min_purity=min_purity, max_gap=max_gap,
                what=f"{what} ({path})" if what else str(path))


def tone_windows(samples: npt.NDArray[np.int16], rate: int, frequency: float,
                 window: float = 0.1) -> npt.NDArray[np.bool_]:
    """For each ``window`` seconds of ``samples``: is ``frequency`` clearly there (above
    -40 dBFS, and more than half of the energy)?"""
    size = int(rate * window)
    out = np.zeros(samples.size // size, dtype=bool)
    for i in range(out.size):
        chunk = samples[i * size:(i + 1) * size]
        level = float(np.sqrt(np.mean(chunk.astype(np.float64) ** 2)))
        out[i] = level > 32768 * 10 ** (-40 / 20) and tone_purity(chunk, frequency, rate) > 0.5
    return out


async def connect_peers(a: RTCPeerConnection, b: RTCPeerConnection,
                        within: float = 20.0) -> None:
    """``a`` offers, ``b`` answers; returns once both are connected (TimeoutError after
    ``within`` seconds)."""
    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    await both_connected(a, b, within)


async def both_connected(a: RTCPeerConnection, b: RTCPeerConnection,
                         within: float = 20.0) -> None:
    """Returns once ``a`` and ``b`` (offer and answer applied) are both connected."""
    up = asyncio.Event()

    def changed() -> None:
        if a.connectionState == b.connectionState == "connected":
            up.set()

    for pc in (a, b):
        pc.on("connectionstatechange", changed)
    changed()
    await asyncio.wait_for(up.wait(), within)
