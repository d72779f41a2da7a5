"""How long the hub waits before telling a peer ``peer-disconnected`` (issue 16).

A connection in a call that was *closed* (a killed process: FIN, RST or a
WebSocket close) is given ``peer_grace``; one the *heartbeat* dropped (its
network went away, nothing was closed) ``peer_away_grace``, so that a phone
restarting media after an outage finds its call still there. Real hub, real
sockets; the "away" client is a WebSocket that stops answering pings.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

from softphone.cli.main import main
from softphone.hub.limits import CallPairs, PeerGone
from softphone.hub.server import Hub, HubConfig

from ..conftest import hub_url

HEARTBEAT = 0.3  # dropped after 0.3 to 0.45 s of silence
GRACE = 0.3
AWAY_GRACE = 2.0


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    the_hub = Hub(HubConfig(ice_servers=[], heartbeat=HEARTBEAT, peer_grace=GRACE,
                            peer_away_grace=AWAY_GRACE))
    await the_hub.start("127.0.0.1", 0)
    try:
        yield the_hub
    finally:
        await the_hub.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


class Client:
    """A hub client whose frames are read all the time (which answers the hub's pings)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.inbox: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for frame in self.ws:
            if frame.type == aiohttp.WSMsgType.TEXT:
                await self.inbox.put((time.monotonic(), json.loads(frame.data)))

    async def next(self, within: float) -> tuple[float, dict[str, Any]]:
        return await asyncio.wait_for(self.inbox.get(), within)

    async def nothing_for(self, seconds: float) -> None:
        with pytest.raises(asyncio.TimeoutError):
            got = await self.next(seconds)
            pytest.fail(f"unexpected {got}")

    async def close(self) -> None:
        self._reader.cancel()
        await self.ws.close()


async def ws(session: aiohttp.ClientSession, hub: Hub, client_id: str,
             answers_pings: bool = True) -> aiohttp.ClientWebSocketResponse:
    return await session.ws_connect(f"{hub_url(hub)}/ws?id={client_id}",
                                    autoping=answers_pings, heartbeat=None)


async def in_call(session: aiohttp.ClientSession, hub: Hub
                  ) -> tuple[Client, aiohttp.ClientWebSocketResponse]:
    """``a`` (reading) in a call with ``b`` (a bare WebSocket: read only here)."""
    a = Client(await ws(session, hub, "a"))
    b = await ws(session, hub, "b", answers_pings=False)
    await a.ws.send_json({"type": "call-request", "to": "b"})
    frame = await b.receive(3)
    assert json.loads(frame.data)["type"] == "call-request"
    await b.send_json({"type": "call-accept", "to": "a"})
    assert (await a.next(3))[1]["type"] == "call-accept"
    assert len(hub.pairs) == 1
    return a, b


async def dropped(hub: Hub, client_id: str, within: float = 10.0) -> None:
    """Wait until the hub no longer holds ``client_id``. ``within`` is a hang guard
    (the heartbeat drops a silent client within half a second)."""
    deadline = time.monotonic() + within
    while hub.registry.local_count() and any(
            c.client_id == client_id for c in hub._connections):
        assert time.monotonic() < deadline, f"the hub still holds {client_id}"
        await asyncio.sleep(0.02)


def graces_given(hub: Hub) -> list[tuple[str, float | None]]:
    """From now on, each peer that leaves a call and the grace the hub gives it."""
    graces: list[tuple[str, float | None]] = []
    disconnected = hub.pairs.disconnected

    def noted(client_id: str, now: float, grace: float | None = None) -> float | None:
        graces.append((client_id, grace))
        return disconnected(client_id, now, grace)

    hub.pairs.disconnected = noted  # type: ignore[method-assign]
    return graces


HANGUP = {"type": "hangup", "to": "a", "from": "b", "data": {"reason": "peer-disconnected"}}


async def test_closed_connection_gets_the_short_grace(hub: Hub,
                                                      session: aiohttp.ClientSession) -> None:
    a, b = await in_call(session, hub)
    graces = graces_given(hub)
    await b.close()  # a phone that quit (or a killed process: the kernel closes it)
    _, got = await a.next(within=30)  # (a hang guard)
    assert got == HANGUP
    assert graces == [("b", GRACE)], graces  # the short grace, not the away grace
    assert len(hub.pairs) == 0
    await a.close()


async def test_heartbeat_dropped_connection_waits_the_away_grace(
        hub: Hub, session: aiohttp.ClientSession) -> None:
    a, b = await in_call(session, hub)
    # b's network "goes away": it sends nothing more, not even pongs (its socket
    # stays open, as one does whose path is gone).
    graces = graces_given(hub)
    await dropped(hub, "b")
    assert graces == [("b", AWAY_GRACE)], graces  # the away grace, not the short one
    # (A timer never fires early: however slow the machine, nothing comes sooner.)
    await a.nothing_for(AWAY_GRACE - 0.4)  # the short grace passed long ago
    assert len(hub.pairs) == 1
    _, got = await a.next(within=30)  # (a hang guard)
    assert got == HANGUP
    assert len(hub.pairs) == 0
    await b.close()
    await a.close()


async def test_away_client_back_in_time_keeps_the_call(
        hub: Hub, session: aiohttp.ClientSession) -> None:
    a, b = await in_call(session, hub)
    graces = graces_given(hub)
    await dropped(hub, "b")
    b2 = Client(await ws(session, hub, "b"))  # back, from wherever it is now
    assert graces == [("b", AWAY_GRACE)], graces
    await a.nothing_for(AWAY_GRACE)  # past the away grace: no hangup
    assert len(hub.pairs) == 1
    # The call goes on through the hub: restart messages reach the peer.
    await b2.ws.send_json({"type": "offer", "to": "a",
                           "data": {"type": "offer", "sdp": "v=0\r\n", "restart": 1}})
    assert (await a.next(3))[1]["data"]["restart"] == 1
    await b2.ws.send_json({"type": "hangup", "to": "a"})
    assert (await a.next(3))[1]["type"] == "hangup"
    assert len(hub.pairs) == 0
    await b.close()
    await b2.close()
    await a.close()


def test_call_pairs_grace_per_disconnect() -> None:
    pairs = CallPairs(grace=4.0)
    for sender, to, kind in (("a", "b", "call-request"), ("b", "a", "call-accept"),
                             ("c", "d", "call-request"), ("d", "c", "call-accept")):
        pairs.relayed(kind, sender, to)
    assert pairs.disconnected("a", 10.0) == 14.0  # the table's grace
    assert pairs.disconnected("c", 10.0, grace=45.0) == 55.0
    assert pairs.next_deadline() == 14.0
    assert pairs.due(14.0) == [PeerGone("a", "b")]
    assert pairs.due(54.9) == []
    assert pairs.due(55.0) == [PeerGone("c", "d")]


def test_serve_option_and_its_checks() -> None:
    runner = CliRunner()
    help_text = " ".join(runner.invoke(main, ["serve", "--help"]).output.split())
    assert "--peer-away-grace" in help_text and "the heartbeat dropped" in help_text
    bad = runner.invoke(main, ["serve", "--peer-away-grace", "-1"])
    assert bad.exit_code == 2
    assert "Traceback" not in bad.output and "--peer-away-grace" in bad.output
