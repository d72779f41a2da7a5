"""The inputs of benchmarks/fuzz_hub.py: a WebSocket frame encoder that will send
broken frames, and a seeded generator of inputs, each with the answers a correct
hub may give it.

Frame-level inputs go on an open session (``{me}`` in their JSON is the
session's id); connection-level ones (upgrades, heads, tokens, HTTP) each open
a connection of their own. See benchmarks/fuzz_hub.py for how they are run and
counted.
"""

from __future__ import annotations

import base64
import json
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import jwt

HOST = "127.0.0.1"  # the only address the campaign talks to
SECRET = "fuzz-campaign-secret-" + "0123456789abcdef" * 2
LIMIT = 64 * 1024  # the hub's default --max-message-bytes
FRAME_LIMIT = 4 * LIMIT  # past it: close 1009

# --------------------------------------------------------------- frames ---


def ws_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
             masked: bool = True, length: int | None = None, key: bytes | None = None,
             long_form: bool = False) -> bytes:
    """One RFC 6455 frame as a client sends it, or broken on purpose.

    ``length``: the length to declare (default: the payload's); ``long_form``: a
    16-bit length field even for a short payload; ``masked=False``: no mask.
    """
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv & 0x7) << 4 | (opcode & 0xF)])
    mask_bit = 0x80 if masked else 0
    if n < 126 and not long_form:
        head += bytes([mask_bit | n])
    elif n < 65536:
        head += bytes([mask_bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = key if key is not None else os.urandom(4)
    if payload:
        full = (key * (len(payload) // 4 + 1))[:len(payload)]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(full, "big")).to_bytes(
            len(payload), "big")
    return head + key + payload


def text(s: str | bytes, **kw: object) -> bytes:
    return ws_frame(0x1, s.encode() if isinstance(s, str) else s, **kw)  # type: ignore[arg-type]


def close_frame(code: int | None, reason: bytes = b"") -> bytes:
    payload = b"" if code is None else code.to_bytes(2, "big") + reason
    return ws_frame(0x8, payload)


def token_for(client_id: str, *, ttl: float = 7200, secret: str = SECRET,
              sub: str | None = None) -> str:
    return jwt.encode({"sub": sub or client_id, "exp": int(time.time() + ttl)}, secret,
                      algorithm="HS256")


def upgrade_head(path: str, *, headers: dict[str, str] | None = None,
                 drop: tuple[str, ...] = (), method: str = "GET",
                 version: str = "HTTP/1.1") -> bytes:
    base = {"Host": f"{HOST}", "Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
            "Sec-WebSocket-Version": "13"}
    base.update(headers or {})
    lines = [f"{method} {path} {version}"] + [f"{k}: {v}" for k, v in base.items()
                                              if k not in drop]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def ws_path(client_id: str, token: str | None) -> str:
    return f"/ws?id={client_id}" + (f"&token={token}" if token is not None else "")


# ---------------------------------------------------------------- cases ---


@dataclass
class Case:
    """One input and the answers a correct hub may give it."""

    cls: str
    kind: str
    expect: frozenset[str]
    #: Frame-level (sent on an open session) or a connection of its own.
    frames: list[bytes] = field(default_factory=list)
    #: Events to read for the verdict (e.g. 2 for "pong+msg").
    replies: int = 1
    #: The session ends with it (a close is expected).
    fatal: bool = False
    #: Connection-level: the bytes of the request (and what follows), how to send them.
    head: bytes = b""
    drip: float = 0.0  # seconds over which the head is dripped
    stall: bool = False  # send ``head`` and never finish: the hub must close
    half_close: bool = False  # shut our side down after ``head``
    after_101: str = "msg"  # after a 101 with a valid token: send a message, or expect error
    split: bool = False  # frames written in small TCP pieces
    http: bool = False  # not an upgrade: any HTTP answer from aiohttp


def s(*items: str) -> frozenset[str]:
    return frozenset(items)


WEIGHTS: dict[str, float] = {
    "malformed-json": 16, "wrong-shape": 12, "huge-json": 3, "deep-nesting": 5,
    "invalid-utf8": 5, "fragmented": 9, "tcp-split": 4, "binary": 5, "oversized": 3,
    "control-abuse": 11, "bad-upgrade": 9, "partial-upgrade": 3, "slowloris": 0.6,
    "token-garbage": 8, "http-garbage": 3,
}


class Generator:
    """Deterministic inputs from a seed; ``me`` is filled in per session."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.classes = list(WEIGHTS)
        self.weights = [WEIGHTS[c] for c in self.classes]
        #: The id of the session the frame-level cases are made for.
        self.me = "f0"
        self.edge = 0

    # -- helpers
    def t(self, message: str | bytes, **kw: object) -> bytes:
        """A text frame of ``message``, ``{me}`` being the session's id."""
        if isinstance(message, bytes):
            return text(message.replace(b"{me}", self.me.encode()), **kw)
        return text(message.replace("{me}", self.me), **kw)

    def sized(self, message: str, normal: frozenset[str], kind: str, cls: str) -> Case:
        """A case for ``message`` whose answer depends on its size."""
        n = len(message.replace("{me}", self.me).encode())
        if n > FRAME_LIMIT:
            return Case(cls, kind + "-over-frame-limit", s("close:1009"), [self.t(message)],
                        fatal=True)
        if n > LIMIT:
            return Case(cls, kind + "-over-message-limit", s("error:too-large"),
                        [self.t(message)])
        return Case(cls, kind, normal, [self.t(message)])

    def valid(self, to: str = "{me}", kind: str = "offer") -> str:
        data = {"type": "offer", "sdp": "v=0\r\n" + "a=x\r\n" * self.rng.randint(0, 30)}
        if kind == "candidate":
            data = {"candidate": "candidate:1 1 udp 1 192.0.2.1 9 typ host", "sdpMid": "0",
                    "sdpMLineIndex": 0}
        return json.dumps({"type": kind, "to": to, "data": data}).replace("{me}", self.me)

    def junk(self, n: int) -> str:
        alphabet = '{}[]":,0123456789.eE+-tfnrua lsx\\/\t\n\u00e9\u2028'
        return "".join(self.rng.choice(alphabet) for _ in range(n))

    def case(self) -> Case:
        cls = self.rng.choices(self.classes, self.weights)[0]
        return getattr(self, "c_" + cls.replace("-", "_"))(cls)

    # -- frame-level classes
    def c_malformed_json(self, cls: str) -> Case:
        r = self.rng
        v = self.valid()
        choice = r.randrange(8)
        if choice == 0:
            t = v[: r.randrange(1, len(v))]  # truncated
        elif choice == 1:
            i = r.randrange(len(v))
            t = v[:i] + r.choice('{}[]",:x\\') + v[i + 1:]  # one character changed
            if _is_json(t):
                t = t + "}"
        elif choice == 2:
            t = self.junk(r.randint(0, 300))
        elif choice == 3:
            t = r.choice(["", " ", "{", "}", "[", "nul", "NaN", "Infinity", "-Infinity",
                          '{"type": "offer", "to": "x", "data": NaN}', "{'type': 'offer'}",
                          '{"type":"offer","to":"x"}}', '{"a":1}{"b":2}', "\ufeff{}",
                          '{"type":"offer","to":"x","data":"\\ud800"', '"\\x"'])
        elif choice == 4:
            t = v + r.choice([",", "x", "]", "{}", " 1"])  # trailing garbage
        elif choice == 5:
            t = v.replace('"', "'", r.randint(1, 3))
        elif choice == 6:
            t = '{"type":"offer","to":"{me}","data":' + '"' + "\\" * r.randint(1, 5)
        else:
            t = "".join(chr(r.randint(1, 0x2FFF)) for _ in range(r.randint(1, 80)))
        if _is_json(t) and isinstance(json.loads(t), dict):
            t = "{" + t  # stay malformed
        return Case(cls, f"malformed-{choice}", s("error:bad-message"), [self.t(t)])

    def c_wrong_shape(self, cls: str) -> Case:
        r = self.rng
        choice = r.randrange(10)
        if choice == 0:
            obj = r.choice([[], [1, 2], 1, -0.5, "str", True, None, [{"type": "offer"}]])
            return Case(cls, "not-object", s("error:bad-message"), [self.t(json.dumps(obj))])
        if choice == 1:
            obj = {"type": r.choice([1, None, [], {}, "OFFER", "", "x" * 200, "error"]),
                   "to": "{me}"}
            return Case(cls, "bad-type", s("error:bad-message"), [self.t(json.dumps(obj))])
        if choice == 2:
            obj = {"type": "offer", "to": r.choice([None, 1, [], "", "has space", "x" * 65,
                                                    "\u00e9", "a/b", "../x", "{me}\u0000"])}
            return Case(cls, "bad-to", s("error:bad-message"), [self.t(json.dumps(obj))])
        if choice == 3:
            return Case(cls, "missing-to", s("error:bad-message"),
                        [self.t('{"type":"hangup"}')])
        if choice == 4:
            kind = r.choice(["offer", "answer", "candidate", "hangup", "call-request"])
            return Case(cls, "valid-to-self", s("msg"), [self.t(self.valid(kind=kind))])
        if choice == 5:
            return Case(cls, "to-offline", s("error:offline"),
                        [self.t(self.valid(to=f"nobody-{r.randrange(10**6)}"))])
        if choice == 6:  # a forged "from" and extra fields: dropped / overwritten
            obj = {"type": "hangup", "to": "{me}", "from": "someone-else", "x": [1, {"y": 2}],
                   "data": {"reason": "\u2028"}}
            return Case(cls, "forged-from", s("msg"), [self.t(json.dumps(obj))])
        if choice == 7:
            obj = {"type": "offer", "to": "{me}", "data": r.choice(
                [None, 0, "", [], {"sdp": 1}, "x" * 1000, {"\u0000": "\udbff"}])}
            return Case(cls, "odd-data", s("msg", "error:bad-message"),
                        [self.t(json.dumps(obj))])
        if choice == 8:  # duplicate keys, whitespace around
            t = ' \n{"type":"offer","type":"hangup","to":"nobody-x","to":"{me}"} \t'
            return Case(cls, "duplicate-keys", s("msg"), [self.t(t)])
        return Case(cls, "empty-object", s("error:bad-message"), [self.t("{}")])

    def c_huge_json(self, cls: str) -> Case:
        r = self.rng
        size = r.choice([LIMIT - 200, LIMIT + 10, 2 * LIMIT, FRAME_LIMIT - 100,
                         FRAME_LIMIT + 1, 600_000, r.randint(1000, 3 * LIMIT)])
        pad = "x" * max(0, size - 60)
        t = '{"type":"offer","to":"{me}","data":"' + pad + '"}'
        return self.sized(t, s("msg"), "huge", cls)

    def c_deep_nesting(self, cls: str) -> Case:
        r = self.rng
        opener, closer = r.choice([("[", "]"), ('{"a":', "}")])
        inner = "1" if opener != "[" else ""
        band = r.randrange(3)
        if band == 1:  # around the recursion limit, in turn, with a field that makes the
            # hub encode the data again (not only pass the text on)
            self.edge = (self.edge + 1) % 80
            depth, extra = 940 + self.edge, r.choice([',"from":"x"', ',"x":1'])
        else:
            depth = r.randint(2, 200) if band == 0 else r.randint(5_000, 60_000)
            extra = r.choice(["", ',"from":"x"', ',"x":1'])
        t = '{"type":"offer","to":"{me}","data":' + opener * depth + inner + closer * depth \
            + extra + "}"
        if r.random() < 0.2:
            t = opener * depth  # unterminated
        kind = f"deep-{('shallow', 'edge', 'deep')[band]}" + (f"-{depth}" if band == 1 else "")
        return self.sized(t, s("msg", "error:bad-message"), kind, cls)

    def c_invalid_utf8(self, cls: str) -> Case:
        r = self.rng
        bad = r.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf",
                        b"\xe2\x82", os.urandom(8) + b"\xfe"])
        v = self.valid().encode()
        i = r.randrange(len(v))
        payload = v[:i] + bad + v[i:]
        if r.random() < 0.3:  # in the second fragment
            return Case(cls, "invalid-utf8-fragmented", s("close:1007"),
                        [ws_frame(0x1, payload[:i], fin=False), ws_frame(0x0, payload[i:])],
                        fatal=True)
        return Case(cls, "invalid-utf8", s("close:1007"), [self.t(payload)], fatal=True)

    def c_fragmented(self, cls: str) -> Case:
        r = self.rng
        v = self.valid().encode()
        cuts = sorted(r.sample(range(1, len(v)), min(len(v) - 1, r.randint(1, 8))))
        parts = [v[a:b] for a, b in zip([0, *cuts], [*cuts, len(v)], strict=True)]
        frames = [ws_frame(0x1 if i == 0 else 0x0, p, fin=i == len(parts) - 1)
                  for i, p in enumerate(parts)]
        choice = r.randrange(6)
        if choice == 0:
            return Case(cls, "fragmented", s("msg"), frames)
        if choice == 1:  # a ping between fragments (allowed)
            frames.insert(1, ws_frame(0x9, b"in-between"))
            return Case(cls, "ping-inside", s("pong+msg", "msg+pong"), frames, replies=2)
        if choice == 2:
            return Case(cls, "continuation-first", s("close:1002"),
                        [ws_frame(0x0, b'{"a":1}')], fatal=True)
        if choice == 3:  # a new data frame while a message is open
            return Case(cls, "text-inside-text", s("close:1002"),
                        [frames[0] if len(frames) > 1 else ws_frame(0x1, v, fin=False),
                         self.t(v)], fatal=True)
        if choice == 4:
            bframes = [ws_frame(0x2 if i == 0 else 0x0, p, fin=i == len(parts) - 1)
                       for i, p in enumerate(parts)]
            return Case(cls, "fragmented-binary", s("error:bad-message"), bframes)
        empties = [ws_frame(0x1, b"", fin=False), ws_frame(0x0, b"", fin=False),
                   ws_frame(0x0, v)]
        return Case(cls, "empty-fragments", s("msg"), empties)

    def c_tcp_split(self, cls: str) -> Case:
        v = self.valid()
        frames = [self.t(v)]
        if self.rng.random() < 0.5:
            frames.append(ws_frame(0x9, b"p"))
            return Case(cls, "split-with-ping", s("msg+pong", "pong+msg"), frames, replies=2,
                        split=True)
        return Case(cls, "split", s("msg"), frames, split=True)

    def c_binary(self, cls: str) -> Case:
        payload = self.rng.choice([b"", os.urandom(self.rng.randint(1, 2000)),
                                   self.valid().encode()])
        return Case(cls, "binary", s("error:bad-message"), [ws_frame(0x2, payload)])

    def c_oversized(self, cls: str) -> Case:
        r = self.rng
        choice = r.randrange(4)
        if choice == 0:
            n = r.choice([FRAME_LIMIT + 1, 10**7, 2**32, 2**62])
            return Case(cls, "declared-too-long", s("close:1009"),
                        [ws_frame(0x1, b"", length=n)], fatal=True)
        if choice == 1:  # 64-bit length with the top bit set (forbidden)
            return Case(cls, "length-msb", s("close:1002", "close:1009"),
                        [ws_frame(0x1, b"", length=2**63 + 5)], fatal=True)
        if choice == 2:  # non-minimal length encoding of a valid message
            return Case(cls, "long-form-length", s("msg", "close:1002"),
                        [self.t(self.valid(), long_form=True)])
        frames = [ws_frame(0x0 if i else 0x1, b"x" * (LIMIT // 2), fin=False) for i in range(9)]
        return Case(cls, "fragments-add-up", s("close:1009"), [*frames, ws_frame(0x0, b"}")],
                    fatal=True)

    def c_control_abuse(self, cls: str) -> Case:
        r = self.rng
        choice = r.randrange(14)
        if choice == 0:
            payload = os.urandom(r.randint(0, 125))
            return Case(cls, "ping", s("pong"), [ws_frame(0x9, payload)])
        if choice == 1:
            n = r.randint(2, 60)
            return Case(cls, "ping-flood", s("+".join(["pong"] * n)),
                        [b"".join(ws_frame(0x9, b"%d" % i) for i in range(n))], replies=n)
        if choice == 2:  # unsolicited pong: nothing to answer; the next message still is
            return Case(cls, "pong-then-msg", s("msg"),
                        [ws_frame(0xA, os.urandom(r.randint(0, 125))), text(self.valid())])
        if choice == 3:
            return Case(cls, "ping-too-long", s("close:1002"),
                        [ws_frame(0x9, b"x" * r.randint(126, 5000))], fatal=True)
        if choice == 4:
            return Case(cls, "ping-fragmented", s("close:1002"),
                        [ws_frame(0x9, b"x", fin=False)], fatal=True)
        if choice == 5:
            return Case(cls, "close-normal", s("close:1000"), [close_frame(1000, b"bye")],
                        fatal=True)
        if choice == 6:
            return Case(cls, "close-empty", s("close:1005"), [close_frame(None)], fatal=True)
        if choice == 7:
            return Case(cls, "close-one-byte", s("close:1002"), [ws_frame(0x8, b"\x03")],
                        fatal=True)
        if choice == 8:
            code = r.choice([0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
            return Case(cls, "close-bad-code", s("close:1002"), [close_frame(code)],
                        fatal=True)
        if choice == 9:
            code = r.choice([1001, 1008, 3000, 4999, r.randint(3000, 4999)])
            return Case(cls, "close-app-code", s(f"close:{code}"), [close_frame(code, b"x")],
                        fatal=True)
        if choice == 10:
            return Case(cls, "close-bad-reason", s("close:1007"),
                        [close_frame(1000, b"\xff\xfe")], fatal=True)
        if choice == 11:
            op = r.choice([3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
            return Case(cls, "unknown-opcode", s("close:1002"), [ws_frame(op, b"x")],
                        fatal=True)
        if choice == 12:
            return Case(cls, "rsv-bits", s("close:1002"),
                        [self.t(self.valid(), rsv=r.randint(1, 7))], fatal=True)
        return Case(cls, "unmasked", s("close:1002"), [self.t(self.valid(), masked=False)],
                    fatal=True)

    # -- connection-level classes
    def c_bad_upgrade(self, cls: str) -> Case:
        r = self.rng
        me = f"u{r.randrange(10**9)}"
        good = ws_path(me, token_for(me))
        choice = r.randrange(13)
        if choice == 0:
            return Case(cls, "no-upgrade-header", s("http:426", "http:400"),
                        head=upgrade_head(good, drop=("Upgrade",)))
        if choice == 1:
            return Case(cls, "no-key", s("http:400", "http:426"),
                        head=upgrade_head(good, drop=("Sec-WebSocket-Key",)))
        if choice == 2:
            return Case(cls, "bad-key", s("http:400"),
                        head=upgrade_head(good, headers={"Sec-WebSocket-Key": "short"}))
        if choice == 3:
            return Case(cls, "bad-version", s("http:426", "http:400"),
                        head=upgrade_head(good, headers={"Sec-WebSocket-Version": "8"}))
        if choice == 4:
            return Case(cls, "post", s("http:404", "http:405"),
                        head=upgrade_head(good, method="POST"), http=True)
        if choice == 5:
            return Case(cls, "http-1.0", s("http:400", "http:505", "eof"),
                        head=upgrade_head(good, version="HTTP/1.0"))
        if choice == 6:
            return Case(cls, "foreign-origin", s("http:403"),
                        head=upgrade_head(good, headers={"Origin": "https://evil.example"}))
        if choice == 7:
            return Case(cls, "no-id", s("101+error:bad-message+close:1008"),
                        head=upgrade_head("/ws?token=" + token_for("x")), after_101="error")
        if choice == 8:
            bad = r.choice(["", "a%20b", "x" * 65, "%C3%A9", "a/b", "%00", "a&id=b"])
            return Case(cls, "bad-id", s("101+error:bad-message+close:1008",
                                         "101+error:unauthorized+close:1008"),
                        head=upgrade_head(f"/ws?id={bad}&token={token_for('x')}"),
                        after_101="error")
        if choice == 9:  # header section over 16 KiB: aiohttp answers it
            return Case(cls, "huge-head", s("http:400", "http:431", "http:413"),
                        head=upgrade_head(good, headers={"X-Pad": "y" * r.randint(17_000,
                                                                                 40_000)}),
                        http=True)
        if choice == 10:
            garbage = r.choice([b"GET /ws?id=a HTTP/1.1\r\nBad Header\r\n\r\n",
                                b"GET /ws?\x00\xff HTTP/1.1\r\n\r\n",
                                b"GET /ws?id=a HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n",
                                b"GET /ws?id=a HTTP/9.9\r\n\r\n"])
            return Case(cls, "garbage-ws-head", s("http:400", "http:426", "eof"), head=garbage)
        if choice == 11:  # a valid message right behind the request
            return Case(cls, "early-frame", s("101+msg"),
                        head=upgrade_head(good) + self.t(self.valid(to=me)), after_101="read")
        return Case(cls, "valid-upgrade", s("101+msg"), head=upgrade_head(good))

    def c_partial_upgrade(self, cls: str) -> Case:
        r = self.rng
        me = f"p{r.randrange(10**9)}"
        head = upgrade_head(ws_path(me, token_for(me)))
        if r.random() < 0.5:
            cut = r.randrange(1, len(head) - 2)
            return Case(cls, "head-then-eof", s("eof"), head=head[:cut], half_close=True)
        # A complete upgrade, then half a frame, then EOF.
        frame = self.t(self.valid(to=me))
        return Case(cls, "frame-then-eof", s("101+eof", "101+close:1006"),
                    head=head + frame[: r.randrange(1, len(frame))], half_close=True,
                    after_101="read")

    def c_slowloris(self, cls: str) -> Case:
        r = self.rng
        me = f"s{r.randrange(10**9)}"
        head = upgrade_head(ws_path(me, token_for(me)))
        choice = r.randrange(3)
        if choice == 0:
            return Case(cls, "drip-complete", s("101+msg"), head=head,
                        drip=r.uniform(0.5, 3.0))
        if choice == 1:
            return Case(cls, "stalled-head", s("eof"), head=head[: r.randrange(1, len(head) - 4)],
                        stall=True)
        return Case(cls, "stalled-frame", s("101+eof"), head=head + self.t("{")[:3], stall=True,
                    after_101="read")

    def c_token_garbage(self, cls: str) -> Case:
        r = self.rng
        me = f"t{r.randrange(10**9)}"
        choice = r.randrange(9)
        refused = s("101+error:unauthorized+close:1008")
        good = token_for(me)
        if choice == 0:
            tok = None
        elif choice == 1:
            tok = "".join(r.choice("abcXYZ019-_.%~") for _ in range(r.randint(1, 400)))
        elif choice == 2:
            tok = good[: r.randrange(1, len(good))]
        elif choice == 3:
            tok = token_for(me, secret="another-secret-of-the-right-length-0123456789")
        elif choice == 4:
            tok = token_for(me, ttl=-60)
        elif choice == 5:
            tok = token_for(me, sub="someone-else")
        elif choice == 6:
            header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=")
            body = base64.urlsafe_b64encode(
                json.dumps({"sub": me, "exp": int(time.time()) + 999}).encode()).rstrip(b"=")
            tok = (header + b"." + body + b".").decode()
        elif choice == 7:
            tok = "%FF%FE%00" + "%" + "".join(r.choice("0123456789ABCDEFG") for _ in range(6))
        else:
            tok = good + "&token=" + good + "x"  # two tokens: the first counts
            return Case(cls, "two-tokens", s("101+msg", "101+error:unauthorized+close:1008"),
                        head=upgrade_head(ws_path(me, tok)), after_101="either")
        return Case(cls, f"token-{choice}", refused, head=upgrade_head(ws_path(me, tok)),
                    after_101="error")

    def c_http_garbage(self, cls: str) -> Case:
        r = self.rng
        choice = r.randrange(6)
        if choice == 0:
            return Case(cls, "healthz", s("http:200"), http=True,
                        head=b"GET /healthz?" + os.urandom(4).hex().encode()
                        + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        if choice == 1:
            return Case(cls, "unknown-path", s("http:404", "http:400"), http=True,
                        head=b"GET /" + self.junk(20).encode("utf-8", "replace").replace(
                            b" ", b"_").replace(b"\n", b"_").replace(b"\t", b"_")
                        + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        if choice == 2:
            method = r.choice([b"PUT", b"DELETE", b"PATCH", b"BREW", b"TRACE"])
            return Case(cls, "method", s("http:404", "http:405", "http:400", "http:501"),
                        http=True, head=method + b" /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        if choice == 3:
            return Case(cls, "binary-garbage", s("http:400", "eof"), http=True,
                        head=os.urandom(r.randint(1, 3000)) + b"\r\n\r\n")
        if choice == 4:
            return Case(cls, "options", s("http:204", "http:200"), http=True,
                        head=b"OPTIONS /ice-servers HTTP/1.1\r\nHost: x\r\n\r\n")
        return Case(cls, "bad-content-length", s("http:400", "http:200", "http:404",
                                                 "http:413"), http=True,
                    head=b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")


def _is_json(t: str) -> bool:
    try:
        json.loads(t)
    except (ValueError, RecursionError):
        return False
    return True


@dataclass
class Session:
    """Frame-level cases on one connection (at most one fatal, last), or one
    connection-level case."""

    cases: list[Case]
    me: str = ""
    conn_case: Case | None = None


def sessions(gen: Generator, total: int, per_session: int = 30) -> Iterator[Session]:
    """The inputs, grouped: frame-level ones share a session (and its id) until one
    ends it or there are ``per_session``; connection-level ones go alone."""
    batch: list[Case] = []
    number = 0
    gen.me = f"f{number}"
    for _ in range(total):
        case = gen.case()
        if case.head or case.http:
            yield Session([], conn_case=case)
            continue
        batch.append(case)
        if case.fatal or len(batch) >= per_session:
            yield Session(batch, gen.me)
            batch = []
            number += 1
            gen.me = f"f{number}"
    if batch:
        yield Session(batch, gen.me)
