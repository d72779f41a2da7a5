"""The DTLS handshake of call setup (the DTLS half of :mod:`.fast_setup`).

- :func:`answer_as_dtls_server` sets the callee's ``RTCDtlsTransport`` role
  to server before aiortc's ``createAnswer`` (which answers with the
  transport's role), so the caller, done with ICE first, starts the
  handshake.
- :class:`DtlsFlights` replaces an ``RTCIceTransport``'s ``_send``/``_recv``
  (through which aiortc's DTLS transport talks) during the handshake, to
  send our handshake flights again after 0.1 s instead of OpenSSL's 1 s.
- :func:`release_closed` lets go of a closed connection's OpenSSL connection
  and SRTP sessions at once, not when the garbage collector frees the call.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
from typing import Any, Final

import aiortc

from softphone._tasks import spawn_kept
from softphone.media.aiortc_seams.pinned import SeamMismatch, getsource
from softphone.media.aiortc_seams.teardown import parts_of

log = logging.getLogger(__name__)

#: Our DTLS resends stop once the timer would exceed this; OpenSSL's own go on.
DTLS_TIMER_MAX: Final = 0.8


def check_internals() -> None:
    """Raise :class:`SeamMismatch` if aiortc's DTLS role or transport changed."""
    answer = getsource(aiortc.RTCPeerConnection.createAnswer)
    if 'if dtlsTransport._role == "auto":' not in answer or \
            "media.dtls.role = dtlsTransport._role" not in answer or \
            "def _set_role(self, role: str)" not in getsource(aiortc.RTCDtlsTransport):
        raise SeamMismatch("aiortc no longer answers with its DTLS transport's role")
    ice = getsource(aiortc.RTCIceTransport.__init__)
    dtls = getsource(aiortc.RTCDtlsTransport)
    if "self._recv = self._connection.recv" not in ice or \
            "self._send = self._connection.send" not in ice or \
            "await self.transport._send(data)" not in dtls or \
            "self.transport._recv()" not in dtls or "self.encrypted = True" not in dtls:
        raise SeamMismatch("aiortc's DTLS transport no longer sends and receives "
                           "through its ICE transport's _send/_recv")
    if any(needle not in dtls for needle in _RELEASED_NEEDLES):
        raise SeamMismatch("aiortc's DTLS transport no longer keeps its OpenSSL connection "
                           "and SRTP sessions as release_closed expects")


#: What :func:`release_closed` relies on: the three attributes, and that the
#: transport uses them only while it connects or is connected (it sends nothing
#: otherwise; "closed" is set as its receive task ends).
_RELEASED_NEEDLES: Final = (
    "self._ssl = SSL.Connection(", "self._rx_srtp = Session(rx_policy)",
    "self._tx_srtp = Session(tx_policy)",
    'raise ConnectionError("Cannot send encrypted RTP, not connected")',
    'raise ConnectionError("Cannot send encrypted data, not connected")',
    "if self._ssl and self._state in [State.CONNECTING, State.CONNECTED]:",
    "finally:\n            self._set_state(State.CLOSED)",
)


def release_closed(pc: Any) -> int:
    """Let go of the OpenSSL connection and SRTP sessions of ``pc``'s DTLS transports
    that are over ("closed" or "failed"); how many it let go of.

    aiortc keeps them as long as the transport, and a closed call's transports
    are in reference cycles with the rest of its objects, so only the cyclic
    garbage collector frees them: in a bot answering call after call that was
    some 60 ended calls at a time, about 170 kB each (mostly OpenSSL's, in C),
    and the C heap grew and fragmented (issue 15: RSS +22 % from 30 to 300
    calls). :class:`~softphone.media.rtc.MediaSession` calls this once its peer
    connection is closed (and then :func:`.teardown.unlink_closed`, which cuts those
    cycles; this one frees the C state even while something holds the connection).
    """
    released = 0
    for part in parts_of(pc):
        if not isinstance(part, aiortc.RTCDtlsTransport):
            continue
        dtls: Any = part  # (its private attributes)
        if dtls.state in ("closed", "failed") and (
                dtls._ssl is not None or dtls._rx_srtp is not None):
            dtls._ssl = dtls._rx_srtp = dtls._tx_srtp = None
            released += 1
    return released


def answer_as_dtls_server(pc: Any, offer_sdp: str) -> bool:
    """Before ``pc`` answers ``offer_sdp``: take the DTLS server role, if the offer
    leaves it to us (``a=setup:actpass``); see
    :attr:`~softphone.media.aiortc_seams.fast_setup.FastSetup.dtls_server_answers`.
    Whether it did."""
    roles = set(re.findall(r"^a=setup:(\w+)", offer_sdp, re.M))
    if roles != {"actpass"}:
        return False
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        if dtls._role == "auto":
            dtls._set_role("server")
    return True


class DtlsFlights:
    """Sends a DTLS transport's handshake flights again sooner than OpenSSL (1 s).

    It watches the datagrams the transport sends and receives through its ICE
    transport until the handshake is over both ways (ours done, and the
    peer's SRTP or SRTCP arrived), then steps aside. A flight is what we sent
    since we last received something new. It is sent again, byte for byte:

    - when nothing new arrived ``timer`` seconds after it, doubling, while
      our handshake is not done (up to :data:`DTLS_TIMER_MAX`; OpenSSL's own
      retransmissions go on as before);
    - when the peer sends again what it had sent (it did not hear us), even
      after our handshake is done: our last flight (the server's Finished) may
      have been lost, and a flight sent again byte for byte is discarded by
      the peer's replay check, so OpenSSL would not answer it.

    With ``copies`` (seconds), each handshake datagram also goes a second time
    that long after the first, so one lost datagram costs no timer at all. A
    copy from the peer (the same bytes within ``timer / 2``) is not the peer
    sending its flight again.
    """

    def __init__(self, dtls: Any, timer: float, copies: float | None = None) -> None:
        self.dtls = dtls
        self.ice = dtls.transport
        self.timer = timer
        self.copies = copies
        self.delay = timer
        self.flight: list[bytes] = []
        self.answered = True  # something new arrived since our last flight
        self.seen: dict[bytes, float] = {}  # DTLS datagrams received: first seen at
        self.handle: asyncio.TimerHandle | None = None
        self.resent_at = -math.inf
        self.tasks: set[asyncio.Task[None]] = set()
        self.original_send = self.ice._send
        self.original_recv = self.ice._recv
        self.ice._send = self.send
        self.ice._recv = self.recv

    async def send(self, data: bytes) -> None:
        if data and 19 < data[0] < 64:  # DTLS (RFC 7983)
            if self.answered:
                self.flight, self.answered, self.delay = [], False, self.timer
            if len(self.flight) < 16:
                self.flight.append(data)
            if self.handle is None and not self.dtls.encrypted:
                self.handle = asyncio.get_running_loop().call_later(self.delay, self.expired)
            if self.copies is not None:
                asyncio.get_running_loop().call_later(self.copies, self._copy, data)
        await self.original_send(data)

    async def recv(self) -> bytes:
        data: bytes = await self.original_recv()
        if data and 19 < data[0] < 64:
            now = asyncio.get_running_loop().time()
            first = self.seen.get(data)
            if first is None:
                self.seen[data] = now
                self.answered = True
                self.cancel()
            elif not self.answered and now - first >= self.timer / 2 and \
                    now - self.resent_at >= self.timer / 2:
                self.resend("the peer sent its flight again")
        elif data and 127 < data[0] < 192 and self.dtls.encrypted:  # SRTP/SRTCP: done
            self.ice._send, self.ice._recv = self.original_send, self.original_recv
            self.cancel()
            self.seen.clear()
            self.flight = []
        return data

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def expired(self) -> None:
        self.handle = None
        if self.answered or self.dtls.encrypted or self.dtls.state != "connecting":
            return
        self.resend(f"no answer in {self.delay * 1000:.0f} ms")
        self.delay *= 2
        if self.delay <= DTLS_TIMER_MAX:
            self.handle = asyncio.get_running_loop().call_later(self.delay, self.expired)

    def _copy(self, data: bytes) -> None:
        if self.ice._send == self.send:  # (not once we stepped aside)
            spawn_kept(self.tasks, functools.partial(self._send_all, [data]))

    def resend(self, why: str) -> None:
        log.debug("DTLS: sending our last flight again (%s)", why)
        self.resent_at = asyncio.get_running_loop().time()
        spawn_kept(self.tasks, functools.partial(self._send_all, list(self.flight)))

    async def _send_all(self, flight: list[bytes]) -> None:
        for data in flight:
            try:
                await self.original_send(data)
            except ConnectionError:
                return
