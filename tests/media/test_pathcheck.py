"""Media-path probes for media restart (softphone.media.pathcheck, issue 16).

The path check against two real aiortc peer connections on this machine's
addresses (answered while the path is up; not when one side's socket stops
taking packets); the peer-address watch with real packets from a socket of
another port; the local address watcher with its reading replaced.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
from collections.abc import AsyncIterator
from typing import Any

import aioice.stun
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from softphone.core.restart_events import AddressesChanged
from softphone.media import pathcheck
from softphone.media.pathcheck import (
    LocalAddresses,
    RemoteAddressWatch,
    address_present,
    probe_path,
    selected_pair,
    usable_address,
)
from softphone.media.tracks import SilenceSource

from ..support.helpers import connect_peers


@pytest.fixture
async def peers() -> AsyncIterator[tuple[RTCPeerConnection, RTCPeerConnection]]:
    a = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    b = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        for pc in (a, b):
            pc.addTrack(SilenceSource())
        await connect_peers(a, b)
        yield a, b
    finally:
        await a.close()
        await b.close()


class Session:
    """What probe_path takes: anything with the peer connection as ``pc``."""

    def __init__(self, pc: RTCPeerConnection) -> None:
        self.pc = pc


def _deaf(pc: RTCPeerConnection) -> Any:
    """``pc``'s selected socket takes no more packets (as if its network were gone)."""
    protocol = selected_pair(pathcheck.ice_connection(pc)).protocol
    protocol.datagram_received = lambda data, addr: None
    return protocol


def test_the_internals_are_where_they_were() -> None:
    pathcheck.check_internals()


async def test_probe_is_answered_while_the_path_is_up(
        peers: tuple[RTCPeerConnection, RTCPeerConnection]) -> None:
    a, b = peers
    for _ in range(3):
        assert await probe_path(Session(a))
        assert await probe_path(b)  # a peer connection itself will do too


@pytest.mark.parametrize("deaf", ["answerer", "asker"])
async def test_probe_is_not_answered_when_a_side_is_cut_off(
        peers: tuple[RTCPeerConnection, RTCPeerConnection], deaf: str) -> None:
    a, b = peers
    # What b's socket gets: the transaction ids of the STUN requests (a's probe and
    # any consent checks), whether or not b then takes the packet.
    received: list[bytes] = []
    at_b = selected_pair(pathcheck.ice_connection(b)).protocol
    take = at_b.datagram_received

    def noted(data: bytes, addr: Any) -> None:
        if data and data[0] < 4:  # STUN (RFC 7983)
            received.append(aioice.stun.parse_message(data).transaction_id)
        if deaf == "asker":
            take(data, addr)

    at_b.datagram_received = noted
    deaf_a = _deaf(a) if deaf == "asker" else None
    # The transaction ids of the requests a's socket is asked to send: the probe's own
    # (made in the probe's task, which sets `probing`), and any others (aioice's
    # consent checks, from its own task, can land in the window on a slow machine).
    probing = contextvars.ContextVar("probing", default=False)
    sent: list[bytes] = []
    others: list[bytes] = []
    asker = selected_pair(pathcheck.ice_connection(a)).protocol
    request = asker.request

    async def noted_request(message: Any, *args: Any, **kw: Any) -> Any:
        (sent if probing.get() else others).append(message.transaction_id)
        return await request(message, *args, **kw)

    async def probe() -> bool:
        probing.set(True)  # (in this task's copy of the context only)
        return await probe_path(Session(a))

    asker.request = noted_request
    try:
        assert not await asyncio.create_task(probe())
        await asyncio.sleep(1.0)  # past aioice's first retransmission time (0.5 s)
    finally:
        del asker.request
    # One request, sent once: not retransmitted (aioice's retransmissions would
    # have kept the probe going for seconds).
    assert len(sent) == 1 and received.count(sent[0]) == 1, (sent, others, received)
    del at_b.datagram_received  # the network is back
    if deaf_a is not None:
        del deaf_a.datagram_received
    assert await probe_path(Session(a))


async def test_probe_without_a_path() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTrack(SilenceSource())
        assert not await probe_path(Session(pc))  # not connected yet
    finally:
        await pc.close()
    assert not await probe_path(Session(pc))  # closed


async def test_probe_of_a_closed_connection(
        peers: tuple[RTCPeerConnection, RTCPeerConnection]) -> None:
    a, b = peers
    await b.close()
    assert not await probe_path(a)
    await a.close()
    assert not await probe_path(a)


# ---------------------------------------------------------------- peer's address ---


def _rtp(seq: int) -> bytes:
    return bytes([0x80, 111]) + seq.to_bytes(2, "big") + bytes(8) + b"x" * 40


async def test_peer_media_from_a_new_address_is_noticed(
        peers: tuple[RTCPeerConnection, RTCPeerConnection]) -> None:
    a, b = peers
    seen: list[tuple[str, int]] = []
    watch = RemoteAddressWatch(Session(a), seen.append, packets=5)
    assert watch.start()
    pair = selected_pair(pathcheck.ice_connection(a))
    # b's NAT rebinds: nothing more arrives from its old address; the socket
    # below sends what b would now send from its new one.
    b_protocol = selected_pair(pathcheck.ice_connection(b)).protocol

    async def nowhere(data: bytes, addr: tuple[str, int]) -> None:
        pass

    b_protocol.send_data = nowhere
    host, port = pair.local_addr
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                       socket.SOCK_DGRAM) as rebound:
        rebound.bind((host, 0))
        new_address = rebound.getsockname()[:2]
        # STUN from there (a late check from another candidate) does not count ...
        stun = bytes([0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42]) + bytes(12)
        for _ in range(6):
            rebound.sendto(stun, (host, port))
        # ... nor 4 media packets; the 5th in a row does.
        for seq in range(4):
            rebound.sendto(_rtp(seq), (host, port))
        await asyncio.sleep(0.3)
        assert seen == [] and not watch.fired
        rebound.sendto(_rtp(4), (host, port))
        for _ in range(50):
            if seen:
                break
            await asyncio.sleep(0.02)
        assert seen == [new_address]
        for seq in range(5, 20):  # once only
            rebound.sendto(_rtp(seq), (host, port))
        await asyncio.sleep(0.2)
        assert seen == [new_address]
    # The path itself goes on as before, and the watch leaves the socket as it was.
    del b_protocol.send_data
    assert await probe_path(a)
    watch.stop()
    assert "datagram_received" not in vars(pair.protocol)


async def test_packets_from_the_peer_between_strays_reset_the_count(
        peers: tuple[RTCPeerConnection, RTCPeerConnection]) -> None:
    a, _ = peers
    seen: list[tuple[str, int]] = []
    watch = RemoteAddressWatch(Session(a), seen.append, packets=3)
    assert watch.start()
    pair = selected_pair(pathcheck.ice_connection(a))
    host, port = pair.local_addr
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                       socket.SOCK_DGRAM) as stray:
        stray.bind((host, 0))
        for seq in range(10):  # the peer's own media (SilenceSource) keeps coming
            stray.sendto(_rtp(seq), (host, port))
            await asyncio.sleep(0.06)
    assert seen == []
    watch.stop()


async def test_watch_needs_a_selected_pair() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTrack(SilenceSource())
        assert not RemoteAddressWatch(Session(pc), lambda a: None).start()
    finally:
        await pc.close()


# ------------------------------------------------------------- local addresses ---


def test_usable_addresses() -> None:
    assert usable_address("192.0.2.7") and usable_address("2001:db8::1")
    for address in ("127.0.0.1", "::1", "169.254.3.4", "fe80::1%eth0", "0.0.0.0", "x"):
        assert not usable_address(address), address
    assert all(usable_address(a) for a in pathcheck.host_addresses())


def test_address_present() -> None:
    assert address_present("127.0.0.1")
    assert not address_present("192.0.2.254") or "192.0.2.254" in pathcheck.host_addresses()


async def test_local_addresses_tell_each_change() -> None:
    now = {"10.1.0.2"}
    watcher = LocalAddresses(interval=0.05, read=lambda: frozenset(now), notices=False)
    heard: list[AddressesChanged] = []
    watcher.start()
    try:
        assert watcher.current == {"10.1.0.2"}  # the baseline
        unsubscribe = watcher.subscribe(heard.append)
        await asyncio.sleep(0.2)
        assert heard == []  # nothing changed
        now.add("10.3.0.2")  # a new network comes up ...
        await asyncio.sleep(0.2)
        now.discard("10.1.0.2")  # ... and the old one goes
        await asyncio.sleep(0.2)
        assert heard == [AddressesChanged(frozenset({"10.1.0.2", "10.3.0.2"})),
                         AddressesChanged(frozenset({"10.3.0.2"}))]
        unsubscribe()
        now.add("10.5.0.2")
        await asyncio.sleep(0.2)
        assert len(heard) == 2 and watcher.current == {"10.3.0.2", "10.5.0.2"}
    finally:
        watcher.stop()
    assert not watcher.running


async def test_local_addresses_survive_a_failing_read_and_listener() -> None:
    calls = 0

    def read() -> frozenset[str]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError("interfaces are being changed")
        return frozenset({"10.1.0.2"} if calls < 4 else {"10.4.0.2"})

    def broken(event: AddressesChanged) -> None:
        raise RuntimeError("a listener's bug")

    heard: list[AddressesChanged] = []
    watcher = LocalAddresses(interval=0.03, read=read, notices=False)
    watcher.subscribe(broken)
    watcher.subscribe(heard.append)
    watcher.start()
    try:
        await asyncio.sleep(0.3)
    finally:
        watcher.stop()
    assert heard == [AddressesChanged(frozenset({"10.4.0.2"}))]


async def test_local_addresses_real_reading_with_notices() -> None:
    """The machine's own addresses, and the kernel's notices socket opened and closed
    (no address is changed here: the network lab's switch does that)."""
    watcher = LocalAddresses()
    watcher.start()
    try:
        assert watcher.current == pathcheck.host_addresses()
        assert not watcher.check()
    finally:
        watcher.stop()
        watcher.stop()  # twice is fine


async def test_a_candidate_known_when_the_call_came_up_is_no_move(
        peers: tuple[RTCPeerConnection, RTCPeerConnection]) -> None:
    """A peer's address aioice learned from its checks before the call came up (peer
    reflexive: a trickling browser's candidate can stay so even once signalled) is one
    of the peer's: its media from there is no move. One learned later is (a rebinding)."""
    import aioice

    a, _ = peers
    connection = pathcheck.ice_connection(a)
    pair = selected_pair(connection)
    host, port = pair.local_addr
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as early, \
            socket.socket(family, socket.SOCK_DGRAM) as late:
        early.bind((host, 0))
        late.bind((host, 0))

        def learned(sock: socket.socket) -> aioice.Candidate:
            address, peer_port = sock.getsockname()[:2]
            return aioice.Candidate(foundation="x", component=1, transport="udp",
                                    priority=1, host=address, port=peer_port, type="prflx")

        connection._remote_candidates.append(learned(early))
        seen: list[tuple[str, int]] = []
        watch = RemoteAddressWatch(Session(a), seen.append, packets=3)
        assert watch.start()
        connection._remote_candidates.append(learned(late))
        for seq in range(10):
            early.sendto(_rtp(seq), (host, port))
        await asyncio.sleep(0.3)
        assert seen == [] and not watch.fired
        for seq in range(3):
            late.sendto(_rtp(seq), (host, port))
        for _ in range(50):
            if seen:
                break
            await asyncio.sleep(0.02)
        assert seen == [late.getsockname()[:2]]
    watch.stop()
