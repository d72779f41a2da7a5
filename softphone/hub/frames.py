"""WebSocket frames on the hub's quick path (RFC 6455 5.2), sans I/O.

:func:`scan` reads the frames clients send most (whole masked text frames,
pings, pongs) straight out of the bytes received, without websockets'
generator-based parser; it stops at the first frame it does not take, and
:class:`~softphone.hub.connection.ClientConnection` hands everything from there
to websockets for good. :func:`text_frame` builds what the hub sends.

Both are checked against websockets' own parser (``tests/hub/test_frames.py``).
"""

from __future__ import annotations

import struct
from typing import Final

try:  # websockets' C unmasking, if it was built
    from websockets.speedups import apply_mask as _unmask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask as _unmask

#: An empty ping frame (RFC 6455 5.5.2), as a server sends it.
PING: Final = b"\x89\x00"
#: The head of a pong frame by payload length (0 to 125).
_PONG: Final = tuple(bytes([0x8A, n]) for n in range(126))

_SHORT: Final = struct.Struct("!BB")
_MEDIUM: Final = struct.Struct("!BBH")
_LONG: Final = struct.Struct("!BBQ")


def scan(buf: bytes, limit: int) -> tuple[list[bytes], bytes, int, bool]:
    """The quick path's frames at the start of ``buf``: ``(texts, pongs, pos, slow)``.

    ``texts``: the unmasked payloads of the whole text frames, in order (not decoded:
    UTF-8 is the caller's check). ``pongs``: the pong frames that answer the pings,
    ready to write (pongs received need nothing). ``pos``: where scanning stopped.

    ``slow`` False: ``buf[pos:]`` is the start of a frame not complete yet (maybe
    empty); scan it again with what follows. ``slow`` True: the frame at ``pos`` is
    not one the quick path takes (close, binary, fragmented, unmasked, reserved bits
    or opcodes, a control frame over 125 bytes, a payload over ``limit``): it and
    everything after it are for websockets' parser, which answers or fails it.
    """
    end = len(buf)
    texts: list[bytes] = []
    pongs = b""
    pos = 0
    while end - pos >= 6:
        b0 = buf[pos]
        length = buf[pos + 1] ^ 0x80  # masked (as clients must) unless >= 0x80 now
        if b0 & 0x70 or not b0 & 0x80 or length & 0x80:  # RSV bits, not final, unmasked
            return texts, pongs, pos, True
        start = pos + 6
        if length == 126:
            start = pos + 8
            if end < start:
                break
            length = int.from_bytes(buf[pos + 2:pos + 4], "big")
        elif length == 127:
            start = pos + 14
            if end < start:
                break
            length = int.from_bytes(buf[pos + 2:pos + 10], "big")
        opcode = b0 & 0x0F
        if length > limit or (opcode & 0x08 and length > 125):
            return texts, pongs, pos, True
        stop = start + length
        if stop > end:
            break
        if opcode == 0x1:
            texts.append(_unmask(buf[start:stop], buf[start - 4:start]))
        elif opcode == 0x9:  # ping: pong with its payload
            pongs += _PONG[length] + _unmask(buf[start:stop], buf[start - 4:start])
        elif opcode != 0xA:  # (pongs need nothing)
            return texts, pongs, pos, True
        pos = stop
    # A frame not complete yet (rarely: most reads end with a whole frame).
    return texts, pongs, pos, pos < end and _refused_early(buf, pos, end, limit)


def _refused_early(buf: bytes, pos: int, end: int, limit: int) -> bool:
    """Whether the start of the frame at ``pos``, not complete yet, already shows that
    the quick path does not take it (websockets fails a client as soon as it sees an
    unmasked frame, an unknown opcode or a length over the limit)."""
    if end - pos < 2:
        return False
    b0 = buf[pos]
    length = buf[pos + 1] ^ 0x80
    if b0 & 0x70 or not b0 & 0x80 or length & 0x80:
        return True
    opcode = b0 & 0x0F
    if opcode != 0x1 and opcode != 0x9 and opcode != 0xA:
        return True
    if length == 126:
        if end - pos < 4:
            return False
        length = int.from_bytes(buf[pos + 2:pos + 4], "big")
    elif length == 127:
        if end - pos < 10:
            return False
        length = int.from_bytes(buf[pos + 2:pos + 10], "big")
    return length > limit or bool(opcode & 0x08 and length > 125)


def frame_end(buf: bytes, pos: int) -> int | None:
    """Where the frame starting at ``buf[pos]`` ends, from its head (any opcode, masked
    or not); None while its head or payload is not all there."""
    end = len(buf)
    if end - pos < 2:
        return None
    length = buf[pos + 1] & 0x7F
    start = pos + 2
    if length == 126:
        start = pos + 4
        if end < start:
            return None
        length = int.from_bytes(buf[pos + 2:pos + 4], "big")
    elif length == 127:
        start = pos + 10
        if end < start:
            return None
        length = int.from_bytes(buf[pos + 2:pos + 10], "big")
    if buf[pos + 1] & 0x80:
        start += 4
    stop = start + length
    return stop if stop <= end else None


def text_frame(text: str) -> bytes:
    """An unmasked, final WebSocket text frame (RFC 6455 5.2), as a server sends."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        return _SHORT.pack(0x81, n) + payload
    if n < 65536:
        return _MEDIUM.pack(0x81, 126, n) + payload
    return _LONG.pack(0x81, 127, n) + payload
