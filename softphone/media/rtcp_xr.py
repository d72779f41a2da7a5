"""What our receiver tells the sender about loss and delay: RTCP XR (RFC 3611), sans I/O.

An RTCP receiver report comes every 0.5-1.5 s (aiortc's timer) and says
how many packets were lost, not whether they went one at a time or six in a
row. The sender needs both sooner and more: a clean call sends no
redundancy, and every frame lost before it turns redundancy on is
concealed, which costs more than the redundancy would have (PESQ-WB 0.2
for one frame); and RED copies of the frame just before repair single
losses, only copies further back repair bursts (:mod:`softphone.core.adapt`).

So the receiver counts its stream's losses from RTP sequence numbers
(:class:`LossRuns`) and sends an XR packet with two blocks:

- **Statistics summary** (RFC 3611 4.6): the packets lost between two
  sequence numbers, since the previous XR: the sender's loss figure, in
  intervals that do not overlap. Besides riding on each receiver report,
  an XR goes out at once (reduced-size RTCP, RFC 5506) when a loss follows
  a clean stretch, so the sender can react within a round trip.
- **VoIP metrics** (RFC 3611 4.7) with ``Gmin`` 1 (a burst ends at the
  first packet received): a burst is a run of lost packets, and the burst
  duration over the packet duration is the run's length. One departure
  from the RFC, which averages over the whole session: our burst duration
  is, over the packets lost in the last ``window`` seconds (10), the mean
  length of the run each was lost in (sum of squared runs over sum of
  runs), so a path that turns from random loss to bursts shows within
  seconds. A second departure: its end system delay is only what the
  reporting end adds on the way to its ear (jitter buffer and speaker:
  :mod:`softphone.media.delay`), not the RFC's whole endpoint (its sending
  too), so that our sender can add it to its own sending and the network
  (a monitor reading it as the RFC's reads our delay low by our sending
  part; a non-softphone peer that sends the RFC's makes our sum read high
  by its sending part). Fields we do not measure carry the RFC's
  "unavailable" values.

Peers that do not know XR ignore it (aiortc skips unknown RTCP types,
browsers unknown XR blocks).
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Final

PT_XR: Final = 207
BT_STATS_SUMMARY: Final = 6
BT_VOIP_METRICS: Final = 7
_HEADER: Final = struct.Struct("!BBHI")
_BLOCK: Final = struct.Struct("!BBH")
_SUMMARY: Final = struct.Struct("!BBHI HH II IIII BBBB")
_VOIP: Final = struct.Struct("!BBHI BBBB HH HH BBBB BBBB BBH HH")
#: RFC 3611 4.7: "unavailable" for the signal, noise and RERL levels and for R and MOS.
_UNAVAILABLE: Final = 127
_LOSS_REPORTED: Final = 0x80  # the summary block's L flag


@dataclass(frozen=True, slots=True)
class LossSummary:
    """Packets lost among the sequence numbers ``begin`` up to (not including) ``end``."""

    ssrc: int  # the media source reported on
    begin: int
    end: int
    lost: int

    @property
    def expected(self) -> int:
        return (self.end - self.begin) & 0xFFFF


@dataclass(frozen=True, slots=True)
class VoipMetrics:
    """The parts of a VoIP metrics block we fill in (the rest: unavailable)."""

    ssrc: int  # the media source reported on
    loss_rate: float  # fraction lost since reception began, 0..1
    burst_duration_ms: int  # mean run of lost packets (Gmin 1), milliseconds
    gap_duration_ms: int  # mean run of packets received between them
    gmin: int = 1
    #: What the reporting end adds on the way to its ear: jitter buffer and speaker (the
    #: receiving part of RFC 3611's end system delay; 0: unknown).
    end_system_delay_ms: int = 0
    jb_nominal_ms: int = 0
    jb_maximum_ms: int = 0


def pack_xr(sender_ssrc: int, *blocks: LossSummary | VoipMetrics) -> bytes:
    """One RTCP XR packet with these blocks."""
    body = b"".join(_pack_block(b) for b in blocks)
    length = (_HEADER.size + len(body)) // 4 - 1
    return _HEADER.pack(0x80, PT_XR, length, sender_ssrc & 0xFFFFFFFF) + body


def _pack_block(block: LossSummary | VoipMetrics) -> bytes:
    if isinstance(block, LossSummary):
        return _SUMMARY.pack(BT_STATS_SUMMARY, _LOSS_REPORTED, 9, block.ssrc & 0xFFFFFFFF,
                             block.begin & 0xFFFF, block.end & 0xFFFF,
                             max(0, min(0xFFFFFFFF, block.lost)), 0, 0, 0, 0, 0, 0, 0, 0, 0)
    burst_density = 255 if block.burst_duration_ms else 0  # Gmin 1: all of a burst is lost
    return _VOIP.pack(
        BT_VOIP_METRICS, 0, 8, block.ssrc & 0xFFFFFFFF,
        _fraction(block.loss_rate), 0, burst_density, 0,
        _u16(block.burst_duration_ms), _u16(block.gap_duration_ms),
        0, _u16(block.end_system_delay_ms),
        _UNAVAILABLE, _UNAVAILABLE, _UNAVAILABLE, max(1, min(255, block.gmin)),
        _UNAVAILABLE, _UNAVAILABLE, _UNAVAILABLE, _UNAVAILABLE,
        0, 0, _u16(block.jb_nominal_ms),
        _u16(block.jb_maximum_ms), _u16(block.jb_maximum_ms))


def parse_xr(data: bytes) -> list[LossSummary | VoipMetrics]:
    """The summary and VoIP metrics blocks in an RTCP compound packet (others skipped).

    Malformed packets end the walk quietly: what came before them is kept.
    """
    out: list[LossSummary | VoipMetrics] = []
    pos = 0
    n = len(data)
    while pos + 4 <= n:
        first, pt, words = _BLOCK.unpack_from(data, pos)
        end = pos + 4 * (words + 1)
        if first >> 6 != 2 or end > n:
            break
        if pt == PT_XR and end - pos >= 8:
            block = pos + 8
            while block + 4 <= end:
                bt, flags, blen = _BLOCK.unpack_from(data, block)
                bend = block + 4 * (blen + 1)
                if bend > end:
                    break
                if bt == BT_STATS_SUMMARY and bend - block == _SUMMARY.size \
                        and flags & _LOSS_REPORTED:
                    f = _SUMMARY.unpack_from(data, block)
                    out.append(LossSummary(ssrc=f[3], begin=f[4], end=f[5], lost=f[6]))
                elif bt == BT_VOIP_METRICS and bend - block == _VOIP.size:
                    f = _VOIP.unpack_from(data, block)
                    out.append(VoipMetrics(ssrc=f[3], loss_rate=f[4] / 256,
                                           burst_duration_ms=f[8], gap_duration_ms=f[9],
                                           gmin=f[15], end_system_delay_ms=f[11],
                                           jb_nominal_ms=f[22], jb_maximum_ms=f[23]))
                block = bend
        pos = end
    return out


def _fraction(x: float) -> int:
    return max(0, min(255, int(x * 256)))


def _u16(x: int) -> int:
    return max(0, min(0xFFFF, int(x)))


class LossRuns:
    """Counts the losses of one stream from RTP sequence numbers, and their runs.

    A packet that arrives after later ones (reordered) takes back one loss.
    ``packet_ms``: the stream's packet duration (20 ms frames); ``window``:
    seconds of runs the mean run is taken over. Time is passed in.
    """

    def __init__(self, packet_ms: float = 20.0, window: float = 10.0) -> None:
        self.packet_ms = packet_ms
        self.window = window
        self._start(None)

    def _start(self, ssrc: int | None) -> None:
        self.received = 0
        self.lost = 0
        self.runs = 0
        self.ssrc = ssrc
        self._highest: int | None = None  # extended
        self._recent: deque[tuple[float, int]] = deque()  # (when, run length)
        self._reported_end: int | None = None  # extended; the next summary begins here
        self._reported_lost = 0

    def packet(self, ssrc: int, seq: int, now: float) -> bool:
        """A packet arrived; True if it shows a new run of lost packets."""
        if ssrc != self.ssrc:  # a new stream: start again
            self._start(ssrc)
        self.received += 1
        if self._highest is None:
            self._highest = seq
            self._reported_end = seq
            return False
        delta = (seq - self._highest) & 0xFFFF
        if delta == 0:
            self.received -= 1  # a duplicate
        elif delta >= 0x8000:
            if self.lost:
                self.lost -= 1  # late, not lost
        else:
            self._highest += delta
            if delta > 1:
                self.lost += delta - 1
                self.runs += 1
                self._recent.append((now, delta - 1))
                return True
        return False

    def mean_run(self, now: float) -> float:
        """Over the packets lost in the last ``window`` s, the mean length of the run
        each was lost in (0: none lost)."""
        recent = self._recent
        while recent and now - recent[0][0] > self.window:
            recent.popleft()
        lost = sum(run for _, run in recent)
        return sum(run * run for _, run in recent) / lost if lost else 0.0

    def summary(self) -> LossSummary | None:
        """The losses since the previous summary (None: no packet since)."""
        if self.ssrc is None or self._highest is None or self._reported_end is None:
            return None
        end = self._highest + 1
        if end <= self._reported_end:
            return None
        lost = min(max(0, self.lost - self._reported_lost), end - self._reported_end)
        block = LossSummary(self.ssrc, self._reported_end & 0xFFFF, end & 0xFFFF, lost)
        self._reported_end, self._reported_lost = end, self.lost
        return block

    def metrics(self, now: float) -> VoipMetrics | None:
        """The VoIP metrics block for what was received so far (None before any packet)."""
        if self.ssrc is None:
            return None
        expected = self.received + self.lost
        gaps = self.runs + 1
        return VoipMetrics(ssrc=self.ssrc, loss_rate=self.lost / max(1, expected),
                           burst_duration_ms=round(self.mean_run(now) * self.packet_ms),
                           gap_duration_ms=round(self.received / gaps * self.packet_ms))
