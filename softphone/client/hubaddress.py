"""A hub's address (:class:`HubAddress`) and the error when it cannot be reached
(:class:`HubUnreachable`): what the command line needs of the hub client, to
check ``--server`` and to tell an unreachable hub from a call's outcome, without
loading aiohttp (:mod:`softphone.client.signaling`, which re-exports them).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

DEFAULT_SERVER = "http://127.0.0.1:8080"


class HubUnreachable(ConnectionError):
    """The hub could not be reached, or refused us."""


@dataclass(frozen=True)
class HubAddress:
    """A hub's base URL in both of its forms."""

    http: str  # http(s)://host:port
    ws: str  # ws(s)://host:port

    @classmethod
    def parse(cls, url: str) -> HubAddress:
        """Accept ``http(s)://`` or ``ws(s)://`` base URLs (a trailing /ws is fine)."""
        if "://" not in url:
            url = "http://" + url
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        pairs = {"http": ("http", "ws"), "ws": ("http", "ws"),
                 "https": ("https", "wss"), "wss": ("https", "wss")}
        if scheme not in pairs or not parts.hostname:
            raise ValueError(f"invalid hub URL {url!r}: use http://host:port or ws://host:port")
        try:
            parts.port  # noqa: B018 - validates the port
        except ValueError as exc:
            raise ValueError(f"invalid port in hub URL {url!r}") from exc
        path = parts.path.rstrip("/")
        if path.endswith("/ws"):
            path = path[: -len("/ws")]
        http_scheme, ws_scheme = pairs[scheme]
        return cls(urlunsplit((http_scheme, parts.netloc, path, "", "")),
                   urlunsplit((ws_scheme, parts.netloc, path, "", "")))
