"""How much redundancy and which bitrate to send with, from what the receiver reports; sans I/O.

:class:`Adaptation` is fed small events with the time passed in:

- :class:`ReceiverReport`: an RTCP receiver report block about our stream
  (RFC 3550 6.4.1: fraction lost, cumulative lost, extended highest sequence
  number, jitter; RTT from LSR/DLSR, see :func:`rtt_from_lsr`);
- :class:`LossFeedback`: our own figures (``lost`` of ``expected`` packets);
- :class:`BandwidthCap`: what the path takes (a REMB or TWCC estimate), or None;

and answers with a :class:`Decision`: RED depth (RFC 2198 copies per packet),
Opus in-band FEC and expected loss, and the Opus target bitrate.

The levels (:data:`LEVELS`; PESQ-WB of espeak speech through libopus 1.6
mono, ``application=voip``, coded and decoded without loss; budget and
sent: RTP payload, every RED copy and header included)::

    level  rises at  RED  FEC (exp.)  budget     bitrate -> sent             clean PESQ
    0      -         0    off (0 %)   122 kbit/s 80 k -> 121 k                 4.47
    1      1 %       1    on (10 %)   120 kbit/s 64 k -> 2 x 58.8 k + 2 k      4.22
    2      15 %      2    on (20 %)   150 kbit/s 52 k -> 3 x 48.1 k + 3.6 k    4.00

Why: stock aiortc sends about 125 kbit/s (stereo, PESQ-WB 4.49 clean).
Clean, one stream takes it all: 80 kbit/s is the lowest target at stock's
PESQ minus 0.02 (libopus 1.6 VBR sends 1.5 x its target from 60 kbit/s up).
With loss, RED 1 rebuilds each isolated loss exactly from the next packet
and in-band FEC (in the RED copy too) the first of two lost in a row; both
fit in stock's bits at 64 kbit/s, as with FEC on libopus stays hybrid and
sends 0.92 x its target. At 10 % random loss that leaves about 1 % of
frames to FEC and 0.1 % to concealment: level 1 covers it. Level 2 (pairs
rebuilt exactly, triples from FEC) costs 0.22 of coded PESQ, 1.2 x stock's
bits and a second frame of receive delay: it pays when pairs are lost
often (15 % and more).

Each level has a budget in bits *sent*, not a bitrate: the bitrate is the
highest target whose measured output (:class:`EncoderProfile`: a
:class:`RateCurve` with FEC off, one with it on) fits the budget with RED's
copies and headers. Another encoder is another profile (:data:`LIBOPUS_13`
for Debian's libopus 1.3.1), not another table.

Rules:

- **Quick rise**: the first report that shows, with 90 % confidence
  (Wilson's lower bound), loss at or above level 1's threshold raises to
  level 1 at once: one stray lost packet in a second does not, two do. A
  higher level is taken as soon as the latest ``pool_packets`` (5 s of
  packets, the latest reports pooled) show its loss with that confidence:
  one report of 50 packets is too noisy for it (at 10 % loss, one report in
  a hundred shows 22 %).
- **Slow fall**: one level down only after ``hold`` seconds in which the
  loss over the last ``pool_packets`` (Wilson's upper bound) stayed below
  the level's threshold; then ``hold`` again for the next. The band between
  the two bounds and the hold time are the hysteresis: loss that comes and
  goes keeps the level up instead of flapping.
- **Bandwidth cap** (:class:`BandwidthCap`, or ``AdaptConfig.max_total``):
  the bits sent (:attr:`Decision.sent`: every copy, as the profile says the
  encoder sends for the target) must fit under it: the bitrate is lowered
  first, down to ``min_bitrate``, then a RED copy is dropped, then the
  bitrate again (never below Opus's 6 kbit/s).
- **RTT**: a long RTT alone changes nothing (redundancy costs the sender no
  delay, and with no retransmission for audio it is the only repair on a
  long path). An RTT ``queue_delay`` above the lowest of the last
  ``rtt_window`` seconds means a queue is building on the path: until it is
  back within half of that, the total is held to ``congestion_factor`` of the
  clean level's budget, redundancy included (the loss that comes with a
  queue is still repaired, but paid for by a lower bitrate, not more bits).
- **Jitter** is recorded (:attr:`Adaptation.jitter`) but decides nothing:
  late packets are the receiver's jitter buffer's business.
- **Garbage** is ignored (and counted in :attr:`Adaptation.ignored`): time
  going backwards, a fraction outside 0..1, a report whose highest sequence
  number does not advance (out of order or repeated), negative counts or
  jitter, an RTT below -10 ms or above 60 s.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from itertools import pairwise
from typing import Final

log = logging.getLogger(__name__)

OPUS_MIN_BITRATE: Final = 6_000
OPUS_MAX_BITRATE: Final = 510_000
#: RTP payload stock aiortc sends in a call (stereo Opus, 96 kbit/s target): issue 14.
STOCK_PAYLOAD: Final = 125_000
_MAX_RTT: Final = 60.0
_NTP_WRAP: Final = 1 << 32



@dataclass(frozen=True, slots=True)
class RateCurve:
    """What an encoder sends (RTP payload bit/s) for a target bitrate, as measured.

    ``points``: ``(target, sent)`` with ascending targets and non-decreasing
    sent rates. Between points the curve is linear; below the first point the
    encoder is taken to send in proportion to the target; above the last, no
    target is offered (nothing is known there).
    """

    points: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("a rate curve needs at least one (target, sent) point")
        for (t0, s0), (t1, s1) in pairwise(self.points):
            if t1 <= t0 or s1 < s0:
                raise ValueError("rate curve points must ascend in target and sent rate")
        if self.points[0][0] <= 0 or self.points[0][1] <= 0:
            raise ValueError("rate curve points must be positive")

    def sent(self, target: float) -> float:
        """Bit/s sent for ``target``."""
        pts = self.points
        t0, s0 = pts[0]
        if target <= t0:
            return target * s0 / t0
        for (ta, sa), (tb, sb) in pairwise(pts):
            if target <= tb:
                return sa + (target - ta) * (sb - sa) / (tb - ta)
        tn, sn = pts[-1]
        return target * sn / tn

    def target_for(self, budget: float) -> float:
        """The highest target whose output fits in ``budget`` bit/s (at most the last point's)."""
        pts = self.points
        t0, s0 = pts[0]
        if budget <= s0:
            return max(0.0, budget * t0 / s0)
        if budget >= pts[-1][1]:
            return float(pts[-1][0])
        for i in range(len(pts) - 2, -1, -1):
            ta, sa = pts[i]
            if sa <= budget:
                tb, sb = pts[i + 1]  # sb > budget here
                return ta + (budget - sa) * (tb - ta) / (sb - sa)
        return float(t0)  # not reached: budget > s0


@dataclass(frozen=True, slots=True)
class EncoderProfile:
    """How one encoder's output follows its target: FEC off and FEC on."""

    name: str
    plain: RateCurve
    fec: RateCurve


#: libopus 1.6 (PyAV's) through FFmpeg's ``libopus``, mono, ``application=voip``, VBR;
#: FEC curve with ``packet_loss=10`` (espeak speech, benchmarks/opus_rate.py).
LIBOPUS_16: Final = EncoderProfile(
    "libopus 1.6",
    plain=RateCurve(((48_000, 47_000), (56_000, 54_300), (58_000, 56_500), (60_000, 90_300),
                     (64_000, 97_500), (80_000, 121_000), (96_000, 144_000))),
    fec=RateCurve(((40_000, 37_600), (48_000, 44_500), (56_000, 51_600), (64_000, 58_800),
                   (72_000, 66_800), (80_000, 74_200), (96_000, 88_900))))
#: Debian's libopus 1.3.1 through opuslib-next, mono, ``APPLICATION_VOIP``, complexity 10.
LIBOPUS_13: Final = EncoderProfile(
    "libopus 1.3.1",
    plain=RateCurve(((48_000, 44_600), (56_000, 51_900), (64_000, 56_100), (80_000, 70_100),
                     (96_000, 84_000), (128_000, 112_000))),
    fec=RateCurve(((48_000, 45_400), (56_000, 52_500), (64_000, 59_500), (80_000, 74_400),
                   (96_000, 88_900), (128_000, 117_600))))



@dataclass(frozen=True, slots=True)
class Level:
    """One rung of the ladder: from which loss on, and what is sent there."""

    loss: float  # loss fraction (0..1) from which this level is taken
    red_depth: int
    fec: bool
    expected_loss: int  # percent, told to the encoder
    budget: int  # most RTP payload bit/s, every RED copy and header included


#: The default ladder (see the module's docstring for why these numbers).
LEVELS: Final = (
    Level(loss=0.0, red_depth=0, fec=False, expected_loss=0, budget=122_000),
    Level(loss=0.01, red_depth=1, fec=True, expected_loss=10, budget=120_000),
    Level(loss=0.15, red_depth=2, fec=True, expected_loss=20, budget=150_000),
)


@dataclass(frozen=True, slots=True)
class AdaptConfig:
    """One call's adaptation settings (every one has a default that suits a voice call)."""

    levels: tuple[Level, ...] = LEVELS
    profile: EncoderProfile = LIBOPUS_16
    #: Seconds of clean reports before stepping one level down.
    hold: float = 10.0
    #: Loss is judged over at least this many packets (the latest reports pooled).
    pool_packets: int = 250
    #: One-sided 90 % confidence for the loss bounds.
    z: float = 1.28
    #: The user's ceiling on the target bitrate (``--bitrate``).
    max_bitrate: int = OPUS_MAX_BITRATE
    #: Below this the bitrate is not lowered to keep a RED copy under a cap.
    min_bitrate: int = 24_000
    #: 0 when the peer did not agree on RED: FEC alone then.
    max_red_depth: int = 2
    #: A configured ceiling on the total sent (bit/s), whatever the path says.
    max_total: int | None = None
    #: Packets a second (20 ms frames).
    packet_rate: float = 50.0
    #: RTT this far above the recent lowest (seconds) means a queue is building.
    queue_delay: float = 0.15
    rtt_window: float = 60.0
    congestion_factor: float = 0.8
    initial_level: int = 0
    #: Bitrates are rounded down to a multiple of this (fewer encoder changes).
    bitrate_step: int = 1_000

    def __post_init__(self) -> None:
        if not self.levels or self.levels[0].loss != 0.0:
            raise ValueError("the first level must start at 0 % loss")
        for a, b in pairwise(self.levels):
            if not a.loss < b.loss <= 1.0:
                raise ValueError("level loss thresholds must ascend within 0..1")
        for level in self.levels:
            if level.red_depth < 0 or not 0 <= level.expected_loss <= 100 or level.budget <= 0:
                raise ValueError(f"bad level {level}")
        if self.hold < 0 or self.pool_packets < 1 or self.z <= 0:
            raise ValueError("hold, pool_packets and z must be positive")
        if min(self.min_bitrate, self.max_bitrate) < OPUS_MIN_BITRATE:
            raise ValueError(f"bitrates must be at least {OPUS_MIN_BITRATE} bit/s")
        if self.max_red_depth < 0 or not 0 <= self.initial_level < len(self.levels) \
                or self.packet_rate <= 0 or self.bitrate_step < 1 \
                or not 0 < self.congestion_factor <= 1:
            raise ValueError("bad max_red_depth, initial_level, packet_rate, bitrate_step "
                             "or congestion_factor")



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
class BandwidthCap:
    """What the path takes (bit/s, e.g. a REMB or TWCC estimate); None lifts the cap."""

    now: float
    bitrate: float | None


Event = ReceiverReport | LossFeedback | BandwidthCap


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
    if rtt < -0.01 or rtt > _MAX_RTT:
        return None
    return max(0.0, rtt)



@dataclass(frozen=True, slots=True)
class Decision:
    """What to send with."""

    level: int
    red_depth: int  # earlier frames repeated in each packet (RED)
    fec: bool  # Opus in-band FEC
    expected_loss: int  # percent, for the Opus encoder
    bitrate: int  # Opus target, bit/s
    sent: int  # expected RTP payload bit/s, every copy and header included

    @property
    def total(self) -> int:
        """The target bitrate times the copies sent (bitrate x (1 + RED depth))."""
        return self.bitrate * (1 + self.red_depth)


def wilson(lost: float, n: float, z: float) -> tuple[float, float]:
    """Wilson score interval of a loss fraction (``lost`` of ``n``) at ``z``."""
    if n <= 0:
        return 0.0, 1.0
    p = min(1.0, max(0.0, lost / n))
    z2 = z * z
    centre = p + z2 / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    scale = 1 + z2 / n
    return max(0.0, (centre - spread) / scale), min(1.0, (centre + spread) / scale)


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


class Adaptation:
    """The controller of one call's sending side; ``now``: when the call's media started."""

    def __init__(self, config: AdaptConfig | None = None, now: float = 0.0) -> None:
        self.config = config or AdaptConfig()
        self.now = now  # time of the latest event taken
        self.ignored = 0  # events ignored as garbage or out of order
        self.jitter = 0.0  # seconds, the latest the peer reported
        self.rtt: float | None = None  # seconds, the latest reported
        self.congested = False  # a queue is building on the path (RTT above its floor)
        self._start = now
        self._level = self.config.initial_level
        self._cap: float | None = None
        self._samples: deque[tuple[float, float, float]] = deque()  # (now, lost, packets)
        self._last_report: ReceiverReport | None = None
        self._clean_since: float | None = None
        self._rtts: deque[tuple[float, float]] = deque()  # (now, rtt), minimum first
        self._decision = self._decide()

    # -- figures ----------------------------------------------------------------

    @property
    def decision(self) -> Decision:
        """What to send with now."""
        return self._decision

    @property
    def level(self) -> int:
        return self._level

    @property
    def loss(self) -> float:
        """Loss fraction over the pooled recent reports (0 before any)."""
        lost, n = self._pooled()
        return lost / n if n else 0.0

    # -- input ------------------------------------------------------------------

    def handle(self, event: Event) -> Decision | None:
        """Take one event; the new decision if it changed, else None."""
        if not _finite(event.now) or event.now < self.now:
            self._ignore(event, "time went backwards")
            return None
        if isinstance(event, BandwidthCap):
            cap = event.bitrate
            if cap is not None and (not _finite(cap) or cap <= 0):
                self._ignore(event, "bad cap")
                return None
            self.now = event.now
            self._cap = cap
            return self._publish()
        if isinstance(event, ReceiverReport):
            sample = self._from_report(event)
        else:
            sample = self._from_feedback(event)
        if sample is None:
            return None
        self.now = event.now
        self._note_rtt(event.now, event.rtt)
        self._note_loss(event.now, *sample)
        self._judge()
        return self._publish()

    def _ignore(self, event: Event, why: str) -> None:
        """Count and log an event left out (callers return None after it)."""
        self.ignored += 1
        log.debug("adaptation ignores %s: %s", event, why)

    @staticmethod
    def _rtt_ok(rtt: float | None) -> bool:
        return rtt is None or (_finite(rtt) and -0.01 <= rtt <= _MAX_RTT)

    def _from_report(self, r: ReceiverReport) -> tuple[float, float] | None:
        if not _finite(r.fraction_lost, r.jitter) or not 0.0 <= r.fraction_lost <= 1.0 \
                or r.jitter < 0 or r.highest_seq < 0 or not self._rtt_ok(r.rtt):
            self._ignore(r, "impossible field")
            return None
        prev = self._last_report
        if prev is not None and r.highest_seq <= prev.highest_seq:
            self._ignore(r, "sequence number did not advance")
            return None
        self._last_report = r
        self.jitter = r.jitter
        rate = self.config.packet_rate
        if prev is not None:
            expected = r.highest_seq - prev.highest_seq
            if expected <= rate * 600:  # more: the peer restarted, trust the fraction
                lost = min(expected, max(0, r.cumulative_lost - prev.cumulative_lost))
                return float(lost), float(expected)
            n = rate * (r.now - prev.now)
        else:  # the first: how many packets it covers is a guess from the call's age
            n = rate * (r.now - self._start)
        n = max(1.0, min(float(self.config.pool_packets), n))
        return r.fraction_lost * n, n

    def _from_feedback(self, f: LossFeedback) -> tuple[float, float] | None:
        if f.expected <= 0 or not 0 <= f.lost <= f.expected or not self._rtt_ok(f.rtt):
            self._ignore(f, "impossible counts")
            return None
        return float(f.lost), float(f.expected)

    def _note_loss(self, now: float, lost: float, n: float) -> None:
        samples = self._samples
        samples.append((now, lost, n))
        # Keep the fewest latest reports that pool pool_packets (none older than a minute).
        total = 0.0
        keep = 0
        for _, _, count in reversed(samples):
            keep += 1
            total += count
            if total >= self.config.pool_packets:
                break
        while len(samples) > keep or now - samples[0][0] > 60.0:
            samples.popleft()

    def _pooled(self) -> tuple[float, float]:
        return sum(s[1] for s in self._samples), sum(s[2] for s in self._samples)

    def _note_rtt(self, now: float, rtt: float | None) -> None:
        if rtt is None:
            return
        rtt = max(0.0, rtt)
        self.rtt = rtt
        rtts = self._rtts
        while rtts and rtts[-1][1] >= rtt:  # a monotonic queue: the window's minimum first
            rtts.pop()
        rtts.append((now, rtt))
        while now - rtts[0][0] > self.config.rtt_window:
            rtts.popleft()
        queue = rtt - rtts[0][1]
        if not self.congested and queue >= self.config.queue_delay:
            self.congested = True
            log.info("RTT %.0f ms, %.0f ms above its floor: a queue, sending less",
                     rtt * 1000, queue * 1000)
        elif self.congested and queue < self.config.queue_delay / 2:
            self.congested = False

    # -- decision ---------------------------------------------------------------

    def _judge(self) -> None:
        """Move the level after a loss sample: up at once, down after the hold."""
        cfg = self.config
        levels = cfg.levels
        last_lost, last_n = self._samples[-1][1:]
        pooled_lost, pooled_n = self._pooled()
        pooled_low, pooled_high = wilson(pooled_lost, pooled_n, cfg.z)
        wanted = 0
        if pooled_n >= cfg.pool_packets:
            wanted = max(i for i, lv in enumerate(levels) if pooled_low >= lv.loss)
        if len(levels) > 1 and wilson(last_lost, last_n, cfg.z)[0] >= levels[1].loss:
            wanted = max(wanted, 1)  # the quick rise: one report is enough for the first step
        if wanted > self._level:
            log.info("loss %.1f %%: adaptation level %d -> %d",
                     100 * pooled_lost / pooled_n, self._level, wanted)
            self._level = wanted
            self._clean_since = None
        elif self._level > 0 and pooled_high < levels[self._level].loss:
            if self._clean_since is None:
                self._clean_since = self.now
            elif self.now - self._clean_since >= cfg.hold:
                log.info("clean for %.0f s: adaptation level %d -> %d",
                         cfg.hold, self._level, self._level - 1)
                self._level -= 1
                self._clean_since = self.now
        else:
            self._clean_since = None

    def _publish(self) -> Decision | None:
        decision = self._decide()
        if decision == self._decision:
            return None
        self._decision = decision
        return decision

    def _decide(self) -> Decision:
        cfg = self.config
        level = cfg.levels[self._level]
        budget = float(level.budget)
        for limit in (self._cap, cfg.max_total):
            if limit is not None:
                budget = min(budget, limit)
        if self.congested:
            budget = min(budget, cfg.congestion_factor * cfg.levels[0].budget)
        curve = cfg.profile.fec if level.fec else cfg.profile.plain
        depth = min(level.red_depth, cfg.max_red_depth)
        while True:
            overhead = self._red_overhead(depth)
            target = min(cfg.max_bitrate, curve.target_for((budget - overhead) / (1 + depth)))
            if target >= min(cfg.min_bitrate, cfg.max_bitrate) or depth == 0:
                break
            depth -= 1  # a copy costs more than the bitrate can give up
        bitrate = int(target // cfg.bitrate_step * cfg.bitrate_step)
        bitrate = min(OPUS_MAX_BITRATE, max(OPUS_MIN_BITRATE, bitrate))
        sent = curve.sent(bitrate) * (1 + depth) + self._red_overhead(depth)
        return Decision(level=self._level, red_depth=depth, fec=level.fec,
                        expected_loss=level.expected_loss, bitrate=bitrate,
                        sent=math.ceil(sent))

    def _red_overhead(self, depth: int) -> float:
        if depth == 0:
            return 0.0
        # RFC 2198 headers: one byte for the primary, four per redundant block.
        return (1 + 4 * depth) * 8 * self.config.packet_rate
