"""What arrives on a hub node's Redis channel (see :mod:`.redis_registry`): messages for
its clients, notices that one of them was replaced, that a cached holder is stale, or
that a message found nobody; messages for an id no longer held are sent on or back."""

from __future__ import annotations

import logging

from softphone.core.protocol import ErrorCode, HubError
from softphone.hub.redis_parts import (
    Deliver,
    Envelope,
    Forget,
    PresenceCache,
    Replace,
    Watch,
    bounce_for,
    call_event,
    decode_envelopes,
    encode_envelope,
)
from softphone.hub.redis_route import Router
from softphone.hub.registry import Peer, RegistryEvents

# (the registry's lines, under the name they have always had)
log = logging.getLogger("softphone.hub.redis_registry")


class Inbox:
    """The channel's side of :class:`~softphone.hub.redis_registry.RedisRegistry` (its
    attributes below: declared here, set there)."""

    node_id: str
    cache: PresenceCache
    router: Router
    _local: dict[str, tuple[Peer, str]]
    _watch: Watch
    _events: RegistryEvents | None

    def _on_payload(self, payload: bytes) -> None:
        """What arrived on our channel: one envelope, or several sent in one turn."""
        envelopes = decode_envelopes(payload)
        if len(envelopes) == 1:
            self._handle(envelopes[0])
        elif self._events is not None:  # written to each client in one piece
            self._events.registry_batch(lambda: self._handle_all(envelopes))
        else:
            self._handle_all(envelopes)

    def _handle_all(self, envelopes: list[Envelope | None]) -> None:
        for envelope in envelopes:
            self._handle(envelope)

    def _handle(self, envelope: Envelope | None) -> None:
        if envelope is None:
            log.debug("redis-registry: ignoring a foreign payload")
            return
        try:
            self._on_envelope(envelope)
        except Exception:  # a bug here must not stop the node's routing
            log.exception("redis-registry: could not handle %s", type(envelope).__name__)

    def _on_envelope(self, envelope: Envelope) -> None:
        if isinstance(envelope, Deliver):
            self._on_deliver(envelope)
            return
        if isinstance(envelope, Forget):
            self.cache.forget(envelope.client_id, envelope.node)
            return
        if isinstance(envelope, Replace):
            held = self._local.get(envelope.client_id)
            if held is not None and held[1] == envelope.token:
                del self._local[envelope.client_id]
                log.info("replaced-elsewhere id=%s", envelope.client_id)
                if self._events is not None:
                    self._events.registry_replaced(held[0])
            return
        held = self._local.get(envelope.sender)  # a Bounce
        if held is not None:
            held[0].deliver(HubError(ErrorCode.OFFLINE, f"{envelope.to} is not connected",
                                     envelope.ref, envelope.to).encode())

    def _on_deliver(self, envelope: Deliver) -> None:
        to = envelope.to
        held = self._local.get(to)
        if held is None:
            self._missed(envelope)
            return
        held[0].deliver(envelope.text)
        sender = envelope.sender
        if sender and sender not in self._local:  # replies go straight to its node
            self.cache.learn(sender, envelope.from_node)
        event = call_event(envelope.text)
        if event is not None:
            self._watch.relayed(event[0], event[1], envelope.from_node)
            if self._events is not None:
                self._events.registry_relayed(event[0], event[1], to)

    def _missed(self, envelope: Deliver) -> None:
        """A message for an id not held here: it moved, left, or the presence the
        sender's node went by was stale. Send it on to the holder, once; if there is
        none, the sender gets ``offline`` after all, as on one node."""
        to, origin = envelope.to, envelope.from_node
        log.debug("redis-registry: %s is not here for a message from %s", to, origin)
        if origin != self.node_id:  # its node is not to send here for `to` again
            self.router.notify(origin, encode_envelope(Forget(to, self.node_id)))

        def bounce(ok: bool) -> None:
            if not ok:
                back = bounce_for(envelope)
                if back is not None:
                    self.router.notify(origin, encode_envelope(back))

        if envelope.forwarded:
            bounce(False)
        else:
            self.router.forward(to, encode_envelope(Deliver(
                to, origin, envelope.text, envelope.sender, True)), bounce)
