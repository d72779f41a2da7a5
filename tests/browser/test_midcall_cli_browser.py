"""Media restart and hold between the browser page and our Python phone, in real Chromium.

The Python side is either ``softphone listen`` as a subprocess (its ``--json``
events and ``--record`` WAV checked) or a :class:`softphone.Phone` in the test
(to make it restart or hold on cue). Neither announces ``ice-restart``, so the
page restarts with a fresh RTCPeerConnection per generation, and the old one
plays until the new one carries RTP (``docs/protocol.md``, "Media restart and
hold").
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from softphone import Phone, ToneSource
from softphone.core import restart as r
from softphone.hub.server import Hub
from softphone.media.audio import rms_dbfs
from softphone.media.tracks import CaptureSink

from ..conftest import hub_url
from ..support.browser import (
    assert_page_hears,
    dial,
    snapshot,
    wait_call_state,
    wait_hub,
    wait_outcome,
)
from ..support.browser_midcall import (
    assert_page_silent,
    log_has,
    media,
    wait_hold,
    wait_restarts,
)
from ..support.helpers import Proc, assert_tone, read_wav
from .conftest import PAGE_TONE, SESSION_LOOP, Launch, answer

pytestmark = [pytest.mark.e2e, SESSION_LOOP]

CLI_TONE = 660.0
RATE = 48000


def json_events(proc: Proc) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


async def page_calls_listen(hub: Hub, chromium: Launch, procs: list[Proc],
                            record: Path) -> tuple[Any, Proc]:
    """The page (alice, 440 Hz) calls ``softphone listen --as bob`` (660 Hz, recording)."""
    bob = Proc("listen", "--as", "bob", "--server", hub_url(hub), "--auto-accept", "--once",
               "--json", "--tone", str(CLI_TONE), "--no-audio", "--record", str(record))
    procs.append(bob)
    await bob.wait_for_output('"event":"listening"', within=30)
    page = await (await chromium(PAGE_TONE)).open(hub_url(hub) + "/?id=alice")
    await wait_hub(page, "connected")
    await dial(page, "bob")
    await wait_call_state(page, "connected")
    await assert_page_hears(page, CLI_TONE)
    return page, bob


async def test_page_restarts_media_with_a_cli_peer(hub: Hub, chromium: Launch,
                                                   procs: list[Proc], tmp_path: Path) -> None:
    page, bob = await page_calls_listen(hub, chromium, procs, tmp_path / "bob.wav")
    m = await media(page)
    assert m["features"] == {"restart": True, "hold": True, "iceRestart": False}, m
    assert {"restart", "hold"} <= set(m["peerFeatures"]), m
    first_pc = await page.evaluate("window.phone.media.pc.localDescription.sdp")
    await page.evaluate("window.__softphoneTest.restartMedia()")
    m = await wait_restarts(page, 1)
    assert m["generation"] == 1 and m["status"] == "ok", m
    assert m["restarts"][0]["reason"] == "rtp-silence" and m["restarts"][0]["attempts"] == 1
    # A fresh connection (new ICE credentials and DTLS certificate of the CLI), the old
    # one closed once the new one carried RTP.
    assert m["connections"] == 1, m
    assert await page.evaluate("window.phone.media.generation") == 1
    assert await page.evaluate("window.phone.media.pc.localDescription.sdp") != first_pc
    assert await page.evaluate("window.phone.session.first.pc.connectionState") == "closed"
    assert await log_has(page, "media lost (rtp-silence), restarting")
    assert "media back" in (await page.text_content("#media-status") or "")
    await assert_page_hears(page, CLI_TONE, fresh=True)
    await bob.wait_for_output('"event":"media-restart"', within=15)
    await page.wait_for_timeout(2000)
    await page.click("#hangup")
    await wait_outcome(page, "completed")
    assert await bob.wait(15) == 0, bob.describe()
    got = json_events(bob)
    [restart] = [e for e in got if e["event"] == "media-restart"]
    assert restart["reason"] == "peer" and restart["generation"] == 1, restart
    assert got[-1]["event"] == "ended" and got[-1]["outcome"] == "completed", got[-1]
    samples, rate = read_wav(tmp_path / "bob.wav")
    assert_tone(samples[-int(1.8 * rate):], PAGE_TONE, rate=rate, skip=0.0, min_seconds=1.0,
                what="what the CLI heard after the restart")


async def test_cli_restarts_media_with_the_page(hub: Hub, chromium: Launch) -> None:
    """Our Python phone restarts; the page answers with a fresh connection."""
    page = await (await chromium(PAGE_TONE)).open(hub_url(hub) + "/?id=pat")
    await wait_hub(page, "connected")
    heard = CaptureSink(30.0)
    events: list[dict[str, Any]] = []
    carl = Phone("carl", hub_url(hub))
    await carl.connect()
    try:
        call = await carl.dial("pat", ToneSource(CLI_TONE), [heard], on_event=events.append)
        await answer(page)
        await asyncio.wait_for(call.connected(), 20)
        assert {"restart", "hold", "ice-restart"} <= set(call.peer_features)
        await wait_call_state(page, "connected")
        await asyncio.sleep(1.0)
        link = call.restart_link
        assert link is not None
        link.feed(r.ConnectionChanged(0, r.PeerState.FAILED))  # as if its path had died
        m = await wait_restarts(page, 1)
        assert m["restarts"][0]["reason"] == "peer" and m["generation"] == 1, m
        assert m["connections"] == 1 and m["features"]["iceRestart"] is False, m
        await assert_page_hears(page, CLI_TONE, fresh=True)
        await asyncio.sleep(1.5)
        assert [e for e in events if e["event"] == "media-restart"], events
        assert_tone(heard.samples()[-int(1.2 * RATE):], PAGE_TONE, skip=0.0, min_seconds=1.0,
                    what="the Python phone after the restart")
        await call.hangup()
        assert (await call.ended()).exit_code == 0
    finally:
        await carl.close()
    await wait_outcome(page, "completed")


async def test_page_holds_a_cli_peer(hub: Hub, chromium: Launch, procs: list[Proc],
                                     tmp_path: Path) -> None:
    record = tmp_path / "bob.wav"
    page, bob = await page_calls_listen(hub, chromium, procs, record)
    await page.wait_for_timeout(1500)  # the CLI's recording: tone for a while before the hold
    await page.click("#hold")
    await wait_hold(page, "local")
    assert await page.text_content("#hold-status") == "on hold (you)"
    await bob.wait_for_output('"event":"hold","by":"remote"', within=10)
    await page.wait_for_timeout(500)
    await assert_page_silent(page)  # the CLI sends nothing while held
    await page.wait_for_timeout(1500)
    await page.click("#hold")  # Resume
    await wait_hold(page, "")
    await bob.wait_for_output('"event":"resume","by":"remote"', within=10)
    await assert_page_hears(page, CLI_TONE, fresh=True)
    await page.wait_for_timeout(1500)
    await page.click("#hangup")
    await wait_outcome(page, "completed")
    assert await bob.wait(15) == 0, bob.describe()
    assert (await media(page))["restarts"] == []  # hold is no reason to restart
    notes = json.loads(record.with_name(record.name + ".json").read_text())
    [(start, end)] = notes["held"]  # seconds of the recording
    assert 2.5 < end - start < 6, notes
    samples, rate = read_wav(record)
    held = samples[int((start + 0.15) * rate): int((end - 0.15) * rate)]
    assert rms_dbfs(held) < -60, f"the CLI heard {rms_dbfs(held):.1f} dBFS while held"
    assert_tone(samples, PAGE_TONE, rate=rate, skip=0.3, until=start - 0.15, min_seconds=0.5,
                what="before the hold")
    assert_tone(samples, PAGE_TONE, rate=rate, skip=end + 0.3, min_seconds=1.0,
                what="after the resume")


async def test_cli_holds_the_page(hub: Hub, chromium: Launch) -> None:
    page = await (await chromium(PAGE_TONE)).open(hub_url(hub) + "/?id=pat")
    await wait_hub(page, "connected")
    heard = CaptureSink(30.0)
    carl = Phone("carl", hub_url(hub))
    await carl.connect()
    try:
        call = await carl.dial("pat", ToneSource(CLI_TONE), [heard])
        await answer(page)
        await asyncio.wait_for(call.connected(), 20)
        await wait_call_state(page, "connected")
        await assert_page_hears(page, CLI_TONE)
        await call.hold()
        await wait_hold(page, "remote")
        assert await page.text_content("#hold-status") == "on hold (peer)"
        assert await page.is_enabled("#hold")  # the page may hold too
        await page.wait_for_timeout(500)
        await assert_page_silent(page)
        mark = heard.samples().size
        await asyncio.sleep(1.5)
        held = heard.samples()[mark:]
        assert rms_dbfs(held) < -60, f"the Python phone heard {rms_dbfs(held):.1f} dBFS on hold"
        await call.resume()
        await wait_hold(page, "")
        await assert_page_hears(page, CLI_TONE, fresh=True)
        await asyncio.sleep(1.5)
        assert_tone(heard.samples()[-int(1.2 * RATE):], PAGE_TONE, skip=0.0, min_seconds=1.0,
                    what="the Python phone after the resume")
        assert (await media(page))["restarts"] == []
        await call.hangup()
        assert (await call.ended()).exit_code == 0
    finally:
        await carl.close()
    await wait_outcome(page, "completed")


async def test_a_killed_cli_peer_ends_the_page_call_media_lost(hub: Hub, chromium: Launch,
                                                               procs: list[Proc],
                                                               tmp_path: Path) -> None:
    """The CLI dies: the page loses media, restarts in vain, and the hub's
    ``peer-disconnected`` hangup ends the call ``media-lost`` (not completed)."""
    page, bob = await page_calls_listen(hub, chromium, procs, tmp_path / "bob.wav")
    bob.signal(signal.SIGKILL)
    await bob.wait()
    state = await wait_outcome(page, "media-lost", within=15)
    assert state["call"]["reason"] == "peer-disconnected", state["call"]
    assert await log_has(page, "media lost (")
    assert "media-lost" in [e["code"] for e in state["errors"]]
    assert (await snapshot(page))["results"][-1]["outcome"] == "media-lost"
