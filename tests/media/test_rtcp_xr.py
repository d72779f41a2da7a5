"""RTCP XR for the send-side adaptation (softphone.media.rtcp_xr): bytes in, bytes out."""

from __future__ import annotations

import struct

import pytest

from softphone.media import rtcp_xr
from softphone.media.rtcp_xr import LossRuns, LossSummary, VoipMetrics, pack_xr, parse_xr


def test_pack_and_parse_round_trip() -> None:
    summary = LossSummary(ssrc=0xDEADBEEF, begin=65_530, end=20, lost=3)
    metrics = VoipMetrics(ssrc=0xDEADBEEF, loss_rate=0.1, burst_duration_ms=120,
                          gap_duration_ms=400, end_system_delay_ms=60, jb_nominal_ms=40,
                          jb_maximum_ms=400)
    data = pack_xr(1234, summary, metrics)
    # RFC 3611: header (8), a summary block (40), a VoIP metrics block (36).
    assert len(data) == 84
    assert data[0] == 0x80 and data[1] == rtcp_xr.PT_XR
    assert struct.unpack("!H", data[2:4])[0] == 84 // 4 - 1
    assert struct.unpack("!I", data[4:8])[0] == 1234
    back = parse_xr(data)
    assert back[0] == summary and summary.expected == 26  # across the 16-bit wrap
    assert isinstance(back[1], VoipMetrics)
    assert back[1].burst_duration_ms == 120 and back[1].gmin == 1
    assert back[1].loss_rate == pytest.approx(0.1, abs=1 / 256)
    assert back[1].jb_nominal_ms == 40 and back[1].end_system_delay_ms == 60


def test_parse_skips_what_it_does_not_know_and_stops_at_garbage() -> None:
    rr = bytes([0x80, 201, 0, 1]) + struct.pack("!I", 99)  # an empty receiver report
    other = bytes([0x80, 207, 0, 4]) + struct.pack("!I", 1) + bytes([4, 0, 0, 2]) + bytes(8)
    xr = pack_xr(1, LossSummary(5, 0, 50, 2))
    assert parse_xr(rr + other + xr) == [LossSummary(5, 0, 50, 2)]
    truncated = xr[:-4]
    assert parse_xr(rr + truncated) == []
    assert parse_xr(b"\x00\x01") == []
    assert parse_xr(xr + b"\x40\xcf\x00\x00") == [LossSummary(5, 0, 50, 2)]  # bad version


def test_loss_runs_from_sequence_numbers() -> None:
    runs = LossRuns()
    seqs = [65_530, 65_531, 65_534, 65_535, 0, 7, 8, 9, 6]  # wraps; 6 comes late
    shows = [runs.packet(1, seq, now=0.1 * i) for i, seq in enumerate(seqs)]
    assert shows == [False, False, True, False, False, True, False, False, False]
    # Lost: 65532-65533 (a run of 2), 1-6 (a run of 6) less 6 which came late.
    assert (runs.received, runs.lost, runs.runs) == (9, 7, 2)
    assert runs.mean_run(1.0) == pytest.approx((4 + 36) / 8)  # packets lost, by their run
    assert runs.mean_run(100.0) == 0.0  # none in the last 10 s
    summary = runs.summary()
    assert summary is not None
    assert (summary.begin, summary.end, summary.lost) == (65_530, 10, 7)
    assert runs.summary() is None  # nothing new since
    runs.packet(1, 12, now=1.0)
    later = runs.summary()
    assert later is not None and (later.begin, later.end, later.lost) == (10, 13, 2)
    runs.packet(2, 500, now=1.1)  # a new stream starts again
    assert (runs.received, runs.lost, runs.ssrc) == (1, 0, 2)


def test_duplicates_are_not_counted() -> None:
    runs = LossRuns()
    for seq in (1, 2, 2, 3):
        runs.packet(9, seq, now=0.0)
    assert (runs.received, runs.lost) == (3, 0)
    metrics = runs.metrics(0.0)
    assert metrics is not None and metrics.loss_rate == 0.0 and metrics.burst_duration_ms == 0
