"""Connections whose request head has not arrived yet, sans I/O (slowloris).

A connection holds a file descriptor from accept on, but the hub's connection
limits (:class:`~softphone.hub.limits.ConnectionLimiter`) count only WebSocket
upgrades, once their head is read. :class:`PendingHeads` counts the connections
in between, per remote address and in total, and decides what happens to a new
one; :class:`~softphone.hub.dispatch.HeadGate` applies it (and the head timeout,
absolute from accept). A real client sends its head at once, so at any moment it
has a head in flight for about a round trip: the caps only bind on a client that
holds connections open without finishing them.

- Per address (:data:`PER_ADDRESS`): a new connection from an address that
  already has that many heads pending is refused (closed at once). Not applied to
  a trusted proxy (``--trusted-proxy``), whose address is that of all the clients
  behind it until their head names them; they still count in the total.
- In total (``max_connections`` / :data:`TOTAL_SHARE`): a new connection past it
  is taken, and the *oldest* pending one closed to make room. A slow head is far
  more likely to be an attacker's than a newcomer is, and an attacker spread over
  many addresses can then no longer keep real clients out: to close a real
  client's connection before its head arrives (a round trip), it would have to
  open the whole cap's worth of connections within that round trip.

Each refusal comes with whether to log it: the first one of its episode, which
ends once the address (or the hub) is back to half its cap.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

#: Request heads pending from one address (0: unlimited). A browser loading a page
#: opens at most 6 connections to a host at once, each sending its head right away.
PER_ADDRESS: Final = 16
#: Request heads pending in total: this share of ``max_connections``.
TOTAL_SHARE: Final = 8

K = TypeVar("K", bound=Hashable)


class HeadRefusal(enum.StrEnum):
    """Why a connection without its request head is closed."""

    PER_ADDRESS = "too many connections without a request head from this address"
    TOTAL = "too many connections without a request head"


@dataclass(frozen=True, slots=True)
class HeadCaps:
    """How many request heads may be pending (0: unlimited)."""

    per_address: int = PER_ADDRESS
    total: int = 0

    @classmethod
    def for_limits(cls, max_connections: int, max_per_address: int) -> HeadCaps:
        """The caps of a hub with these connection limits (0: unlimited, here too)."""
        per_address = PER_ADDRESS if max_per_address else 0
        total = max(PER_ADDRESS, max_connections // TOTAL_SHARE) if max_connections else 0
        return cls(per_address, total)


@dataclass(frozen=True, slots=True)
class HeadDecision(Generic[K]):
    """What happens on a new connection (:meth:`PendingHeads.open`)."""

    #: The new connection is refused (closed at once, not counted), and why.
    refused: HeadRefusal | None = None
    #: The connection closed to make room for the new one (already forgotten).
    evicted: K | None = None
    #: Log this: the first refusal (or eviction) of its episode.
    alarm: HeadRefusal | None = None


class PendingHeads(Generic[K]):
    """The connections still without a request head, each by a key (the adapter's
    connection object) and its remote address, oldest first."""

    __slots__ = ("_alarmed", "_by_address", "_full", "_order", "caps")

    def __init__(self, caps: HeadCaps) -> None:
        self.caps = caps
        self._order: dict[K, str] = {}  # (insertion order: oldest first)
        self._by_address: dict[str, int] = {}
        #: Addresses whose refusal was logged, until they are back to half the cap.
        self._alarmed: set[str] = set()
        self._full = False

    def __len__(self) -> int:
        return len(self._order)

    def count(self, address: str) -> int:
        return self._by_address.get(address, 0)

    def open(self, key: K, address: str, exempt: bool = False) -> HeadDecision[K]:
        """A new connection ``key`` from ``address`` (``exempt``: a trusted proxy,
        not held to the per-address cap): count it, or say why not."""
        caps = self.caps
        if caps.per_address and not exempt and self.count(address) >= caps.per_address:
            alarm = address not in self._alarmed
            self._alarmed.add(address)
            return HeadDecision(HeadRefusal.PER_ADDRESS,
                                alarm=HeadRefusal.PER_ADDRESS if alarm else None)
        evicted: K | None = None
        alarm = False
        if caps.total and len(self._order) >= caps.total:
            evicted = next(iter(self._order))
            self.close(evicted)
            alarm = not self._full
            self._full = True
        self._order[key] = address
        self._by_address[address] = self.count(address) + 1
        return HeadDecision(evicted=evicted, alarm=HeadRefusal.TOTAL if alarm else None)

    def close(self, key: K) -> None:
        """``key`` is gone or has its head (nothing if it is not counted)."""
        address = self._order.pop(key, None)
        if address is None:
            return
        left = self._by_address[address] - 1
        if left:
            self._by_address[address] = left
        else:
            del self._by_address[address]
        if self._alarmed and left <= self.caps.per_address // 2:
            self._alarmed.discard(address)
        if self._full and len(self._order) <= self.caps.total // 2:
            self._full = False
