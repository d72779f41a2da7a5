"""Faults with real processes: SIGTERM'd hub, SIGKILL'd hub mid-call, SIGKILL'd peer."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path

import aiohttp
import pytest

from softphone import Phone, RecorderSink, ToneSource
from softphone.core.callstate import Outcome
from softphone.hub.server import Hub, HubConfig

from ..support.helpers import Proc, assert_tone, read_wav

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serving(procs: list[Proc], port: int, *extra: str) -> Proc:
    p = Proc("serve", "--port", str(port), "--ice-server", "none", *extra)
    procs.append(p)
    await p.wait_for_output("listening on")
    return p


async def clients(url: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/healthz") as resp:
        body = await resp.json()
    return int(body["clients"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
async def test_sigterm_closes_clients_going_away(procs: list[Proc], sig: int) -> None:
    """systemd's stop, or the terminal the hub ran in closing (SIGHUP: it died at once
    with 129, its clients got 1006)."""
    port = free_port()
    hub = await serving(procs, port)
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(f"http://127.0.0.1:{port}/ws?id=a")
        hub.signal(sig)
        frame = await ws.receive(5)
        assert frame.type == aiohttp.WSMsgType.CLOSE
        assert frame.data == 1001 and frame.extra == "hub shutting down"
    assert await hub.wait(10) == 0
    assert "hub stopped" in hub.stdout
    assert "Traceback" not in hub.stderr


async def test_hub_sigkilled_mid_call(procs: list[Proc], tmp_path: Path) -> None:
    """Media is peer to peer: the tone goes on while the hub is dead and restarted."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    hub = await serving(procs, port)
    rec_a = tmp_path / "a.wav"
    a, b = Phone("a", url, ice_servers=[]), Phone("b", url, ice_servers=[])
    await a.connect()
    await b.connect()
    try:
        async def answer() -> None:
            incoming = await b.next_call()
            await incoming.accept(ToneSource(660), [])

        answering = asyncio.create_task(answer())
        call = await a.dial("b", ToneSource(440), [RecorderSink(rec_a)])
        await asyncio.wait_for(call.connected(), 20)
        await answering
        await asyncio.sleep(1.5)
        hub.popen.send_signal(signal.SIGKILL)
        await hub.wait(5)
        await asyncio.sleep(1.0)  # the hub is gone for a while
        assert not a.hub_connected.is_set() and not b.hub_connected.is_set()
        await serving(procs, port)
        await asyncio.wait_for(asyncio.gather(a.hub_connected.wait(), b.hub_connected.wait()),
                               20)
        deadline = time.monotonic() + 10
        while await clients(url) != 2:
            assert time.monotonic() < deadline, "the phones did not re-register"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)
        assert not call.machine.is_ended
        await call.hangup()
        result = await asyncio.wait_for(call.ended(), 10)
    finally:
        await a.close()
        await b.close()
    assert result.outcome is Outcome.COMPLETED
    assert result.talk_seconds > 4
    samples, rate = read_wav(rec_a)
    # The hub was gone for 2 s or more: media that needed it would show a gap that
    # long. Shorter gaps are this shared machine's scheduling, not the hub.
    assert_tone(samples, 660, rate=rate, until=-0.25, min_seconds=3.5, max_gap=0.5,
                what="a heard b across the hub's death")
    assert samples.size / rate > result.talk_seconds - 1.0


async def test_peer_sigkilled_ends_the_call_in_seconds(procs: list[Proc]) -> None:
    hub = Hub(HubConfig(ice_servers=[], peer_grace=2.0))
    await hub.start()
    url = f"http://127.0.0.1:{hub.port}"
    graces: list[tuple[str, float | None]] = []  # (who left, the grace the hub gave them)
    disconnected = hub.pairs.disconnected

    def noted(client_id: str, now: float, grace: float | None = None) -> float | None:
        graces.append((client_id, grace))
        return disconnected(client_id, now, grace)

    hub.pairs.disconnected = noted  # type: ignore[method-assign]
    try:
        callee = Proc("listen", "--as", "b", "--server", url, "--auto-accept", "--tone", "660")
        procs.append(callee)
        await callee.wait_for_output("listening as")
        async with Phone("a", url, ice_servers=[]) as a:
            call = await a.dial("b", ToneSource(440), [])
            await asyncio.wait_for(call.connected(), 20)
            await asyncio.sleep(0.5)
            callee.popen.send_signal(signal.SIGKILL)
            # A hang guard, not a speed check: the 2 s grace ends it in a few seconds
            # (the 45 s away grace would not be over by then).
            result = await asyncio.wait_for(call.ended(), 30)
        # The kernel closed the killed phone's connection: the hub gave it the short
        # grace (a closed connection's), not the away grace.
        assert graces[0] == ("b", 2.0), graces
        assert result.reason == "peer-disconnected"
        assert result.ended_by == "remote"
    finally:
        await hub.stop()


@pytest.mark.parametrize("mode", [0o644, 0o600])
async def test_a_tls_key_others_can_read_is_warned_about(procs: list[Proc], tmp_path: Path,
                                                         mode: int) -> None:
    """As a token's or a secret's file is (the operator review: no word about it)."""
    from softphone.hub.tls import default_names, self_signed

    made = self_signed(str(tmp_path), default_names(["127.0.0.1"]))
    made.key.chmod(mode)
    hub = await serving(procs, free_port(), "--cert", str(made.cert), "--key", str(made.key))
    warned = f"{made.key} holds the TLS private key and other users can read it"
    assert (warned in hub.stderr) == (mode == 0o644), hub.stderr
    hub.signal(signal.SIGTERM)
    assert await hub.wait(10) == 0


async def test_a_hub_under_nohup_keeps_running_when_its_terminal_closes(
        procs: list[Proc]) -> None:
    """SIGHUP stops a hub cleanly, unless it was started to ignore it (nohup): then the
    terminal closing leaves it running, as before SIGHUP was handled (the review)."""
    from ..support.helpers import softphone_command

    port = free_port()
    hub = Proc(argv=["nohup", *softphone_command("serve", "--port", str(port),
                                                 "--ice-server", "none")])
    procs.append(hub)
    await hub.wait_for_output("listening on")
    hub.signal(signal.SIGHUP)
    await asyncio.sleep(1.0)
    assert hub.popen.poll() is None, hub.describe()
    assert await clients(f"http://127.0.0.1:{port}") == 0  # (it still answers)
    hub.signal(signal.SIGTERM)
    assert await hub.wait(10) == 0
