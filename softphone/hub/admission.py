"""Accept or refuse a WebSocket upgrade: a pure decision, sans I/O.

:func:`admit` looks at what a client asked for (origin, id, token) and at how
many connections are open, and returns a small frozen :class:`Admission`; the
hub applies it (answers 403, or accepts the upgrade and says why in an
``error`` message before closing, or opens the connection). The order of the
checks is the order a refusal is reported in: origin, connection limits, id,
token.
"""

from __future__ import annotations

import enum
import urllib.parse
from dataclasses import dataclass
from typing import Final

from softphone.core.protocol import ErrorCode, HubError, is_valid_id
from softphone.hub.auth import AuthError, verify_token
from softphone.hub.limits import ConnectionLimiter, OriginPolicy, Refusal

#: Close code for a refused id or token (RFC 6455 policy violation).
CLOSE_BAD_ID: Final = 1008
#: Close code when the hub is full (RFC 6455 "try again later").
CLOSE_FULL: Final = 1013


class Verdict(enum.StrEnum):
    """What happens to an upgrade; the value is the ``refused`` metric's label."""

    ACCEPT = "accept"
    #: A browser page from an origin not allowed: HTTP 403, no WebSocket.
    ORIGIN = "origin"
    #: Too many connections (in total or from this address).
    LIMIT = "limit"
    #: No id, or not a valid one.
    BAD_ID = "bad-id"
    #: The hub needs a token and this one is missing, bad or not for this id.
    UNAUTHORIZED = "unauthorized"


@dataclass(frozen=True, slots=True)
class Upgrade:
    """What the decision needs of one WebSocket upgrade request."""

    #: The request target: ``/ws?id=...[&token=...]``.
    target: str
    #: The ``Origin`` header (None: not sent, so not a browser page).
    origin: str | None
    #: The ``Host`` header: with ``tls``, the hub's own origin as the client sees it.
    host: str
    #: The client's address (connection limits count per address).
    remote: str
    tls: bool = False


@dataclass(frozen=True, slots=True)
class AdmissionRules:
    """The hub's settings the decision applies."""

    origins: OriginPolicy
    #: Tokens signed with this secret are needed (None: an open hub).
    secret: str | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    """The decision. Refused with a WebSocket (:attr:`error` set): the upgrade is
    accepted, the client is told :attr:`error`, then closed with :attr:`close_code`
    and :attr:`close_reason`."""

    verdict: Verdict
    client_id: str = ""
    error: HubError | None = None
    close_code: int = 0
    close_reason: str = ""
    #: Why, for the log.
    why: str = ""
    #: The client asked for the ICE servers on the WebSocket (``?ice=1``).
    wants_ice: bool = False

    @property
    def accepted(self) -> bool:
        return self.verdict is Verdict.ACCEPT

    @property
    def counted(self) -> bool:
        """Whether the connection takes a place in the :class:`ConnectionLimiter`
        (until it closes): every one that gets past the limits."""
        return self.verdict in _COUNTED


_COUNTED: Final = frozenset({Verdict.ACCEPT, Verdict.BAD_ID, Verdict.UNAUTHORIZED})


class FullAlarm:
    """When the hub's log warns that it is full (``max_connections`` reached): at
    the first connection it refuses for that, then again only after it had room
    (a connection got past the limits), not at every refusal (a phone retrying)."""

    __slots__ = ("_said",)

    def __init__(self) -> None:
        self._said = False

    def seen(self, decision: Admission) -> bool:
        """True if this decision is to be warned about (a first refusal: full)."""
        if decision.counted:
            self._said = False
        elif decision.verdict is Verdict.LIMIT and decision.why == Refusal.TOTAL \
                and not self._said:
            self._said = True
            return True
        return False


def admit(upgrade: Upgrade, rules: AdmissionRules, limiter: ConnectionLimiter,
          now: float) -> Admission:
    """Accept or refuse ``upgrade`` (``now``: seconds since the epoch, for tokens).

    ``limiter`` is only asked (:meth:`ConnectionLimiter.check`); the caller counts
    the connection (:meth:`ConnectionLimiter.open`) when :attr:`Admission.counted`.
    """
    if not rules.origins.allows_at(upgrade.origin, upgrade.host, upgrade.tls):
        return Admission(Verdict.ORIGIN, why="origin not allowed")
    refusal = limiter.check(upgrade.remote)
    if refusal is not None:
        return Admission(Verdict.LIMIT, error=HubError(ErrorCode.TOO_MANY_CONNECTIONS,
                                                       refusal.value),
                         close_code=CLOSE_FULL, close_reason=refusal.value, why=refusal.value)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(upgrade.target).query)
    client_id = (query.get("id") or [""])[0]
    if not is_valid_id(client_id):
        reason = "missing id" if not client_id else "invalid id"
        return Admission(Verdict.BAD_ID, client_id, HubError(
            ErrorCode.BAD_MESSAGE,
            f"{reason}: use ?id= with 1 to 64 characters of A-Z a-z 0-9 . _ -"),
            CLOSE_BAD_ID, reason, reason)
    if rules.secret:
        tokens = query.get("token")
        try:
            verify_token(rules.secret, tokens[0] if tokens else None, client_id, now)
        except AuthError as exc:
            return Admission(Verdict.UNAUTHORIZED, client_id,
                             HubError(ErrorCode.UNAUTHORIZED, f"unauthorized: {exc}"),
                             CLOSE_BAD_ID, f"unauthorized: {exc}", str(exc))
    return Admission(Verdict.ACCEPT, client_id, wants_ice=query.get("ice") == ["1"])
