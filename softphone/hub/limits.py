"""The hub's limits and bookkeeping, sans I/O: every decision is a pure function of
its inputs and of ``now`` (seconds, any monotonic clock), so each is unit-tested
without sockets. :mod:`softphone.hub.server` and :mod:`softphone.hub.admission` apply them.

- :class:`TokenBucket`: per-connection message rate.
- :class:`ConnectionLimiter`: connections in total and per remote address.
- :class:`OriginPolicy`: which browser origins may open a WebSocket (and read the
  HTTP routes), and which ``Host`` names the hub trusts as its own.
- :class:`Notices`: which refusals the log tells of (rate-limited).
- :class:`CallPairs`: who is in a call with whom, from the messages relayed, and
  which peer to tell ``peer-disconnected`` when one side leaves for good.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from softphone.core.protocol import MessageType

#: A token short by less than this is a whole one: rounding must not refuse the message
#: that comes exactly :meth:`TokenBucket.delay` after a refusal (the hub reads it then).
_ROUNDING: Final = 1e-9


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; one token per message.

    ``rate <= 0`` means unlimited.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self._tokens = self.burst
        self._last = now

    def allow(self, now: float) -> bool:
        """Take a token if there is one."""
        if self.rate <= 0:
            return True
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._last = now
        if self._tokens >= 1.0 - _ROUNDING:
            self._tokens = max(0.0, self._tokens - 1.0)
            return True
        return False

    def delay(self, now: float) -> float:
        """Seconds from ``now`` until a token is available (0 if one is)."""
        if self.rate <= 0:
            return 0.0
        tokens = min(self.burst, self._tokens + max(0.0, now - self._last) * self.rate)
        return 0.0 if tokens >= 1.0 - _ROUNDING else (1.0 - tokens) / self.rate


class Refusal(enum.StrEnum):
    """Why a connection is not opened."""

    TOTAL = "the hub is full"
    PER_ADDRESS = "too many connections from this address"


class ConnectionLimiter:
    """Counts open connections in total and per remote address. 0 = no limit."""

    def __init__(self, max_total: int = 0, max_per_address: int = 0) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.total = 0
        self._by_address: dict[str, int] = {}

    def check(self, address: str) -> Refusal | None:
        """Why a new connection from ``address`` would be refused (None: it fits).

        Counts nothing: :meth:`open` does."""
        if self.max_total and self.total >= self.max_total:
            return Refusal.TOTAL
        if self.max_per_address and self._by_address.get(address, 0) >= self.max_per_address:
            return Refusal.PER_ADDRESS
        return None

    def open(self, address: str) -> Refusal | None:
        """Count a new connection from ``address``, or say why it is refused."""
        refusal = self.check(address)
        if refusal is None:
            self.total += 1
            self._by_address[address] = self._by_address.get(address, 0) + 1
        return refusal

    def close(self, address: str) -> None:
        """Forget one connection from ``address`` (one that :meth:`open` counted)."""
        count = self._by_address.get(address, 0)
        if count <= 0:
            return
        self.total -= 1
        if count == 1:
            del self._by_address[address]
        else:
            self._by_address[address] = count - 1

    def count(self, address: str) -> int:
        return self._by_address.get(address, 0)


def _origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` in lower case, default ports dropped; None if not a URL."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if not scheme or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(scheme)
    if port is None or port == default:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _host_name(host: str) -> str | None:
    """The name or address of a ``Host`` header (``name[:port]``, ``[v6][:port]``): lower
    case, without port, brackets or a trailing dot; None if it is not one."""
    if _is_address(host.strip()):  # (an IPv6 address without brackets)
        return host.strip().lower()
    try:
        parts = urlsplit(f"//{host.strip()}")
        _ = parts.port  # (raises on a port that is not one)
    except ValueError:
        return None
    name = (parts.hostname or "").rstrip(".")
    if not name or parts.path or parts.query or parts.fragment or parts.username is not None:
        return None
    return name


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class OriginPolicy:
    """Browser origins allowed to open a WebSocket.

    A request without ``Origin`` is not from a browser page and is allowed; so is
    every origin in ``allowed`` (``*`` allows any). A page served by the hub itself
    (same scheme, host and port as the ``Host`` header) is allowed only when that
    host cannot be *rebound* (:meth:`trusts_host`): a page of a domain whose DNS
    an attacker points at the hub's address would otherwise pass as the hub's own
    (DNS rebinding), and drive the hub from the browsers of its users.
    """

    allowed: frozenset[str] = field(default_factory=frozenset)
    #: The machine's own names (its host name, which the hub gives at start):
    #: a LAN user may open ``http://myhost:8080/``. An attacker cannot rebind them.
    own_names: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_list(cls, origins: Iterable[str], own_names: Iterable[str] = ()) -> OriginPolicy:
        out: set[str] = set()
        for origin in origins:
            if origin.strip() == "*":
                out.add("*")
                continue
            normal = _origin_of(origin)
            if normal is None:
                raise ValueError(f"{origin!r} is not an origin: use scheme://host[:port]")
            out.add(normal)
        names = {name for name in map(_host_name, own_names) if name}
        return cls(frozenset(out), frozenset(names))

    @functools.cached_property
    def _names(self) -> frozenset[str]:
        """The names a ``Host`` header may give: the machine's, and those of ``allowed``."""
        declared = (urlsplit(origin).hostname for origin in self.allowed if origin != "*")
        return self.own_names | {name.rstrip(".") for name in declared if name}

    def trusts_host(self, host: str) -> bool:
        """May the ``Host`` header ``host`` name the hub's own origin? Only if it cannot
        be rebound: an IP address, ``localhost`` (``*.localhost``: browsers resolve
        them to loopback themselves), the machine's own name, or a name the operator
        declared (the host of an ``allowed`` origin)."""
        name = _host_name(host)
        if name is None:
            return False
        return (_is_address(name) or name == "localhost" or name.endswith(".localhost")
                or name in self._names)

    def allows(self, origin: str | None, hub_origin: str) -> bool:
        """May a page from ``origin`` use the hub whose own origin is ``hub_origin``?"""
        if origin is None:
            return True
        if "*" in self.allowed:
            return True
        normal = _origin_of(origin)
        if normal is None:
            return False
        return normal == _origin_of(hub_origin) or normal in self.allowed

    def allows_at(self, origin: str | None, host: str, tls: bool) -> bool:
        """May a page from ``origin`` use the hub reached at ``host`` (its ``Host``
        header), over TLS or not? ``host`` gives the hub's own origin only if the
        hub trusts it (:meth:`trusts_host`). A plain hub's own page may also come
        over https (a TLS proxy in front of it serves https://HOST, server/README.md);
        never the other way: an http:// page does not get at a TLS hub."""
        if not self.trusts_host(host):
            return self.allows(origin, "")  # (no own origin: ``allowed`` alone)
        if self.allows(origin, f"{'https' if tls else 'http'}://{host}"):
            return True
        return not tls and self.allows(origin, f"https://{host}")

    def serves_pages_at(self, host: str) -> bool:
        """May the hub serve its phone page under ``host`` (the ``Host`` header)? Only
        where that page's WebSocket would be allowed: a page under another name
        would be refused, so it is refused at once, saying why (:meth:`refusal`)."""
        return "*" in self.allowed or self.trusts_host(host)

    def refusal(self, origin: str, host: str, tls: bool) -> str:
        """One line for the log on a refused ``origin`` (a page served under ``host``,
        the ``Host`` header): what the operator adds to allow it."""
        normal = _origin_of(origin)
        if normal is None:
            return f"origin {origin[:100]!r} refused: not an origin (scheme://host[:port])"
        if urlsplit(normal).hostname == _host_name(host) and not self.trusts_host(host):
            return (f"origin {normal} refused: a page served under a name needs "
                    f"--allow-origin {normal} (the Host header gives the hub's own origin "
                    f"only as an IP address, localhost or this machine's name: DNS rebinding)")
        return (f"origin {normal} refused: not the hub's own origin; a page there needs "
                f"--allow-origin {normal}")

    def own_origin(self, host: str, tls: bool) -> str:
        """The origin of a page served under ``host`` (the ``Host`` header)."""
        return _origin_of(f"{'https' if tls else 'http'}://{host}") or \
            f"{'https' if tls else 'http'}://{host.strip()[:100]}"


class Notices:
    """Which refusals the log tells of, so a page retrying (or a flood of origins)
    does not fill it: each ``key`` at most once per ``interval`` seconds, and at
    most ``rate`` a second over all keys (bursts of ``burst``); at most ``max_keys``
    keys remembered. ``now``: seconds, any monotonic clock."""

    def __init__(self, interval: float = 60.0, rate: float = 1.0, burst: float = 10.0,
                 max_keys: int = 1000) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._rate = rate
        self._burst = burst
        self._bucket: TokenBucket | None = None
        self._said: dict[str, float] = {}

    def say(self, key: str, now: float) -> bool:
        """True if the refusal of ``key`` is to be logged now."""
        last = self._said.get(key)
        if last is not None and now - last < self.interval:
            return False
        if len(self._said) >= self.max_keys:
            self._said = {k: t for k, t in self._said.items() if now - t < self.interval}
            if len(self._said) >= self.max_keys:
                return False
        if self._bucket is None:
            self._bucket = TokenBucket(self._rate, self._burst, now)
        if not self._bucket.allow(now):
            return False
        self._said[key] = now
        return True


@dataclass(frozen=True, slots=True)
class PeerGone:
    """``peer`` should be told that ``gone`` left the call for good."""

    gone: str
    peer: str


#: The call messages (:data:`~softphone.core.protocol.CALL_TYPES`) that end a call or
#: the attempt at one; the others start or answer one.
CALL_ENDS: Final = frozenset({MessageType.HANGUP, MessageType.CALL_REJECT})


#: Calls (and requests) one id may have at once in :class:`CallPairs`.
MAX_PEERS: Final = 1000


class CallPairs:
    """Who is in a call with whom, as seen from the messages the hub relays.

    ``call-request`` from A to B notes that A is calling B; ``call-accept`` from B
    to A then pairs them (an accept nobody asked for pairs nobody).
    ``hangup`` / ``call-reject`` between them unpair them. A client may be in
    several calls at once (a bot answering many callers: ``--max-calls``), each
    pair on its own. When a paired client disconnects, :meth:`disconnected`
    starts a grace period; if it comes back (:meth:`connected`) in time nothing
    happens, else :meth:`due` returns whom to tell: every peer it was in a call
    with. Bounded: at most :data:`MAX_PEERS` requests and calls per id.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._calling: dict[str, set[str]] = {}
        self._peers: dict[str, set[str]] = {}
        self._gone: dict[str, float] = {}

    def __len__(self) -> int:
        """Calls in progress."""
        return sum(len(peers) for peers in self._peers.values()) // 2

    def peer_of(self, client_id: str) -> str | None:
        """One peer ``client_id`` is in a call with (None: none)."""
        return min(self._peers.get(client_id, ()), default=None)

    def peers_of(self, client_id: str) -> frozenset[str]:
        return frozenset(self._peers.get(client_id, ()))

    def relayed(self, type_: str, sender: str, to: str) -> bool:
        """Note a message the hub delivered; True if a call started or ended."""
        if type_ == MessageType.CALL_REQUEST:
            calling = self._calling.setdefault(sender, set())
            if len(calling) < MAX_PEERS:
                calling.add(to)
            return False
        if type_ == MessageType.CALL_ACCEPT:
            if sender not in self._calling.get(to, ()):
                return False
            self._discard(self._calling, to, sender)
            if to in self._peers.get(sender, ()):
                return False
            if (len(self._peers.get(sender, ())) >= MAX_PEERS
                    or len(self._peers.get(to, ())) >= MAX_PEERS):
                return False
            self._peers.setdefault(sender, set()).add(to)
            self._peers.setdefault(to, set()).add(sender)
            return True
        if type_ in CALL_ENDS:
            self._discard(self._calling, sender, to)
            self._discard(self._calling, to, sender)
            if to in self._peers.get(sender, ()):
                self._unpair(sender, to)
                return True
        return False

    @staticmethod
    def _discard(table: dict[str, set[str]], key: str, value: str) -> None:
        values = table.get(key)
        if values is not None:
            values.discard(value)
            if not values:
                del table[key]

    def _unpair(self, a: str, b: str) -> None:
        self._discard(self._peers, a, b)
        self._discard(self._peers, b, a)
        for side in (a, b):
            if side not in self._peers:
                self._gone.pop(side, None)

    def connected(self, client_id: str) -> None:
        """``client_id`` is (back) on the hub: its grace period, if any, is over."""
        self._gone.pop(client_id, None)

    def disconnected(self, client_id: str, now: float,
                     grace: float | None = None) -> float | None:
        """``client_id`` left; returns when to call :meth:`due` if it was in a call.

        ``grace``: how long it may stay away (default: the table's ``grace``)."""
        self._calling.pop(client_id, None)
        if client_id not in self._peers:
            return None
        deadline = now + (self.grace if grace is None else grace)
        self._gone[client_id] = deadline
        return deadline

    def due(self, now: float) -> list[PeerGone]:
        """Calls whose disconnected side did not come back in time (and forget them).

        When both sides of a call are gone, only the first to be due is reported."""
        out: list[PeerGone] = []
        for gone, deadline in list(self._gone.items()):
            if deadline > now or gone not in self._gone:
                continue
            for peer in sorted(self._peers.get(gone, ())):
                self._unpair(gone, peer)
                out.append(PeerGone(gone, peer))
            self._gone.pop(gone, None)
        return out

    def next_deadline(self) -> float | None:
        return min(self._gone.values(), default=None)
