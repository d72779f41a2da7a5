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
import time
from collections.abc import AsyncIterator
from typing import Any

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


async def _until(check: object, within: float, what: str) -> None:
    """Wait until ``check()``; ``within`` is a hang guard (far above what it takes)."""
    deadline = time.monotonic() + within
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


class Waits:
    """What hubcheck's ``asyncio.wait_for`` calls were given and how each ended
    ("timeout": its timeout ran out; "done" or "error": what it waited for ended
    first, or failed); the rest of asyncio as it is. The pacing is checked on
    these, not on a wall clock that a loaded machine stretches."""

    def __init__(self) -> None:
        self.calls: list[tuple[float | None, str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def wait_for(self, aw: Any, timeout: float | None) -> Any:  # noqa: ASYNC109
        try:
            result = await asyncio.wait_for(aw, timeout)
        except TimeoutError:
            self.calls.append((timeout, "timeout"))
            raise
        except Exception:
            self.calls.append((timeout, "error"))  # what it waited for failed
            raise
        self.calls.append((timeout, "done"))
        return result


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> Waits:
    seen = Waits()
    monkeypatch.setattr(hubcheck, "asyncio", seen)
    return seen


def ping_waits(phone: Phone, monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, bool]]:
    """From now on, each ping of ``phone``'s hub connection: how long it waited for
    the pong, and whether one came."""
    pings: list[tuple[float, bool]] = []
    hub = phone.hub_check.hub
    ping = hub.ping

    async def noted(wait: float) -> bool:
        answered = bool(await ping(wait))
        pings.append((wait, answered))
        return answered

    monkeypatch.setattr(hub, "ping", noted)
    return pings


async def test_a_live_connection_answers_at_once(phone: Phone,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    pings = ping_waits(phone, monkeypatch)
    assert await phone.check_hub()
    assert pings == [(hubcheck.PONG_WAIT, True)]  # a pong came, within the pong wait
    assert phone.hub_connected.is_set()
    assert await asyncio.gather(phone.check_hub(), phone.check_hub()) == [True, True]
    assert len(pings) == 2  # the two at once shared one ping


async def test_a_dark_connection_is_given_up_and_made_again(
        phone: Phone, relay: Relay, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    phone.hub_check.subscribe(seen.append)
    phone.hub_check.episode("call-1", True)
    relay.dark = True
    pings = ping_waits(phone, monkeypatch)
    assert not await phone.check_hub()
    assert pings == [(hubcheck.PONG_WAIT, False)]  # waited the pong wait, none came
    await _until(lambda: not phone.hub_connected.is_set(), 30, "the connection was kept")
    assert seen == [False]
    await asyncio.sleep(2.5)  # attempts go into the dark meanwhile
    relay.dark = False
    # (A hang guard: the episode's attempts, 1 s apart, get through within seconds.)
    await asyncio.wait_for(phone.hub_connected.wait(), 30)
    assert seen == [False, True]
    assert await phone.check_hub()


async def test_a_connection_whose_address_is_gone_goes_at_once(
        phone: Phone, relay: Relay, monkeypatch: pytest.MonkeyPatch) -> None:
    pings = ping_waits(phone, monkeypatch)
    monkeypatch.setattr(hubcheck, "address_present", lambda address: False)
    accepted = relay.accepted
    assert not await phone.check_hub()
    assert pings == []  # no ping waited for
    phone.hub_check.episode("call-1", True)  # reconnects at once
    monkeypatch.setattr(hubcheck, "address_present", lambda address: True)
    await _until(lambda: relay.accepted > accepted and phone.hub_connected.is_set(), 30,
                 "no new connection")
    assert await phone.check_hub()


async def test_reconnect_pacing_during_an_episode(hub: Hub, relay: Relay, waits: Waits) -> None:
    """Hurried: attempts 1 s apart, each cut at 2 s; calm: the usual backoff.

    The check's clock is ours (``now``): the pacing is what it computes from it."""
    client = HubClient(relay.url, "bob")
    now = [100.0]
    attempts: list[float] = []

    async def connect() -> None:
        attempts.append(now[0])
        await client.connect()

    check = HubCheck(client, connect, clock=lambda: now[0])
    relay.dark = True
    try:
        check.episode("call", True)
        # Each attempt into the dark is cut at 2 s (its wait ran out); the next one
        # starts right then (the last one started more than 1 s before).
        for _ in range(2):
            await check.pause(0.5)
            with pytest.raises(HubUnreachable, match="within 2 s"):
                await check.connect()
            now[0] += EPISODE_CONNECT_TIMEOUT  # (what the attempt took)
        assert waits.calls == [(EPISODE_CONNECT_TIMEOUT, "timeout")] * 2, waits.calls
        # A refused connection fails at once: then the next attempt waits out the
        # rest of the second since the last one started.
        await relay.stop()
        waits.calls.clear()
        for _ in range(2):
            await check.pause(0.5)
            with contextlib.suppress(HubUnreachable):
                await check.connect()
            now[0] += 0.25  # (what the refusal took)
        await check.pause(0.5)
        assert waits.calls == [(EPISODE_CONNECT_TIMEOUT, "error"),
                               (EPISODE_RETRY - 0.25, "timeout")] * 2, waits.calls
        assert len(attempts) == 4
        # The episode over: the backoff is back (jittered 0.5 to 1.5 times).
        check.episode("call", False)
        waits.calls.clear()
        await check.pause(2.0)
        [(waited, how)] = waits.calls
        assert 1.0 <= (waited or 0) <= 3.0 and how == "timeout", waits.calls
        assert check.next_backoff(8.0) == hubcheck.MAX_BACKOFF
        check.episode("call", True)  # no growing backoff behind an episode
        assert check.next_backoff(8.0) == hubcheck.FIRST_BACKOFF
    finally:
        await client.close()


async def test_an_episode_cuts_a_long_backoff_short(hub: Hub, waits: Waits) -> None:
    check = HubCheck(HubClient(f"http://127.0.0.1:{hub.port}", "carol"))
    waiting = asyncio.create_task(check.pause(10.0))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    check.episode("call", True)
    await asyncio.wait_for(waiting, 30)  # (a hang guard)
    # Its backoff wait ended by the episode's kick, not by running out; no other wait.
    [(backoff, how)] = waits.calls
    assert 5.0 <= (backoff or 0) <= 15.0 and how == "done", waits.calls



async def test_a_hub_without_checks_is_taken_as_fine() -> None:
    class Bare:
        async def connect(self) -> None:
            pass

    assert await HubCheck(Bare()).check()
