"""A real hub in a thread, for the command line run in-process (click's CliRunner).

The hub listens on a real socket with its own event loop in a thread, so a
command can run its own ``asyncio.run`` in the test's thread, as it does in a
process of its own; a :class:`~softphone.Phone` for the other end of a call
runs on the hub's loop (:meth:`ThreadHub.run` / :meth:`ThreadHub.submit`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner, Result

from softphone.cli.main import main
from softphone.hub.server import Hub, HubConfig

T = TypeVar("T")


class ThreadHub:
    """A :class:`Hub` on 127.0.0.1 and a free port, on an event loop in a thread."""

    def __init__(self, config: HubConfig) -> None:
        self.hub = Hub(config)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="hub",
                                        daemon=True)

    def start(self) -> ThreadHub:
        self._thread.start()
        self.run(self.hub.start("127.0.0.1", 0))
        return self

    def stop(self) -> None:
        try:
            self.run(self.hub.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.hub.port}"

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the hub's loop; its result comes in the future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return self.submit(coro).result(timeout)


@pytest.fixture
def thread_hub() -> Iterator[ThreadHub]:
    """An open hub (no token needed) that hands out no STUN servers."""
    hub = ThreadHub(HubConfig(ice_servers=[])).start()
    try:
        yield hub
    finally:
        hub.stop()


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    """``softphone ARGS`` in-process; anything but a clean exit fails the test."""
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.exc_info
    gc.collect()  # a socket or task the command left behind warns now, in this test
    return result


@asynccontextmanager
async def silent_server() -> AsyncIterator[tuple[int, asyncio.Event]]:
    """A "hub" that takes connections and never answers: its port, and an event set
    once something connected (Ctrl-C while the hub has not answered yet)."""
    accepted = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        accepted.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], accepted
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.fixture
def two_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    """PortAudio seeing one microphone and one speaker; any name but theirs matches none."""
    from softphone.media import sounddev
    from softphone.media.sounddev import DeviceError, DeviceInfo

    mic = DeviceInfo(0, "Mic", "ALSA", 1, 0, 48000.0, default_input=True)
    speaker = DeviceInfo(1, "Speaker", "ALSA", 0, 2, 48000.0, default_output=True)

    def find(spec: str | None, kind: str) -> DeviceInfo:
        if spec is None:
            return mic if kind == "input" else speaker
        raise DeviceError(f"no {kind} device matches {spec!r}")

    monkeypatch.setattr(sounddev, "list_devices", lambda: [mic, speaker])
    monkeypatch.setattr(sounddev, "find_device", find)
