"""The jitter buffer's settings (see :mod:`.jitterbuffer`): what each one does, and
why it has the value it has."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: (``trim``) Seconds of a packet's wait over the target left uncut, at least: the player
#: pulls in device blocks (2.5 ms through PulseAudio's ALSA plugin), so a cut moves the
#: next frame's pull by up to one block more than the cut itself (``trim_margin``: the
#: device's block, if longer).
TRIM_MARGIN: Final = 0.0025


@dataclass
class JitterSettings:
    """What :class:`.JitterBuffer` is constructed with (its fields come first, in this order)."""

    clock_rate: int = 48_000
    frame_samples: int = 960
    #: Seconds of arrival history the jitter estimate looks at.
    window: float = 3.0
    quantile: float = 0.95
    min_target: float = 0.0
    max_target: float = 0.4
    #: Consecutive concealed frames before falling silent.
    max_conceal: int = 25
    #: Pulls with a whole surplus frame before one frame is skipped.
    surplus_pulls: int = 15
    #: A timestamp this far (seconds) from the expected one restarts the buffer.
    max_jump: float = 2.0
    #: After a loss, keep one frame more in reserve (for RED/FEC) for this many seconds;
    #: while losses recur (two or more within ``loss_window``), for as long as they do.
    loss_memory: float = 1.0
    loss_window: float = 5.0
    #: Most frames kept in reserve for losses without RED copies (two: a pair of
    #: lost packets, the first rebuilt from FEC in the second's copy).
    max_reserve: int = 2
    #: While losses recur and RED copies come, at least this many frames in reserve
    #: (up to ``max_reserve``): the next loss may be a pair, and its first frame comes
    #: back only from the FEC in the copy of the second, one frame after that copy
    #: (offline closed loop, 16 seeds, with the pause rule in :meth:`.JitterBuffer._play`: 10 % loss
    #: 4.06 -> 4.10, 5 % 4.21 -> 4.22, bursty 3.73 -> 3.74).
    pair_reserve: int = 2
    #: (``stretch``) Quiet pulls in a row that make a real pause, where a surplus is cut
    #: (before ``voiced_after``) and the reserve for bursts is grown (offline closed
    #: loop, 16 seeds: bursty 3.74 -> 3.78, 10 % loss 4.10 -> 4.12, jitter only 4.43 ->
    #: 4.48; 2 to 5 give the same).
    pause_pulls: int = 3
    #: Seconds a burst of 3 or more lost packets that RED copies rebuild keeps its reserve.
    burst_memory: float = 20.0
    #: The player stretches (accelerate, expand) instead of skipping whole frames.
    stretch: bool = False
    #: (``stretch``) Seconds a surplus waits for a pause before voiced frames are cut.
    voiced_after: float = 2.0
    #: The stream is RED (the player says so): copies of earlier frames may come.
    copies_expected: bool = False
    #: (``copies_expected``) Seconds the first packet waits before it is played. Our
    #: sender starts a call with copies (it probes the path): a frame lost before any
    #: reserve is there is concealed in the first words, or played late (a concealed
    #: frame, then the frame itself: 20 ms put into a word, PESQ-WB -0.25). With two
    #: frames in hand the next packet's copy is there in time while the jitter
    #: estimate grows (with one, the first loss in 2 of 8 calls at 5 % loss and
    #: jitter came before the buffer had grown to its target). On a clean path they
    #: are dropped, whole, each with a quiet frame in a pause, once the copies stop...
    start_wait: float = 0.04
    #: ...or after this many seconds without a loss while they keep coming.
    start_hold: float = 10.0
    #: (``stretch``) The player pulls in blocks smaller than a frame (a sound card's) and
    #: can play a frame any shorter: what every packet waits over the target, less than
    #: a frame, is cut in a real pause (``Play.trim``), so the delay does not depend on
    #: where the sender's frames fall between the device's pulls (0-20 ms otherwise).
    #: Only on a path without losses for ``loss_window``.
    trim: bool = False
    #: (``trim``) Seconds of the wait over the target left uncut (the device's block).
    trim_margin: float = TRIM_MARGIN
