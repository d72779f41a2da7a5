"""The ICE servers on the WebSocket (``?ice=1``): a call's setup needs no HTTP request.

A real hub on a real socket; a raw WebSocket client (the ``websockets`` library)
for what the hub sends, and real phones for what they use. The one fake: where
a test blocks the phone's ``GET /ice-servers``, it replaces the method that
makes the request with one that never returns, and says so.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import websockets

from softphone import Phone, ToneSource
from softphone.client.signaling import HubClient
from softphone.hub.config import HubConfig
from softphone.hub.server import Hub

from ..conftest import hub_url

STUN = {"urls": "stun:stun.example.org:3478"}


@pytest.fixture
async def turn_hub() -> AsyncIterator[Hub]:
    """A hub handing out a STUN server and a TURN server with REST credentials."""
    h = Hub(HubConfig(ice_servers=[STUN], turn_urls=["turn:turn.example.org:3478"],
                      turn_secret="s3cret", turn_ttl=600))
    await h.start("127.0.0.1", 0)
    try:
        yield h
    finally:
        await h.stop()


async def _http_servers(h: Hub, client_id: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session, \
            session.get(f"{hub_url(h)}/ice-servers", params={"id": client_id}) as resp:
        body = await resp.json()
    servers: list[dict[str, Any]] = body["iceServers"]
    return servers


async def test_the_first_frame_is_what_ice_servers_answers(turn_hub: Hub) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{turn_hub.port}/ws?id=alice&ice=1") as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert first["type"] == "ice-servers" and "from" not in first
    pushed = first["data"]["iceServers"]
    fetched = await _http_servers(turn_hub, "alice")
    assert [s["urls"] for s in pushed] == [s["urls"] for s in fetched] == \
        ["stun:stun.example.org:3478", "turn:turn.example.org:3478"]
    turn = pushed[1]
    assert turn["username"].endswith(":alice") and turn["credential"]


async def test_without_asking_the_first_frame_is_the_answer_to_ours(turn_hub: Hub) -> None:
    """The original pages do not ask (no ``ice=1``): they get nothing new."""
    async with websockets.connect(f"ws://127.0.0.1:{turn_hub.port}/ws?id=alice") as ws:
        await ws.send(json.dumps({"type": "call-request", "to": "nobody"}))
        first = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert first["type"] == "error" and first["data"]["code"] == "offline"


async def _never(self: HubClient) -> list[dict[str, Any]]:
    await asyncio.Event().wait()  # the fake: a GET /ice-servers that never comes back
    raise AssertionError


async def test_a_call_sets_up_with_no_ice_servers_request(
        turn_hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every ``GET /ice-servers`` of the phones hanging, a call still connects:
    both phones took the servers the hub sent on their WebSocket."""
    monkeypatch.setattr(HubClient, "_fetch_ice_servers", _never)
    a = Phone("a", hub_url(turn_hub))
    b = Phone("b", hub_url(turn_hub))
    await a.connect()
    await b.connect()
    try:
        servers = await asyncio.wait_for(a.hub.ice_servers(), 5)
        assert [s["urls"] for s in servers] == \
            ["stun:stun.example.org:3478", "turn:turn.example.org:3478"]
        call_a = await a.dial("b", ToneSource(440))
        call_b = await asyncio.wait_for(b.next_call(), 5)
        await call_b.accept(ToneSource(660))
        await asyncio.wait_for(asyncio.gather(call_a.connected(), call_b.connected()), 10)
        await call_a.hangup()
        await call_b.ended()
    finally:
        await a.close()
        await b.close()
