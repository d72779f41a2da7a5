"""The events :class:`softphone.core.adapt.Adaptation` takes, in plain units; sans I/O.

Each carries the time it happened (``now``, seconds, the caller's clock).
:func:`rtt_from_lsr` turns an RTCP report's LSR/DLSR into a round-trip time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: The longest RTT believed (seconds).
MAX_RTT: Final = 60.0
_NTP_WRAP: Final = 1 << 32


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    """An RTCP report block about our stream, in plain units (the controller checks it)."""

    now: float
    fraction_lost: float  # 0..1 since the peer's previous report
    cumulative_lost: int
    highest_seq: int  # extended highest sequence number received
    jitter: float = 0.0  # seconds
    rtt: float | None = None  # seconds; None when the report echoes no SR of ours

    @classmethod
    def from_rtcp(cls, now: float, fraction_lost: int, packets_lost: int,
                  highest_sequence: int, jitter: int, lsr: int, dlsr: int,
                  arrival_ntp: int, clock_rate: int = 48_000) -> ReceiverReport:
        """From the raw fields (``fraction_lost`` the 8-bit fixed point, ``jitter`` in
        timestamp units) and the 64-bit NTP time the report arrived."""
        return cls(now=now, fraction_lost=fraction_lost / 256.0, cumulative_lost=packets_lost,
                   highest_seq=highest_sequence, jitter=jitter / clock_rate,
                   rtt=rtt_from_lsr(arrival_ntp, lsr, dlsr))


@dataclass(frozen=True, slots=True)
class LossFeedback:
    """Our own figures: ``lost`` of the ``expected`` packets since the previous feedback."""

    now: float
    lost: int
    expected: int
    rtt: float | None = None


@dataclass(frozen=True, slots=True)
class BurstReport:
    """The mean run of consecutive lost packets the peer saw (0: none lost yet)."""

    now: float
    length: float


@dataclass(frozen=True, slots=True)
class BandwidthCap:
    """What the path takes (bit/s, e.g. a REMB or TWCC estimate); None lifts the cap."""

    now: float
    bitrate: float | None


Event = ReceiverReport | LossFeedback | BurstReport | BandwidthCap


def rtt_from_lsr(arrival_ntp: int, lsr: int, dlsr: int) -> float | None:
    """RFC 3550 6.4.1: RTT = A - LSR - DLSR, in seconds (None without an SR echoed).

    ``arrival_ntp``: the 64-bit NTP time the report arrived; ``lsr``, ``dlsr``:
    the report's fields (middle 32 bits of NTP, and 1/65536 s). A small
    negative result (rounding) is 0; None if it is far off.
    """
    if lsr == 0:
        return None
    a = (arrival_ntp >> 16) & 0xFFFFFFFF
    diff = (a - lsr - dlsr) % _NTP_WRAP
    if diff >= _NTP_WRAP // 2:
        diff -= _NTP_WRAP
    rtt = diff / 65536.0
    if rtt < -0.01 or rtt > MAX_RTT:
        return None
    return max(0.0, rtt)
