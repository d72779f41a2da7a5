"""Interop with the ORIGINAL system: its browser pages and its Go hub (emulated).

Real sockets, real aiortc peers, ``softphone`` run as a subprocess; audio is
checked by frequency (first 0.5 s skipped, within 5 Hz, purity > 0.5).
See ``tests/emulators.py`` for what the emulators reproduce.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from softphone.client.phone import Phone
from softphone.core.callstate import EXIT_CODES, CallTimeouts, Outcome
from softphone.core.protocol import Message, parse_hub_message
from softphone.hub.server import Hub, HubConfig
from softphone.media.tracks import ToneSource

from ..support.emulators import ORIGINAL_ICE_SERVERS, OriginalHub, OriginalPage
from ..support.helpers import SoftphoneProcess, assert_tone, assert_wav_tone, kill_all

pytestmark = pytest.mark.e2e

NO_ANSWER = EXIT_CODES[Outcome.NO_ANSWER]


@pytest.fixture
async def our_hub() -> AsyncIterator[str]:
    """Our hub in-process on 127.0.0.1, any port, no STUN handed out; yields its URL."""
    hub = Hub(HubConfig(ice_servers=[]))
    port = await hub.start("127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await hub.stop()


@pytest.fixture
async def original_hub() -> AsyncIterator[OriginalHub]:
    hub = OriginalHub()
    await hub.start("127.0.0.1", 0)
    try:
        yield hub
    finally:
        await hub.stop()


async def start(tmp_path: Path, name: str, *args: str) -> SoftphoneProcess:
    return await SoftphoneProcess.start("-v", *args, log_dir=tmp_path, name=name)


# ------------------------------------------------------ original pages ---


async def test_original_page_calls_our_listen(our_hub: str, tmp_path: Path) -> None:
    """callerA.html (440 Hz) calls `softphone listen --as b` (660 Hz) through our hub."""
    record = tmp_path / "listen.wav"
    procs: list[SoftphoneProcess] = []
    page = OriginalPage(our_hub, "a", tone=440)
    try:
        listen = await start(tmp_path, "listen", "listen", "--as", "b", "--auto-accept",
                             "--once", "--tone", "660", "--record", str(record),
                             "--server", our_hub)
        procs.append(listen)
        await listen.wait_for_output("listening as b")
        await page.connect()
        await page.call()
        try:
            await asyncio.wait_for(page.connected.wait(), 10)
            await asyncio.wait_for(page.wait_received(2.0), 10)
        except TimeoutError:
            raise AssertionError(f"page: no call ({page.received}, {page.errors})\n"
                                 f"{listen.describe()}") from None
        received = page.received_samples()
        await page.hangup()
        assert await listen.wait(10) == 0, listen.describe()
    finally:
        await kill_all(procs)
        await page.close()
    assert page.errors == []
    # The page trickled: its offer had no candidates, they came one by one.
    offer = next(m for m in page.sent if m["type"] == "offer")
    assert "a=candidate" not in offer["data"]["sdp"]
    assert any(m["type"] == "candidate" for m in page.sent)
    assert_wav_tone(record, 440, what="listen's recording")
    assert_tone(received, 660, what="what the page received")
    assert "call completed with a" in listen.stdout, listen.describe()


async def test_our_call_to_original_page(our_hub: str, tmp_path: Path) -> None:
    """`softphone call a --as b` (660 Hz) to callerA.html (440 Hz), which grabs its
    microphone 0.15 s after accepting: our 0.3 s offer delay must beat it."""
    record = tmp_path / "call.wav"
    procs: list[SoftphoneProcess] = []
    page = OriginalPage(our_hub, "a", tone=440, mic_delay=0.15)
    try:
        await page.connect()
        call = await start(tmp_path, "call", "call", "a", "--as", "b", "--tone", "660",
                           "--duration", "2", "--record", str(record), "--server", our_hub)
        procs.append(call)
        assert await call.wait(15) == 0, call.describe()
        await asyncio.wait_for(page.hung_up.wait(), 5)
        received = page.received_samples()
    finally:
        await kill_all(procs)
        await page.close()
    assert page.errors == []
    assert page.answered_receive_only is False, "the offer came before the page's microphone"
    accept = next(m for m in page.sent if m["type"] == "call-accept")
    assert "data" not in accept
    answer = next(m for m in page.sent if m["type"] == "answer")
    assert "a=candidate" not in answer["data"]["sdp"]
    assert any(m["type"] == "candidate" for m in page.sent)
    assert_wav_tone(record, 440, what="call's recording")
    assert_tone(received, 660, what="what the page received")


async def test_original_page_answers_receive_only_if_offered_at_once(our_hub: str) -> None:
    """The emulated bug the offer delay exists for: an offer that arrives before
    the callee page has its microphone is answered receive-only."""
    page = OriginalPage(our_hub, "a", tone=440, mic_delay=2.0)
    await page.connect()
    phone = Phone("b", our_hub, ice_servers=[], timeouts=CallTimeouts(offer_delay=0.0),
                  reconnect=False)
    await phone.connect()
    try:
        call = await phone.dial("a", ToneSource(660))
        await asyncio.wait_for(page.answered.wait(), 10)
        await call.hangup()
        await asyncio.wait_for(call.ended(), 5)
    finally:
        await phone.close()
        await page.close()
    assert page.errors == []
    assert page.answered_receive_only is True
    answer = next(m for m in page.sent if m["type"] == "answer")
    assert "a=recvonly" in answer["data"]["sdp"]


async def test_original_page_emulation(our_hub: str) -> None:
    """The emulated page listens only to its peer and drops early candidates."""
    page = OriginalPage(our_hub, "a", auto_accept=True, mic_delay=0.0)
    await page.connect()
    url = our_hub.replace("http://", "ws://")
    candidate = {"candidate": "candidate:1 1 udp 2130706431 192.0.2.9 4000 typ host",
                 "sdpMid": "0", "sdpMLineIndex": 0}
    try:
        async with aiohttp.ClientSession() as session:
            b = await session.ws_connect(f"{url}/ws?id=b")
            c = await session.ws_connect(f"{url}/ws?id=c")
            await c.send_json({"type": "call-request", "to": "a"})  # not its peer: ignored
            await b.send_json({"type": "candidate", "to": "a", "data": candidate})
            await b.send_json({"type": "call-request", "to": "a"})
            accept = json.loads((await b.receive(5)).data)
            assert (accept["type"], accept["from"]) == ("call-accept", "a")
            assert "data" not in accept
            with pytest.raises(TimeoutError):
                await c.receive(0.3)
            for ws in (b, c):
                await ws.close()
    finally:
        await page.close()
    assert page.dropped_candidates == 1  # no remote description yet: dropped, not held
    assert [m["from"] for m in page.ignored if isinstance(m, dict)] == ["c"]
    assert page.mic_ready.is_set()


# -------------------------------------------------------- original hub ---


async def test_original_hub_emulation(original_hub: OriginalHub) -> None:
    """The emulated Go hub forwards with `from`, drops silently, never answers."""
    url = original_hub.url.replace("http://", "ws://")

    async def nothing_for(ws: aiohttp.ClientWebSocketResponse) -> None:
        with pytest.raises(TimeoutError):
            await ws.receive(0.3)

    async with aiohttp.ClientSession() as session:
        async with session.get(f"{original_hub.url}/ice-servers") as resp:
            assert await resp.json() == {"iceServers": ORIGINAL_ICE_SERVERS}
        x = await session.ws_connect(f"{url}/ws?id=x")
        y = await session.ws_connect(f"{url}/ws?id=y")
        await x.send_str(json.dumps({"type": "offer", "to": "y", "from": "spoof",
                                     "data": {"type": "offer", "sdp": "v=0 <&>"}}))
        got = parse_hub_message((await y.receive(5)).data)
        assert isinstance(got, Message)
        assert (got.type, got.to, got.sender) == ("offer", "y", "x")
        assert got.data == {"type": "offer", "sdp": "v=0 <&>"}
        await x.send_str('{"type": "call-accept", "to": "y"}')
        raw = (await y.receive(5)).data
        assert raw == '{"type":"call-accept","to":"y","from":"x","data":null}'
        await x.send_str('{"type": "call-request", "to": "nobody"}')  # unknown: dropped
        await x.send_str("not json")
        await x.send_str('{"type": 5, "to": "y"}')  # Go cannot unmarshal: dropped
        await nothing_for(x)
        await nothing_for(y)
        # A second "y" takes over; the first one's close then deletes "y" (the bug).
        y2 = await session.ws_connect(f"{url}/ws?id=y")
        await x.send_str('{"type": "hangup", "to": "y"}')
        assert json.loads((await y2.receive(5)).data)["from"] == "x"
        await y.close()
        await asyncio.wait_for(original_hub.wait_until(lambda c: "y" not in c), 5)
        await x.send_str('{"type": "hangup", "to": "y"}')
        await nothing_for(y2)
        for ws in (x, y2):
            await ws.close()


async def test_our_cli_through_original_hub(original_hub: OriginalHub, tmp_path: Path) -> None:
    """`softphone listen` and `softphone call`, both on the original hub."""
    rec_a, rec_b = tmp_path / "a.wav", tmp_path / "b.wav"
    procs: list[SoftphoneProcess] = []
    try:
        listen = await start(tmp_path, "listen", "listen", "--as", "b", "--auto-accept",
                             "--once", "--tone", "660", "--record", str(rec_b),
                             "--server", original_hub.url)
        procs.append(listen)
        await listen.wait_for_output("listening as b")
        call = await start(tmp_path, "call", "call", "b", "--as", "a", "--tone", "440",
                           "--duration", "2", "--record", str(rec_a),
                           "--server", original_hub.url)
        procs.append(call)
        assert await call.wait(15) == 0, call.describe() + listen.describe()
        assert await listen.wait(10) == 0, listen.describe()
    finally:
        await kill_all(procs)
    assert_wav_tone(rec_a, 660, what="caller's recording")
    assert_wav_tone(rec_b, 440, what="callee's recording")
    assert "Traceback" not in call.stderr + listen.stderr


async def test_call_nobody_through_original_hub(original_hub: OriginalHub,
                                                tmp_path: Path) -> None:
    """The original hub drops messages to unknown ids: no `offline`, so no answer."""
    procs: list[SoftphoneProcess] = []
    loop = asyncio.get_running_loop()
    try:
        began = loop.time()
        call = await start(tmp_path, "call", "call", "nobody", "--as", "a",
                           "--ring-timeout", "1", "--server", original_hub.url)
        procs.append(call)
        assert await call.wait(10) == NO_ANSWER, call.describe()
        took = loop.time() - began
    finally:
        await kill_all(procs)
    assert took < 8, f"took {took:.1f} s"
    assert "no answer from nobody" in call.stdout, call.describe()
    sent = [json.loads(raw)["type"] for sender, raw in original_hub.frames if sender == "a"]
    assert sent[0] == "call-request"
