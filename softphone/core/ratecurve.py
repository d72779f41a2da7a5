"""What an Opus encoder sends for the bitrate it is asked for, as measured; sans I/O.

libopus's VBR does not send its target: mono voice through libopus 1.6
(``application=voip``) sends 0.97 x its target in hybrid mode (up to 58
kbit/s) and 1.5 x in CELT-only mode (from 59 kbit/s), and with in-band FEC
on it stays hybrid and sends 0.92 x. The adaptation
(:mod:`softphone.core.adapt`) budgets bits *sent*, so it needs these curves:
:class:`RateCurve` maps a target to what is sent and back,
:class:`EncoderProfile` holds one encoder's two curves (FEC off, FEC on).

Measured on the espeak sample of ``benchmarks/opus_rate.py`` (``ctypes-1.6
mono``, PESQ-WB in ``benchmarks/README.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Final


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


#: libopus 1.6 (PyAV's, through ctypes: :mod:`softphone.media.libopus`), mono,
#: ``application=voip``, complexity 10, VBR. Hybrid up to 58 kbit/s, CELT-only from
#: 59; the FEC curve with 5-10 % expected loss (the two send within 0.5 %).
LIBOPUS_16: Final = EncoderProfile(
    "libopus 1.6",
    plain=RateCurve(((36_000, 35_400), (40_000, 39_000), (44_000, 42_800), (48_000, 47_000),
                     (52_000, 50_600), (56_000, 54_300), (58_000, 56_500), (59_000, 88_800),
                     (60_000, 90_300), (64_000, 97_500), (72_000, 109_400),
                     (80_000, 121_200), (84_000, 127_100), (86_000, 130_000),
                     (88_000, 132_900), (90_000, 135_800), (96_000, 144_500))),
    fec=RateCurve(((40_000, 37_600), (48_000, 44_500), (56_000, 51_600), (60_000, 55_000),
                   (64_000, 58_800), (72_000, 66_800), (80_000, 74_200), (96_000, 88_900))))
#: Debian's libopus 1.3.1 (the system's, when PyAV bundles none), mono,
#: ``APPLICATION_VOIP``, complexity 10.
LIBOPUS_13: Final = EncoderProfile(
    "libopus 1.3.1",
    plain=RateCurve(((48_000, 44_600), (56_000, 51_900), (64_000, 56_100), (80_000, 70_100),
                     (96_000, 84_000), (128_000, 112_000))),
    fec=RateCurve(((48_000, 45_400), (56_000, 52_500), (64_000, 59_500), (80_000, 74_400),
                   (96_000, 88_900), (128_000, 117_600))))
