"""What the hub does with each message a client sends (see :mod:`.server`): the rate and
size limits, validation (:func:`route_frame`: the decision as values), delivery through
the registry, and the calls it sees begin and end."""

from __future__ import annotations

import functools
import logging

from softphone.core.protocol import (
    CALL_TYPES,
    ErrorCode,
    HubError,
    Message,
    MessageType,
    ProtocolError,
    parse_client_message,
    relay_text,
)
from softphone.hub.config import Clock, HubConfig
from softphone.hub.connection import ClientConnection
from softphone.hub.limits import CallPairs
from softphone.hub.metrics import HubMetrics
from softphone.hub.registry import Registry

# (the hub's lines, under the name they have always had)
log = logging.getLogger("softphone.hub.server")


def route_frame(sender: str, text: str | bytes) -> Message | HubError:
    """Decide what to do with one frame from ``sender``: forward it, or answer an error."""
    try:
        return parse_client_message(text, sender)
    except ProtocolError as exc:
        return HubError(exc.code, str(exc), exc.ref)


class MessageRelay:
    """The messages part of :class:`~softphone.hub.server.Hub` (its attributes below:
    declared here, set there)."""

    config: HubConfig
    registry: Registry
    metrics: HubMetrics
    pairs: CallPairs
    _clock: Clock | None

    def answer(self, conn: ClientConnection, error: HubError) -> None:
        """Tell ``conn`` what was wrong with what it sent."""
        self.metrics.error(error.code)
        conn.deliver(error.encode())

    def _rate_limited(self, conn: ClientConnection, now: float) -> None:
        self.metrics.rate_limited.inc()
        if now - conn.limited_at >= 1.0:  # one notice a second, not one per message
            conn.limited_at = now
            self.answer(conn, HubError(
                ErrorCode.RATE_LIMITED,
                f"more than {self.config.rate:g} messages a second: messages dropped"))

    def on_text(self, conn: ClientConnection, text: str) -> bool:
        """Handle one message; False if ``conn`` must not be read for now (it is held)."""
        bucket = conn.bucket
        if bucket is not None:
            clock = self._clock
            assert clock is not None  # (started)
            now = clock.time()
            if not bucket.allow(now):
                # Dropped. Not reading for a while is the backpressure: a flood fills
                # TCP's buffers instead of the hub's CPU.
                self._rate_limited(conn, now)
                conn.hold()
                clock.call_later(bucket.delay(now), conn.resume)
                return False
        limit = self.config.max_message_bytes
        size = len(text)
        if size > limit or (size * 4 > limit and len(text.encode()) > limit):
            self.answer(conn, HubError(ErrorCode.TOO_LARGE,
                                       f"messages are limited to {limit} bytes"))
            return True
        sender = conn.client_id
        try:  # route_frame's decision, without building a Message
            type_, to, wire = relay_text(text, sender)
        except ProtocolError as exc:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("bad-message id=%s why=%r", sender, str(exc))
            self.answer(conn, HubError(exc.code, str(exc), exc.ref))
            return True
        registry = self.registry
        ok = registry.deliver_nowait(to, wire)
        if ok is None:  # another node's client: the shared registry answers later
            if registry.deliver_later(to, wire, functools.partial(
                    self._delivered, conn, type_, to), sender):
                return True
            conn.hold()  # much is waiting for the shared registry: this client waits too
            registry.when_ready(conn.resume)
            return False
        self._delivered(conn, type_, to, ok)
        return True

    def _delivered(self, conn: ClientConnection, type_: str, to: str, ok: bool) -> None:
        if not ok:
            self.answer(conn, HubError(ErrorCode.OFFLINE, f"{to} is not connected",
                                       type_, to))
            return
        self.metrics.message(type_)
        if type_ in CALL_TYPES:
            sender = conn.client_id
            if self.pairs.relayed(type_, sender, to):
                if type_ == MessageType.CALL_ACCEPT:
                    self.metrics.calls_total.inc()
                    log.info("call-start a=%s b=%s", sender, to)
                else:
                    log.info("call-end by=%s peer=%s how=%s", sender, to, type_)
                self.metrics.calls.set(len(self.pairs))
