"""The pure parts of the Redis registry (:mod:`softphone.hub.redis_registry`), sans I/O.

Key and channel names, who holds an id (``<node>|<token>``), the envelopes nodes
send each other on pub/sub, which relayed messages matter for calls, which remote
call peers are gone (:class:`Watch`), and the Lua scripts that make the registry's
Redis operations atomic. ``docs/scale-out.md`` says why it is built this way.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from softphone.core.protocol import CALL_TYPES, ERROR_TYPE
from softphone.hub.limits import CALL_ENDS

DEFAULT_PREFIX: Final = "softphone:"

_SEP: Final = "\x1e"  # never in an id (A-Z a-z 0-9 . _ -) nor a node id we accept
_NODE_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HEAD: Final = re.compile(r'\{"type":"([a-z-]{1,20})"')
#: Remote call peers watched per node, at most (oldest forgotten first).
MAX_WATCHED: Final = 100_000
#: Remote ids whose node a node remembers, at most (oldest forgotten first).
MAX_CACHED: Final = 100_000


@dataclass(frozen=True, slots=True)
class Keys:
    """Key and channel names under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def client(self, client_id: str) -> str:
        return f"{self.prefix}id:{client_id}"

    def node(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    def channel(self, node_id: str) -> str:
        return f"{self.prefix}to:{node_id}"


def holder_value(node_id: str, token: str) -> str:
    return f"{node_id}|{token}"


def parse_holder(value: str) -> tuple[str, str]:
    """``node|token`` -> (node, token)."""
    node, _, token = value.partition("|")
    return node, token


def valid_node_id(node_id: str) -> bool:
    return _NODE_ID.fullmatch(node_id) is not None


def default_node_id() -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:40] or "node"
    return f"{host}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Deliver:
    """Deliver ``text`` to local client ``to``; client ``sender`` sent it from
    ``from_node``. ``forwarded``: a node that no longer held ``to`` sent it on (it
    is not sent on again)."""

    to: str
    from_node: str
    text: str
    sender: str = ""
    forwarded: bool = False


@dataclass(frozen=True, slots=True)
class Replace:
    """The connection ``token`` of local client ``client_id`` was replaced elsewhere."""

    client_id: str
    token: str


@dataclass(frozen=True, slots=True)
class Bounce:
    """A message ``sender`` sent (type ``ref``) found nobody holding ``to`` on arrival."""

    sender: str
    to: str
    ref: str


@dataclass(frozen=True, slots=True)
class Forget:
    """Node ``node`` does not hold ``client_id`` (any more): a presence cache that says
    it does is wrong."""

    client_id: str
    node: str


Envelope = Deliver | Replace | Bounce | Forget

#: Between the envelopes of one pub/sub payload. Never in a relayed message (JSON
#: allows no control character outside strings, nor unescaped inside), an id, a node
#: id or a token.
_BATCH: Final = "\x1d"


def encode_envelope(envelope: Envelope) -> str:
    if isinstance(envelope, Deliver):
        return _SEP.join(("F" if envelope.forwarded else "D", envelope.to, envelope.from_node,
                          envelope.sender, envelope.text))
    if isinstance(envelope, Bounce):
        return _SEP.join(("O", envelope.sender, envelope.to, envelope.ref))
    if isinstance(envelope, Forget):
        return _SEP.join(("X", envelope.client_id, envelope.node))
    return _SEP.join(("R", envelope.client_id, envelope.token))


def deliver_envelope(to: str, from_node: str, sender: str, text: str) -> str:
    """``encode_envelope(Deliver(to, from_node, text, sender))``, without the object
    (every message between nodes is one)."""
    return f"D{_SEP}{to}{_SEP}{from_node}{_SEP}{sender}{_SEP}{text}"


def encode_envelopes(envelopes: list[str]) -> str:
    """One pub/sub payload carrying several encoded envelopes, in order."""
    return _BATCH.join(envelopes)


def decode_envelope(raw: str | bytes) -> Envelope | None:
    """The envelope in a pub/sub payload of one; None if it is not one of ours."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    kind = text[:2]
    if kind in ("D" + _SEP, "F" + _SEP):
        parts = text.split(_SEP, 4)
        if len(parts) == 5:
            return Deliver(parts[1], parts[2], parts[4], parts[3], kind[0] == "F")
    elif kind == "R" + _SEP:
        parts = text.split(_SEP)
        if len(parts) == 3:
            return Replace(parts[1], parts[2])
    elif kind == "O" + _SEP:
        parts = text.split(_SEP)
        if len(parts) == 4:
            return Bounce(parts[1], parts[2], parts[3])
    elif kind == "X" + _SEP:
        parts = text.split(_SEP)
        if len(parts) == 3:
            return Forget(parts[1], parts[2])
    return None


def decode_envelopes(raw: str | bytes) -> list[Envelope | None]:
    """The envelopes of a pub/sub payload, in order (None: one that is not ours)."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    return [decode_envelope(part) for part in text.split(_BATCH)]


class PresenceCache:
    """Which node holds which remote id, as last seen by this node (pure).

    Lets a node send a message straight to the node of its recipient (one
    ``PUBLISH`` for all of them in a turn) instead of asking Redis each time.
    Never trusted blindly: a node that gets a message for an id it does not hold
    sends it on (or back as ``offline``) and says :class:`Forget`; a node with no
    subscriber (dead) is forgotten whole. Bounded: the oldest entries go first.
    """

    def __init__(self, limit: int = MAX_CACHED) -> None:
        self.limit = limit
        self._node: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._node)

    def get(self, client_id: str) -> str | None:
        return self._node.get(client_id)

    def learn(self, client_id: str, node: str) -> None:
        nodes = self._node
        if client_id not in nodes and len(nodes) >= self.limit:
            del nodes[next(iter(nodes))]
        nodes[client_id] = node

    def forget(self, client_id: str, node: str | None = None) -> None:
        """Forget ``client_id`` (only if it is on ``node``, when given)."""
        if node is None or self._node.get(client_id) == node:
            self._node.pop(client_id, None)

    def forget_node(self, node: str) -> int:
        """Forget every id on ``node`` (it is gone); how many there were."""
        gone = [cid for cid, n in self._node.items() if n == node]
        for cid in gone:
            del self._node[cid]
        return len(gone)

    def clear(self) -> None:
        self._node.clear()


def bounce_for(envelope: Deliver) -> Bounce | None:
    """What to send back when nobody here holds ``envelope.to`` (None: not a message)."""
    try:
        obj = json.loads(envelope.text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    sender, type_ = obj.get("from"), obj.get("type")
    if not isinstance(sender, str) or not isinstance(type_, str) or type_ == ERROR_TYPE:
        return None
    return Bounce(sender, envelope.to, type_)


def call_event(text: str) -> tuple[str, str] | None:
    """(type, from) of a relayed message that matters for call tracking, else None.

    The hub encodes ``type`` first (``Message.encode``), so other messages (offers
    with their SDP, candidates) are passed over without parsing them.
    """
    head = _HEAD.match(text)
    if head is not None and head.group(1) not in CALL_TYPES:
        return None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):  # (relayed as it came: it may nest deep)
        return None
    if not isinstance(obj, dict):
        return None
    type_, sender = obj.get("type"), obj.get("from")
    if type_ in CALL_TYPES and isinstance(sender, str):
        return type_, sender
    return None


class Watch:
    """Remote call peers of local clients, and which of them are gone (pure).

    A node watches the remote sender of a ``call-request``/``call-accept`` it
    delivered; ``hangup``/``call-reject`` from it ends the watch. Each heartbeat,
    :meth:`judge` gets what Redis says about the watched ids and returns which are
    gone (their node died) and which are back.
    """

    def __init__(self, limit: int = MAX_WATCHED) -> None:
        self.limit = limit
        self._node: OrderedDict[str, str] = OrderedDict()
        self._gone: set[str] = set()

    def __len__(self) -> int:
        return len(self._node)

    def ids(self) -> list[str]:
        return list(self._node)

    def nodes(self) -> set[str]:
        return set(self._node.values())

    def relayed(self, type_: str, sender: str, from_node: str) -> None:
        if type_ in CALL_ENDS:
            self._node.pop(sender, None)
            self._gone.discard(sender)
        elif type_ in CALL_TYPES:  # a request or an accept
            self._node[sender] = from_node
            self._node.move_to_end(sender)
            self._gone.discard(sender)
            while len(self._node) > self.limit:
                old, _ = self._node.popitem(last=False)
                self._gone.discard(old)

    def judge(self, holders: dict[str, str | None],
              alive: dict[str, bool]) -> tuple[list[str], list[str]]:
        """(gone, back) from each watched id's holder node (None: nobody) and node liveness.

        Gone: the node we last saw it on is dead and no live node holds it. A client
        that left a live node is that node's business (it saw the disconnect).
        """
        gone: list[str] = []
        back: list[str] = []
        for client_id, last_node in list(self._node.items()):
            node = holders.get(client_id)
            if node is not None and alive.get(node, False):
                self._node[client_id] = node
                if client_id in self._gone:
                    self._gone.discard(client_id)
                    back.append(client_id)
            elif client_id in self._gone:
                continue
            elif alive.get(last_node, False):
                del self._node[client_id]  # left a live node: that node tells its peer
            else:
                self._gone.add(client_id)
                gone.append(client_id)
        return gone, back


# -- Lua scripts (atomic on the Redis side) -----------------------------------------

#: Take an id; return the previous holder (or nil).
CLAIM: Final = """
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return old
"""

#: Keep (or take back, after a Redis restart) ids we hold; return the ones another
#: node holds now (we lost them). ARGV[1] = ttl ms, ARGV[i+1] = our value for KEYS[i].
REFRESH: Final = """
local lost = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if (not v) or v == ARGV[i + 1] then
    redis.call('SET', key, ARGV[i + 1], 'PX', ARGV[1])
  else
    lost[#lost + 1] = key
  end
end
return lost
"""

#: Keep this node's key (``<prefix>node:<id>``) if it holds our instance token or
#: nobody holds it (Redis restarted); 0: another live node took the id.
#: ARGV[1] = our instance token, ARGV[2] = ttl ms.
KEEP_NODE: Final = """
local v = redis.call('GET', KEYS[1])
if (not v) or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

#: Release an id only if this connection still holds it.
RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

#: Deliver: look up the holder's node and publish there. Returns {result, node}:
#: result -1: nobody holds the id; -2: the node ARGV[3] holds it (a node sending on
#: a message it got, which it cannot deliver itself: not back to it); else the
#: number of subscribers that got it (0: the node is gone).
ROUTE: Final = """
local v = redis.call('GET', KEYS[1])
if not v then return {-1, ''} end
local node = string.match(v, '^([^|]*)|') or ''
if node == ARGV[3] then return {-2, node} end
return {redis.call('PUBLISH', ARGV[1] .. node, ARGV[2]), node}
"""
