"""Do the emulated original pages and Go hub still behave as the originals did?

``tests/client/test_interop.py`` runs softphone against emulations of the
original system (``tests/support/emulators.py``). This script checks the
emulations themselves, quirk by quirk, and prints a Markdown table: what the
original did, what the emulation did now, and whether they agree. Run it
after changing the emulators (exit status 1 if any row disagrees)::

    python benchmarks/emulators.py
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from softphone.client.phone import Phone  # noqa: E402
from softphone.core.callstate import CallTimeouts  # noqa: E402
from softphone.core.protocol import Message, parse_hub_message  # noqa: E402
from softphone.hub.server import Hub, HubConfig  # noqa: E402
from softphone.media.tracks import ToneSource  # noqa: E402
from tests.support.emulators import ORIGINAL_ICE_SERVERS, OriginalHub, OriginalPage  # noqa: E402

#: (quirk of the original, what it did, what the emulation did)
Row = tuple[str, Any, Any]


async def silent(ws: aiohttp.ClientWebSocketResponse, within: float = 0.3) -> bool:
    """Nothing arrives on ``ws`` for ``within`` s."""
    try:
        await ws.receive(within)
    except TimeoutError:
        return True
    return False


async def page_offered_at_once(url: str) -> list[Row]:
    """An offer before the callee page has its microphone is answered receive-only."""
    page = OriginalPage(url, "a", tone=440, mic_delay=2.0)
    await page.connect()
    phone = Phone("b", url, ice_servers=[], timeouts=CallTimeouts(offer_delay=0.0),
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
    answer = next(m for m in page.sent if m["type"] == "answer")
    return [
        ("page: offer before its microphone is answered receive-only", True,
         page.answered_receive_only),
        ("page: that answer says a=recvonly", True, "a=recvonly" in answer["data"]["sdp"]),
        ("page: errors", [], page.errors),
    ]


async def page_peers_and_candidates(url: str) -> list[Row]:
    """The page listens only to its peer and drops candidates that come early."""
    page = OriginalPage(url, "a", auto_accept=True, mic_delay=0.0)
    await page.connect()
    ws_url = url.replace("http://", "ws://")
    candidate = {"candidate": "candidate:1 1 udp 2130706431 192.0.2.9 4000 typ host",
                 "sdpMid": "0", "sdpMLineIndex": 0}
    try:
        async with aiohttp.ClientSession() as session:
            b = await session.ws_connect(f"{ws_url}/ws?id=b")
            c = await session.ws_connect(f"{ws_url}/ws?id=c")
            await c.send_json({"type": "call-request", "to": "a"})  # not its peer
            await b.send_json({"type": "candidate", "to": "a", "data": candidate})
            await b.send_json({"type": "call-request", "to": "a"})
            accept = json.loads((await b.receive(5)).data)
            c_silent = await silent(c)
            for ws in (b, c):
                await ws.close()
    finally:
        await page.close()
    return [
        ("page: auto-accepts its peer with call-accept, no data",
         ("call-accept", "a", False),
         (accept.get("type"), accept.get("from"), "data" in accept)),
        ("page: a call-request from another id is ignored", (["c"], True),
         ([m["from"] for m in page.ignored if isinstance(m, dict)], c_silent)),
        ("page: a candidate before the offer is dropped, not held", 1,
         page.dropped_candidates),
        ("page: microphone grabbed on accepting", True, page.mic_ready.is_set()),
    ]


async def go_hub() -> list[Row]:
    """The Go hub forwards with `from`, drops silently, never answers; the takeover bug."""
    hub = OriginalHub()
    await hub.start("127.0.0.1", 0)
    url = hub.url.replace("http://", "ws://")
    rows: list[Row] = []
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{hub.url}/ice-servers") as resp:
                rows.append(("hub: /ice-servers", {"iceServers": ORIGINAL_ICE_SERVERS},
                             await resp.json()))
            x = await session.ws_connect(f"{url}/ws?id=x")
            y = await session.ws_connect(f"{url}/ws?id=y")
            await x.send_str(json.dumps({"type": "offer", "to": "y", "from": "spoof",
                                         "data": {"type": "offer", "sdp": "v=0 <&>"}}))
            got = parse_hub_message((await y.receive(5)).data)
            assert isinstance(got, Message)
            rows.append(("hub: forwards with `from` set to the sender",
                         ("offer", "y", "x", {"type": "offer", "sdp": "v=0 <&>"}),
                         (got.type, got.to, got.sender, got.data)))
            await x.send_str('{"type": "call-accept", "to": "y"}')
            rows.append(("hub: Go's JSON, data null",
                         '{"type":"call-accept","to":"y","from":"x","data":null}',
                         (await y.receive(5)).data))
            await x.send_str('{"type": "call-request", "to": "nobody"}')  # unknown
            await x.send_str("not json")
            await x.send_str('{"type": 5, "to": "y"}')  # Go cannot unmarshal it
            rows.append(("hub: unknown id, bad JSON, bad type: dropped, no answer",
                         (True, True), (await silent(x), await silent(y))))
            # A second "y" takes over; the first one's close then deletes "y".
            y2 = await session.ws_connect(f"{url}/ws?id=y")
            await x.send_str('{"type": "hangup", "to": "y"}')
            taken_over = json.loads((await y2.receive(5)).data).get("from") == "x"
            await y.close()
            await asyncio.wait_for(hub.wait_until(lambda c: "y" not in c), 5)
            await x.send_str('{"type": "hangup", "to": "y"}')
            rows.append(("hub: a second id takes over; the first one's close unregisters it",
                         (True, True), (taken_over, await silent(y2))))
            for ws in (x, y2):
                await ws.close()
    finally:
        await hub.stop()
    return rows


async def main() -> int:
    hub = Hub(HubConfig(ice_servers=[]))
    port = await hub.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}"
    checks: list[Callable[[], Awaitable[list[Row]]]] = [
        lambda: page_offered_at_once(url), lambda: page_peers_and_candidates(url), go_hub]
    rows: list[Row] = []
    try:
        for check in checks:
            rows += await check()
    finally:
        await hub.stop()
    print("| behaviour of the original | original | emulation | same |")
    print("|---|---|---|---|")
    for what, original, emulated in rows:
        print(f"| {what} | `{original!r}` | `{emulated!r}` | "
              f"{'yes' if original == emulated else '**NO**'} |")
    return 0 if all(original == emulated for _, original, emulated in rows) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
