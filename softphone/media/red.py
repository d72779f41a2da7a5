"""RTP payload for redundant audio (RED, RFC 2198), as browsers use it for Opus.

Each packet carries the current Opus frame and a copy of one or more
earlier frames, so a lost packet is replaced by an exact copy from a later
one instead of being concealed (the frame just before, or, against bursts,
frames further back: :class:`RedPacker`). Chrome offers ``red/48000/2`` with fmtp
``111/111`` (the payload type of each block); our offers put it first when
our own pipeline runs (see :mod:`softphone.media.aiortc_seams`).

Wire format: one 4-byte header per redundant block, oldest first::

    |F=1| block PT (7) | timestamp offset (14) | block length (10) |

then a 1-byte header ``|F=0| primary PT (7)|``, then the blocks' data in the
same order, the primary last. Sans-IO: bytes in, bytes out.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

#: Largest timestamp offset and block length the headers can carry.
MAX_OFFSET: Final = (1 << 14) - 1
MAX_LENGTH: Final = (1 << 10) - 1


class RedError(ValueError):
    """A RED payload whose headers do not fit its length."""


@dataclass(frozen=True, slots=True)
class Block:
    payload_type: int
    #: How many RTP timestamp units this block is older than the packet.
    offset: int
    data: bytes


def pack(payload_type: int, primary: bytes, redundant: list[tuple[int, bytes]]) -> bytes:
    """A RED payload: ``redundant`` is ``[(offset, data), ...]`` oldest first.

    Blocks that cannot be described (offset or length too large) are left out.
    """
    usable = [(off, data) for off, data in redundant
              if 0 < off <= MAX_OFFSET and len(data) <= MAX_LENGTH]
    header = bytearray()
    for off, data in usable:
        header += (0x80000000 | payload_type << 24 | off << 10 | len(data)).to_bytes(4, "big")
    header.append(payload_type & 0x7F)
    return b"".join([bytes(header), *(data for _, data in usable), primary])


def parse(payload: bytes) -> list[Block]:
    """The blocks of a RED payload, oldest first, the primary (offset 0) last."""
    heads: list[tuple[int, int, int]] = []
    pos = 0
    n = len(payload)
    while True:
        if pos >= n:
            raise RedError("RED payload ends inside its headers")
        first = payload[pos]
        if not first & 0x80:
            primary_pt = first & 0x7F
            pos += 1
            break
        if pos + 4 > n:
            raise RedError("RED payload ends inside a block header")
        word = int.from_bytes(payload[pos:pos + 4], "big")
        heads.append(((word >> 24) & 0x7F, (word >> 10) & MAX_OFFSET, word & MAX_LENGTH))
        pos += 4
    blocks = []
    for pt, off, length in heads:
        if pos + length > n:
            raise RedError("RED block longer than the payload")
        blocks.append(Block(pt, off, payload[pos:pos + length]))
        pos += length
    blocks.append(Block(primary_pt, 0, payload[pos:]))
    return blocks


class RedPacker:
    """Keeps the frames sent lately and wraps each new one with copies of earlier ones.

    ``depth``: copies per packet; ``spacing``: frames between copies (1: the
    frames just before; 6: the frame 6 back, then 12 back..., which survives
    a burst of 6 lost packets). Both may change between two frames, up to
    ``history`` frames back (default ``depth x spacing``). ``frame_offset``:
    timestamp units between frames (960 for 20 ms at 48 kHz).
    """

    def __init__(self, payload_type: int, depth: int = 1, frame_offset: int = 960, *,
                 spacing: int = 1, history: int | None = None) -> None:
        if not 0 <= payload_type <= 127:
            raise ValueError(f"payload type {payload_type} out of range")
        if depth < 0 or spacing < 1:
            raise ValueError("RED depth must be >= 0 and spacing >= 1")
        self.payload_type = payload_type
        self.frame_offset = frame_offset
        self.depth = depth
        self.spacing = spacing
        self._history: deque[tuple[int, bytes]] = deque(
            maxlen=max(0, depth * spacing if history is None else history))

    def wrap(self, timestamp: int, primary: bytes) -> bytes:
        history = self._history
        redundant: list[tuple[int, bytes]] = []
        for k in range(min(self.depth, len(history) // self.spacing), 0, -1):
            ts, data = history[-k * self.spacing]
            offset = (timestamp - ts) & 0xFFFFFFFF
            if offset == k * self.spacing * self.frame_offset:  # not across a gap
                redundant.append((offset, data))
        if history.maxlen:
            history.append((timestamp, primary))
        return pack(self.payload_type, primary, redundant)


def primary_payload_type(fmtp: dict[str, object]) -> int | None:
    """The block payload type named by a RED fmtp (``{"111/111": None}``), or None."""
    for key in fmtp:
        first = str(key).split("/", 1)[0]
        if first.isdigit():
            return int(first)
    return None
