"""The aiortc/aioice internals softphone relies on are still what it expects."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import aioice
import aioice.ice
import aiortc
import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from softphone.media import aiortc_seams
from softphone.media.aiortc_seams import gathering
from softphone.media.tracks import SilenceSource

from ..support.coturn import StartCoturn
from ..support.netlab import turn_rest_credentials


def test_pinned_versions_and_signatures() -> None:
    aiortc_seams.check()  # raises SeamMismatch with the reason if anything moved
    assert aiortc.__version__ == aiortc_seams.AIORTC_VERSION
    assert aioice.__version__ == aiortc_seams.AIOICE_VERSION


class GatherWaits:
    """aioice's wait for its STUN/TURN servers while gathering, seen from inside: for
    each, the connection gathering, the timeout it was given, and whether it
    ended by that timeout (tasks still pending) rather than by the answers."""

    def __init__(self) -> None:
        self.waits: list[tuple[object, float | None, bool]] = []

    def __getattr__(self, name: str) -> Any:  # the rest of asyncio, as it is
        return getattr(asyncio, name)

    async def wait(self, tasks: Any, *, timeout: float | None = None,  # noqa: ASYNC109
                   **kw: Any) -> Any:
        done, pending = await asyncio.wait(tasks, timeout=timeout, **kw)
        self.waits.append((gathering.gathering_connection.get(), timeout, bool(pending)))
        return done, pending


@pytest.fixture
def gather_waits(monkeypatch: pytest.MonkeyPatch) -> GatherWaits:
    aiortc_seams.install()
    seen = GatherWaits()
    monkeypatch.setattr(aioice.ice, "asyncio", seen)
    return seen


def _ice_connection(pc: RTCPeerConnection) -> object:
    return pc.getTransceivers()[0].sender.transport.transport.iceGatherer._connection


async def test_dead_stun_server_costs_at_most_the_gather_timeout(
        gather_waits: GatherWaits) -> None:
    """A STUN server that never answers used to block setLocalDescription for 5 s.

    Checked on the timeout aioice was given and that it ran out (not by timing
    the gathering: a loaded machine stretches that)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dead:
        dead.bind(("127.0.0.1", 0))  # receives STUN requests, never answers
        port = dead.getsockname()[1]
        pc = RTCPeerConnection(RTCConfiguration(
            iceServers=[RTCIceServer(urls=f"stun:127.0.0.1:{port}")]))
        pc.addTrack(SilenceSource())
        try:
            # (a hang guard, far above the 1 s wait)
            await asyncio.wait_for(pc.setLocalDescription(await pc.createOffer()), 30)
            connection = _ice_connection(pc)
        finally:
            await pc.close()
    assert "a=candidate" in pc.localDescription.sdp
    assert "typ srflx" not in pc.localDescription.sdp
    # 1 s cap vs aioice's own 5 s; the wait ran out (the server never answered).
    assert gather_waits.waits == [(connection, aiortc_seams.DEFAULT_GATHER_TIMEOUT, True)]
    assert aiortc_seams.DEFAULT_GATHER_TIMEOUT <= 1.0
    await asyncio.sleep(0)


async def test_each_connection_has_its_own_gathering_timeout(
        gather_waits: GatherWaits) -> None:
    """Two peer connections in one process, gathering at once against a dead STUN
    server, each wait their own timeout (it used to be one module-wide setting)."""

    async def gather(port: int, seconds: float) -> object:
        pc = RTCPeerConnection(RTCConfiguration(
            iceServers=[RTCIceServer(urls=f"stun:127.0.0.1:{port}")]))
        pc.addTrack(SilenceSource())
        aiortc_seams.limit_gathering(pc, seconds)
        try:
            await asyncio.wait_for(pc.setLocalDescription(await pc.createOffer()), 30)
            return _ice_connection(pc)
        finally:
            await pc.close()

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dead:
        dead.bind(("127.0.0.1", 0))  # receives STUN requests, never answers
        port = dead.getsockname()[1]
        quick, patient = await asyncio.gather(gather(port, 0.3), gather(port, 2.0))
    assert sorted(gather_waits.waits, key=lambda w: w[1] or 0) == [
        (quick, 0.3, True), (patient, 2.0, True)], gather_waits.waits
    await asyncio.sleep(0)


# -- 5./6. TURN allocation errors and the selected candidate pair ---------------------


async def _wait_connected(*pcs: RTCPeerConnection, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not all(pc.connectionState == "connected" for pc in pcs):
        assert time.monotonic() < deadline, [pc.connectionState for pc in pcs]
        await asyncio.sleep(0.05)


async def test_selected_candidate_pair_of_a_connected_call() -> None:
    aiortc_seams.install()
    a = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    b = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        for pc in (a, b):
            pc.addTrack(SilenceSource())
        assert aiortc_seams.selected_candidate_pair(a) is None  # nothing nominated yet
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        await _wait_connected(a, b)
        for pc in (a, b):
            pair = aiortc_seams.selected_candidate_pair(pc)
            assert pair is not None
            assert pair["local"]["type"] == "host" and pair["local"]["protocol"] == "udp"
            assert pair["remote"]["type"] in ("host", "prflx")
            assert pair["relay_protocol"] is None
            assert pair["local"] in pair["local_candidates"]
        assert aiortc_seams.turn_errors(a) == []
    finally:
        await a.close()
        await b.close()


async def _gather_relay(port: int, username: str, credential: str) -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(
        iceServers=[RTCIceServer(urls=f"turn:127.0.0.1:{port}?transport=tcp",
                                 username=username, credential=credential)],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY))
    pc.addTrack(SilenceSource())
    await pc.setLocalDescription(await pc.createOffer())
    return pc


@pytest.mark.parametrize("problem", ["expired", "wrongly-signed"])
async def test_refused_turn_credentials_are_reported(coturn: StartCoturn,
                                                     problem: str) -> None:
    aiortc_seams.install()
    turn = coturn()
    port, secret = turn.port, turn.secret
    if problem == "expired":
        username, credential = turn_rest_credentials(secret, "seam", time.time() - 60)
    else:
        username, credential = turn_rest_credentials("wrong", "seam", time.time() + 600)
    pc = await _gather_relay(port, username, credential)
    try:
        assert " typ relay" not in pc.localDescription.sdp
        errors = aiortc_seams.turn_errors(pc)
        assert len(errors) == 1
        assert f"127.0.0.1:{port} over tcp" in errors[0]
        assert "credentials refused (401 Unauthorized)" in errors[0]
    finally:
        await pc.close()


async def test_good_turn_credentials_gather_a_relay_candidate(coturn: StartCoturn) -> None:
    aiortc_seams.install()
    turn = coturn()
    port, secret = turn.port, turn.secret
    pc = await _gather_relay(port, *turn_rest_credentials(secret, "seam", time.time() + 600))
    try:
        assert " typ relay" in pc.localDescription.sdp
        assert aiortc_seams.turn_errors(pc) == []
    finally:
        await pc.close()


def test_describe_turn_error() -> None:
    assert aiortc_seams.describe_turn_error(TimeoutError()) == "no answer"
    assert aiortc_seams.describe_turn_error(ConnectionRefusedError("refused")) == \
        "ConnectionRefusedError: refused"


def test_the_call_setup_seams_internals() -> None:
    """The call setup seams (fast_setup, dtls): what they rely on is still there. Their behaviour
    (triggered checks, pacing, retransmission timers, DTLS flights, the DTLS role
    of the answer, gathering with TURN) is tested in test_aiortc_seams_setup.py."""
    aiortc_seams.fast_setup.check_internals()
    assert aiortc_seams.STOCK_SETUP != aiortc_seams.FastSetup()


async def test_a_connection_can_use_another_ones_dtls_certificate() -> None:
    """The certificate seam: a media restart's connection keeps the call's first DTLS
    certificate, so the fingerprint in its offer (and the verification code) stays."""
    aiortc_seams.certificate.check_internals()
    first, second, third = RTCPeerConnection(), RTCPeerConnection(), RTCPeerConnection()
    try:
        certificate = aiortc_seams.certificate_of(first)
        assert aiortc_seams.certificate_of(second) is not certificate  # aiortc: one each
        aiortc_seams.use_certificate(second, certificate)
        for pc in (first, second, third):
            pc.addTransceiver("audio")
        with pytest.raises(RuntimeError, match="already has transports"):
            aiortc_seams.use_certificate(third, certificate)

        def fingerprint(pc: RTCPeerConnection) -> set[str]:
            return {line for line in pc.localDescription.sdp.splitlines()
                    if line.startswith("a=fingerprint:sha-256")}

        for pc in (first, second, third):
            await pc.setLocalDescription(await pc.createOffer())
        assert fingerprint(first) == fingerprint(second) != fingerprint(third)
    finally:
        for pc in (first, second, third):
            await pc.close()
