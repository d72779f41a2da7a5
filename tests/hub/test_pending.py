"""Connections without their request head (slowloris): softphone.hub.pending's
decisions, then a real hub that one address cannot fill with them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest

from softphone.hub.dispatch import HEAD_TIMEOUT
from softphone.hub.forwarded import TrustedProxies
from softphone.hub.pending import (
    PER_ADDRESS,
    HeadCaps,
    HeadDecision,
    HeadRefusal,
    PendingHeads,
)
from softphone.hub.server import Hub, HubConfig

from ..conftest import hub_url

# -- the decision, sans I/O ---------------------------------------------------------


def test_caps_follow_the_hubs_limits() -> None:
    assert HeadCaps.for_limits(20_000, 100) == HeadCaps(PER_ADDRESS, 2_500)
    assert HeadCaps.for_limits(8, 2) == HeadCaps(PER_ADDRESS, PER_ADDRESS)  # (a floor)
    assert HeadCaps.for_limits(0, 0) == HeadCaps(0, 0)  # unlimited stays unlimited
    assert HEAD_TIMEOUT == 10.0
    # `softphone serve` and its config key take the hub's default (the CLI does not
    # import the hub to read it: it said 30 s after the hub's went to 10).
    from softphone.cli.config import find_option
    from softphone.cli.serve import serve

    option = find_option("serve", "--head-timeout")
    assert option is not None and option.default == HEAD_TIMEOUT
    flag = next(p for p in serve.params if p.name == "head_timeout")
    assert flag.default == HEAD_TIMEOUT


def test_one_address_is_refused_past_its_cap_and_said_once_an_episode() -> None:
    pending: PendingHeads[int] = PendingHeads(HeadCaps(per_address=4, total=100))
    assert [pending.open(n, "a").refused for n in range(4)] == [None] * 4
    first, second = pending.open(4, "a"), pending.open(5, "a")
    assert first.refused is second.refused is HeadRefusal.PER_ADDRESS
    assert (first.alarm, second.alarm) == (HeadRefusal.PER_ADDRESS, None)
    assert pending.count("a") == 4 and len(pending) == 4  # (the refused not counted)
    assert pending.open(6, "b").refused is None  # another address is not affected
    pending.close(0)  # room for one: still the same episode
    assert pending.open(7, "a").refused is None
    assert pending.open(8, "a").alarm is None
    for n in (1, 2, 3):  # down to half the cap: the episode is over
        pending.close(n)
    assert pending.count("a") == 1
    pending.open(9, "a")
    pending.open(10, "a")
    pending.open(11, "a")
    assert pending.open(12, "a").alarm is HeadRefusal.PER_ADDRESS


def test_a_trusted_proxy_is_held_to_the_total_only() -> None:
    pending: PendingHeads[int] = PendingHeads(HeadCaps(per_address=2, total=5))
    assert all(pending.open(n, "proxy", exempt=True).refused is None for n in range(5))
    decision = pending.open(5, "proxy", exempt=True)
    assert decision.refused is None and decision.evicted == 0
    assert pending.count("proxy") == 5


def test_past_the_total_the_oldest_makes_room() -> None:
    pending: PendingHeads[str] = PendingHeads(HeadCaps(per_address=3, total=4))
    assert [pending.open(key, key[0]) for key in ("a1", "b1", "a2", "b2")] == \
        [HeadDecision()] * 4
    assert pending.open("c1", "c") == HeadDecision(evicted="a1", alarm=HeadRefusal.TOTAL)
    assert pending.open("c2", "c") == HeadDecision(evicted="b1")  # (said once)
    assert (len(pending), pending.count("a"), pending.count("b")) == (4, 1, 1)
    pending.close("a1")  # (gone already: nothing)
    assert len(pending) == 4
    pending.close("a2")
    pending.close("b2")  # down to half: the episode is over
    pending.open("d1", "d")
    pending.open("d2", "d")
    assert pending.open("d3", "d") == HeadDecision(evicted="c1", alarm=HeadRefusal.TOTAL)


def test_unlimited_caps_count_without_refusing() -> None:
    pending: PendingHeads[int] = PendingHeads(HeadCaps(0, 0))
    assert all(pending.open(n, "a") == HeadDecision() for n in range(100))
    for n in range(100):
        pending.close(n)
    assert len(pending) == 0 and pending.count("a") == 0


def test_trusts_peer() -> None:
    proxies = TrustedProxies.from_list(["10.0.0.0/8", "::1"])
    assert proxies.trusts_peer("10.1.2.3") and proxies.trusts_peer("::1")
    assert proxies.trusts_peer("::ffff:10.0.0.1")  # (a dual-stack socket's IPv4)
    assert not proxies.trusts_peer("192.0.2.1") and not proxies.trusts_peer("")
    assert not TrustedProxies().trusts_peer("10.1.2.3")


# -- a real hub -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(config: HubConfig) -> AsyncIterator[Hub]:
    hub = Hub(config)
    await hub.start("127.0.0.1", 0)
    try:
        yield hub
    finally:
        await hub.stop()


async def open_heads(hub: Hub, source: str, n: int, stack: contextlib.AsyncExitStack
                     ) -> list[asyncio.StreamReader]:
    """``n`` connections from ``source`` (a loopback address) that send part of a
    request head and stop there."""
    readers = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", hub.port,
                                                       local_addr=(source, 0))
        stack.push_async_callback(_close, writer)
        writer.write(b"GET /ws?id=slow HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        readers.append(reader)
    return readers


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def closed(reader: asyncio.StreamReader, within: float = 2.0) -> bool:
    """Whether the hub closes this connection within ``within`` seconds."""
    try:
        return await asyncio.wait_for(reader.read(100), within) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def served(hub: Hub) -> str:
    """A real client's WebSocket and /healthz, from 127.0.0.1; /metrics' refusals."""
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(hub_url(hub).replace("http", "ws") + "/ws?id=legit",
                                      timeout=aiohttp.ClientWSTimeout(ws_close=2))
        async with session.get(hub_url(hub) + "/healthz") as response:
            assert response.status == 200
            assert (await response.json())["clients"] == 1
        await ws.close()
        async with session.get(hub_url(hub) + "/metrics") as response:
            return "\n".join(line for line in (await response.text()).splitlines()
                             if line.startswith("softphone_hub_connections_refused_total"))


async def test_one_address_cannot_hold_more_than_its_cap_of_pending_heads(
        caplog: pytest.LogCaptureFixture) -> None:
    """20 connections from 127.0.0.2 that never finish their head: 16 are held
    (until the head timeout), the other 4 closed at once, said once in the log and
    counted in /metrics; a client from 127.0.0.1 still gets its WebSocket and
    /healthz."""
    caplog.set_level(logging.INFO, "softphone.hub")
    async with running(HubConfig(ice_servers=[])) as hub, contextlib.AsyncExitStack() as stack:
        readers = await open_heads(hub, "127.0.0.2", PER_ADDRESS + 4, stack)
        assert [await closed(r) for r in readers[PER_ADDRESS:]] == [True] * 4
        assert not any(await asyncio.gather(*(closed(r, 0.3) for r in readers[:PER_ADDRESS])))
        refused = await served(hub)
    assert 'softphone_hub_connections_refused_total{reason="pending-head"} 4.0' in refused
    said = [r.getMessage() for r in caplog.records if "pending-head" in r.getMessage()]
    assert len(said) == 1 and "remote=127.0.0.2" in said[0], said


async def test_past_the_total_the_oldest_pending_heads_are_closed() -> None:
    """max_connections 8: 16 heads may be pending in all. Two addresses open 10
    each: the last 4 and the real client's connection close the 5 oldest."""
    async with running(HubConfig(ice_servers=[], max_connections=8)) as hub, \
            contextlib.AsyncExitStack() as stack:
        first = await open_heads(hub, "127.0.0.2", 10, stack)
        second = await open_heads(hub, "127.0.0.3", 10, stack)
        await served(hub)
        assert [await closed(r, 0.3) for r in first] == [True] * 5 + [False] * 5
        assert not any(await asyncio.gather(*(closed(r, 0.3) for r in second)))


async def test_a_trusted_proxy_is_not_held_to_the_per_address_cap() -> None:
    async with running(HubConfig(ice_servers=[], trusted_proxies=["127.0.0.2"])) as hub, \
            contextlib.AsyncExitStack() as stack:
        readers = await open_heads(hub, "127.0.0.2", PER_ADDRESS + 4, stack)
        assert not any(await asyncio.gather(*(closed(r, 0.3) for r in readers)))
        assert hub.heads.pending.count("127.0.0.2") == PER_ADDRESS + 4


async def test_the_head_timeout_counts_from_accept_whatever_trickles_in() -> None:
    async with running(HubConfig(ice_servers=[], head_timeout=0.5)) as hub:
        reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for byte in b"GET /ws?id=a HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 100:
                if reader.at_eof():
                    break
                writer.write(bytes([byte]))
                await asyncio.sleep(0.02)
            assert await closed(reader, 2.0)
            assert loop.time() - start < 1.5
            assert len(hub.heads.pending) == 0
        finally:
            await _close(writer)
