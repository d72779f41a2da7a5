"""Simulated network trouble for received packets: loss, bursts, jitter.

Pure and seeded, so a test or a benchmark gets the same pattern every run.
:func:`softphone.media.aiortc_seams.impair_receiver` applies an :class:`Impairment`
to the RTP packets an aiortc receiver gets, before anything else sees them
(the same place for aiortc's own pipeline and ours). ``softphone call
--simulate-loss`` uses it too, as pjsua's and baresip's loss simulation do.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Impairment:
    """Per packet: drop it, or deliver it after a delay (seconds)."""

    loss: float = 0.0  # random loss probability, 0..1
    #: Gilbert-Elliott bursts: chance to enter a burst per packet, and burst length (packets).
    burst_rate: float = 0.0
    burst_length: int = 0
    delay: float = 0.0  # fixed extra delay, seconds
    jitter: float = 0.0  # +- uniform extra delay, seconds (reorders packets)
    seed: int = 1
    #: Explicit packet indices to drop (0 = first packet seen), for scripted bursts.
    drop_indices: frozenset[int] = frozenset()
    _rng: random.Random = field(init=False, repr=False)
    _burst_left: int = field(init=False, default=0)
    count: int = field(init=False, default=0)
    dropped: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss <= 1.0 or not 0.0 <= self.burst_rate <= 1.0:
            raise ValueError("loss and burst rate are probabilities (0..1)")
        if self.delay < 0 or self.jitter < 0 or self.jitter > self.delay + 1.0:
            raise ValueError("delay and jitter must be >= 0")
        self._rng = random.Random(self.seed)

    @property
    def active(self) -> bool:
        return bool(self.loss or self.burst_rate or self.delay or self.jitter
                    or self.drop_indices)

    def decide(self) -> float | None:
        """None to drop the next packet, else the delay to deliver it with."""
        index = self.count
        self.count += 1
        drop = index in self.drop_indices
        if self._burst_left > 0:
            self._burst_left -= 1
            drop = True
        elif self.burst_rate and self._rng.random() < self.burst_rate:
            self._burst_left = max(0, self.burst_length - 1)
            drop = True
        if self.loss and self._rng.random() < self.loss:
            drop = True
        if drop:
            self.dropped += 1
            return None
        extra = self.delay
        if self.jitter:
            extra += self._rng.uniform(-self.jitter, self.jitter)
        return max(0.0, extra)
