"""The hub connection while a call's media is lost (softphone.client.hubcheck, issue 16).

A real hub on real sockets, and a phone that reaches it through a TCP relay
of ours that can go *dark*: it keeps every connection open but passes nothing
more, either way (a path that is gone while nothing was closed), and new
connections get nowhere (accepted, never answered). What is checked:
``Phone.check_hub()`` answers quickly on a live connection; gives up a dark
one within about a second of pong wait and reconnects at once when the path
is back; gives up at once a connection whose local address is gone; and
while an episode lasts the reconnect attempts start about a second apart,
each cut off after 2 s (the usual backoff grows to 10 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator

import pytest

from softphone.client import hubcheck
from softphone.client.hubcheck import EPISODE_CONNECT_TIMEOUT, EPISODE_RETRY, HubCheck
from softphone.client.phone import Phone
from softphone.client.signaling import HubClient, HubUnreachable
from softphone.hub.server import Hub


class Relay:
    """A TCP relay to the hub that can go dark (pass nothing, close nothing)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.dark = False
        self.accepted = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        if self.dark:  # a SYN into the void: accepted here, never answered
            await asyncio.Event().wait()
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.append(up_writer)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await src.read(65536):
                while self.dark:  # held, not forwarded: as if the path were gone
                    await asyncio.sleep(0.01)
                    if src.at_eof():
                        return
                    data = b""  # what was in flight is lost
                if data:
                    dst.write(data)
                    await dst.drain()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def relay(hub: Hub) -> AsyncIterator[Relay]:
    the_relay = Relay(hub.port or 0)
    await the_relay.start()
    try:
        yield the_relay
    finally:
        await the_relay.stop()


@pytest.fixture
async def phone(relay: Relay) -> AsyncIterator[Phone]:
    the_phone = Phone("alice", relay.url, ice_servers=[])
    await the_phone.connect()
    try:
        yield the_phone
    finally:
        await the_phone.close()


async def _until(check: object, within: float, what: str) -> float:
    deadline = time.monotonic() + within
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)
    return time.monotonic()


async def test_a_live_connection_answers_at_once(phone: Phone) -> None:
    started = time.monotonic()
    assert await phone.check_hub()
    assert time.monotonic() - started < 0.5
    assert phone.hub_connected.is_set()
    assert await asyncio.gather(phone.check_hub(), phone.check_hub()) == [True, True]


async def test_a_dark_connection_is_given_up_and_made_again(phone: Phone, relay: Relay) -> None:
    seen: list[bool] = []
    phone.hub_check.subscribe(seen.append)
    phone.hub_check.episode("call-1", True)
    relay.dark = True
    started = time.monotonic()
    assert not await phone.check_hub()
    took = time.monotonic() - started
    assert hubcheck.PONG_WAIT <= took < hubcheck.PONG_WAIT + 1.0, took
    await _until(lambda: not phone.hub_connected.is_set(), 2.0, "the connection was kept")
    assert seen == [False]
    await asyncio.sleep(2.5)  # attempts go into the dark meanwhile
    relay.dark = False
    back_from = time.monotonic()
    await asyncio.wait_for(phone.hub_connected.wait(), EPISODE_RETRY + EPISODE_CONNECT_TIMEOUT + 1)
    assert time.monotonic() - back_from <= EPISODE_RETRY + EPISODE_CONNECT_TIMEOUT + 0.5
    assert seen == [False, True]
    assert await phone.check_hub()


async def test_a_connection_whose_address_is_gone_goes_at_once(
        phone: Phone, relay: Relay, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hubcheck, "address_present", lambda address: False)
    accepted = relay.accepted
    started = time.monotonic()
    assert not await phone.check_hub()
    assert time.monotonic() - started < 0.3  # no ping waited for
    phone.hub_check.episode("call-1", True)  # reconnects at once
    monkeypatch.undo()
    await _until(lambda: relay.accepted > accepted and phone.hub_connected.is_set(), 3.0,
                 "no new connection")
    assert await phone.check_hub()


async def test_reconnect_pacing_during_an_episode(hub: Hub, relay: Relay) -> None:
    """Hurried: attempts about 1 s apart, each cut at 2 s; calm: the usual backoff."""
    client = HubClient(relay.url, "bob")
    attempts: list[float] = []

    async def connect() -> None:
        attempts.append(time.monotonic())
        await client.connect()

    check = HubCheck(client, connect)
    relay.dark = True
    try:
        check.episode("call", True)
        started = time.monotonic()
        failures = []
        while time.monotonic() - started < 5.5:
            await check.pause(0.5)
            try:
                await check.connect()
            except HubUnreachable as exc:
                failures.append(str(exc))
        assert len(attempts) >= 3, attempts
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        # Each attempt is cut at 2 s; the next one starts right then (more than 1 s later).
        assert all(EPISODE_CONNECT_TIMEOUT - 0.1 <= g <= EPISODE_CONNECT_TIMEOUT + 0.6
                   for g in gaps), gaps
        assert all("within 2 s" in f for f in failures), failures
        # A refused connection fails at once: then the attempts are 1 s apart.
        await relay.stop()
        attempts.clear()
        started = time.monotonic()
        while time.monotonic() - started < 3.2:
            await check.pause(0.5)
            with contextlib.suppress(HubUnreachable):
                await check.connect()
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert len(gaps) >= 2 and all(EPISODE_RETRY - 0.05 <= g <= EPISODE_RETRY + 0.4
                                      for g in gaps), gaps
        # The episode over: the backoff is back (jittered 0.5 to 1.5 times).
        check.episode("call", False)
        waited = time.monotonic()
        await check.pause(2.0)
        assert time.monotonic() - waited >= 1.0
        assert check.next_backoff(8.0) == hubcheck.MAX_BACKOFF
        check.episode("call", True)  # no growing backoff behind an episode
        assert check.next_backoff(8.0) == hubcheck.FIRST_BACKOFF
    finally:
        await client.close()


async def test_an_episode_cuts_a_long_backoff_short(hub: Hub) -> None:
    check = HubCheck(HubClient(f"http://127.0.0.1:{hub.port}", "carol"))
    waiting = asyncio.create_task(check.pause(10.0))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    started = time.monotonic()
    check.episode("call", True)
    await asyncio.wait_for(waiting, 1.0)
    assert time.monotonic() - started < 0.2


async def test_a_hub_without_checks_is_taken_as_fine() -> None:
    class Bare:
        async def connect(self) -> None:
            pass

    assert await HubCheck(Bare()).check()
