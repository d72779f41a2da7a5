"""The packets the jitter buffer holds (see :mod:`.jitterbuffer`), sans I/O.

Kept by unwrapped RTP timestamp, in order, with when each arrived and which
were filled from a RED copy rather than their own packet.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Final

_WRAP: Final = 1 << 32
_HALF: Final = 1 << 31


@dataclass(slots=True)
class PacketStore:
    """Payloads by unwrapped timestamp; the buffer decides what goes in and out."""

    #: The last unwrapped timestamp (None: nothing seen yet in this stream).
    ref: int | None = None
    _packets: dict[int, bytes] = field(default_factory=dict)
    _keys: list[int] = field(default_factory=list)  # sorted: the next one after a hole
    _arrivals: dict[int, float] = field(default_factory=dict)
    _repaired: set[int] = field(default_factory=set)  # frames filled from a RED copy

    def unwrap(self, timestamp: int) -> int:
        """A 32-bit timestamp as a number that keeps growing past the wrap
        (the nearest to the last one, either way)."""
        if self.ref is None:
            self.ref = timestamp
            return timestamp
        diff = (timestamp - self.ref) % _WRAP
        if diff >= _HALF:
            diff -= _WRAP
        self.ref += diff
        return self.ref

    def add(self, ts: int, payload: bytes, arrived: float, repaired: bool = False) -> None:
        """Hold a frame (``repaired``: from a copy, its own packet may still come)."""
        self._packets[ts] = payload
        self._arrivals[ts] = arrived
        bisect.insort(self._keys, ts)
        if repaired:
            self._repaired.add(ts)

    def take(self, ts: int) -> bytes:
        """The frame's payload, no longer held."""
        self._keys.remove(ts)
        self._arrivals.pop(ts, None)
        self._repaired.discard(ts)
        return self._packets.pop(ts)

    def drop_oldest(self) -> None:
        self.take(self._keys[0])

    def original_came(self, ts: int) -> bool:
        """The frame's own packet came: True if its copy had filled it (it was late,
        not lost); from now on another packet for it is a duplicate."""
        if ts in self._repaired:
            self._repaired.discard(ts)
            return True
        return False

    def clear(self) -> None:
        """Forget every frame and the timestamp reference (a new stream)."""
        self._packets.clear()
        self._arrivals.clear()
        self._repaired.clear()
        self._keys.clear()
        self.ref = None

    def __contains__(self, ts: int) -> bool:
        return ts in self._packets

    def __len__(self) -> int:
        return len(self._keys)

    def payload(self, ts: int) -> bytes:
        return self._packets[ts]

    def arrival(self, ts: int) -> float | None:
        """When the frame held at ``ts`` arrived (None: not held)."""
        return self._arrivals.get(ts)

    @property
    def oldest(self) -> int:
        """The earliest timestamp held (IndexError if none)."""
        return self._keys[0]

    @property
    def newest(self) -> int:
        """The latest timestamp held (IndexError if none)."""
        return self._keys[-1]

    def after(self, ts: int) -> int | None:
        """The first timestamp held after ``ts`` (None: none)."""
        keys = self._keys
        return keys[bisect.bisect_right(keys, ts)] if keys and keys[-1] > ts else None

    def reach(self, start: int, frame: int) -> int:
        """Samples from ``start`` to the end of the newest frame held (0 if none)."""
        return max(0, self._keys[-1] + frame - start) if self._keys else 0
