"""The hub's quick frame path against websockets' own parser (hypothesis).

Streams of client frames, valid and not (fragmented, unmasked, reserved bits and
opcodes, control frames too long, payloads over the limit, bad UTF-8, length
fields that lie, random bytes), cut anywhere:

- :func:`softphone.hub.frames.scan` takes exactly the frames websockets'
  ``Frame.parse`` reads as whole text, ping and pong frames, with the same
  payloads, and stops where websockets reads anything else (or needs more bytes);
- a :class:`~softphone.hub.connection.ClientConnection` (quick path, then
  websockets for the rest) hands on the same messages, answers the same pings
  and closes with the same code as websockets' ``ServerProtocol`` alone. That
  part is an adapter test with fakes: a stand-in transport and hub record what the
  connection does.
"""

from __future__ import annotations

import logging
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import PayloadTooBig, ProtocolError
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from softphone.core.protocol import HubError
from softphone.hub.connection import ClientConnection
from softphone.hub.frames import frame_end, scan, text_frame

#: Payloads over this are too large (the hub's max_frame), small to be reached often.
LIMIT = 300
QUICK = (Opcode.TEXT, Opcode.PING, Opcode.PONG)
QUIET = logging.getLogger("tests.frames.websocket")
QUIET.setLevel(logging.CRITICAL)


# The parts of a frame, built once: built inside the draw, the strategies cost
# more than the test (hypothesis validates each new one at its first draw).
OPCODES = st.one_of(st.just(0x1), st.just(0x1), st.just(0x9), st.just(0xA),
                    st.integers(0, 15))
FINS = st.one_of(st.just(True), st.just(True), st.booleans())
RSVS = st.one_of(st.just(0), st.just(0), st.just(0), st.integers(0, 7))
MASKED = st.one_of(st.just(True), st.just(True), st.just(True), st.booleans())
PAYLOADS = st.one_of(
    st.text(max_size=40).map(str.encode),
    st.tuples(st.text(min_size=1, max_size=3), st.integers(20, 110)).map(
        lambda t: (t[0] * t[1]).encode()),  # > 125, some > LIMIT
    st.binary(max_size=20),  # mostly not UTF-8
    st.binary(min_size=120, max_size=LIMIT + 20),
    st.just(b"\xed\xa0\x80"),  # an encoded surrogate: not UTF-8
    st.sampled_from([0, 125, 126, LIMIT, LIMIT + 1]).map(b"x".__mul__),  # the edges
)
LENGTH_FORMS = st.sampled_from(["short", "short", "short", "16", "64"])
MASK_KEYS = st.binary(min_size=4, max_size=4)


@st.composite
def client_frame(draw: st.DrawFn) -> bytes:
    """One frame as a client might send it: mostly right, sometimes not at all."""
    opcode = draw(OPCODES)
    fin = draw(FINS)
    rsv = draw(RSVS)
    masked = draw(MASKED)
    payload = draw(PAYLOADS)
    n = len(payload)
    form = draw(LENGTH_FORMS)
    if form == "short" and n < 126:
        length = bytes([n])
    elif form in ("short", "16") and n < 65536:
        length = bytes([126]) + n.to_bytes(2, "big")
    else:
        length = bytes([127]) + n.to_bytes(8, "big")
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode, length[0] | (0x80 if masked else 0)])
    head += length[1:]
    if not masked:
        return head + payload
    key = draw(MASK_KEYS)
    keys = key * (n // 4 + 1)
    return head + key + (int.from_bytes(payload) ^ int.from_bytes(keys[:n])).to_bytes(n)


FRAME_LISTS = st.lists(client_frame(), max_size=8)
ONE_IN_4, ONE_IN_6 = st.integers(0, 3), st.integers(0, 5)
GARBAGE = st.binary(max_size=30)


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """Frames back to back, maybe with garbage after them, maybe cut short."""
    buf = b"".join(draw(FRAME_LISTS))
    if draw(ONE_IN_6) == 0:
        buf += draw(GARBAGE)
    if draw(ONE_IN_4) == 0:
        buf = buf[:draw(st.integers(0, len(buf)))]
    return buf


def parsed_by_websockets(buf: bytes) -> list[tuple[int, Frame | Exception | None]]:
    """(offset, what websockets' ``Frame.parse`` makes of the bytes there) for each frame
    in ``buf``: a frame, the error it raises, or None when it needs more bytes (last)."""
    reader = StreamReader()
    reader.feed_data(buf)
    out: list[tuple[int, Frame | Exception | None]] = []
    while True:
        start = len(buf) - len(reader.buffer)
        parser = Frame.parse(reader.read_exact, mask=True, max_size=LIMIT)
        try:
            next(parser)
        except StopIteration as done:
            out.append((start, done.value))
            continue
        except (ProtocolError, PayloadTooBig) as exc:
            out.append((start, exc))
            return out
        out.append((start, None))
        return out


def pong(payload: bytes) -> bytes:
    return Frame(Opcode.PONG, payload).serialize(mask=False)


@settings(max_examples=1000, deadline=None)
@given(streams())
def test_scan_takes_what_websockets_reads_as_text_ping_pong(buf: bytes) -> None:
    texts, pongs, pos, slow = scan(buf, LIMIT)
    expected_texts: list[bytes] = []
    expected_pongs = b""
    for start, item in parsed_by_websockets(buf):
        if isinstance(item, Frame) and item.fin and item.opcode in QUICK:
            if item.opcode is Opcode.TEXT:
                expected_texts.append(item.data)
            elif item.opcode is Opcode.PING:
                expected_pongs += pong(item.data)
            continue
        stop, stopped_at = start, item
        break
    assert (texts, pongs) == (expected_texts, expected_pongs)
    assert pos == stop
    if slow:  # decided from the frame's head, which is there
        assert len(buf) - pos >= 2
    else:  # waiting for the rest of a frame, as websockets does
        assert stopped_at is None, stopped_at


@settings(max_examples=500, deadline=None)
@given(streams())
def test_frame_end_is_where_websockets_reads_the_next_frame(buf: bytes) -> None:
    """What the slow path cuts the bytes at, one frame for websockets at a time."""
    parsed = parsed_by_websockets(buf)
    for (start, item), (after, _) in zip(parsed, [*parsed[1:], (len(buf), None)],
                                         strict=True):
        if isinstance(item, Frame):
            assert frame_end(buf, start) == after
        elif item is None:  # websockets needs more bytes: so does frame_end
            assert frame_end(buf, start) is None


@settings(max_examples=400, deadline=None)
@given(streams(), st.data())
def test_scan_resumes_where_it_stopped(buf: bytes, data: st.DataObject) -> None:
    """What the hub does with a frame cut across two reads: scan again from ``pos``."""
    whole = scan(buf, LIMIT)
    cut = data.draw(st.integers(0, len(buf)))
    texts, pongs, pos, slow = scan(buf[:cut], LIMIT)
    if slow:
        assert (texts, pongs, pos, slow) == whole
        return
    more_texts, more_pongs, more_pos, more_slow = scan(buf[pos:], LIMIT)
    assert (texts + more_texts, pongs + more_pongs, pos + more_pos, more_slow) == whole


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300)
       | st.tuples(st.text(min_size=1, max_size=8), st.integers(0, 9000)).map(
           lambda t: t[0] * t[1]))  # up to 64K bytes and beyond: all three length forms
def test_text_frame_is_what_websockets_sends(text: str) -> None:
    frame = text_frame(text)
    assert frame == Frame(Opcode.TEXT, text.encode()).serialize(mask=False)
    reader = StreamReader()
    reader.feed_data(frame)
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        assert done.value.data.decode() == text and done.value.fin
    else:
        raise AssertionError("incomplete frame")
    assert not reader.buffer


# -- a whole connection against websockets' ServerProtocol --------------------------


class FakeTransport:
    """Records what the connection writes (even after close(), as asyncio's does)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        raise AssertionError("the stand-in hub never holds a connection")

    def resume_reading(self) -> None:
        raise AssertionError("the stand-in hub never holds a connection")


class FakeHub:
    """A stand-in hub: takes every message, records it and the errors it would send."""

    def __init__(self) -> None:
        self.batch: list[ClientConnection] | None = None
        self.max_frame = LIMIT
        self.got: list[Any] = []

    def on_text(self, conn: ClientConnection, text: str) -> bool:
        self.got.append(text)
        return True

    def answer(self, conn: ClientConnection, error: HubError) -> None:
        self.got.append(("error", error.code))

    def connection_closed(self, conn: ClientConnection) -> None:
        pass


def open_protocol() -> ServerProtocol:
    return ServerProtocol(state=State.OPEN, max_size=LIMIT, logger=QUIET)


def through_the_hub(chunks: list[bytes], eof: bool) -> tuple[list[Any], bytes]:
    hub = FakeHub()
    transport = FakeTransport()
    conn = ClientConnection(hub, "a", open_protocol(), transport)  # type: ignore[arg-type]
    for chunk in chunks:
        if transport.closing:  # a closed transport reads no more
            break
        conn.data_received(chunk)
    if eof and not transport.closing:
        conn.eof_received()
    return hub.got, bytes(transport.out)


def through_websockets(buf: bytes, eof: bool) -> tuple[list[Any], bytes, bool]:
    """websockets' protocol alone, fed one frame at a time, each message handled as the
    hub must as soon as it is read: text decoded (invalid UTF-8 fails the connection,
    1007), binary answered."""
    ws = open_protocol()
    got: list[Any] = []
    out = bytearray()
    closed = False
    parts: list[Frame] = []

    def flush() -> None:
        nonlocal closed
        for data in ws.data_to_send():
            if data:
                out.extend(data)
            else:
                closed = True

    starts = [start for start, _ in parsed_by_websockets(buf)]
    for start, stop in zip(starts, [*starts[1:], len(buf)], strict=True):
        if closed:
            break
        ws.receive_data(buf[start:stop])
        flush()
        for frame in ws.events_received():
            if frame.opcode not in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                continue
            parts.append(frame)
            if not frame.fin:
                continue
            data = b"".join(part.data for part in parts)
            opcode, parts = parts[0].opcode, []
            if opcode is Opcode.BINARY:
                got.append(("error", "bad-message"))
                continue
            try:
                got.append(data.decode())
            except UnicodeDecodeError:
                ws.fail(1007, "invalid UTF-8")
                flush()
                return got, bytes(out), True
    if eof and not closed:
        ws.receive_eof()
        flush()
    return got, bytes(out), False


def close_code(out: bytes) -> tuple[bytes, int | None]:
    """What was written before the server's close frame, and its code."""
    at = out.rfind(b"\x88")
    while at >= 0:
        n = out[at + 1] if at + 1 < len(out) else -1
        if at + 2 + n == len(out) and n >= 2:
            return out[:at], int.from_bytes(out[at + 2:at + 4], "big")
        at = out.rfind(b"\x88", 0, at)
    return out, None


def only_pongs(data: bytes) -> bool:
    while data:
        if data[0] != 0x8A or len(data) < 2 + data[1]:
            return False
        data = data[2 + data[1]:]
    return True


@settings(max_examples=800, deadline=None)
@given(streams(), st.lists(st.integers(0, 400), max_size=4), st.booleans())
def test_a_connection_does_what_websockets_does(buf: bytes, cuts: list[int],
                                                eof: bool) -> None:
    points = sorted({min(c, len(buf)) for c in cuts})
    chunks = [buf[a:b] for a, b in zip([0, *points], [*points, len(buf)], strict=True)]
    got, out = through_the_hub([c for c in chunks if c], eof)
    expected, expected_out, invalid = through_websockets(buf, eof)
    assert got == expected
    if not invalid:
        assert out == expected_out
        return
    # Invalid UTF-8 (1007): the hub has also answered the pings it read along with
    # that message (its quick path answers a read's pings before its messages).
    before, code = close_code(out)
    expected_before, expected_code = close_code(expected_out)
    assert code == expected_code == 1007
    assert before.startswith(expected_before) and only_pongs(before[len(expected_before):])
