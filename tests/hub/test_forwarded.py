"""The client's address behind trusted proxies (``X-Forwarded-For``): the pure rule,
then a real hub behind a "proxy" (raw upgrades from 127.0.0.1 with the header)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from softphone.hub.forwarded import TrustedProxies
from softphone.hub.server import Hub, HubConfig

from ..conftest import hub_url

PROXY = TrustedProxies.from_list(["10.0.0.0/8", "::1"])


@pytest.mark.parametrize(("peer", "headers", "client"), [
    ("10.0.0.5", ["203.0.113.7"], "203.0.113.7"),  # one proxy
    ("10.0.0.5", ["203.0.113.7, 10.0.0.9"], "203.0.113.7"),  # two of ours
    ("10.0.0.5", ["198.51.100.1, 203.0.113.7"], "203.0.113.7"),  # the client's own lie: left
    ("10.0.0.5", ["198.51.100.1", "203.0.113.7"], "203.0.113.7"),  # two header lines
    ("10.0.0.5", ["203.0.113.7:5678"], "203.0.113.7"),  # with a port
    ("10.0.0.5", ["[2001:db8::1]:443"], "2001:db8::1"),
    ("10.0.0.5", ["2001:db8::1"], "2001:db8::1"),
    ("::1", ["203.0.113.7"], "203.0.113.7"),
    ("::ffff:10.0.0.5", ["203.0.113.7"], "203.0.113.7"),  # a dual-stack socket's peer
    ("10.0.0.5", [], "10.0.0.5"),  # no header: the proxy itself
    ("10.0.0.5", ["unknown"], "10.0.0.5"),  # nothing believable: the proxy
    ("10.0.0.5", ["10.0.0.9"], "10.0.0.9"),  # every hop ours: the first of them
    ("192.0.2.1", ["203.0.113.7"], "192.0.2.1"),  # not a trusted proxy: its own header
    ("garbage", ["203.0.113.7"], "garbage"),
])
def test_the_client_is_the_rightmost_hop_that_is_not_a_trusted_proxy(
        peer: str, headers: list[str], client: str) -> None:
    assert PROXY.client(peer, headers) == client


def test_nobody_trusted_reads_no_header() -> None:
    assert TrustedProxies().client("127.0.0.1", ["203.0.113.7"]) == "127.0.0.1"


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "proxy.example", "", "1.2.3.4:80"])
def test_a_bad_entry_is_one_line(bad: str) -> None:
    with pytest.raises(ValueError, match="is not an address or a network"):
        TrustedProxies.from_list([bad])


async def _connect(session: aiohttp.ClientSession, url: str, forwarded: str,
                   opened: list[aiohttp.ClientWebSocketResponse]) -> str:
    """Open a WebSocket with ``X-Forwarded-For``: "open", or the error code it got."""
    ws = await session.ws_connect(url, headers={"X-Forwarded-For": forwarded})
    opened.append(ws)
    try:
        msg = await asyncio.wait_for(ws.receive_json(), 0.3)
    except TimeoutError:
        return "open"
    return str(msg.get("data", {}).get("code") or msg.get("type"))


@pytest.mark.parametrize(("trusted", "expected"), [
    (["127.0.0.1"], ["open", "open", "too-many-connections", "open"]),
    ([], ["open", "open", "too-many-connections", "too-many-connections"]),
], ids=["behind-a-trusted-proxy", "header-ignored"])
async def test_a_hub_behind_a_trusted_proxy_limits_per_forwarded_address(
        trusted: list[str], expected: list[str]) -> None:
    """Two connections an address: the third from the same forwarded address is
    refused (too-many-connections), another forwarded address still gets in; without
    the setting the header is ignored and all come from 127.0.0.1."""
    hub = Hub(HubConfig(ice_servers=[], max_per_address=2, trusted_proxies=trusted))
    await hub.start()
    url = hub_url(hub).replace("http", "ws") + "/ws?id="
    opened: list[aiohttp.ClientWebSocketResponse] = []
    try:
        async with aiohttp.ClientSession() as session:
            got = [await _connect(session, url + client_id, forwarded, opened)
                   for client_id, forwarded in [("a1", "203.0.113.7"), ("a2", "203.0.113.7"),
                                                ("a3", "203.0.113.7"),
                                                ("b1", "198.51.100.2")]]
            for ws in opened:
                await ws.close()
    finally:
        await hub.stop()
    assert got == expected
