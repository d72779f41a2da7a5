"""End to end: `softphone` subprocesses calling each other through a real hub.

Every call that connects carries tones both ways; the recordings are read
back and their frequencies checked. What needs no second process (offline,
hub unreachable, tokens, the environment) runs in-process: test_cli_hub.py.
"""

from __future__ import annotations

import asyncio
import json
import signal

import aiohttp
import pytest

from softphone.hub.server import Hub

from ..conftest import hub_url
from ..support.helpers import Proc, assert_wav_tone

pytestmark = pytest.mark.e2e


async def listening(procs: list[Proc], hub: Hub, client_id: str, *extra: str,
                    stdin: bool = False) -> Proc:
    p = Proc("listen", "--as", client_id, "--server", hub_url(hub), *extra, stdin=stdin)
    procs.append(p)
    await p.wait_for_output("listening as")
    return p


async def test_call_carries_audio_both_ways(hub: Hub, procs: list[Proc], tmp_path) -> None:
    rec_a, rec_b = str(tmp_path / "a.wav"), str(tmp_path / "b.wav")
    b = await listening(procs, hub, "b", "--auto-accept", "--once", "--tone", "660",
                        "--record", rec_b)
    a = Proc("call", "b", "--as", "a", "--server", hub_url(hub), "--tone", "440",
             "--record", rec_a, "--duration", "2.5", "--json")
    procs.append(a)
    assert await a.wait() == 0, a.stderr
    assert await b.wait() == 0, b.stderr
    assert_wav_tone(rec_a, 660)
    assert_wav_tone(rec_b, 440)
    events = [json.loads(line) for line in a.stdout.splitlines()]
    states = [e["state"] for e in events if e["event"] == "state"]
    assert states == ["dialing", "connecting", "connected", "ended"]
    end = events[-1]
    assert end["event"] == "ended" and end["outcome"] == "completed" and end["exit_code"] == 0
    assert end["ended_by"] == "local" and end["reason"] == "duration"
    assert end["setup_seconds"] > 0 and end["first_audio_seconds"] >= end["setup_seconds"]
    assert end["stats"]["packets_received"] > 50
    assert "call completed with a" in b.stdout and "they hung up" in b.stdout
    assert "Traceback" not in a.stderr + b.stderr


async def test_reject(hub: Hub, procs: list[Proc]) -> None:
    b = await listening(procs, hub, "b", "--once", stdin=True)
    a = Proc("call", "b", "--as", "a", "--server", hub_url(hub))
    procs.append(a)
    await b.wait_for_output("accept? [y/n]")
    b.send("n\n")
    assert await a.wait() == 3
    assert "b rejected the call" in a.stdout
    assert await b.wait() == 3


async def test_accept_on_the_terminal(hub: Hub, procs: list[Proc], tmp_path) -> None:
    rec = str(tmp_path / "b.wav")
    b = await listening(procs, hub, "b", "--once", "--record", rec, stdin=True)
    a = Proc("call", "b", "--as", "a", "--server", hub_url(hub), "--tone", "880",
             "--duration", "2")
    procs.append(a)
    await b.wait_for_output("accept? [y/n]")
    b.send("maybe\ny\n")
    assert await a.wait() == 0, a.stderr
    assert await b.wait() == 0
    assert "please answer y or n" in b.stdout
    assert_wav_tone(rec, 880)


async def test_busy(hub: Hub, procs: list[Proc]) -> None:
    await listening(procs, hub, "b", "--auto-accept")
    c = Proc("call", "b", "--as", "c", "--server", hub_url(hub), "--duration", "20")
    procs.append(c)
    await c.wait_for_output("connected to b")
    a = Proc("call", "b", "--as", "a", "--server", hub_url(hub))
    procs.append(a)
    assert await a.wait() == 4
    assert "b is busy" in a.stdout
    c.signal(signal.SIGINT)
    assert await c.wait() == 0


async def test_no_answer_withdraws_the_prompt(hub: Hub, procs: list[Proc]) -> None:
    b = await listening(procs, hub, "b", "--once", stdin=True)
    a = Proc("call", "b", "--as", "a", "--server", hub_url(hub), "--ring-timeout", "1")
    procs.append(a)
    assert await a.wait() == 5
    assert "no answer from b" in a.stdout
    assert await b.wait() == 9  # missed
    assert "missed call from a" in b.stdout


async def test_setup_timeout_is_media_failed(hub: Hub, procs: list[Proc]) -> None:
    """A callee that accepts but never answers the offer: the caller gives up."""
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{hub_url(hub)}/ws?id=mute")
        a = Proc("call", "mute", "--as", "a", "--server", hub_url(hub),
                 "--setup-timeout", "2")
        procs.append(a)
        request = json.loads((await ws.receive(10)).data)
        assert request["type"] == "call-request"
        await ws.send_json({"type": "call-accept", "to": "a", "data": {"media": "ready"}})
        offer = json.loads((await ws.receive(10)).data)
        assert offer["type"] == "offer" and "a=candidate" in offer["data"]["sdp"]
        assert await a.wait() == 8
        hangup = json.loads((await ws.receive(5)).data)
        assert hangup == {"type": "hangup", "to": "mute", "from": "a",
                          "data": {"reason": "media-failed"}}
        assert "media failed" in a.stdout


async def test_sigint_mid_call_keeps_a_valid_recording(hub: Hub, procs: list[Proc],
                                                      tmp_path) -> None:
    rec = str(tmp_path / "a.wav")
    b = await listening(procs, hub, "b", "--auto-accept", "--once", "--tone", "520")
    a = Proc("call", "b", "--as", "a", "--server", hub_url(hub), "--record", rec)
    procs.append(a)
    await a.wait_for_output("connected to b")
    await asyncio.sleep(2.0)
    a.signal(signal.SIGINT)
    assert await a.wait() == 0
    assert await b.wait() == 0
    assert "they hung up" in b.stdout  # the peer saw our hangup
    assert_wav_tone(rec, 520, max_gap=0.1)


async def test_demo(procs: list[Proc]) -> None:
    p = Proc("demo", "--seconds", "2")
    procs.append(p)
    assert await p.wait(60) == 0, p.stdout + p.stderr
    assert "demo passed: audio made it both ways" in p.stdout
    assert "received 660.0 Hz" in p.stdout or "received 659." in p.stdout


@pytest.mark.parametrize("redundancy", ["1", "0"], ids=["red", "fec-only"])
async def test_simulated_loss_is_concealed(hub: Hub, procs: list[Proc], tmp_path,
                                           redundancy: str) -> None:
    rec = str(tmp_path / "a.wav")
    await listening(procs, hub, "b", "--auto-accept", "--once", "--tone", "600")
    # The caller's offer leads with RED (or, with --redundancy 0, with Opus alone).
    a = Proc("call", "b", "--as", "a", "--server", hub_url(hub), "--record", rec,
             "--duration", "4", "--simulate-loss", "5", "--bitrate", "64",
             "--redundancy", redundancy, "--json")
    procs.append(a)
    assert await a.wait() == 0, a.stderr
    stats = json.loads(a.stdout.splitlines()[-1])["stats"]
    if redundancy == "0":
        assert stats["repaired"] == 0
        assert stats["concealed"] + stats["recovered"] > 5  # losses happened and were filled
    else:  # copies in the next packet replaced the lost ones
        assert stats["repaired"] > 5 and stats["repaired"] > stats["concealed"], stats
    assert_wav_tone(rec, 600, skip=1.0, max_gap=0.020)
