"""The hub's Prometheus metrics (``GET /metrics``), through ``prometheus_client``.

Each :class:`HubMetrics` has its own registry, so several hubs in one process
(tests, the demo) do not share counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from softphone.core.protocol import ErrorCode, MessageType
from softphone.core.version import __version__

__all__ = ["CONTENT_TYPE_LATEST", "HubMetrics"]


class HubMetrics:
    """Connections, messages by type, errors by code, calls."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        #: softphone_hub_info{version="..."} 1: which release answers here.
        Info("softphone_hub", "This hub's softphone release",
             registry=self.registry).info({"version": __version__})
        self.connections = Gauge(
            "softphone_hub_connections", "Clients connected now", registry=self.registry)
        self.connections_total = Counter(
            "softphone_hub_connections_opened", "Client connections accepted",
            registry=self.registry)
        self.refused = Counter(
            "softphone_hub_connections_refused", "Connections refused, by reason",
            ["reason"], registry=self.registry)
        self.messages = Counter(
            "softphone_hub_messages", "Messages relayed, by type", ["type"],
            registry=self.registry)
        self.errors = Counter(
            "softphone_hub_errors", "Error messages sent to clients, by code", ["code"],
            registry=self.registry)
        self.rate_limited = Counter(
            "softphone_hub_rate_limited", "Messages dropped by the rate limit",
            registry=self.registry)
        self.calls = Gauge(
            "softphone_hub_calls", "Calls in progress (accepted, not yet hung up)",
            registry=self.registry)
        self.calls_total = Counter(
            "softphone_hub_calls_started", "Calls accepted", registry=self.registry)
        # Children resolved once.
        self._by_type = {t.value: self.messages.labels(t.value) for t in MessageType}
        self._by_code = {c.value: self.errors.labels(c.value) for c in ErrorCode}
        #: Messages relayed since the last exposition, by type: the relay path adds
        #: to a plain int (a counter's inc() takes a lock), /metrics adds them up.
        self._relayed = dict.fromkeys(self._by_type, 0)

    def message(self, type_: str) -> None:
        relayed = self._relayed
        n = relayed.get(type_)
        if n is not None:
            relayed[type_] = n + 1

    def _collect(self) -> None:
        for type_, n in self._relayed.items():
            if n:
                self._relayed[type_] = 0
                self._by_type[type_].inc(n)

    def error(self, code: str) -> None:
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self.errors.labels(code)
        child.inc()

    def exposition(self) -> bytes:
        self._collect()
        return generate_latest(self.registry)
