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


def test_starts_clean_without_redundancy_within_stocks_bits() -> None:
    adapt = Adaptation(now=0.0)
    d = adapt.decision
    assert (d.level, d.red_depth, d.fec, d.expected_loss) == (0, 0, False, 0)
    assert d.bitrate == 80_000  # libopus 1.6: PESQ-WB 4.47, sending 121 kbit/s
    assert d.sent <= STOCK_PAYLOAD
    assert run(adapt, Peer(), 0.0, 60, clean) == []  # a clean minute changes nothing
    assert adapt.decision == d


def test_ten_percent_loss_raises_within_one_report() -> None:
    adapt = Adaptation(now=0.0)
    peer = Peer()
    run(adapt, peer, 0.0, 10, clean)
    decision = adapt.handle(peer.report(11.0, lost=5))  # 10 %
    assert decision is not None
    assert decision.level == 1 and decision.red_depth == 1 and decision.fec
    assert decision.expected_loss == 10
    assert decision.sent <= STOCK_PAYLOAD  # RED 1 + FEC on no more than stock's bits
    assert decision.bitrate == 64_000


def test_one_stray_lost_packet_does_not_raise_two_do() -> None:
    adapt = Adaptation(now=0.0)
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
    run(adapt, peer, 5.0, 15, percent(10))  # loss from t=6 to t=20
    assert adapt.level == 1
    changes = run(adapt, peer, 20.0, 60, clean)  # clean from t=21
    assert len(changes) == 1
    t, decision = changes[0]
    assert decision.level == 0 and decision.red_depth == 0 and not decision.fec
    # Not before the hold; at most one pool of packets (5 s) and a report after it.
    assert 20.0 + config.hold <= t <= 20.0 + config.hold + 6


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
    assert top.red_depth == 2 and top.fec and top.expected_loss == 20
    assert top.sent <= 1.2 * STOCK_PAYLOAD
    falls = run(adapt, peer, 15.0, 60, clean)
    assert [d.level for _, d in falls] == [1, 0]
    (t1, _), (t0, _) = falls
    assert t1 >= 15.0 + config.hold and t0 - t1 >= config.hold


def test_flapping_loss_does_not_oscillate() -> None:
    for on, off in ((1, 1), (2, 3), (3, 8)):
        adapt = Adaptation(AdaptConfig(hold=10.0), now=0.0)
        peer = Peer()

        def flapping(t: float, on: int = on, period: int = on + off) -> int:
            return 5 if t % period < on else 0

        changes = run(adapt, peer, 0.0, 300, flapping)
        assert [d.level for _, d in changes] == [1], (on, off, changes)
        # When it stops for good, one step down after the hold.
        falls = run(adapt, peer, 300.0, 30, clean)
        assert [d.level for _, d in falls] == [0]


@pytest.mark.parametrize("p, level", [(0.05, 1), (0.10, 1), (0.25, 2)])
def test_random_loss_settles_on_one_level(p: float, level: int) -> None:
    """Binomial loss (seeded): the level is reached and kept, not flapped by noise."""
    rng = random.Random(14)
    adapt = Adaptation(now=0.0)
    changes = run(adapt, Peer(), 0.0, 600, lambda _: sum(rng.random() < p for _ in range(RATE)))
    assert [d.level for _, d in changes] == list(range(1, level + 1))
    assert changes[-1][0] <= 10.0


def test_loss_rates_map_to_the_issues_budgets() -> None:
    """5 %: RED 1 within stock's bits; 10 %: RED 1-2 within 1.2 x stock's."""
    for p, budget in ((5, STOCK_PAYLOAD), (10, 1.2 * STOCK_PAYLOAD)):
        adapt = Adaptation(now=0.0)
        run(adapt, Peer(), 0.0, 30, percent(p))
        d = adapt.decision
        assert 1 <= d.red_depth <= 2 and d.fec
        assert d.sent <= budget


def test_bandwidth_cap_lowers_the_bitrate_then_the_redundancy() -> None:
    adapt = Adaptation(now=0.0)
    peer = Peer()
    d = adapt.handle(BandwidthCap(0.5, 100_000))
    assert d is not None and d.red_depth == 0 and d.sent <= 100_000 and d.bitrate < 80_000
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
                                           profile=profile), now=0.0)
            d = adapt.decision
            assert d.sent <= cap, (level, cap, d)
            assert d.red_depth <= LEVELS[level].red_depth
            assert d.red_depth == 0 or d.bitrate >= 24_000


def test_without_red_agreed_fec_alone() -> None:
    adapt = Adaptation(AdaptConfig(max_red_depth=0), now=0.0)
    run(adapt, Peer(), 0.0, 5, percent(10))
    d = adapt.decision
    assert d.level == 1 and d.red_depth == 0 and d.fec and d.sent <= STOCK_PAYLOAD


def test_long_rtt_alone_changes_nothing() -> None:
    adapt = Adaptation(now=0.0)
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
    adapt = Adaptation(now=0.0)
    for t in range(1, 6):
        assert adapt.handle(LossFeedback(now=float(t), lost=0, expected=50)) is None
    d = adapt.handle(LossFeedback(now=6.0, lost=5, expected=50, rtt=0.04))
    assert d is not None and d.red_depth == 1
    assert adapt.rtt == pytest.approx(0.04)


def test_first_report_counts_the_packets_since_the_start() -> None:
    adapt = Adaptation(now=100.0)
    d = adapt.handle(ReceiverReport(now=101.0, fraction_lost=5 / 256, cumulative_lost=2,
                                    highest_seq=50))
    assert d is None  # 2 % of one second of packets: not sure yet
    d = adapt.handle(ReceiverReport(now=105.0, fraction_lost=10 / 256, cumulative_lost=22,
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
    assert curve.target_for(121_000) == pytest.approx(80_000)
    assert curve.target_for(10**6) == 96_000  # nothing known above the last point
    assert curve.sent(60_000) == pytest.approx(90_300)
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
