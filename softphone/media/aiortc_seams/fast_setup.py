"""Call setup time (issue 16): the ICE timing of one peer connection.

:func:`speed_up_setup` gives a peer connection the timing of its
:class:`FastSetup`, by patching its aioice ``Connection`` (instance
attributes: other connections keep aioice's timing) and a few of aioice's
module functions, which act only for a connection that was sped up:

- connectivity checks paced at 5 ms instead of aioice's 20 ms
  ``connect()`` loop (which also noticed the end of the checks only at its
  next tick): ``Connection._check_periodic``;
- the STUN requests of checks and gathering retransmitted after 0.1 s
  instead of 0.5 s (consent checks keep aioice's): ``check_start`` and
  ``aioice.stun.Transaction.__init__``;
- the triggered check of RFC 8445 section 7.3.1.4 for an In-Progress pair
  (the peer's check resends ours at once, instead of aioice waiting 0.5 s
  after its first was dropped by the peer's NAT): ``check_incoming``;
- no more waiting for a STUN server once a TURN server gave a relay
  candidate: ``aioice.ice.server_reflexive_candidate`` and
  ``relayed_candidate``.

The DTLS half (handshake flights sent again after 0.1 s, the callee as DTLS
server) is in :mod:`.dtls`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import aioice
import aioice.ice
import aioice.stun

from softphone.media.aiortc_seams.dtls import DtlsFlights
from softphone.media.aiortc_seams.dtls import check_internals as check_dtls_internals
from softphone.media.aiortc_seams.gathering import (
    gathering_connection,
    install_gathering,
    stock_get_component_candidates,
)
from softphone.media.aiortc_seams.pinned import SeamMismatch, getsource

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class FastSetup:
    """How fast one peer connection's ICE and DTLS set up (:func:`speed_up_setup`,
    :func:`.dtls.answer_as_dtls_server`; :attr:`MediaConfig.fast_setup
    <softphone.media.audiopath.MediaConfig.fast_setup>` of a call).

    ``None`` / ``False`` keeps aiortc's, aioice's or OpenSSL's own: :data:`STOCK_SETUP`.
    """

    #: Seconds between starting two connectivity checks: RFC 8445's Ta, at
    #: least 5 ms (aioice: 20 ms, and it noticed the end of the checks only at
    #: its next 20 ms tick).
    check_pacing: float | None = 0.005
    #: First retransmission of a STUN request made to set the call up,
    #: doubling (aioice: 0.5 s): connectivity checks, and while gathering the
    #: binding request to the STUN server and the requests to a TURN server
    #: over UDP. Consent checks (RFC 7675, one try each) keep aioice's timing.
    stun_rto: float | None = 0.1
    #: A check from the peer on a pair whose own check is under way sends ours
    #: again at once (RFC 8445 section 7.3.1.4): the first one was most likely
    #: dropped by the peer's NAT, which the peer's check has just opened.
    triggered_checks: bool = True
    #: First retransmission of a DTLS handshake flight, doubling up to
    #: :data:`.dtls.DTLS_TIMER_MAX` (OpenSSL: 1 s; RFC 9147 section 5.8.2 suggests 100 ms).
    dtls_timer: float | None = 0.1
    #: Once a TURN server gave us a relay candidate, seconds more to wait for
    #: the STUN server's answer (at least as long as the relay took): a STUN
    #: server behind blocked UDP held the gathering to its timeout (1 s) when
    #: the relay, over TCP, was there in a few round trips.
    stun_after_relay: float | None = 0.05
    #: Answer an offer's ``a=setup:actpass`` with ``passive``: we, the callee,
    #: are the DTLS server. The caller's checks open its NAT to ours, so it
    #: finishes ICE first and, as the DTLS client, starts the handshake at
    #: once: its first audio comes a round trip sooner. (RFC 8842 lets the
    #: answerer choose; JSEP's "SHOULD" is active, as aiortc answers.)
    dtls_server_answers: bool = True
    #: Send each setup datagram a second time this many seconds after the first:
    #: the STUN requests timed by ``stun_rto`` (checks, the query to the STUN
    #: server) and each DTLS handshake datagram (with ``dtls_timer``). One lost
    #: datagram then costs nothing instead of a retransmission timer; the peer drops
    #: the copy (the response to a STUN transaction already answered is ignored;
    #: a DTLS record seen already fails its replay check). A few hundred bytes a call.
    setup_copies: float | None = 0.01

    def __post_init__(self) -> None:
        if self.check_pacing is not None and self.check_pacing < 0.005:
            raise ValueError("the check pacing (Ta) must be at least 5 ms (RFC 8445)")
        for name in ("stun_rto", "dtls_timer", "stun_after_relay", "setup_copies"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 seconds")


#: aioice's and OpenSSL's own timing (stock aiortc).
STOCK_SETUP: Final = FastSetup(check_pacing=None, stun_rto=None, triggered_checks=False,
                               dtls_timer=None, stun_after_relay=None,
                               dtls_server_answers=False, setup_copies=None)
_SPED_UP_ATTR: Final = "_softphone_fast_setup"
_RELAY_READY_ATTR: Final = "_softphone_relay_ready"
_original_transaction_init: Any = None
_original_srflx_candidate: Any = None
#: The first retransmission of a STUN transaction made in this task (a check's, or
#: gathering's); None: aioice's.
_stun_rto: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "softphone_stun_rto", default=None)
#: ... and when it sends its request a second time (FastSetup.setup_copies).
_stun_copy: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "softphone_stun_copy", default=None)


@contextlib.contextmanager
def _stun_timing(rto: float | None, copies: float | None = None) -> Iterator[None]:
    """STUN transactions made inside (and in tasks started inside) retransmit after
    ``rto`` and send a copy after ``copies`` (None: aioice's own timing, no copy)."""
    token, copy_token = _stun_rto.set(rto), _stun_copy.set(copies)
    try:
        yield
    finally:
        _stun_copy.reset(copy_token)
        _stun_rto.reset(token)


def check_internals() -> None:
    """Raise :class:`SeamMismatch` if aioice's checks, STUN transactions or gathering,
    or aiortc's DTLS role or transport (:mod:`.dtls`), changed."""
    connect = getsource(aioice.ice.Connection.connect)
    connection = getsource(aioice.ice.Connection)
    transaction = getsource(_original_transaction_init or
                            aioice.stun.Transaction.__init__)
    if "if not self._check_periodic():" not in connect or \
            "await asyncio.sleep(0.02)" not in connect or \
            "res = await self._check_list_state.get()" not in connect or \
            "pair.task = asyncio.create_task(self.check_start(pair))" not in connection or \
            connection.count("self.check_incoming(") != 2 or \
            "if pair.state == CandidatePair.State.WAITING:" not in connection or \
            list(inspect.signature(aioice.ice.Connection._find_pair).parameters) != \
            ["self", "protocol", "remote_candidate"] or \
            "self.transactions: dict[bytes, stun.Transaction] = {}" not in \
            getsource(aioice.ice.StunProtocol.__init__):
        raise SeamMismatch("aioice's connectivity checks changed")
    if list(inspect.signature(aioice.stun.Transaction.__init__).parameters)[:5] != \
            ["self", "request", "addr", "protocol", "retransmissions"] or \
            any(line not in transaction for line in (
                "self.__addr = addr", "self.__request = request",
                "self.__protocol = protocol",
                "self.__timeout_delay = RETRY_RTO", "self.__tries_max = 1 + (",
                "self.__future: asyncio.Future")):
        raise SeamMismatch("aioice's STUN transactions changed")
    if "self.__protocol.send_stun(self.__request, self.__addr)" not in \
            getsource(aioice.stun.Transaction):
        raise SeamMismatch("aioice's STUN transactions no longer send with send_stun")
    srflx = _original_srflx_candidate or aioice.ice.server_reflexive_candidate
    gather = getsource(stock_get_component_candidates())
    if list(inspect.signature(srflx).parameters) != ["protocol", "stun_server"] or \
            "server_reflexive_candidate(protocol, self.stun_server)" not in gather or \
            "relayed_candidate(" not in gather or \
            "done, pending = await asyncio.wait(tasks, timeout=timeout)" not in gather:
        raise SeamMismatch("aioice no longer gathers with server_reflexive_candidate / "
                           "relayed_candidate tasks")
    check_dtls_internals()


#: :func:`check_internals` once a process (what installs the seams, and
#: ``aiortc_seams.check()`` at import, call): it reads aioice's source, some 50 ms that
#: must not fall inside the first call's setup. A failure is not remembered.
checked = functools.cache(check_internals)


def speed_up_setup(pc: Any, setup: FastSetup) -> None:
    """Give ``pc``'s ICE checks and DTLS handshake the timing of ``setup``.

    For a peer connection whose transceivers are added (its transports exist);
    once per transport (a second call changes nothing). Other peer
    connections, and this one's consent checks, keep aioice's timing.
    """
    for transceiver in pc.getTransceivers():
        dtls = transceiver.sender.transport
        if speed_up_ice(dtls.transport._connection, setup) and setup.dtls_timer is not None:
            DtlsFlights(dtls, setup.dtls_timer, setup.setup_copies)


def speed_up_ice(connection: aioice.Connection, setup: FastSetup) -> bool:
    """The ICE part of :func:`speed_up_setup`, for an aioice ``Connection`` (before
    its ``connect()``). False if it was done already."""
    if getattr(connection, _SPED_UP_ATTR, None) is not None:
        return False
    setattr(connection, _SPED_UP_ATTR, setup)
    if setup.check_pacing is not None:
        _pace_checks(connection, setup.check_pacing)
    if setup.stun_rto is not None:
        _time_checks(connection, setup.stun_rto, setup.setup_copies)
    if setup.triggered_checks:
        _trigger_checks(connection)
    if setup.stun_after_relay is not None or setup.stun_rto is not None:
        _install_gathering_seams()
    return True


def _pace_checks(connection: Any, pacing: float) -> None:
    """Start a check every ``pacing`` seconds, and let connect() return as soon as
    the check list is done: aioice's connect() loop sleeps 20 ms between checks,
    and noticed success or failure only at its next tick.

    Once there are pairs to check, connect()'s loop is told to stop (it then
    waits for the result, as it would at its end), and a task of ours starts
    the checks instead, with aioice's own ``_check_periodic``.
    """
    periodic = connection._check_periodic
    handed_over = False

    async def pace() -> None:
        while True:
            await asyncio.sleep(pacing)
            if not periodic():
                return

    def check_periodic() -> bool:
        nonlocal handed_over
        if handed_over or not connection._check_list:
            return bool(periodic())  # nothing to check yet: aioice's loop goes on
        handed_over = True
        if periodic():
            connection._softphone_pacer = asyncio.ensure_future(pace())
        return False

    connection._check_periodic = check_periodic


def _time_checks(connection: Any, rto: float, copies: float | None) -> None:
    """The STUN transactions of ``connection``'s checks retransmit after ``rto``,
    doubling, and send their request again ``copies`` seconds after the first."""
    _install_transaction_rto()
    check_start = connection.check_start

    async def timed_check_start(pair: Any) -> None:
        with _stun_timing(rto, copies):  # the check runs in a task of its own
            await check_start(pair)

    connection.check_start = timed_check_start


def _install_transaction_rto() -> None:
    global _original_transaction_init
    if _original_transaction_init is not None:
        return
    original = aioice.stun.Transaction.__init__
    _original_transaction_init = original
    stock_tries = 1 + aioice.stun.RETRY_MAX

    @functools.wraps(original)
    def __init__(self: Any, request: Any, addr: Any, protocol: Any,
                 retransmissions: int | None = None, *args: Any, **kwargs: Any) -> None:
        original(self, request, addr, protocol, retransmissions, *args, **kwargs)
        rto = _stun_rto.get()
        if rto is not None and retransmissions is None:
            self._Transaction__timeout_delay = rto
            # Give up about when aioice would (0.1 s: 9 tries over 51 s, aioice 7 over 64 s).
            extra = max(0, int(math.log2(aioice.stun.RETRY_RTO / rto)))
            self._Transaction__tries_max = stock_tries + extra
            if protocol is not None:
                self._Transaction__protocol = _ClosedAware(protocol)
            copy = _stun_copy.get()
            if copy is not None:  # (weak: no cycle through the transaction, issue 15)
                self.run = functools.partial(_run_with_copy, weakref.ref(self), copy)

    aioice.stun.Transaction.__init__ = __init__  # type: ignore[method-assign]



class _ClosedAware:
    """A setup transaction's sender that sends nothing once its socket is closed.

    A STUN query or check can outlive its connection (a media restart retiring a
    generation closes it mid-gathering): its retransmission, or its copy, would
    then hit the closed transport in a timer callback, and asyncio would log a
    traceback.
    """

    __slots__ = ("protocol",)

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol

    def send_stun(self, message: Any, addr: tuple[str, int]) -> None:
        # (asyncio's transports say; aioice's TURN transport has no is_closing)
        closing = getattr(getattr(self.protocol, "transport", None), "is_closing", None)
        if closing is not None and closing():
            return
        try:
            self.protocol.send_stun(message, addr)
        except (OSError, AttributeError) as exc:  # (asyncio's, on a transport torn down)
            log.debug("STUN request not sent: %r", exc)


async def _run_with_copy(ref: weakref.ref[Any], after: float) -> Any:
    """A STUN transaction's ``run()`` that also sends its request again ``after``
    seconds after the first (unless answered by then)."""
    transaction = ref()
    assert transaction is not None  # (whoever runs it holds it)
    handle = asyncio.get_running_loop().call_later(after, _send_copy, transaction)
    try:
        return await type(transaction).run(transaction)
    finally:
        handle.cancel()


def _send_copy(transaction: Any) -> None:
    if not transaction._Transaction__future.done():
        transaction._Transaction__protocol.send_stun(transaction._Transaction__request,
                                                     transaction._Transaction__addr)


def _retrieved_when_done() -> None:
    """Mark the running gathering task's exception as retrieved when it ends.

    aioice reads the result of each candidate task it waited for, but when the
    gathering itself is cancelled (a connection closed while gathering: a media
    restart retiring a generation), a STUN or TURN query it started goes on, fails
    on the closed socket and would be logged as "Task exception was never
    retrieved". The exception still reaches aioice when it does wait.
    """
    task = asyncio.current_task()
    if task is not None:
        task.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _install_gathering_seams() -> None:
    """For connections whose :class:`FastSetup` say so: the requests to the STUN
    server and to a TURN server over UDP retransmit after ``stun_rto``; STUN and
    TURN servers are asked at once, and once the relay candidate is there, the
    STUN answer is waited for only ``stun_after_relay`` (or as long as the
    relay took) more."""
    global _original_srflx_candidate
    if _original_srflx_candidate is not None:
        return
    checked()
    install_gathering()  # its wrapper tells which connection a relay is for
    _install_transaction_rto()
    srflx = _original_srflx_candidate = aioice.ice.server_reflexive_candidate
    relayed = aioice.ice.relayed_candidate  # with the TURN error seam around it

    def relay_ready(connection: Any) -> asyncio.Event:
        event = getattr(connection, _RELAY_READY_ATTR, None)
        if event is None:
            event = asyncio.Event()
            setattr(connection, _RELAY_READY_ATTR, event)
        return event

    @functools.wraps(srflx)
    async def server_reflexive_candidate(protocol: Any, stun_server: Any) -> Any:
        _retrieved_when_done()
        connection = protocol.receiver
        timers = getattr(connection, _SPED_UP_ATTR, None)
        if timers is None:
            return await srflx(protocol, stun_server)
        with _stun_timing(timers.stun_rto, timers.setup_copies):  # the query's task inherits it
            query = asyncio.ensure_future(srflx(protocol, stun_server))
        grace = timers.stun_after_relay
        if grace is None or connection.turn_server is None:
            return await query
        loop = asyncio.get_running_loop()
        started = loop.time()
        relay = asyncio.ensure_future(relay_ready(connection).wait())
        try:
            await asyncio.wait({query, relay}, return_when=asyncio.FIRST_COMPLETED)
            if not query.done():
                await asyncio.wait({query}, timeout=max(grace, loop.time() - started))
            if not query.done():
                log.debug("no answer from STUN server %s:%s; going on with the relay",
                          *stun_server)
                raise TimeoutError("no STUN answer (a relay candidate is there)")
            return query.result()
        finally:
            for task in (query, relay):
                task.cancel()

    @functools.wraps(relayed)
    async def relayed_candidate(**kwargs: Any) -> Any:
        _retrieved_when_done()
        connection = gathering_connection.get()
        timers = getattr(connection, _SPED_UP_ATTR, None)
        # Over TCP or TLS a request is not retransmitted (RFC 8489 section 6.2.2).
        rto = timers.stun_rto if timers is not None and \
            kwargs.get("turn_transport", "udp") == "udp" and not kwargs.get("turn_ssl") else None
        with _stun_timing(rto):  # the allocation and its refreshes
            result = await relayed(**kwargs)
        if connection is not None:
            relay_ready(connection).set()
        return result

    aioice.ice.server_reflexive_candidate = server_reflexive_candidate
    aioice.ice.relayed_candidate = relayed_candidate


def _trigger_checks(connection: Any) -> None:
    """RFC 8445 section 7.3.1.4 for a pair whose check is In-Progress: send it again now.

    aioice starts a triggered check for a Frozen, Waiting or Failed pair, but
    left an In-Progress one to its retransmission timer (0.5 s). The usual
    case: our first check was dropped by the peer's NAT, which had no mapping
    for us yet; the peer's check through it has just made one.
    """
    check_incoming = connection.check_incoming

    def triggered_check_incoming(message: Any, addr: tuple[str, int], protocol: Any) -> None:
        pair = None
        for candidate in connection._remote_candidates:
            if candidate._network_host == addr[0] and candidate.port == addr[1]:
                pair = connection._find_pair(protocol, candidate)
                break
        if pair is not None and pair.state == aioice.ice.CandidatePair.State.IN_PROGRESS:
            for transaction in list(pair.protocol.transactions.values()):
                if transaction._Transaction__addr == pair.remote_addr and \
                        not transaction._Transaction__future.done():
                    log.debug("ICE: the peer's check on %s sends ours again", pair)
                    pair.protocol.send_stun(transaction._Transaction__request,
                                            pair.remote_addr)
                    break
        check_incoming(message, addr, protocol)

    connection.check_incoming = triggered_check_incoming
