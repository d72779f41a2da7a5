"""Operator-facing edges of ``softphone serve``: a node id taken by a live node
(real redis-server), IPv6 listen addresses in what the hub prints."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import pytest

from softphone.cli import serve as serve_module
from softphone.cli.serve import lan_addresses, url_host
from softphone.hub.redis_parts import Keys
from softphone.hub.redis_registry import NodeIdTaken, RedisRegistry
from softphone.hub.server import Hub, HubConfig

from ..support.helpers import Proc
from .test_redis import redis_server  # noqa: F401  (the fixture)

# -- a node id held by a live node ------------------------------------------------------


async def test_duplicate_node_id_is_refused(redis_server: Any) -> None:  # noqa: F811
    first = RedisRegistry(redis_server.url, "n1", heartbeat=0.2, ttl=3.0)
    await first.start()
    try:
        second = RedisRegistry(redis_server.url, "n1", heartbeat=0.2, ttl=3.0)
        began = time.monotonic()
        with pytest.raises(NodeIdTaken, match="'n1' is in use by another running hub"):
            await second.start()
        assert time.monotonic() - began < 3.0  # the holder refreshes: known at once
        # The first one still holds its key, and keeps it.
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            assert await r.get(Keys().node("n1")) == first._instance
            await asyncio.sleep(0.5)
            assert await r.get(Keys().node("n1")) == first._instance
        finally:
            await r.aclose()
    finally:
        await first.close()


async def test_two_nodes_starting_at_once_one_wins(redis_server: Any) -> None:  # noqa: F811
    regs = [RedisRegistry(redis_server.url, "twin", heartbeat=0.2, ttl=3.0) for _ in range(2)]
    got = await asyncio.gather(*(r.start() for r in regs), return_exceptions=True)
    try:
        assert sorted(type(g).__name__ for g in got) == ["NodeIdTaken", "NoneType"]
    finally:
        for reg, g in zip(regs, got, strict=True):
            if g is None:
                await reg.close()


async def test_restart_after_a_crash_waits_for_the_stale_key(
        redis_server: Any) -> None:  # noqa: F811
    """A crashed node's key is not refreshed: the new one takes it when it expires."""
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await r.set(Keys().node("n1"), "dead-instance", px=1500)
    finally:
        await r.aclose()
    reg = RedisRegistry(redis_server.url, "n1", heartbeat=0.2, ttl=3.0)
    began = time.monotonic()
    await reg.start()
    try:
        assert 1.0 < time.monotonic() - began < 3.5
    finally:
        await reg.close()


async def test_serve_with_a_taken_node_id_exits_2(
        redis_server: Any, procs: list[Proc]) -> None:  # noqa: F811
    first = RedisRegistry(redis_server.url, "n1", heartbeat=0.2, ttl=3.0)
    await first.start()
    try:
        p = Proc("serve", "--port", "0", "--redis", redis_server.url, "--node-id", "n1")
        procs.append(p)
        code = await p.wait(30)
        assert code == 2, p.stderr
        assert p.stderr.startswith("softphone: node id 'n1' is in use by another running hub")
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    finally:
        await first.close()


async def test_serve_on_a_port_in_use_lets_its_node_key_go(
        redis_server: Any, procs: list[Proc]) -> None:  # noqa: F811
    """A port in use is exit 1 once Redis is joined: the node's key goes with it (it
    stayed 3 s, and a restart with the same id waited for it)."""
    import redis.asyncio as aioredis

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = Proc("serve", "--port", str(port), "--redis", redis_server.url, "--node-id", "n9")
        procs.append(p)
        assert await p.wait(30) == 1, p.stderr
    assert "cannot listen on" in p.stderr and "Traceback" not in p.stderr, p.stderr
    client = aioredis.from_url(redis_server.url)
    try:
        assert await client.exists("softphone:node:n9") == 0
    finally:
        await client.aclose()


# -- IPv6 in what the hub prints ------------------------------------------------------------


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_url_host_brackets_ipv6() -> None:
    assert url_host("::") == "[::]"
    assert url_host("fd00::2") == "[fd00::2]"
    assert url_host("[::1]") == "[::1]"
    assert url_host("0.0.0.0") == "0.0.0.0"
    assert url_host("example.org") == "example.org"


@pytest.mark.parametrize(("family", "host", "v6only", "want"), [
    (socket.AF_INET, "0.0.0.0", None, ["192.0.2.2"]),
    (socket.AF_INET6, "::", 1, ["[fd00::2]"]),
    (socket.AF_INET6, "::", 0, ["192.0.2.2", "[fd00::2]"]),
    (socket.AF_INET, "127.0.0.1", None, []),
])
def test_lan_addresses_are_the_ones_listened_on(
        monkeypatch: pytest.MonkeyPatch, family: socket.AddressFamily, host: str,
        v6only: int | None, want: list[str]) -> None:
    if family == socket.AF_INET6 and not _has_ipv6():
        pytest.skip("no IPv6 here")
    import softphone.hub.tls as tls

    monkeypatch.setattr(tls, "local_addresses",
                        lambda: ["127.0.0.1", "192.0.2.2", "::1", "fd00::2"])
    with socket.socket(family, socket.SOCK_STREAM) as s:
        if v6only is not None:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        s.bind((host, 0))
        assert lan_addresses([s]) == want


async def test_hub_on_ipv6_any_warns_with_brackets(caplog: pytest.LogCaptureFixture) -> None:
    if not _has_ipv6():
        pytest.skip("no IPv6 here")
    hub = Hub(HubConfig(ice_servers=[], heartbeat=0))
    with caplog.at_level(logging.WARNING):
        await hub.start("::", 0)
    try:
        # asyncio makes "::" IPv6-only: nothing but IPv6 addresses to print.
        assert [s.family for s in hub.sockets()] == [socket.AF_INET6]
        assert f"anyone who reaches [::]:{hub.port} can take" in caplog.text
    finally:
        await hub.stop()


async def test_serve_on_ipv6_any_prints_bracketed_urls(procs: list[Proc]) -> None:
    if not _has_ipv6():
        pytest.skip("no IPv6 here")
    p = Proc("serve", "--host", "::", "--port", "0", "--self-signed", "--ice-server", "none")
    procs.append(p)
    await p.wait_for_output("listening on", within=30)
    await p.wait_for_output("SHA-256", within=10)
    await asyncio.sleep(0.3)
    assert "listening on https://[::]:" in p.stdout, p.stdout
    lan = [line for line in p.stdout.splitlines() if "phones on the LAN" in line]
    assert all("https://[" in line for line in lan), lan  # IPv6-only: no IPv4 address
    assert serve_module.lan_addresses is lan_addresses


# -- softphone doctor against a hub with tokens -----------------------------------------------


@pytest.mark.parametrize("register", [False, True])
async def test_doctor_with_a_token_is_no_refused_login(register: bool) -> None:
    import aiohttp

    from softphone.cli.doctor import DoctorTarget, run_doctor
    from softphone.hub.auth import mint_token

    secret = "h" * 40
    hub = Hub(HubConfig(ice_servers=[], secret=secret))
    await hub.start("127.0.0.1", 0)
    try:
        good = mint_token(secret, "alice", time.time())
        results = await run_doctor(DoctorTarget(
            server=f"http://127.0.0.1:{hub.port}", client_id="alice", token=good,
            register=register, audio=False, timeout=2.0))
        by = {r.name: r for r in reversed(results)}
        assert by["token"].status == "ok", by["token"]
        assert by["signaling"].status == "ok", by["signaling"]
        async with aiohttp.ClientSession() as s, \
                s.get(f"http://127.0.0.1:{hub.port}/metrics") as resp:
            text = await resp.text()
        assert 'softphone_hub_connections_refused_total{reason="unauthorized"}' not in text
    finally:
        await hub.stop()
