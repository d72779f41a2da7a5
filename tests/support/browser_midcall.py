"""Page helpers for media restart and hold in real Chromium (``docs/protocol.md``,
"Media restart and hold"): the page's media session (``window.phone.session``,
``snapshot().media``) and its test hooks (``window.__softphoneTest``)."""

from __future__ import annotations

import json
from typing import Any

from softphone.media.audio import rms_dbfs

from .browser import received_audio, wait_call_state, wait_js

#: The page's audio is silence below this (its analyser; a tone is about -9 dBFS).
SILENT_DBFS = -50.0


async def media(page: Any) -> dict[str, Any]:
    """The page's media session summary (session.js ``summary()``)."""
    result: dict[str, Any] = await page.evaluate("window.phone.snapshot().media")
    assert result is not None, "the page has no media session"
    return result


async def wait_restarts(page: Any, count: int, within: float = 20.0) -> dict[str, Any]:
    """Wait until the page has had ``count`` media restarts (media back ``count`` times)."""
    await wait_js(page, "window.phone.session && "
                        f"window.phone.session.restarts.length >= {count}", within)
    return await media(page)


async def wait_hold(page: Any, value: str, within: float = 10.0) -> None:
    """Wait for ``<main data-hold>``: "", "local", "remote" or "both"."""
    await wait_js(page, f"document.getElementById('phone').dataset.hold === {json.dumps(value)}",
                  within)


async def packets_received(page: Any) -> int:
    stats = await page.evaluate("window.phone.inboundAudio()")
    return 0 if stats is None else int(stats["packetsReceived"])


async def assert_page_silent(page: Any, *, seconds: float = 1.0) -> None:
    """The page hears silence (its analyser) and receives no RTP for ``seconds``."""
    before = await packets_received(page)
    await page.wait_for_timeout(int(seconds * 1000))
    after = await packets_received(page)
    assert after == before, f"RTP kept arriving: {before} -> {after} packets"
    samples, _ = await received_audio(page)
    level = rms_dbfs(samples)
    assert level < SILENT_DBFS, f"the page hears {level:.1f} dBFS, not silence"


async def log_has(page: Any, text: str) -> bool:
    found: bool = await page.evaluate(
        f"window.phone.log.some(e => e.text.includes({json.dumps(text)}))")
    return found


async def answer_call(caller: Any, callee: Any, callee_id: str) -> None:
    """``caller`` dials ``callee_id``; ``callee`` accepts; both are connected."""
    await caller.fill("#peer-id", callee_id)
    await caller.click("#call")
    await wait_call_state(callee, "ringing")
    await callee.click("#accept")
    await wait_call_state(caller, "connected")
    await wait_call_state(callee, "connected")


async def hold_back_hub_messages(page: Any) -> None:
    """Keep what the page sends to the hub in a queue (as a slow hub connection would)."""
    await page.evaluate("""() => {
        const hub = window.phone.hubClient;
        hub.heldBack = [];
        hub.realSend = hub.send;
        hub.send = (m) => { hub.heldBack.push(m); return true; };
    }""")


async def release_hub_messages(page: Any) -> None:
    await page.evaluate("""() => {
        const hub = window.phone.hubClient;
        hub.send = hub.realSend;
        for (const m of hub.heldBack.splice(0)) hub.send(m);
    }""")
