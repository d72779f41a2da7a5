"""The send-side adaptation (softphone.core.adapt): loss reports in, decisions out, time passed in.

Pure logic, so the peer here is a small stand-in that writes the receiver
reports a real peer would send about our stream (one a second, 50 packets
each), with the loss a test asks for.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from softphone.core.adapt import (
    LEVELS,
    LIBOPUS_13,
    LIBOPUS_16,
    STOCK_PAYLOAD,
    Adaptation,
    AdaptConfig,
    BandwidthCap,
    BurstReport,
    Decision,
    EncoderProfile,
    Event,
    Level,
    LossFeedback,
    RateCurve,
    ReceiverReport,
    rtt_from_lsr,
    wilson,
)

RATE = 50  # packets a second


class Peer:
    """Writes receiver reports about our stream: counts kept as a real receiver keeps them."""

    def __init__(self) -> None:
        self.highest = 1000
        self.lost = 0

    def report(self, now: float, lost: int, sent: int = RATE,
               rtt: float | None = 0.05) -> ReceiverReport:
        self.highest += sent
        self.lost += lost
        return ReceiverReport(now=now, fraction_lost=min(255, lost * 256 // sent) / 256,
                              cumulative_lost=self.lost, highest_seq=self.highest,
                              jitter=0.002, rtt=rtt)


def run(adapt: Adaptation, peer: Peer, start: float, seconds: int,
        loss: Callable[[float], int], rtt: float | None = 0.05) -> list[tuple[float, Decision]]:
    """One report a second for ``seconds``; ``loss(t)`` packets lost of 50. The changes."""
    changes = []
    for i in range(1, seconds + 1):
        t = start + i
        decision = adapt.handle(peer.report(t, loss(t), rtt=rtt))
        if decision is not None:
            changes.append((t, decision))
    return changes


def clean(_: float) -> int:
    return 0


def percent(p: float) -> Callable[[float], int]:
    return lambda _: round(RATE * p / 100)


def test_a_clean_call_probes_for_a_second_then_sends_no_redundancy() -> None:
    adapt = Adaptation(now=0.0)
    probe = adapt.decision
    assert adapt.probing and (probe.level, probe.red_depth, probe.fec) == (1, 1, True)
    assert probe.sent <= STOCK_PAYLOAD
    changes = run(adapt, Peer(), 0.0, 60, clean)
    assert len(changes) == 1 and changes[0][0] == 1.0  # the first clean report: no hold
    d = adapt.decision
    assert (d.level, d.red_depth, d.fec, d.expected_loss) == (0, 0, False, 0)
    assert d.bitrate == 87_000  # libopus 1.6: PESQ-WB 4.50, sending 131 kbit/s
    assert d.sent <= STOCK_PAYLOAD
    assert not adapt.probing


def test_a_call_lossy_from_the_start_keeps_its_probe_level() -> None:
    adapt = Adaptation(now=0.0)
    assert run(adapt, Peer(), 0.0, 20, percent(4)) == []  # level 1 all along, no change
    assert adapt.level == 1 and not adapt.probing
    # Without the probe it starts at level 0 and rises at the first loss.
    adapt = Adaptation(AdaptConfig(probe_packets=0), now=0.0)
    assert adapt.level == 0
    assert [d.level for _, d in run(adapt, Peer(), 0.0, 20, percent(4))] == [1]


def test_ten_percent_loss_raises_within_one_report() -> None:
    adapt = Adaptation(now=0.0)
    peer = Peer()
    run(adapt, peer, 0.0, 10, clean)
    decision = adapt.handle(peer.report(11.0, lost=5))  # 10 %
    assert decision is not None
    assert decision.level == 1 and decision.red_depth == 1 and decision.fec
    assert decision.expected_loss == 5
    assert decision.sent <= STOCK_PAYLOAD  # RED 1 + FEC on no more than stock's bits
    assert decision.bitrate == 64_000


def test_one_lost_packet_raises_at_once_unless_configured_otherwise() -> None:
    """One frame concealed costs more than level 1 for the hold: the first loss raises."""
    adapt = Adaptation(now=0.0)
    peer = Peer()
    run(adapt, peer, 0.0, 10, clean)
    assert adapt.handle(peer.report(11.0, lost=1)) is not None
    assert adapt.level == 1
    # With the loss bounds alone: one stray lost packet in a second does not, two do.
    adapt = Adaptation(AdaptConfig(rise_lost=0), now=0.0)
    peer = Peer()
    run(adapt, peer, 0.0, 10, clean)
    assert adapt.handle(peer.report(11.0, lost=1)) is None
    assert adapt.level == 0
    assert adapt.handle(peer.report(12.0, lost=2)) is not None
    assert adapt.level == 1


def test_loss_going_away_falls_only_after_the_hold() -> None:
    config = AdaptConfig(hold=10.0)
    adapt = Adaptation(config, now=0.0)
    peer = Peer()
    run(adapt, peer, 0.0, 5, clean)
    run(adapt, peer, 5.0, 15, percent(4))  # loss from t=6 to t=20
    assert adapt.level == 1
    changes = run(adapt, peer, 20.0, 60, clean)  # clean from t=21
    assert len(changes) == 1
    t, decision = changes[0]
    assert decision.level == 0 and decision.red_depth == 0 and not decision.fec
    # Not before the hold; at most the fall's pool of packets (10 s) and a report after it.
    assert 20.0 + config.hold <= t <= 20.0 + config.hold + 11


def test_heavy_loss_takes_the_top_level_and_steps_down_one_at_a_time() -> None:
    config = AdaptConfig(hold=10.0)
    adapt = Adaptation(config, now=0.0)
    peer = Peer()
    run(adapt, peer, 0.0, 5, clean)
    rises = run(adapt, peer, 5.0, 10, percent(30))
    assert [d.level for _, d in rises] == [1, 2]
    assert rises[0][0] == 6.0  # the first lossy report
    assert rises[1][0] <= 9.0  # the top level waits for a pool of evidence, a few reports
    top = adapt.decision
    assert top.red_depth == 2 and top.fec and top.expected_loss == 5
    assert top.sent <= 1.2 * STOCK_PAYLOAD
    falls = run(adapt, peer, 15.0, 60, clean)
    assert [d.level for _, d in falls] == [1, 0]
    (t1, _), (t0, _) = falls
    assert t1 >= 15.0 + config.hold and t0 - t1 >= config.hold


def test_flapping_loss_does_not_oscillate() -> None:
    for on, off in ((1, 1), (2, 3), (3, 8)):
        adapt = Adaptation(AdaptConfig(hold=10.0, probe_packets=0), now=0.0)
        peer = Peer()

        def flapping(t: float, on: int = on, period: int = on + off) -> int:
            return 5 if t % period < on else 0

        changes = run(adapt, peer, 0.0, 300, flapping)
        assert [d.level for _, d in changes] == [1], (on, off, changes)
        # When it stops for good, one step down after the hold.
        falls = run(adapt, peer, 300.0, 30, clean)
        assert [d.level for _, d in falls] == [0]


@pytest.mark.parametrize("p, level", [(0.05, 1), (0.10, 2), (0.25, 2)])
def test_random_loss_settles_on_one_level(p: float, level: int) -> None:
    """Binomial loss (seeded): the level is reached and kept, not flapped by noise."""
    rng = random.Random(14)
    adapt = Adaptation(AdaptConfig(probe_packets=0), now=0.0)
    changes = run(adapt, Peer(), 0.0, 600, lambda _: sum(rng.random() < p for _ in range(RATE)))
    assert [d.level for _, d in changes] == list(range(1, level + 1))
    assert changes[-1][0] <= 10.0


def test_loss_rates_map_to_the_issues_budgets() -> None:
    """5 %: RED 1 within stock's bits; 10 %: RED 2 within 1.2 x stock's."""
    for p, depth, budget in ((5, 1, STOCK_PAYLOAD), (10, 2, 1.2 * STOCK_PAYLOAD)):
        adapt = Adaptation(now=0.0)
        run(adapt, Peer(), 0.0, 30, percent(p))
        d = adapt.decision
        assert d.red_depth == depth and d.fec
        assert d.sent <= budget


def test_bandwidth_cap_lowers_the_bitrate_then_the_redundancy() -> None:
    adapt = Adaptation(AdaptConfig(probe_packets=0), now=0.0)
    peer = Peer()
    d = adapt.handle(BandwidthCap(0.5, 100_000))
    assert d is not None and d.red_depth == 0 and d.sent <= 100_000 and d.bitrate < 87_000
    run(adapt, peer, 0.5, 3, percent(10))
    d = adapt.decision
    assert d.red_depth == 1 and d.sent <= 100_000 and d.bitrate >= 24_000
    d = adapt.handle(BandwidthCap(4.0, 40_000))  # a copy no longer fits above 24 kbit/s
    assert d is not None and d.red_depth == 0 and d.fec and d.sent <= 40_000
    d = adapt.handle(BandwidthCap(5.0, None))
    assert d is not None and d.red_depth == 1 and d.bitrate == 64_000


@pytest.mark.parametrize("profile", [LIBOPUS_16, LIBOPUS_13])
def test_the_cap_holds_at_every_level_and_cap(profile: EncoderProfile) -> None:
    for level in range(len(LEVELS)):
        for cap in range(7_000, 200_000, 3_000):
            adapt = Adaptation(AdaptConfig(initial_level=level, max_total=cap,
                                           profile=profile, probe_packets=0), now=0.0)
            d = adapt.decision
            assert d.sent <= cap, (level, cap, d)
            assert d.red_depth <= LEVELS[level].red_depth
            assert d.red_depth == 0 or d.bitrate >= 24_000


def test_without_red_agreed_fec_alone() -> None:
    adapt = Adaptation(AdaptConfig(max_red_depth=0), now=0.0)
    run(adapt, Peer(), 0.0, 5, percent(5))
    d = adapt.decision
    assert d.level == 1 and d.red_depth == 0 and d.fec and d.sent <= STOCK_PAYLOAD


def test_long_rtt_alone_changes_nothing() -> None:
    adapt = Adaptation(AdaptConfig(probe_packets=0), now=0.0)
    assert run(adapt, Peer(), 0.0, 60, clean, rtt=0.6) == []
    assert not adapt.congested


def test_rtt_rising_above_its_floor_holds_the_total_to_less_than_clean() -> None:
    adapt = Adaptation(now=0.0)
    peer = Peer()
    run(adapt, peer, 0.0, 10, clean, rtt=0.05)
    run(adapt, peer, 10.0, 5, percent(30), rtt=0.05)
    assert adapt.decision.red_depth == 2
    run(adapt, peer, 15.0, 5, percent(30), rtt=0.30)  # a queue builds
    d = adapt.decision
    assert adapt.congested
    assert d.red_depth == 2  # the loss is still repaired...
    assert d.sent <= 0.8 * LEVELS[0].budget  # ...on fewer bits than clean
    run(adapt, peer, 20.0, 5, percent(30), rtt=0.06)  # the queue drained
    assert not adapt.congested
    assert adapt.decision.sent > 0.8 * LEVELS[0].budget


def test_garbage_and_out_of_order_reports_are_ignored() -> None:
    adapt = Adaptation(now=0.0)
    peer = Peer()
    run(adapt, peer, 0.0, 5, clean)
    stale = ReceiverReport(now=6.0, fraction_lost=0.5, cumulative_lost=500,
                           highest_seq=peer.highest - 10)  # older than the last one
    again = ReceiverReport(now=6.0, fraction_lost=0.5, cumulative_lost=500,
                           highest_seq=peer.highest)  # the same highest sequence number
    bad: list[Event] = [
        stale, again,
        ReceiverReport(now=6.0, fraction_lost=1.5, cumulative_lost=0, highest_seq=10**6),
        ReceiverReport(now=6.0, fraction_lost=math.nan, cumulative_lost=0, highest_seq=10**6),
        ReceiverReport(now=6.0, fraction_lost=0.5, cumulative_lost=0, highest_seq=10**6,
                       jitter=-1.0),
        ReceiverReport(now=6.0, fraction_lost=0.5, cumulative_lost=0, highest_seq=10**6,
                       rtt=-3.0),
        ReceiverReport(now=6.0, fraction_lost=0.5, cumulative_lost=0, highest_seq=10**6,
                       rtt=math.inf),
        ReceiverReport(now=1.0, fraction_lost=0.5, cumulative_lost=0, highest_seq=10**6),
        LossFeedback(now=6.0, lost=60, expected=50),
        LossFeedback(now=6.0, lost=-1, expected=50),
        LossFeedback(now=6.0, lost=0, expected=0),
        LossFeedback(now=math.nan, lost=5, expected=50),
        BandwidthCap(now=6.0, bitrate=-5.0),
        BandwidthCap(now=6.0, bitrate=math.nan),
    ]
    for event in bad:
        assert adapt.handle(event) is None, event
    assert adapt.ignored == len(bad)
    assert adapt.level == 0 and adapt.loss == 0.0
    # Good reports after the garbage still count.
    run(adapt, peer, 6.0, 1, percent(10))
    assert adapt.level == 1


def test_own_feedback_drives_it_as_reports_do() -> None:
    adapt = Adaptation(AdaptConfig(probe_packets=0), now=0.0)
    for t in range(1, 6):
        assert adapt.handle(LossFeedback(now=float(t), lost=0, expected=50)) is None
    d = adapt.handle(LossFeedback(now=6.0, lost=5, expected=50, rtt=0.04))
    assert d is not None and d.red_depth == 1
    assert adapt.rtt == pytest.approx(0.04)


def test_first_report_counts_the_packets_since_the_start() -> None:
    adapt = Adaptation(AdaptConfig(probe_packets=0, rise_lost=0), now=100.0)
    d = adapt.handle(ReceiverReport(now=101.0, fraction_lost=5 / 256, cumulative_lost=2,
                                    highest_seq=50))
    assert d is None  # 2 % of one second of packets: not sure yet
    d = adapt.handle(ReceiverReport(now=105.0, fraction_lost=5 / 256, cumulative_lost=12,
                                    highest_seq=250))
    assert d is not None and d.level == 1


def test_rtcp_fields_and_rtt_from_lsr_dlsr() -> None:
    sr_sent = (3_900_000_000 << 32) | (0x8000_0000)  # an SR at NTP second 3.9e9 + 0.5 s
    lsr = (sr_sent >> 16) & 0xFFFFFFFF
    dlsr = int(0.2 * 65536)  # the peer held it 200 ms
    arrival = sr_sent + int(0.25 * (1 << 32))  # back 250 ms after we sent it
    assert rtt_from_lsr(arrival, lsr, dlsr) == pytest.approx(0.05, abs=1e-4)
    assert rtt_from_lsr(arrival, 0, dlsr) is None  # no SR echoed
    assert rtt_from_lsr(arrival, lsr, dlsr + int(0.5 * 65536)) is None  # far negative
    # Across the wrap of the middle 32 bits.
    late = ((0xFFFF << 16) | 0xFFF0) << 16
    assert rtt_from_lsr(late + int(0.1 * (1 << 32)), (late >> 16) & 0xFFFFFFFF, 0) == \
        pytest.approx(0.1, abs=1e-4)
    r = ReceiverReport.from_rtcp(now=3.0, fraction_lost=26, packets_lost=7,
                                 highest_sequence=70_000, jitter=480, lsr=lsr, dlsr=dlsr,
                                 arrival_ntp=arrival)
    assert r.fraction_lost == pytest.approx(26 / 256)
    assert r.jitter == pytest.approx(0.01)
    assert r.rtt == pytest.approx(0.05, abs=1e-4)


def test_rate_curves() -> None:
    curve = LIBOPUS_16.plain
    for budget in range(5_000, 200_000, 500):
        target = curve.target_for(budget)
        assert curve.sent(target) <= budget + 1e-6
    assert curve.target_for(130_000) == pytest.approx(86_000)
    assert curve.target_for(10**6) == 96_000  # nothing known above the last point
    assert curve.sent(60_000) == pytest.approx(90_300)
    # The step where libopus leaves hybrid for CELT-only: a budget between the two
    # modes' rates gets the highest hybrid target, not one that would send 1.5 x.
    assert 58_000 <= curve.target_for(80_000) < 59_000
    with pytest.raises(ValueError, match="ascend"):
        RateCurve(((64_000, 60_000), (48_000, 50_000)))
    with pytest.raises(ValueError, match="at least one"):
        RateCurve(())


def test_bad_configs_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="first level"):
        AdaptConfig(levels=(Level(0.01, 1, True, 10, 100_000),))
    with pytest.raises(ValueError, match="ascend"):
        AdaptConfig(levels=(LEVELS[0], LEVELS[2], LEVELS[1]))
    with pytest.raises(ValueError, match="at least"):
        AdaptConfig(min_bitrate=1_000)


def test_wilson_bounds() -> None:
    low, high = wilson(5, 50, 1.28)
    assert low < 0.1 < high
    assert wilson(0, 250, 1.28)[1] < 0.01  # 250 clean packets: clearly under 1 %
    assert wilson(1, 50, 1.28)[0] < 0.01 <= wilson(2, 50, 1.28)[0]


def test_bursts_spread_the_copies_for_the_same_bits() -> None:
    """The peer's runs of lost packets (XR): copies reach back as far as a burst is long."""
    adapt = Adaptation(AdaptConfig(probe_packets=0), now=0.0)
    peer = Peer()
    assert adapt.handle(BurstReport(0.5, 6.0)) is None  # level 0: no copy to spread
    assert adapt.decision.distance == 1
    run(adapt, peer, 0.5, 2, percent(12))  # a burst of 6 in a report
    d = adapt.decision
    assert d.level == 1 and d.red_depth == 1 and d.distance == 6
    same_bits = Adaptation(AdaptConfig(probe_packets=0), now=0.0)
    run(same_bits, Peer(), 0.0, 2, percent(12))
    assert same_bits.decision.distance == 1 and same_bits.decision.sent == d.sent
    d = adapt.handle(BurstReport(3.0, 1.3))  # random loss again: the frame just before
    assert d is not None and d.distance == 1
    d = adapt.handle(BurstReport(4.0, 30.0))  # at most max_distance frames of waiting
    assert d is not None and d.distance == AdaptConfig().max_distance
    assert adapt.handle(BurstReport(5.0, math.nan)) is None
    assert adapt.handle(BurstReport(5.0, -1.0)) is None
    assert adapt.ignored == 2


def test_own_feedback_counts_the_loss_receiver_reports_then_give_rtt() -> None:
    """Once the peer's XR summaries come, its receiver reports' loss is not counted twice."""
    adapt = Adaptation(now=0.0)
    peer = Peer()
    run(adapt, peer, 0.0, 3, clean)
    assert adapt.handle(LossFeedback(now=3.5, lost=0, expected=25)) is None
    # A receiver report claiming heavy loss: only its RTT is taken now.
    assert adapt.handle(peer.report(4.0, lost=25, rtt=0.08)) is None
    assert adapt.level == 0 and adapt.rtt == pytest.approx(0.08)
    d = adapt.handle(LossFeedback(now=4.2, lost=1, expected=10))  # an early XR: one loss
    assert d is not None and d.level == 1


def test_a_16_bit_highest_sequence_number_that_wraps_still_counts() -> None:
    """aiortc reports the sequence number itself, not RFC 3550's extended one."""
    adapt = Adaptation(AdaptConfig(rise_lost=0, probe_packets=0), now=0.0)
    first = ReceiverReport(now=1.0, fraction_lost=0.0, cumulative_lost=0, highest_seq=65_500)
    assert adapt.handle(first) is None
    wrapped = ReceiverReport(now=2.0, fraction_lost=10 / 256, cumulative_lost=5,
                             highest_seq=14)  # 50 packets later, across the wrap
    d = adapt.handle(wrapped)
    assert adapt.ignored == 0
    assert d is not None and d.level == 1  # 5 of 50 counted
