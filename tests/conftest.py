"""Shared fixtures: a real hub on a real socket, softphone subprocesses, WAV reading."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from softphone.hub.server import Hub, HubConfig

if TYPE_CHECKING:
    from .support.pulse import PulseLab

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(condition: bool, what: str, how: str) -> None:
    """Skip (outside CI) or fail (in CI) when a test dependency is missing."""
    if condition:
        return
    message = f"{what} is missing; {how}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def need_command(name: str, package: str) -> str:
    path = shutil.which(name)
    need(path is not None, f"the command {name!r}", f"install it: apt-get install {package}")
    assert path is not None
    return path


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    """Our hub, in-process, on 127.0.0.1 and a free port; no STUN handed out."""
    h = Hub(HubConfig(ice_servers=[]))
    await h.start("127.0.0.1", 0)
    try:
        yield h
    finally:
        await h.stop()


def hub_url(h: Hub) -> str:
    return f"http://127.0.0.1:{h.port}"


def softphone_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "softphone", *args]


class Proc:
    """A softphone subprocess whose output is kept for assertions."""

    def __init__(self, *args: str, stdin: bool = False, env: dict[str, str] | None = None,
                 argv: list[str] | None = None) -> None:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.args = args
        self.popen = subprocess.Popen(
            argv or softphone_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, env=full_env, text=True)
        self.stdout = ""
        self.stderr = ""

    async def wait(self, within: float = 30.0) -> int:
        loop = asyncio.get_running_loop()
        try:
            out, err = await loop.run_in_executor(
                None, lambda: self.popen.communicate(timeout=within))
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = self.popen.communicate()
            self.stdout, self.stderr = out, err
            raise AssertionError(f"{self.args} did not finish in {within}s:\n{out}\n{err}"
                                 ) from None
        self.stdout, self.stderr = out, err
        return self.popen.returncode

    async def wait_for_output(self, text: str, within: float = 15.0) -> None:
        """Wait until ``text`` appears on stdout (reads line by line)."""
        assert self.popen.stdout is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            line = await asyncio.wait_for(
                loop.run_in_executor(None, self.popen.stdout.readline),
                deadline - loop.time())
            if not line:
                break
            self.stdout += line
            if text in line:
                return
        raise AssertionError(f"{text!r} not seen in output of {self.args}: {self.stdout}")

    def send(self, text: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text)
        self.popen.stdin.flush()

    def signal(self, sig: int = signal.SIGINT) -> None:
        self.popen.send_signal(sig)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Collects subprocesses; every one still running is killed at the end."""
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()
        p.popen.wait(5)
        for stream in (p.popen.stdin, p.popen.stdout, p.popen.stderr):
            if stream is not None:
                stream.close()


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        if w.getnchannels() > 1:
            data = data.reshape(-1, w.getnchannels())[:, 0].copy()
        return data, w.getframerate()


@pytest.fixture
def pulse() -> Iterator[PulseLab]:
    """A private PulseAudio server with virtual devices for clients ``a`` and ``b``."""
    from .support.pulse import PulseLab, need_pulse  # (pulse imports this module)

    need_pulse()
    lab = PulseLab(("a", "b")).start()
    try:
        yield lab
    finally:
        lab.stop()
