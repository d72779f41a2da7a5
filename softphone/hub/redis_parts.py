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
    """Deliver ``text`` to local client ``to``; it came from ``from_node``."""

    to: str
    from_node: str
    text: str


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


Envelope = Deliver | Replace | Bounce


def encode_envelope(envelope: Envelope) -> str:
    if isinstance(envelope, Deliver):
        return _SEP.join(("D", envelope.to, envelope.from_node, envelope.text))
    if isinstance(envelope, Bounce):
        return _SEP.join(("O", envelope.sender, envelope.to, envelope.ref))
    return _SEP.join(("R", envelope.client_id, envelope.token))


def decode_envelope(raw: str | bytes) -> Envelope | None:
    """The envelope in a pub/sub payload; None if it is not one of ours."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    if text.startswith("D" + _SEP):
        parts = text.split(_SEP, 3)
        if len(parts) == 4:
            return Deliver(parts[1], parts[2], parts[3])
    elif text.startswith("R" + _SEP):
        parts = text.split(_SEP)
        if len(parts) == 3:
            return Replace(parts[1], parts[2])
    elif text.startswith("O" + _SEP):
        parts = text.split(_SEP)
        if len(parts) == 4:
            return Bounce(parts[1], parts[2], parts[3])
    return None


def bounce_for(envelope: Deliver) -> Bounce | None:
    """What to send back when nobody here holds ``envelope.to`` (None: not a message)."""
    try:
        obj = json.loads(envelope.text)
    except ValueError:
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
    except ValueError:
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

#: Release an id only if this connection still holds it.
RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

#: Deliver: look up the holder's node and publish there. -1: nobody holds the id;
#: else the number of subscribers that got it (0: the node is gone).
ROUTE: Final = """
local v = redis.call('GET', KEYS[1])
if not v then return -1 end
local node = string.match(v, '^([^|]*)|')
return redis.call('PUBLISH', ARGV[1] .. node, ARGV[2])
"""
