"""Helpers for tests that run ``softphone`` as a subprocess and check recordings.

(``tests/conftest.py`` belongs to other tests; these are imported explicitly.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import wave
from pathlib import Path
from typing import BinaryIO

import numpy as np

from softphone.media.audio import SAMPLE_RATE, dominant_frequency, tone_purity

#: The venv's ``softphone`` script, next to the interpreter running the tests.
SOFTPHONE_SCRIPT = Path(sys.executable).with_name("softphone")


def softphone_command(*args: str) -> list[str]:
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


def _open_logs(out_path: Path, err_path: Path) -> tuple[BinaryIO, BinaryIO]:
    # Handed to the child, then closed by the caller.
    out = open(out_path, "wb")
    try:
        return out, open(err_path, "wb")
    except OSError:
        out.close()
        raise


class SoftphoneProcess:
    """A ``softphone`` subprocess; stdout and stderr go to files in ``log_dir``."""

    def __init__(self, args: tuple[str, ...], proc: asyncio.subprocess.Process,
                 out_path: Path, err_path: Path) -> None:
        self.args = args
        self.proc = proc
        self.out_path = out_path
        self.err_path = err_path

    @classmethod
    async def start(cls, *args: str, log_dir: Path, name: str,
                    env: dict[str, str] | None = None) -> SoftphoneProcess:
        out_path, err_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
        out, err = _open_logs(out_path, err_path)
        try:
            proc = await asyncio.create_subprocess_exec(
                *softphone_command(*args), stdin=asyncio.subprocess.DEVNULL,
                stdout=out, stderr=err, env=softphone_env(env))
        finally:
            out.close()  # the child has its own copies
            err.close()
        return cls(args, proc, out_path, err_path)

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def describe(self) -> str:
        """Everything about the process, for assertion messages."""
        return (f"softphone {' '.join(self.args)} (exit {self.returncode})\n"
                f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr[-4000:]}")

    async def wait_for_output(self, text: str, within: float = 10.0) -> None:
        """Wait until ``text`` appears on stdout; fail if the process exits first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while text not in self.stdout:
            if self.proc.returncode is not None:
                raise AssertionError(f"exited before printing {text!r}:\n{self.describe()}")
            if loop.time() > deadline:
                raise AssertionError(f"{text!r} not printed in {within} s:\n{self.describe()}")
            await asyncio.sleep(0.05)

    async def wait(self, within: float) -> int:
        """The exit code; kills the process and fails if it runs longer than ``within`` s."""
        try:
            return await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            await self.kill()
            raise AssertionError(f"did not exit within {within} s:\n{self.describe()}"
                                 ) from None

    async def kill(self) -> None:
        """Kill it if it still runs, and reap it. Idempotent."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()


async def kill_all(procs: list[SoftphoneProcess]) -> None:
    for proc in procs:
        await proc.kill()


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A 16-bit WAV file -> (mono int16 samples, sample rate)."""
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2, f"{path}: not 16-bit"
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        channels = w.getnchannels()
        if channels > 1:
            data = data.reshape(-1, channels)[:, 0]
        return data.copy(), w.getframerate()


#: Received frequency must be within this many Hz of the tone sent.
TOLERANCE_HZ = 5.0


def assert_tone(samples: np.ndarray, expected: float, *, rate: int = SAMPLE_RATE,
                skip: float = 0.5, min_seconds: float = 1.0, what: str = "audio") -> None:
    """``samples`` carry ``expected`` Hz once the first ``skip`` seconds are dropped."""
    body = samples[int(skip * rate):]
    assert body.size >= min_seconds * rate, \
        f"{what}: only {samples.size / rate:.2f} s received (want {skip + min_seconds:.1f} s)"
    found = dominant_frequency(body, rate)
    purity = tone_purity(body, expected, rate)
    assert abs(found - expected) <= TOLERANCE_HZ and purity > 0.5, \
        f"{what}: expected {expected} Hz, found {found:.1f} Hz ({100 * purity:.0f}% in band)"


def assert_wav_tone(path: str | Path, expected: float, *, skip: float = 0.5,
                    min_seconds: float = 1.0, what: str | None = None) -> None:
    samples, rate = read_wav(path)
    assert rate == SAMPLE_RATE, f"{path}: {rate} Hz"
    assert_tone(samples, expected, rate=rate, skip=skip, min_seconds=min_seconds,
                what=f"{what or ''} ({path})")
