"""How much redundancy and which bitrate to send with, from what the receiver reports; sans I/O.

:class:`Adaptation` is fed small events with the time passed in:

- :class:`ReceiverReport`: an RTCP receiver report block about our stream
  (RFC 3550 6.4.1: fraction lost, cumulative lost, extended highest sequence
  number, jitter; RTT from LSR/DLSR, see :func:`rtt_from_lsr`);
- :class:`LossFeedback`: our own figures (``lost`` of ``expected`` packets,
  from the peer's RTCP XR statistics summaries, which come sooner: once one
  has come, receiver reports give the RTT and jitter only);
- :class:`BurstReport`: how long the peer's runs of lost packets are (an
  RTCP XR VoIP metrics block, RFC 3611 4.7, with Gmin 1);
- :class:`BandwidthCap`: what the path takes (a REMB or TWCC estimate), or None;

and answers with a :class:`Decision`: RED depth (RFC 2198 copies per packet)
and how far back the copies reach, Opus in-band FEC and expected loss, and
the Opus target bitrate.

The levels, their budgets and why (:data:`LEVELS`, :class:`AdaptConfig`):
:mod:`softphone.core.adapt_config`.

Rules:

- **Probe**: a call starts at level 1, and drops to level 0 as soon as the
  first ``probe_packets`` (0.5 s) are reported without a loss (the peer's
  XR says so at once): a path that loses from the start loses nothing
  before the sender knows (on 3 in 4 paths with 5 % loss a loss shows in
  that time). For a clean call its first half second as level 1 costs
  PESQ-WB 0.01 (a second: 0.02 to 0.1, by where the mode switch falls).
- **Quick rise**: the first report with a lost packet (``rise_lost``), or
  that shows with 90 % confidence (Wilson's lower bound) loss at or above
  level 1's threshold, raises to level 1 at once. Even one lost packet:
  concealing one frame of a clean (CELT) stream costs more (PESQ-WB 0.2 in
  17 s of speech) than level 1 costs for the hold, and the peer's XR tells
  of the first loss within a round trip (:mod:`softphone.media.rtcp_xr`). A
  higher level is taken as soon as the latest ``pool_packets`` (5 s of
  packets, the latest reports pooled) show its loss with that confidence:
  one report of 50 packets is too noisy for it (at 5 % loss, one report in
  twenty shows 10 %).
- **Slow fall**: one level down only after ``hold`` seconds in which the
  loss over the last ``fall_packets`` (10 s of packets; Wilson's upper
  bound) stayed below the level's threshold; then ``hold`` again for the
  next. (The longer pool lets 5 % loss leave level 2, whose threshold is
  7 %, if noise ever raised it there.) The band between
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

from softphone.core.adapt_config import (
    LEVELS,
    OPUS_MAX_BITRATE,
    OPUS_MIN_BITRATE,
    PROBE_PACKETS,
    STOCK_PAYLOAD,
    AdaptConfig,
    Level,
)
from softphone.core.adapt_events import (
    MAX_RTT,
    BandwidthCap,
    BurstReport,
    Event,
    LossFeedback,
    ReceiverReport,
    rtt_from_lsr,
)
from softphone.core.ratecurve import LIBOPUS_13, LIBOPUS_16, EncoderProfile, RateCurve

__all__ = [
    "LEVELS", "LIBOPUS_13", "LIBOPUS_16", "OPUS_MAX_BITRATE", "OPUS_MIN_BITRATE",
    "PROBE_PACKETS", "STOCK_PAYLOAD", "AdaptConfig", "Adaptation",
    "BandwidthCap", "BurstReport", "Decision", "EncoderProfile", "Event", "Level",
    "LossFeedback", "RateCurve", "ReceiverReport", "rtt_from_lsr", "wilson",
]

log = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class Decision:
    """What to send with."""

    level: int
    red_depth: int  # earlier frames repeated in each packet (RED)
    fec: bool  # Opus in-band FEC
    expected_loss: int  # percent, for the Opus encoder
    bitrate: int  # Opus target, bit/s
    sent: int  # expected RTP payload bit/s, every copy and header included
    #: Frames between a packet's frame and its newest copy (the copies are
    #: ``distance``, ``2 x distance``, ... frames back).
    distance: int = 1

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
        self.burst = 0.0  # the peer's mean run of lost packets, as last reported
        self._own_feedback = False  # LossFeedback seen: receiver reports' loss is not counted
        self._start = now
        self._level = self.config.initial_level
        #: Probing: level 1 until the first probe_packets are reported without a loss.
        self.probing = self.config.probe_packets > 0 and self._level == 0 \
            and len(self.config.levels) > 1
        if self.probing:
            self._level = 1
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
        if isinstance(event, BurstReport):
            if not _finite(event.length) or event.length < 0:
                self._ignore(event, "bad burst length")
                return None
            self.now = event.now
            self.burst = event.length
            return self._publish()
        if isinstance(event, ReceiverReport):
            sample = self._from_report(event)
        else:
            sample = self._from_feedback(event)
        if sample is None:
            return None
        self.now = event.now
        self._note_rtt(event.now, event.rtt)
        if isinstance(event, LossFeedback):
            self._own_feedback = True
        elif self._own_feedback:
            # The peer's own feedback counts its losses (sooner, in intervals that do
            # not overlap): its receiver reports now give the RTT and jitter only.
            return self._publish()
        self._note_loss(event.now, *sample)
        self._judge()
        return self._publish()

    def _ignore(self, event: Event, why: str) -> None:
        """Count and log an event left out (callers return None after it)."""
        self.ignored += 1
        log.debug("adaptation ignores %s: %s", event, why)

    @staticmethod
    def _rtt_ok(rtt: float | None) -> bool:
        return rtt is None or (_finite(rtt) and -0.01 <= rtt <= MAX_RTT)

    def _from_report(self, r: ReceiverReport) -> tuple[float, float] | None:
        if not _finite(r.fraction_lost, r.jitter) or not 0.0 <= r.fraction_lost <= 1.0 \
                or r.jitter < 0 or r.highest_seq < 0 or not self._rtt_ok(r.rtt):
            self._ignore(r, "impossible field")
            return None
        prev = self._last_report
        if prev is not None:
            expected = r.highest_seq - prev.highest_seq
            if expected < -0x8000 and r.highest_seq <= 0xFFFF:
                # A 16-bit counter that wrapped (aiortc reports the sequence number
                # itself, not RFC 3550's extended one).
                expected &= 0xFFFF
            if expected <= 0:
                self._ignore(r, "sequence number did not advance")
                return None
        self._last_report = r
        self.jitter = r.jitter
        rate = self.config.packet_rate
        if prev is not None:
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
        # Keep the fewest latest reports that pool what the rules look at (none older
        # than a minute).
        needed = max(self.config.pool_packets, self.config.fall_packets)
        total = 0.0
        keep = 0
        for _, _, count in reversed(samples):
            keep += 1
            total += count
            if total >= needed:
                break
        while len(samples) > keep or now - samples[0][0] > 60.0:
            samples.popleft()

    def _pooled(self, packets: int | None = None) -> tuple[float, float]:
        """Lost and packets over the fewest latest reports holding ``packets`` (pool_packets)."""
        packets = self.config.pool_packets if packets is None else packets
        lost = n = 0.0
        for _, sample_lost, count in reversed(self._samples):
            lost += sample_lost
            n += count
            if n >= packets:
                break
        return lost, n

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
        if self.probing:
            lost, n = self._pooled(cfg.probe_packets)
            if lost > 0:
                self.probing = False  # a lossy path: the usual rules from here
            elif n >= cfg.probe_packets:
                self.probing = False
                log.info("clean start: adaptation level 1 -> 0")
                self._level = 0
                return
        pooled_lost, pooled_n = self._pooled()
        pooled_low = wilson(pooled_lost, pooled_n, cfg.z)[0]
        pooled_high = wilson(*self._pooled(cfg.fall_packets), cfg.z)[1]
        wanted = 0
        if pooled_n >= cfg.pool_packets:
            sure = wilson(pooled_lost, pooled_n, cfg.z_high)[0]
            wanted = max(i for i, lv in enumerate(levels)
                         if (pooled_low if i < 2 else sure) >= lv.loss)
        if len(levels) > 1 and (0 < cfg.rise_lost <= last_lost + 1e-9
                                or wilson(last_lost, last_n, cfg.z)[0] >= levels[1].loss):
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
        distance = 1
        if depth and self.burst >= cfg.burst_length:
            distance = min(cfg.max_distance, math.ceil(self.burst - 1e-9))
        return Decision(level=self._level, red_depth=depth, fec=level.fec,
                        expected_loss=level.expected_loss, bitrate=bitrate,
                        sent=math.ceil(sent), distance=distance)

    def _red_overhead(self, depth: int) -> float:
        if depth == 0:
            return 0.0
        # RFC 2198 headers: one byte for the primary, four per redundant block.
        return (1 + 4 * depth) * 8 * self.config.packet_rate
