"""The ladder the adaptation climbs, and one call's settings for it; sans I/O.

The levels (:data:`LEVELS`; PESQ-WB of espeak speech through libopus 1.6
mono, ``application=voip``, coded and decoded without loss; budget and
sent: RTP payload, every RED copy and header included; the same sample
through stock aiortc's encoder, 96 kbit/s stereo: 133.9 kbit/s, 4.50)::

    level  rises at  RED  FEC (exp.)  budget     bitrate -> sent             clean PESQ
    0      -         0    off (0 %)   132 kbit/s 87 k -> 131 k                 4.50
    1      1 %       1    on (5 %)    120 kbit/s 64 k -> 2 x 58.6 k + 2 k      4.26
    2      7 %       2    on (5 %)    150 kbit/s 52 k -> 3 x 48.0 k + 3.6 k    4.1

Why: clean, one stream takes it all: 87 kbit/s is stock's PESQ (less
0.005) on 2 % fewer bits than stock (libopus 1.6 VBR sends 1.5 x its target in CELT-only
mode, from 59 kbit/s up). Any loss costs more than redundancy
does: 1 % of frames concealed costs that stream 0.8 of PESQ (CELT's
concealment is poor), so level 1 is taken from 1 %. There RED 1 rebuilds
each isolated loss exactly from the next packet and in-band FEC (in the RED
copy too) the first of two lost in a row; both fit in stock's bits at 64
kbit/s, as with FEC on libopus stays hybrid and sends 0.92 x its target. At
10 % random loss that leaves about 1 % of frames to FEC and 0.1 % to
concealment, and each of those costs: one frame concealed in 17 s of
speech costs PESQ-WB 0.2. Level 2 rebuilds pairs exactly and triples from
FEC, for 1.2 x stock's bits and a second frame of receive delay: at 10 %
loss it scores 4.07 where level 1 scores 3.97 (offline, the receiver's
playout included; ``benchmarks/README.md``). It is not taken at 5 %, where
level 1 loses almost nothing (4.21) on stock's bits: 7 %, with 90 %
confidence over the last 250 packets, is reached within seconds at 10 %
and practically never at 5 %.

**Bursts**: RED and FEC reach one or two frames back; a burst of 6 lost
packets is concealed whatever the level, and concealing 120 ms every 2 s
leaves PESQ-WB near 2.6. When the peer reports runs of lost packets
``burst_length`` (3) long or longer on average (:class:`BurstReport`), the
copies are spread: each packet carries the frame ``distance`` frames back
(and ``2 x distance`` at depth 2), ``distance`` the mean run rounded up
(at most ``max_distance``), for the same bits. The receiver waits that
many frames while such bursts recur (its jitter buffer sees the copies'
offsets) and every frame of a burst comes back exact.

Each level has a budget in bits *sent*, not a bitrate: the bitrate is the
highest target whose measured output (:class:`EncoderProfile`: a
:class:`RateCurve` with FEC off, one with it on) fits the budget with RED's
copies and headers. Another encoder is another profile (:data:`LIBOPUS_13`
for Debian's libopus 1.3.1), not another table.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Final

from softphone.core.ratecurve import LIBOPUS_16, EncoderProfile

OPUS_MIN_BITRATE: Final = 6_000
OPUS_MAX_BITRATE: Final = 510_000
#: Packets a call's start is probed with (0.5 s): the peer reports them at once.
PROBE_PACKETS: Final = 25
#: RTP payload stock aiortc's encoder (stereo Opus, 96 kbit/s target) puts out on the
#: espeak sample the profiles were measured on (125 kbit/s in a call, issue 14).
STOCK_PAYLOAD: Final = 134_000



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
    Level(loss=0.0, red_depth=0, fec=False, expected_loss=0, budget=131_500),
    Level(loss=0.01, red_depth=1, fec=True, expected_loss=5, budget=120_000),
    Level(loss=0.07, red_depth=2, fec=True, expected_loss=5, budget=150_000),
)


@dataclass(frozen=True, slots=True)
class AdaptConfig:
    """One call's adaptation settings (every one has a default that suits a voice call)."""

    levels: tuple[Level, ...] = LEVELS
    profile: EncoderProfile = LIBOPUS_16
    #: Seconds of clean reports before stepping one level down.
    hold: float = 10.0
    #: Loss is judged over at least this many packets (the latest reports pooled)...
    pool_packets: int = 250
    #: ...and a level is left when the last this many show less than its loss.
    fall_packets: int = 500
    #: Lost packets in one report that take level 1 at once (0: by the loss bounds alone).
    rise_lost: int = 1
    #: One-sided 90 % confidence for the loss bounds...
    z: float = 1.28
    #: ...and 95 % to take level 2 or higher (more bits than stock's).
    z_high: float = 1.645
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
    #: A call starts at level 1 and drops to level 0 (no hold) as soon as this many
    #: packets are reported with none lost; 0: start at ``initial_level``.
    probe_packets: int = PROBE_PACKETS
    #: Bitrates are rounded down to a multiple of this (fewer encoder changes).
    bitrate_step: int = 1_000
    #: Mean run of lost packets from which RED copies are spread to cover it.
    burst_length: float = 3.0
    #: The farthest back a copy reaches (frames): the receiver waits that long.
    max_distance: int = 8

    def __post_init__(self) -> None:
        if not self.levels or self.levels[0].loss != 0.0:
            raise ValueError("the first level must start at 0 % loss")
        for a, b in pairwise(self.levels):
            if not a.loss < b.loss <= 1.0:
                raise ValueError("level loss thresholds must ascend within 0..1")
        for level in self.levels:
            if level.red_depth < 0 or not 0 <= level.expected_loss <= 100 or level.budget <= 0:
                raise ValueError(f"bad level {level}")
        if self.hold < 0 or self.pool_packets < 1 or self.fall_packets < 1 or self.z <= 0 \
                or self.z_high <= 0:
            raise ValueError("hold, pool_packets, z and z_high must be positive")
        if min(self.min_bitrate, self.max_bitrate) < OPUS_MIN_BITRATE:
            raise ValueError(f"bitrates must be at least {OPUS_MIN_BITRATE} bit/s")
        if self.max_red_depth < 0 or not 0 <= self.initial_level < len(self.levels) \
                or self.probe_packets < 0 \
                or self.packet_rate <= 0 or self.bitrate_step < 1 \
                or not 0 < self.congestion_factor <= 1 or self.burst_length < 2 \
                or self.max_distance < 1:
            raise ValueError("bad max_red_depth, initial_level, packet_rate, bitrate_step, "
                             "congestion_factor, burst_length or max_distance")
