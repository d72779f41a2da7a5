"""Is the media path alive? Three probes for media restart (issue 16).

:class:`softphone.core.restart.RestartMachine` decides when to restart a call's
media; these tell it what the network does (``docs/protocol.md``, "Media
restart and hold", the trigger table):

- :func:`probe_path`: one STUN binding request on the selected ICE candidate
  pair, as a consent check (RFC 7675) is made, answered or not within about
  0.5 s: feeds :class:`~softphone.core.restart_events.ProbeResult`
  (the machine's ``path-dead``).
- :class:`RemoteAddressWatch`: the peer's media arriving from another address
  than the selected pair's (its NAT rebound, and what we send to the old
  address is lost): feeds :class:`~softphone.core.restart_events.RemoteAddressChanged`.
- :class:`LocalAddresses`: the machine's addresses, polled every 0.5 s and, on
  Linux, re-read at once when the kernel announces a change (netlink): feeds
  :class:`~softphone.core.restart_events.AddressesChanged`. One per phone.

aiortc/aioice internals used here, and only here (aiortc 1.16, aioice 0.13,
pinned in pyproject.toml; :func:`check_internals` fails loudly if they move):
``RTCIceTransport._connection`` (the aioice ``Connection``), its
``_nominated`` pairs (the selected pair per component), its
``_remote_candidates`` (the peer's, signalled or learned), and its public
``build_request``/``remote_password`` and ``StunProtocol.request`` (what its
own consent checks use). :class:`RemoteAddressWatch` replaces one
``StunProtocol`` instance's ``datagram_received`` by a wrapper (an instance
attribute: other connections are untouched) and puts it back on :meth:`stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any, Final

import aioice
import aioice.ice
import aioice.stun
import ifaddr

from softphone.core.restart_events import AddressesChanged

log = logging.getLogger(__name__)

__all__ = [
    "PROBE_TIMEOUT", "LocalAddresses", "RemoteAddressWatch", "address_present",
    "check_internals", "host_addresses", "ice_connection", "probe_path", "selected_pair",
    "usable_address",
]

#: Seconds a probe waits for its answer (aioice's first STUN retransmission time:
#: a consent check that gets no answer by then is one aioice counts as lost).
PROBE_TIMEOUT: Final = aioice.stun.RETRY_RTO


class SeamMoved(RuntimeError):
    """The aioice/aiortc internals this module relies on changed."""


def check_internals() -> None:
    """Raise :class:`SeamMoved` if aioice no longer has what this module uses."""
    connection = aioice.ice.Connection
    consent = inspect.getsource(connection.query_consent)
    if "self._nominated" not in inspect.getsource(connection.sendto) or \
            "self.build_request(pair, nominate=False)" not in consent or \
            "pair.protocol.request(" not in consent or \
            list(inspect.signature(aioice.ice.StunProtocol.request).parameters)[:5] != \
            ["self", "request", "addr", "integrity_key", "retransmissions"] or \
            "def datagram_received" not in inspect.getsource(aioice.ice.StunProtocol) or \
            "self._remote_candidates" not in inspect.getsource(connection.check_incoming):
        raise SeamMoved("aioice's consent checks or selected pair changed: "
                        "softphone/media/pathcheck.py needs a look")


# ------------------------------------------------------------- the path ---


def ice_connection(session: Any) -> Any:
    """The aioice ``Connection`` under a session's (or peer connection's) audio, or None."""
    pc = getattr(session, "pc", session)
    try:
        transceivers = pc.getTransceivers()
    except Exception:  # a closed or half-built peer connection
        return None
    for transceiver in transceivers:
        dtls = transceiver.sender.transport
        return getattr(getattr(dtls, "transport", None), "_connection", None)
    return None


def selected_pair(connection: Any) -> Any:
    """The aioice ``CandidatePair`` that carries component 1, or None (not connected,
    or closed: aioice then forgets its pairs)."""
    nominated = getattr(connection, "_nominated", None)
    if not nominated:
        return None
    return nominated.get(1) or nominated[min(nominated)]


async def probe_path(session: Any, wait: float = PROBE_TIMEOUT) -> bool:
    """Send one connectivity check on the selected pair; True if the peer answered
    within ``wait`` seconds (at most aioice's first retransmission time, 0.5 s).

    The request is the one aioice's consent checks send (authenticated with the
    peer's ICE password), sent once and not retransmitted. An error answer (a
    role conflict, say) is an answer too: the path carries packets both ways.
    False when there is no selected pair (not connected yet, or closed).
    """
    connection = ice_connection(session)
    pair = selected_pair(connection)
    password = getattr(connection, "remote_password", None)
    if pair is None or password is None:
        return False
    try:
        request = connection.build_request(pair, nominate=False)
        await asyncio.wait_for(pair.protocol.request(
            request, pair.remote_addr, integrity_key=password.encode("utf8"),
            retransmissions=0), wait)
    except aioice.stun.TransactionFailed:
        return True
    except (aioice.stun.TransactionError, TimeoutError):
        return False
    except (OSError, AttributeError, ConnectionError) as exc:  # its socket is closed
        log.debug("path probe could not be sent: %s", exc)
        return False
    return True


def _is_media(data: bytes) -> bool:
    """RTP/RTCP (first byte 128-191) or DTLS (20-63), RFC 7983; not STUN (0-3)."""
    return bool(data) and (127 < data[0] < 192 or 19 < data[0] < 64)


class RemoteAddressWatch:
    """Calls ``on_change(address)`` once when the peer's media packets keep arriving
    from an address other than the selected pair's remote one.

    ``packets`` media packets in a row from one new address, with none from the
    expected address between them, count (5: 100 ms of audio; a stray packet or
    a late check from another of the peer's candidates does not). What it costs
    per packet is one Python call and a compare of the source address; anything
    else happens only on a mismatch. The pair is read when :meth:`start` is
    called (after the connection is up); if aioice later selects another pair of
    the same socket, a packet from its address updates the expectation.

    Media from another of the candidates the peer signalled is no move either:
    aioice nominates aggressively (every check the controlling side sends
    nominates), so in the first moments after connecting either side may switch
    to a later pair that succeeded, and the peer then sends from its other
    candidate (a relayed caller and a callee its relay reaches directly: from
    the callee's host candidate, then its relay one). A NAT that rebinds gives
    an address the peer never signalled.
    """

    def __init__(self, session: Any, on_change: Callable[[tuple[str, int]], None],
                 packets: int = 5) -> None:
        self._session = session
        self._on_change = on_change
        self._needed = max(1, packets)
        self._protocol: Any = None
        self._connection: Any = None
        self._expected: tuple[str, int] = ("", 0)
        self._stranger: tuple[str, int] | None = None
        self._known: set[tuple[str, int]] = set()
        self._count = 0
        self.fired = False

    @property
    def watching(self) -> bool:
        return self._protocol is not None

    def start(self) -> bool:
        """Watch the selected pair's socket; False if there is none (yet)."""
        if self._protocol is not None:
            return True
        connection = ice_connection(self._session)
        pair = selected_pair(connection)
        if pair is None:
            return False
        protocol = pair.protocol
        if "datagram_received" in vars(protocol):
            log.warning("another watch is on %r already", protocol)
            return False
        host, port = pair.remote_addr
        self._expected = (host, port)
        self._connection = connection
        self._known = self._candidates(prflx=True)
        original = protocol.datagram_received  # the class's, bound
        expected_host, expected_port = host, port

        def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
            nonlocal expected_host, expected_port
            if addr[1] != expected_port or addr[0] != expected_host:
                moved = self._mismatch(data, addr)
                if moved is not None:
                    expected_host, expected_port = moved
            elif self._count:
                self._count = 0
            original(data, addr)

        protocol.datagram_received = datagram_received
        self._protocol = protocol
        log.debug("watching the peer's address %s:%s", host, port)
        return True

    def _mismatch(self, data: bytes, addr: tuple[Any, ...]) -> tuple[str, int] | None:
        """A packet from elsewhere. Returns a new expected address if aioice's
        selected pair now points there."""
        source = (str(addr[0]), int(addr[1]))
        pair = selected_pair(self._connection)
        if pair is not None and pair.remote_addr == source:
            self._expected = source  # aioice moved to it itself (a triggered check)
            self._count = 0
            return source
        if self.fired or source in self._known or not _is_media(data):
            return None
        if source in self._signalled():  # (remembered: the peer may send from it for
            self._known.add(source)  # the whole call, 50 packets a second)
            return None
        if source != self._stranger:
            self._stranger, self._count = source, 0
        self._count += 1
        if self._count >= self._needed:
            self.fired = True
            log.info("the peer's media comes from %s:%s, not %s:%s", *source,
                     *self._expected)
            self._on_change(source)
        return None

    def _signalled(self) -> set[tuple[str, int]]:
        """The peer's candidates: those it signalled, and every one known when the
        connection came up (aioice keeps a candidate first learned from a check as
        peer reflexive when it is signalled afterwards, as a trickling browser's may
        be). Not a peer reflexive one learned since: a NAT that rebound."""
        return self._known | self._candidates(prflx=False)

    def _candidates(self, *, prflx: bool) -> set[tuple[str, int]]:
        found = getattr(self._connection, "_remote_candidates", None) or []
        return {(str(getattr(c, "_network_host", c.host)), int(c.port))
                for c in found if prflx or c.type != "prflx"}

    def stop(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            with contextlib.suppress(AttributeError):
                del protocol.datagram_received  # back to the class's


# ------------------------------------------------- the machine's addresses ---


def usable_address(address: str) -> bool:
    """Not loopback, not link-local: an address a call's path may use."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_link_local or ip.is_unspecified)


def host_addresses() -> frozenset[str]:
    """This machine's usable IPv4 and IPv6 addresses (``getifaddrs`` via ifaddr)."""
    found: set[str] = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            address = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            if usable_address(address):
                found.add(address)
    return frozenset(found)


def address_present(address: str) -> bool:
    """Whether ``address`` is still one of this machine's (it can be bound)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


#: rtnetlink multicast groups: IPv4 and IPv6 address changes (linux/rtnetlink.h).
_RTMGRP_IPV4_IFADDR: Final = 0x10
_RTMGRP_IPV6_IFADDR: Final = 0x100


def _netlink_socket() -> socket.socket | None:
    """A socket the kernel tells of address changes (Linux), or None."""
    family = getattr(socket, "AF_NETLINK", None)
    if family is None:
        return None
    try:
        sock = socket.socket(family, socket.SOCK_RAW, getattr(socket, "NETLINK_ROUTE", 0))
        sock.bind((0, _RTMGRP_IPV4_IFADDR | _RTMGRP_IPV6_IFADDR))
        sock.setblocking(False)
    except OSError as exc:
        log.debug("no netlink address notices: %s", exc)
        return None
    return sock


Listener = Callable[[AddressesChanged], None]


class LocalAddresses:
    """The machine's usable addresses, and who to tell when they change.

    :meth:`start` reads them (the baseline, :attr:`current`), then every
    ``interval`` seconds, and on Linux also at once when the kernel announces an
    address change. Each change (an address gone or a new one) calls every
    listener with :class:`~softphone.core.restart_events.AddressesChanged` of the
    whole new set. A new call's restart machine is given :attr:`current` first
    (its baseline), then subscribes. ``read`` replaces the reading (tests).
    """

    def __init__(self, interval: float = 0.5,
                 read: Callable[[], frozenset[str]] = host_addresses,
                 notices: bool = True) -> None:
        self.interval = interval
        self._read = read
        self._notices = notices
        self.current: frozenset[str] = frozenset()
        self._listeners: list[Listener] = []
        self._timer: asyncio.TimerHandle | None = None
        self._soon: asyncio.TimerHandle | None = None
        self._netlink: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        return self._loop is not None

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` on each change; returns what unsubscribes it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)
        return unsubscribe

    def start(self) -> None:
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self.current = self._read_safely(self.current)
        if self._notices:
            self._netlink = _netlink_socket()
            if self._netlink is not None:
                self._loop.add_reader(self._netlink.fileno(), self._on_notice)
        self._timer = self._loop.call_later(self.interval, self._tick)

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        for handle in (self._timer, self._soon):
            if handle is not None:
                handle.cancel()
        self._timer = self._soon = None
        if self._netlink is not None:
            if loop is not None and not loop.is_closed():
                loop.remove_reader(self._netlink.fileno())
            self._netlink.close()
            self._netlink = None

    def check(self) -> bool:
        """Read the addresses now; tell the listeners if they changed (True then)."""
        now = self._read_safely(self.current)
        if now == self.current:
            return False
        gone, new = self.current - now, now - self.current
        self.current = now
        log.info("local addresses changed: gone %s, new %s", sorted(gone) or "-",
                 sorted(new) or "-")
        event = AddressesChanged(now)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("an address listener failed")
        return True

    def _read_safely(self, fallback: frozenset[str]) -> frozenset[str]:
        try:
            return self._read()
        except OSError as exc:
            log.debug("cannot read the local addresses: %s", exc)
            return fallback

    def _tick(self) -> None:
        if self._loop is None:
            return
        self._timer = self._loop.call_later(self.interval, self._tick)
        self.check()

    def _on_notice(self) -> None:
        sock = self._netlink
        if sock is None or self._loop is None:
            return
        with contextlib.suppress(OSError):
            while sock.recv(65536):  # drain: one read of the addresses covers them all
                pass
        if self._soon is None:  # (a batch of changes comes as several notices)
            self._soon = self._loop.call_later(0.02, self._notice_due)

    def _notice_due(self) -> None:
        self._soon = None
        self.check()
