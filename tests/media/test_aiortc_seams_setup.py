"""The timing of ICE checks and of the DTLS handshake (softphone.media.aiortc_seams:
fast_setup and dtls, issue 16).

Real aioice connections and real aiortc peer connections on this machine's
addresses. The network faults (a NAT that drops a first check, a lost DTLS
flight) are made by dropping datagrams where they are sent or received.
No test asserts a duration: each fault is made so that only the seam
under test can get the call through within a generous bound (the stock
retransmission would come far later).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import sys
import time
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import aioice
import aioice.ice
import aioice.stun
import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from softphone.media import aiortc_seams
from softphone.media.aiortc_seams import STOCK_SETUP, FastSetup, SeamMismatch, fast_setup
from softphone.media.aiortc_seams.dtls import DtlsFlights
from softphone.media.audiopath import MediaConfig
from softphone.media.tracks import SilenceSource

from ..support.coturn import StartCoturn
from ..support.helpers import both_connected, connect_peers
from ..support.netlab import turn_rest_credentials

#: A retransmission timer that never fires during a test.
NEVER = 60.0


def test_fast_setup_is_checked() -> None:
    assert MediaConfig().fast_setup == FastSetup()
    with pytest.raises(ValueError, match="at least 5 ms"):
        FastSetup(check_pacing=0.001)
    with pytest.raises(ValueError, match="stun_rto"):
        FastSetup(stun_rto=0)
    with pytest.raises(ValueError, match="setup_copies"):
        FastSetup(setup_copies=0)
    with pytest.raises(ValueError, match="dtls_timer"):
        FastSetup(dtls_timer=-1)
    assert STOCK_SETUP.check_pacing is None and not STOCK_SETUP.triggered_checks


@pytest.mark.parametrize(("target", "says"), [
    ("connect", "connectivity checks"), ("check_incoming", "connectivity checks"),
    ("transaction", "STUN transactions"), ("ice_transport", "DTLS transport")])
def test_check_fails_loudly_when_the_internals_move(monkeypatch: pytest.MonkeyPatch,
                                                    target: str, says: str) -> None:
    """Each internal seam 8 relies on is checked by check() (run at install)."""
    aiortc_seams.check()

    def moved(*args: Any, **kwargs: Any) -> None:
        """Stands in for an aioice/aiortc internal that changed."""

    if target == "connect":
        monkeypatch.setattr(aioice.ice.Connection, "connect", moved)
    elif target == "check_incoming":
        monkeypatch.setattr(aioice.ice.Connection, "_find_pair", moved)
    elif target == "transaction":
        # fast_setup's own global: the one its check reads (not the package's name)
        monkeypatch.setattr(fast_setup, "_original_transaction_init", moved)
    else:
        import aiortc
        monkeypatch.setattr(aiortc.RTCIceTransport, "__init__", moved)
    with pytest.raises(SeamMismatch, match=says):
        fast_setup.check_internals()


# -- ICE -----------------------------------------------------------------------------


async def _pair_of_connections(timers_a: FastSetup, timers_b: FastSetup
                               ) -> tuple[aioice.Connection, aioice.Connection]:
    """A (controlling) and B, one host candidate each, told of each other's."""
    a = aioice.Connection(ice_controlling=True, use_ipv6=False)
    b = aioice.Connection(ice_controlling=False, use_ipv6=False)
    for connection, timers in ((a, timers_a), (b, timers_b)):
        assert aiortc_seams.speed_up_ice(connection, timers)
        assert not aiortc_seams.speed_up_ice(connection, timers)  # once
        await connection.gather_candidates()
    for here, there in ((a, b), (b, a)):
        here.remote_username = there.local_username
        here.remote_password = there.local_password
        await here.add_remote_candidate(there.local_candidates[0])
        await here.add_remote_candidate(None)
    return a, b


def _drop_from(receiver: aioice.Connection, sender: aioice.Connection,
               until: Callable[[], bool]) -> None:
    """``receiver``'s socket drops what comes from ``sender`` until ``until()``."""
    protocol = receiver._protocols[0]
    original = protocol.datagram_received
    source = sender.local_candidates[0]

    def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
        if (addr[0], addr[1]) == (source.host, source.port) and not until():
            return
        original(data, addr)

    protocol.datagram_received = datagram_received  # type: ignore[method-assign]


class Sent(list[bytes]):
    """The transaction ids of the Binding requests a connection sent (one per send)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = asyncio.Event()


def _count_checks(connection: aioice.Connection) -> Sent:
    sent = Sent()
    protocol = connection._protocols[0]
    original = protocol.send_stun

    def send_stun(message: aioice.stun.Message, addr: tuple[str, int]) -> None:
        if message.message_class == aioice.stun.Class.REQUEST:
            sent.append(message.transaction_id)
            sent.first.set()
        original(message, addr)

    protocol.send_stun = send_stun  # type: ignore[method-assign]
    return sent


@pytest.mark.parametrize("pacing", [None, 0.005])
async def test_the_peers_check_sends_ours_again_through_its_nat(pacing: float | None) -> None:
    """RFC 8445 section 7.3.1.4 for an In-Progress pair.

    B checks first; A's "NAT" drops it (A has sent nothing to B yet). Then A
    checks B, and B's pair, In-Progress, gets A's check: B sends its check
    again at once (the same transaction) and gets through. B's own
    retransmission would come only after a minute here.
    """
    timers = FastSetup(check_pacing=pacing, stun_rto=NEVER, dtls_timer=None, setup_copies=None)
    a, b = await _pair_of_connections(timers, timers)
    a_sent = _count_checks(a)
    b_sent = _count_checks(b)
    _drop_from(a, b, until=lambda: bool(a_sent))  # A's NAT: open once A sent
    try:
        b_connect = asyncio.ensure_future(b.connect())
        await b_sent.first.wait()  # B's first check went out (and was dropped)
        await asyncio.wait_for(asyncio.gather(a.connect(), b_connect), 20.0)
        assert len(b_sent) == 2 and b_sent[0] == b_sent[1], b_sent  # resent, same transaction
        assert a._nominated and b._nominated
    finally:
        await a.close()
        await b.close()


async def test_without_the_triggered_check_the_nat_holds_the_call() -> None:
    """The counterpart: stock aioice leaves B's In-Progress check to its timer."""
    timers = FastSetup(stun_rto=NEVER, triggered_checks=False, dtls_timer=None,
                       setup_copies=None)
    a, b = await _pair_of_connections(timers, timers)
    a_sent = _count_checks(a)
    b_sent = _count_checks(b)
    _drop_from(a, b, until=lambda: bool(a_sent))
    b_connect = asyncio.ensure_future(b.connect())
    a_connect: asyncio.Future[None] | None = None
    try:
        await b_sent.first.wait()
        a_connect = asyncio.ensure_future(a.connect())
        done, _ = await asyncio.wait({a_connect, b_connect}, timeout=1.0)
        assert b_connect not in done and len(b_sent) == 1
    finally:
        await a.close()
        await b.close()
        await asyncio.gather(b_connect, *([a_connect] if a_connect else []),
                             return_exceptions=True)


async def test_paced_checks_when_candidates_come_later() -> None:
    """connect() with no pair yet (the peer trickles): aioice's loop waits for
    pairs, then hands the checks to the pacer, and the connection completes."""
    timers = FastSetup(stun_rto=NEVER, dtls_timer=None)
    a = aioice.Connection(ice_controlling=True, use_ipv6=False)
    b = aioice.Connection(ice_controlling=False, use_ipv6=False)
    for connection in (a, b):
        aiortc_seams.speed_up_ice(connection, timers)
        await connection.gather_candidates()
    a.remote_username, a.remote_password = b.local_username, b.local_password
    b.remote_username, b.remote_password = a.local_username, a.local_password
    try:
        a_connect = asyncio.ensure_future(a.connect())
        b_connect = asyncio.ensure_future(b.connect())
        await asyncio.sleep(0.1)  # both looping, nothing to check
        assert not a_connect.done() and getattr(a, "_softphone_pacer", None) is None
        await a.add_remote_candidate(b.local_candidates[0])
        await b.add_remote_candidate(a.local_candidates[0])
        for connection in (a, b):
            await connection.add_remote_candidate(None)
        await asyncio.wait_for(asyncio.gather(a_connect, b_connect), 20.0)
        assert a._softphone_pacer is not None  # the pacer took over
        await asyncio.wait_for(a._softphone_pacer, 5.0)  # and stopped: the list is done
    finally:
        await a.close()
        await b.close()


async def test_a_failed_check_list_still_fails() -> None:
    """The pacer stops and connect() raises when every pair failed (the peer
    answers our check with an error)."""
    a = aioice.Connection(ice_controlling=True, use_ipv6=False)
    aiortc_seams.speed_up_ice(a, FastSetup(dtls_timer=None))
    await a.gather_candidates()
    password = "p" * 22
    a.remote_username, a.remote_password = "peer", password
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind((a.local_candidates[0].host, 0))
        peer.setblocking(False)
        loop = asyncio.get_running_loop()

        async def refuse() -> None:
            data, addr = await loop.sock_recvfrom(peer, 2048)
            request = aioice.stun.parse_message(data)
            error = aioice.stun.Message(message_method=request.message_method,
                                        message_class=aioice.stun.Class.ERROR,
                                        transaction_id=request.transaction_id)
            error.attributes["ERROR-CODE"] = (400, "Bad Request")
            error.add_message_integrity(password.encode())
            await loop.sock_sendto(peer, bytes(error), addr)

        refusing = asyncio.ensure_future(refuse())
        await a.add_remote_candidate(aioice.Candidate(
            foundation="x", component=1, transport="udp", priority=1,
            host=a.local_candidates[0].host, port=peer.getsockname()[1], type="host"))
        await a.add_remote_candidate(None)
        try:
            with pytest.raises(ConnectionError):
                await asyncio.wait_for(a.connect(), 20.0)
            await asyncio.wait_for(a._softphone_pacer, 5.0)
            assert refusing.done()
        finally:
            refusing.cancel()
            await a.close()


async def test_the_stun_rto_is_for_setup_requests_only() -> None:
    """Transactions made inside a check get the short timer; consent checks
    (one try: ``retransmissions=0``) and others keep aioice's."""
    aiortc_seams.speed_up_ice(aioice.Connection(ice_controlling=True), FastSetup())
    request = aioice.stun.Message(message_method=aioice.stun.Method.BINDING,
                                  message_class=aioice.stun.Class.REQUEST)

    def made(retransmissions: int | None) -> aioice.stun.Transaction:
        return aioice.stun.Transaction(request, ("192.0.2.1", 9), None,  # type: ignore[arg-type]
                                       retransmissions=retransmissions)

    async def in_a_check() -> tuple[aioice.stun.Transaction, aioice.stun.Transaction]:
        fast_setup._stun_rto.set(0.1)
        return made(None), made(0)

    check, consent = await asyncio.ensure_future(in_a_check())
    outside = made(None)
    assert check._Transaction__timeout_delay == 0.1  # type: ignore[attr-defined]
    assert check._Transaction__tries_max == 9  # type: ignore[attr-defined]
    for stock in (consent, outside):
        assert stock._Transaction__timeout_delay == aioice.stun.RETRY_RTO  # type: ignore[attr-defined]
    assert outside._Transaction__tries_max == 1 + aioice.stun.RETRY_MAX  # type: ignore[attr-defined]
    assert consent._Transaction__tries_max == 1  # type: ignore[attr-defined]


class _Sent:
    """A STUN transaction's protocol that notes what it was asked to send (a fake:
    the transaction alone is under test)."""

    def __init__(self) -> None:
        self.sent: list[float] = []  # (the loop's clock)
        self.log: list[str] = []  # "sent", and what the test notes between

    def send_stun(self, message: aioice.stun.Message, addr: tuple[str, int]) -> None:
        self.sent.append(asyncio.get_running_loop().time())
        self.log.append("sent")


@pytest.mark.parametrize("copies", [0.01, None])
async def test_a_setup_request_goes_twice(copies: float | None) -> None:
    """With ``setup_copies`` a check's request goes a second time 10 ms after the
    first, and not again once answered; without it, once until its timer."""
    request = aioice.stun.Message(message_method=aioice.stun.Method.BINDING,
                                  message_class=aioice.stun.Class.REQUEST)
    aiortc_seams.speed_up_ice(aioice.Connection(ice_controlling=True), FastSetup())
    protocol = _Sent()

    async def in_a_check() -> list[float]:
        fast_setup._stun_rto.set(NEVER)
        fast_setup._stun_copy.set(copies)
        transaction = aioice.stun.Transaction(request, ("192.0.2.1", 9),
                                              protocol)  # type: ignore[arg-type]
        run = asyncio.ensure_future(transaction.run())
        await asyncio.sleep(0.1)
        response = aioice.stun.Message(message_method=aioice.stun.Method.BINDING,
                                       message_class=aioice.stun.Class.RESPONSE,
                                       transaction_id=request.transaction_id)
        protocol.log.append("answered")
        transaction.response_received(response, ("192.0.2.1", 9))
        await run
        await asyncio.sleep(0.05)
        return protocol.sent

    sent = await asyncio.ensure_future(in_a_check())
    # Checked by order, not by a wall-clock bound: the copy went before the answer
    # (its 10 ms timer is due long before the 100 ms the answer waits, and timers
    # run in the order they are due however loaded the machine), none after it.
    if copies is None:
        assert protocol.log == ["sent", "answered"]
    else:
        assert protocol.log == ["sent", "sent", "answered"]
        assert sent[1] - sent[0] >= 0.005, sent  # (a timer never fires early)


class _Udp(asyncio.DatagramProtocol):
    """A real UDP socket that sends STUN as aioice's StunProtocol does."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send_stun(self, message: aioice.stun.Message, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(bytes(message), addr)


async def test_a_setup_request_whose_socket_closed_sends_nothing() -> None:
    """A check or STUN query that outlives its connection (a restart retired it):
    its copy and retransmissions find the socket closed and send nothing, and
    nothing is logged by the loop (it was a traceback in a timer callback)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    transport, udp = await loop.create_datagram_endpoint(_Udp, local_addr=("127.0.0.1", 0))
    request = aioice.stun.Message(message_method=aioice.stun.Method.BINDING,
                                  message_class=aioice.stun.Class.REQUEST)

    async def in_a_check() -> None:
        fast_setup._stun_rto.set(0.02)
        fast_setup._stun_copy.set(0.01)
        transaction = aioice.stun.Transaction(request, ("127.0.0.1", 9), udp)
        run = asyncio.ensure_future(transaction.run())
        await asyncio.sleep(0)
        transport.close()
        await asyncio.sleep(0.15)  # the copy and a few retransmissions were due
        run.cancel()

    try:
        aiortc_seams.speed_up_ice(aioice.Connection(ice_controlling=True), FastSetup())
        await asyncio.ensure_future(in_a_check())
        assert errors == []
    finally:
        loop.set_exception_handler(None)
        transport.close()


# -- DTLS ------------------------------------------------------------------------------


def _flight(data: bytes) -> tuple[int, bytes, int | None]:
    """What a DTLS datagram is: (content type, epoch, handshake type if in the clear)."""
    return data[0], data[3:5], data[13] if data[0] == 22 and data[3:5] == b"\0\0" else None


def _lose_flight(pc: RTCPeerConnection, number: int | None) -> list[bytes]:
    """Lose the ``number``th distinct DTLS datagram ``pc`` sends (None: none), and
    OpenSSL's own retransmissions of it: only a byte-for-byte copy gets through.

    To be installed before the seam, which sends through it. Returns what it lost.
    """
    ice = pc.getTransceivers()[0].sender.transport.transport
    original = ice._send
    distinct: list[bytes] = []
    lost: list[bytes] = []

    async def send(data: bytes) -> None:
        if 19 < data[0] < 64 and data not in distinct:
            distinct.append(data)
            if len(distinct) - 1 == number or \
                    (lost and _flight(data) == _flight(lost[0])):  # OpenSSL resending it
                lost.append(data)
                return
        await original(data)

    ice._send = send
    return lost


@pytest.mark.parametrize(("lost", "server_loses", "client_loses", "copies"), [
    ("the server's hello", 0, None, False),
    ("the server's finished", 1, None, False),
    ("the client's finished", None, 1, False),
    ("the server's hello, with copies", 0, None, True),
    ("the server's finished, with copies", 1, None, True),
])
async def test_a_lost_dtls_flight_is_sent_again(caplog: pytest.LogCaptureFixture, lost: str,
                                                server_loses: int | None,
                                                client_loses: int | None,
                                                copies: bool) -> None:
    """One DTLS handshake flight is lost, and so is every retransmission OpenSSL
    makes of it: the call connects only if we send the flight again byte for byte.

    The offerer is the DTLS server: its flights are ServerHello..Done (#0) and
    ChangeCipherSpec + Finished (#1), after which its handshake is done; only
    the client's flight coming again tells it that #1 was lost. With copies
    (``setup_copies``) and a timer that never fires, only the copy sent 10 ms
    after each datagram gets it through, and the peer does not take that copy
    for its flight sent again.
    """
    caplog.set_level(logging.DEBUG, logger="softphone.media.aiortc_seams")
    a = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    b = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    # (without copies: a copy is byte for byte, and would get through)
    timers = FastSetup(dtls_timer=NEVER, setup_copies=0.01) if copies else \
        FastSetup(dtls_timer=0.1, setup_copies=None)
    try:
        for pc in (a, b):
            pc.addTrack(SilenceSource())
        lost_by = {"server": _lose_flight(a, server_loses), "client": _lose_flight(b, client_loses)}
        for pc in (a, b):
            aiortc_seams.speed_up_setup(pc, timers)
        await connect_peers(a, b)
        assert lost_by["server" if server_loses is not None else "client"], f"{lost} not lost"
        resends = [r.getMessage() for r in caplog.records if "DTLS: sending" in r.getMessage()]
        if copies:
            assert not resends, resends
        else:
            assert resends, "no flight was sent again"
        if server_loses == 1 and not copies:
            assert any("the peer sent its flight again" in m for m in resends), resends
    finally:
        await a.close()
        await b.close()


async def test_dtls_flights_step_aside_once_media_flows() -> None:
    """Once both handshakes are done and SRTP arrived, the ICE transport's own
    send and receive are back (nothing of ours on the media path)."""
    a = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    b = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        originals = []
        for pc in (a, b):
            pc.addTrack(SilenceSource())
            ice = pc.getTransceivers()[0].sender.transport.transport
            originals.append((ice, ice._send, ice._recv))
            aiortc_seams.speed_up_setup(pc, FastSetup())
            assert ice._send != originals[-1][1]
        await connect_peers(a, b)
        for _ in range(200):
            if all(ice._send == send and ice._recv == recv for ice, send, recv in originals):
                break
            await asyncio.sleep(0.02)
        for ice, send, recv in originals:
            assert ice._send == send and ice._recv == recv
    finally:
        await a.close()
        await b.close()



def test_a_flight_left_unsent_when_the_loop_closes_leaves_no_coroutine_behind(
        caplog: pytest.LogCaptureFixture) -> None:
    """(Adapter test, fake transports.) A flight sent again from a timer just as the
    loop stops (a call torn down at a program's end) never runs: that must not leave
    a never-awaited coroutine for the garbage collector to warn about in whatever
    runs next (it failed an unrelated test in CI), nor a "Task was destroyed but it
    is pending" line in the log (a datagram never sent at the end is no loss)."""

    class Ice:
        async def _send(self, data: bytes) -> None:
            raise AssertionError("never sent: the loop stops first")

        async def _recv(self) -> bytes:
            return b""

    class Dtls:
        encrypted = False
        state = "connecting"

        def __init__(self) -> None:
            self.transport = Ice()

    loop = asyncio.new_event_loop()
    try:
        flights = DtlsFlights(Dtls(), 0.05)
        flights.flight = [b"\x16\xfe\xfd"]
        loop.call_soon(flights.resend, "a test")  # makes the task; its first step...
        loop.call_soon(loop.stop)  # ...would come after the loop stops
        loop.run_forever()
        assert len(flights.tasks) == 1
        task = weakref.ref(next(iter(flights.tasks)))
    finally:
        loop.close()
    caught: list[Any] = []
    hook = sys.unraisablehook
    sys.unraisablehook = caught.append
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            del flights, loop  # (the closed loop still holds the task's first step)
            gc.collect()
    finally:
        sys.unraisablehook = hook
    assert not caught, [u.exc_value for u in caught]
    assert not [w for w in warned if "never awaited" in str(w.message)], warned
    assert task() is None  # collected with the rest, not kept until the program exits
    assert not [r for r in caplog.records if "destroyed" in r.getMessage()], caplog.text


# -- gathering ---------------------------------------------------------------------------


async def test_a_relay_candidate_ends_the_wait_for_a_dead_stun_server(
        coturn: StartCoturn, caplog: pytest.LogCaptureFixture) -> None:
    """UDP blocked: the STUN server never answers, the TURN server (over TCP) does.
    Once the relay candidate is there, gathering stops waiting for STUN (it used to
    wait for the gathering timeout)."""
    caplog.set_level(logging.DEBUG, logger="softphone.media.aiortc_seams")
    turn = coturn()
    username, credential = turn_rest_credentials(turn.secret, "seam", time.time() + 600)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dead:
        dead.bind(("127.0.0.1", 0))  # receives STUN requests, never answers
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[
            RTCIceServer(urls=f"stun:127.0.0.1:{dead.getsockname()[1]}"),
            RTCIceServer(urls=f"turn:127.0.0.1:{turn.port}?transport=tcp",
                         username=username, credential=credential)]))
        pc.addTrack(SilenceSource())
        aiortc_seams.limit_gathering(pc, 30.0)
        aiortc_seams.speed_up_setup(pc, FastSetup(stun_after_relay=0.05))
        try:
            await asyncio.wait_for(pc.setLocalDescription(await pc.createOffer()), 20.0)
            assert " typ relay" in pc.localDescription.sdp
            assert " typ srflx" not in pc.localDescription.sdp
            assert any("going on with the relay" in r.getMessage() for r in caplog.records)
        finally:
            await pc.close()


# -- the DTLS role of the answer -----------------------------------------------------------


async def test_the_callee_answers_as_the_dtls_server() -> None:
    """An offer that leaves the role to us (actpass) is answered ``passive``: the
    caller is the DTLS client, and the call connects."""
    a = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    b = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        for pc in (a, b):
            pc.addTrack(SilenceSource())
        await a.setLocalDescription(await a.createOffer())
        assert "a=setup:actpass" in a.localDescription.sdp
        await b.setRemoteDescription(a.localDescription)
        assert aiortc_seams.answer_as_dtls_server(b, a.localDescription.sdp)
        await b.setLocalDescription(await b.createAnswer())
        assert "a=setup:passive" in b.localDescription.sdp
        await a.setRemoteDescription(b.localDescription)
        await both_connected(a, b)
        roles = [pc.getTransceivers()[0].receiver.transport._role for pc in (a, b)]
        assert roles == ["client", "server"]
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("setup", ["active", "passive"])
async def test_an_offer_that_chose_its_dtls_role_keeps_it(setup: str) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTrack(SilenceSource())
        offer = f"v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=setup:{setup}\r\n"
        assert not aiortc_seams.answer_as_dtls_server(pc, offer)
        assert pc.getTransceivers()[0].receiver.transport._role == "auto"
    finally:
        await pc.close()


class _StunServer(asyncio.DatagramProtocol):
    """Answers STUN binding requests, except the first ``drop`` it gets."""

    def __init__(self, drop: int) -> None:
        self.drop = drop
        self.requests = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request = aioice.stun.parse_message(data)
        self.requests += 1
        if self.requests <= self.drop:
            return
        response = aioice.stun.Message(message_method=request.message_method,
                                       message_class=aioice.stun.Class.RESPONSE,
                                       transaction_id=request.transaction_id)
        response.attributes["XOR-MAPPED-ADDRESS"] = addr
        assert self.transport is not None
        self.transport.sendto(bytes(response), addr)


@pytest.mark.parametrize(("stun_rto", "copies"), [(0.1, None), (None, None), (NEVER, 0.01)],
                         ids=["retransmitted", "stock", "copy"])
async def test_a_lost_stun_request_is_sent_again_within_the_gathering(
        stun_rto: float | None, copies: float | None) -> None:
    """Our first request to the STUN server is lost. Retransmitted after 0.1 s, or
    its copy sent 10 ms after it (no retransmission timer firing), it is answered
    within a 0.4 s gathering; aioice would send it again after 0.5 s, once
    gathering is over (the counterpart: no server-reflexive candidate)."""
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(
        lambda: _StunServer(drop=1), local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(f"stun:127.0.0.1:{port}")]))
    try:
        pc.addTrack(SilenceSource())
        aiortc_seams.limit_gathering(pc, 0.4)
        aiortc_seams.speed_up_setup(pc, FastSetup(stun_rto=stun_rto, setup_copies=copies))
        await pc.setLocalDescription(await pc.createOffer())
        if stun_rto is None:
            assert " typ srflx" not in pc.localDescription.sdp and server.requests == 1
        else:
            assert " typ srflx" in pc.localDescription.sdp and server.requests == 2
    finally:
        await pc.close()
        transport.close()
