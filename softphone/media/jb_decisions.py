"""What the jitter buffer answers each pull with, and what it counts (see :mod:`.jitterbuffer`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Play:
    payload: bytes
    timestamp: int
    #: Packets skipped just before this one to cut the delay (decode them to
    #: keep the decoder's state, but do not play them).
    skipped: tuple[bytes, ...] = ()
    #: The skip only cut surplus delay in a pause: if the skipped frame turns out
    #: not to be quiet, play it instead (``JitterBuffer.keep_skipped``).
    optional_skip: bool = False
    #: (``stretch`` mode) More than the target is buffered: play this frame shorter,
    #: if it is a pause (``voiced`` too: the surplus found no pause for a while).
    accelerate: bool = False
    voiced: bool = False
    #: (``stretch`` mode) This frame plays earlier than the jitter's spread after
    #: its fastest arrival, and nothing was lost lately: play it longer.
    expand: bool = False
    #: (``trim`` mode) Every packet lately waited this many samples (less than a
    #: frame) over the target: play this frame that much shorter if it is a pause.
    trim: int = 0
    #: Seconds the packet waited in the buffer, from its arrival to this pull.
    waited: float = 0.0


@dataclass(frozen=True, slots=True)
class Recover:
    """Play the frame at ``timestamp`` rebuilt from ``next_payload``'s FEC data."""

    next_payload: bytes
    timestamp: int


@dataclass(frozen=True, slots=True)
class Conceal:
    timestamp: int


@dataclass(frozen=True, slots=True)
class Silence:
    pass


Decision = Play | Recover | Conceal | Silence


@dataclass
class JitterStats:
    received: int = 0
    late: int = 0  # arrived after their turn had passed
    duplicates: int = 0
    played: int = 0
    recovered: int = 0  # rebuilt from FEC
    concealed: int = 0
    skipped: int = 0  # dropped to reduce the delay
    repaired: int = 0  # lost packets replaced by their copy in a later one (RED)
    resets: int = 0
