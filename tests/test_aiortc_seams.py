"""The aiortc/aioice internals softphone relies on are still what it expects."""

from __future__ import annotations

import asyncio
import socket
import time

import aioice
import aiortc
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from softphone import aiortc_seams
from softphone.tracks import SilenceSource


def test_pinned_versions_and_signatures() -> None:
    aiortc_seams.check()  # raises SeamMismatch with the reason if anything moved
    assert aiortc.__version__ == aiortc_seams.AIORTC_VERSION
    assert aioice.__version__ == aiortc_seams.AIOICE_VERSION


async def test_dead_stun_server_costs_at_most_the_gather_timeout() -> None:
    """A STUN server that never answers used to block setLocalDescription for 5 s."""
    aiortc_seams.install()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dead:
        dead.bind(("127.0.0.1", 0))  # receives STUN requests, never answers
        port = dead.getsockname()[1]
        pc = RTCPeerConnection(RTCConfiguration(
            iceServers=[RTCIceServer(urls=f"stun:127.0.0.1:{port}")]))
        pc.addTrack(SilenceSource())
        try:
            start = time.monotonic()
            await pc.setLocalDescription(await pc.createOffer())
            elapsed = time.monotonic() - start
        finally:
            await pc.close()
    assert "a=candidate" in pc.localDescription.sdp
    # 1 s cap vs aioice's own 5 s: a generous bound that still tells them apart.
    assert elapsed < 3.5, f"gathering took {elapsed:.1f} s"
    assert aiortc_seams.gather_timeout <= 1.0
    await asyncio.sleep(0)
