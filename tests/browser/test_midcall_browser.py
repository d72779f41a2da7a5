"""Media restart and hold between two browser pages, in real headless Chromium.

Two Chromium processes (440 Hz and 660 Hz fake microphones) call each other
through our hub. Both pages announce ``restart``, ``hold`` and
``ice-restart``, so a restart is ``restartIce()`` on the existing connection
(``docs/protocol.md``, "Media restart and hold"). What a page hears is checked
by FFT and level of its WebAudio analyser and by getStats() RTP counts.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from softphone.hub.server import Hub
from softphone.media.audio import rms_dbfs

from ..conftest import hub_url
from ..support.browser import (
    assert_page_hears,
    received_audio,
    snapshot,
    wait_call_state,
    wait_hub,
    wait_js,
    wait_outcome,
)
from ..support.browser_midcall import (
    SILENT_DBFS,
    answer_call,
    assert_page_silent,
    hold_back_hub_messages,
    log_has,
    media,
    packets_received,
    release_hub_messages,
    wait_hold,
    wait_restarts,
)
from ..support.helpers import assert_tone
from .conftest import PAGE_TONE, SESSION_LOOP, Launch

pytestmark = [pytest.mark.e2e, SESSION_LOOP]

OTHER_TONE = 660.0


async def two_pages(hub: Hub, chromium: Launch,
                    alice_restart: dict[str, float] | None = None) -> tuple[Any, Any]:
    """alice (440 Hz) calls bob (660 Hz); both connected and hearing each other.

    ``alice_restart``: alice's restart settings for the call (restart.js DEFAULT_SETTINGS).
    """
    alice = await (await chromium(PAGE_TONE)).open(hub_url(hub) + "/?id=alice")
    bob = await (await chromium(OTHER_TONE)).open(hub_url(hub) + "/?id=bob")
    if alice_restart is not None:  # (a call's settings: the next call has them)
        await alice.evaluate("(s) => window.__softphoneTest.setRestartSettings(s)",
                             alice_restart)
    await wait_hub(alice, "connected")
    await wait_hub(bob, "connected")
    await answer_call(alice, bob, "bob")
    await assert_page_hears(alice, OTHER_TONE)
    await assert_page_hears(bob, PAGE_TONE)
    return alice, bob


async def test_pages_announce_features_and_agree(hub: Hub, chromium: Launch) -> None:
    alice, bob = await two_pages(hub, chromium)
    for page in (alice, bob):
        m = await media(page)
        assert m["features"] == {"restart": True, "hold": True, "iceRestart": True}, m
        assert sorted(m["peerFeatures"]) == ["hold", "ice-restart", "restart"], m
        assert m["status"] == "ok" and m["generation"] == 0, m


async def test_hold_and_resume_between_pages(hub: Hub, chromium: Launch) -> None:
    alice, bob = await two_pages(hub, chromium)
    await alice.click("#hold")
    await wait_hold(alice, "local")
    await wait_hold(bob, "remote")
    assert await alice.text_content("#hold-status") == "on hold (you)"
    assert await bob.text_content("#hold-status") == "on hold (peer)"
    assert await alice.text_content("#hold") == "Resume"
    # Nothing flows either way, and the held page hears silence.
    await alice.wait_for_timeout(500)  # what was under way has arrived
    await assert_page_silent(bob)
    await assert_page_silent(alice)
    # No RTP is expected while held: no restart after more than the 2 s of silence
    # (silent for 2.5 s by now, the waits above: then 3.5 s, 1.5 s more than the timer).
    await alice.wait_for_timeout(1000)
    for page in (alice, bob):
        m = await media(page)
        assert m["status"] == "ok" and m["restarts"] == [] and m["generation"] == 0, m
    # bob holds too; alice resumes: still silent, bob holds.
    await bob.click("#hold")
    await wait_hold(bob, "both")
    assert await bob.text_content("#hold-status") == "on hold (you and peer)"
    await alice.click("#hold")
    await wait_hold(alice, "remote")
    await wait_hold(bob, "local")
    await alice.wait_for_timeout(500)
    await assert_page_silent(alice)
    # bob resumes: audio both ways again.
    await bob.click("#hold")
    await wait_hold(bob, "")
    await wait_hold(alice, "")
    await assert_page_hears(alice, OTHER_TONE)
    await assert_page_hears(bob, PAGE_TONE)
    events = (await media(bob))["hold"]["events"]
    assert [(e["event"], e["by"]) for e in events] == [
        ("hold", "remote"), ("hold", "local"), ("resume", "remote"), ("resume", "local")]
    await alice.click("#hangup")
    await wait_outcome(alice, "completed")
    await wait_outcome(bob, "completed")


async def test_restart_ice_between_pages(hub: Hub, chromium: Launch) -> None:
    alice, bob = await two_pages(hub, chromium)
    before = await alice.evaluate("window.__softphoneTest.ufrags()")
    await alice.evaluate("window.__softphoneTest.restartMedia()")
    a = await wait_restarts(alice, 1)
    b = await wait_restarts(bob, 1)
    assert a["generation"] == 1 and b["generation"] == 1, (a, b)
    assert a["restarts"][0]["reason"] == "rtp-silence"
    assert b["restarts"][0]["reason"] == "peer"
    # restartIce(): the same connection, new ICE credentials, and media on them.
    assert a["connections"] == 1 and b["connections"] == 1
    after = await alice.evaluate("window.__softphoneTest.ufrags()")
    assert after["local"] != before["local"], (before, after)
    # ICE moves the media onto a pair of the new credentials (the old pair was fine).
    await wait_js(alice, "(u => u.selected === u.local)(window.__softphoneTest.ufrags())", 15)
    assert await log_has(alice, "media lost (rtp-silence), restarting")
    assert "media back" in (await alice.text_content("#media-status") or "")
    assert await alice.get_attribute("#phone", "data-media") == "ok"
    await assert_page_hears(alice, OTHER_TONE, fresh=True)
    await assert_page_hears(bob, PAGE_TONE, fresh=True)
    # A second restart, from the callee: generation 2.
    await bob.evaluate("window.__softphoneTest.restartMedia()")
    assert (await wait_restarts(bob, 2))["generation"] == 2
    assert (await wait_restarts(alice, 2))["generation"] == 2
    await assert_page_hears(alice, OTHER_TONE, fresh=True)
    await bob.click("#hangup")
    await wait_outcome(alice, "completed")
    await wait_outcome(bob, "completed")


async def test_restart_glare_between_pages(hub: Hub, chromium: Launch) -> None:
    """Both pages restart at once: both offer generation 1; the caller's wins."""
    alice, bob = await two_pages(hub, chromium)
    await hold_back_hub_messages(alice)
    await hold_back_hub_messages(bob)
    await alice.evaluate("window.__softphoneTest.restartMedia()")
    await bob.evaluate("window.__softphoneTest.restartMedia()")
    for page in (alice, bob):  # each has made its offer, which has not left yet
        await wait_js(page, "window.phone.hubClient.heldBack.some(m => m.type === 'offer')")
    await asyncio.gather(release_hub_messages(alice), release_hub_messages(bob))
    a = await wait_restarts(alice, 1)
    b = await wait_restarts(bob, 1)
    assert a["generation"] == 1 and b["generation"] == 1, (a, b)
    assert await log_has(alice, "ignored restart offer 1: glare: our offer wins")
    assert not await log_has(bob, "glare: our offer wins")
    await assert_page_hears(alice, OTHER_TONE, fresh=True)
    await assert_page_hears(bob, PAGE_TONE, fresh=True)
    assert (await snapshot(alice))["call"]["state"] == "connected"


async def test_silence_from_the_peer_restarts_then_media_comes_back(hub: Hub,
                                                                    chromium: Launch) -> None:
    """bob stops sending for over 3 s: alice notices (no RTP for 2 s), restarts, hears bob again."""
    alice, bob = await two_pages(hub, chromium)
    await bob.evaluate("window.__softphoneTest.silence(true)")
    await wait_js(alice, "window.phone.session.status === 'restarting'", within=10)
    assert "media lost (rtp-silence), restarting" in (await alice.text_content("#media-status")
                                                      or "")
    await bob.wait_for_timeout(1300)  # the gap: 2 s (alice's silence timer) + this, or more
    await bob.evaluate("window.__softphoneTest.silence(false)")
    a = await wait_restarts(alice, 1)
    assert a["restarts"][0]["reason"] == "rtp-silence" and a["status"] == "ok", a
    assert a["restarts"][0]["gapMs"] >= 3000, a
    await assert_page_hears(alice, OTHER_TONE)
    assert (await snapshot(alice))["call"]["state"] == "connected"


async def test_media_that_never_comes_back_ends_the_call_media_lost(hub: Hub,
                                                                   chromium: Launch) -> None:
    alice, bob = await two_pages(hub, chromium, alice_restart={"giveUp": 3})
    await bob.evaluate("window.__softphoneTest.silence(true)")  # and never again
    state = await wait_outcome(alice, "media-lost", within=30)
    assert state["call"]["reason"] == "rtp-silence", state["call"]
    assert "media-lost" in [e["code"] for e in state["errors"]], state["errors"]
    assert "did not come back" in (await alice.text_content("#outcome") or "")
    await wait_call_state(bob, "ended")  # told by alice's hangup, reason media-lost
    assert (await snapshot(bob))["call"]["reason"] == "media-lost"


async def test_page_restart_and_hold_machines(hub: Hub, chromium: Launch) -> None:
    """restart.js and hold.js (sans I/O), run in Chromium: the rules of core/restart.py
    and core/hold.py that the page keeps (glare, stale messages, retry, give-up, resend)."""
    page = await (await chromium(None)).open(hub_url(hub) + "/")
    got = await page.evaluate("""async () => {
        const {RestartMachine, restartSettings} = await import("./static/restart.js");
        const {HoldMachine} = await import("./static/hold.js");
        const {extensionOf} = await import("./static/features.js");
        const kinds = (actions) => actions.map(a => a.kind
            + (a.generation !== undefined ? ":" + a.generation : "")
            + (a.why ? ":" + a.why : "") + (a.outcome ? ":" + a.outcome : ""));
        const offer = (g) => ({type: "RemoteRestartOffer", generation: g});
        const out = {};
        const connected = (m) => m.handle({type: "ConnectionChanged", generation: 0,
                                           state: "connected"}, 0);
        // Glare at the same generation: the caller's offer wins, on both sides.
        const caller = new RestartMachine(true), callee = new RestartMachine(false);
        connected(caller); connected(callee);
        out.callerLost = kinds(caller.handleTimer(2.1));
        out.calleeLost = kinds(callee.handleTimer(2.1));
        caller.handle({type: "OfferSent", generation: 1}, 2.1);
        callee.handle({type: "OfferSent", generation: 1}, 2.1);
        out.callerGetsOffer = kinds(caller.handle(offer(1), 2.2));
        out.calleeGetsOffer = kinds(callee.handle(offer(1), 2.2));
        out.calleeAgain = kinds(callee.handle(offer(1), 2.3));
        callee.handle({type: "AnswerSent", generation: 1}, 2.3);
        out.callerAnswer = kinds(caller.handle({type: "RemoteRestartAnswer", generation: 1}, 2.4));
        out.callerLate = kinds(caller.handle({type: "RemoteRestartAnswer", generation: 1}, 2.5));
        out.callerBack = kinds(caller.handle({type: "RtpReceived", generation: 1}, 2.6));
        out.stale = kinds(caller.handle(offer(1), 3));
        // A higher generation beats the caller.
        const c2 = new RestartMachine(true);
        connected(c2);
        c2.handleTimer(2.1);
        out.higher = kinds(c2.handle(offer(5), 2.2));
        // No answer within 2 s: abandoned; retried 2 s after the previous attempt; give-up.
        const lone = new RestartMachine(true, true, restartSettings({giveUp: 10}));
        connected(lone);
        lone.handleTimer(2.0);
        lone.handle({type: "OfferSent", generation: 1}, 2.0);
        out.noAnswer = kinds(lone.handleTimer(4.0));
        lone.handle({type: "OfferSent", generation: 2}, 4.0);
        out.deadline = lone.deadline();
        out.giveUp = kinds(lone.handleTimer(12.0));
        out.after = kinds(lone.handleTimer(20.0));
        // A peer without restart: detect and give up only.
        const old = new RestartMachine(true, false);
        connected(old);
        out.disabled = kinds(old.handleTimer(2.0));
        // Held: no RTP expected, no restart.
        const held = new RestartMachine(true);
        connected(held);
        held.handle({type: "HoldChanged", held: true}, 0.5);
        out.heldDeadline = held.deadline();
        // Hold: resent every second until acknowledged; repeats acknowledged again.
        const h = new HoldMachine(true);
        out.hold = kinds(h.handle({type: "LocalHold"}, 0));
        out.resend = kinds(h.handleTimer(1.0));
        h.handle({type: "RemoteHoldAck", seq: 1}, 1.1);
        out.acked = h.deadline();
        const peer = new HoldMachine(true);
        out.remote = kinds(peer.handle({type: "RemoteHold", held: true, seq: 1}, 0));
        out.repeat = kinds(peer.handle({type: "RemoteHold", held: true, seq: 1}, 1));
        const local = new HoldMachine(false);
        out.localOnly = kinds(local.handle({type: "LocalHold"}, 0)).concat([local.mode]);
        // What is an extension message, and what is the original protocol's.
        const ext = (type, data) => { const e = extensionOf({type, data}); return e && e.kind; };
        out.ext = [
            ext("offer", {type: "offer", sdp: "v=0"}),
            ext("offer", {type: "offer", sdp: "v=0", restart: 2}),
            ext("offer", {type: "offer", hold: true, seq: 1}),
            ext("answer", {type: "answer", hold: false, seq: 3}),
            ext("candidate", {candidate: "c", restart: 3}),
            ext("candidate", {candidate: "c"}),
            ext("offer", {type: "offer", sdp: "v=0", restart: 0}),
            ext("offer", {type: "offer", hold: "yes", seq: 1})];
        return out;
    }""")
    assert got["callerLost"] == ["CheckSignaling", "StartRestart:0", "SendRestartOffer:1"]
    assert got["calleeLost"] == ["CheckSignaling", "StartRestart:0", "SendRestartOffer:1"]
    assert got["callerGetsOffer"] == ["IgnoreStale:1:glare: our offer wins", "ResendRestartOffer:1"]
    assert got["calleeGetsOffer"] == ["CloseConnection:1", "AcceptRestartOffer:1"]
    assert got["calleeAgain"] == ["IgnoreStale:1:repeated"]
    assert got["callerAnswer"] == ["ApplyRestartAnswer:1"]
    assert got["callerLate"] == ["IgnoreStale:1:no offer of ours is waiting for it"]
    assert got["callerBack"] == ["RestartDone:1", "CloseConnection:0"]
    assert got["stale"] == ["IgnoreStale:1:stale (current is 1)"]
    assert got["higher"] == ["CloseConnection:1", "AcceptRestartOffer:5"]
    assert got["noAnswer"] == ["CloseConnection:1", "CheckSignaling", "SendRestartOffer:2"]
    assert got["deadline"] == 6.0  # the new offer's answer is due 2 s after it was sent
    assert got["giveUp"] == ["CloseConnection:2", "GiveUp:media-lost"]
    assert got["after"] == []
    assert got["disabled"] == ["MediaStalled"]
    assert got["heldDeadline"] is None
    assert got["hold"] == ["HoldChange", "SendHold", "SetMediaFlow"]
    assert got["resend"] == ["SendHold"]
    assert got["acked"] is None
    assert got["remote"] == ["HoldChange", "SendHoldAck", "SetMediaFlow"]
    assert got["repeat"] == ["SendHoldAck"]
    assert got["localOnly"] == ["HoldChange", "SetMediaFlow", "muted"]
    assert got["ext"] == [None, "restartOffer", "hold", "holdAck", "restartCandidate", None,
                          "bad", "bad"]


async def test_hold_towards_the_original_page_is_local(hub: Hub, chromium: Launch) -> None:
    """The original callerB.html (emulated) announces nothing: the page's hold sends it
    silence (its stream stays live, no hold message goes) and mutes what the page plays."""
    from ..support.emulators import OriginalPage  # (aiortc: as test_browser.py does)

    page = await (await chromium(PAGE_TONE)).open(hub_url(hub) + "/callerA.html")
    await wait_hub(page, "connected")
    original = OriginalPage(hub_url(hub), "b", tone=OTHER_TONE)
    await original.connect()
    try:
        await page.click("#call")
        await wait_call_state(page, "connected")
        await asyncio.wait_for(original.wait_received(1.5), 15)
        m = await media(page)
        assert m["peerFeatures"] == [] and m["features"]["hold"] is False, m
        await page.click("#hold")
        await wait_hold(page, "local")
        assert "does not know hold" in (await page.text_content("#hold-status") or "")
        await page.wait_for_timeout(500)
        mark = original.received_samples().size
        await page.wait_for_timeout(1500)
        held = original.received_samples()[mark:]
        assert held.size > 48000, "the original page's stream stopped: it must stay live"
        assert rms_dbfs(held) < -50, f"the original page heard {rms_dbfs(held):.1f} dBFS"
        await assert_page_silent_playout(page)
        assert not [msg for msg in original.received if msg.get("type") == "offer"
                    and isinstance(msg.get("data"), dict) and "hold" in msg["data"]]
        await page.click("#hold")  # Resume
        await wait_hold(page, "")
        await assert_page_hears(page, OTHER_TONE)
        mark = original.received_samples().size
        await page.wait_for_timeout(1500)
        assert_tone(original.received_samples()[mark:], PAGE_TONE, skip=0.2, min_seconds=1.0,
                    what="the original page after the resume")
        assert (await media(page))["restarts"] == []
        await original.hangup()
        await wait_outcome(page, "completed")
    finally:
        await original.close()


async def assert_page_silent_playout(page: Any) -> None:
    """RTP still arrives (the peer does not know hold), but the page plays nothing."""
    before = await packets_received(page)
    await page.wait_for_timeout(800)
    assert await packets_received(page) > before
    samples, _ = await received_audio(page)
    assert rms_dbfs(samples) < SILENT_DBFS, f"the page plays {rms_dbfs(samples):.1f} dBFS"
    assert await page.evaluate("document.getElementById('remote-audio').muted") is True
