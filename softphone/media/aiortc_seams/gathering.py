"""ICE gathering: its timeout, and why a TURN server gave no relay candidate.

Both patch aioice's gathering, in ``aioice.ice``:

1. The gathering timeout. aioice's ``Connection.get_component_candidates``
   waits up to 5 s for a STUN/TURN server to answer (inside aiortc's
   ``setLocalDescription``), so a dead STUN server (any public one, on a
   machine without internet) made each side of a call stall 5 s. We cap it
   at :data:`DEFAULT_GATHER_TIMEOUT` (1 s), or at what
   :func:`limit_gathering` set for that peer connection. The wrapper also
   tells the tasks it starts which connection is gathering
   (:data:`gathering_connection`), for the TURN seam below and for
   :mod:`.fast_setup`'s relay wait.
2. TURN allocation errors. aioice's ``relayed_candidate`` drops the
   exception of a failed TURN allocation (bad or expired credentials: 401)
   without a word, so a call through a TURN server that refused us just
   never connected. We log it and keep it on the aioice ``Connection``
   (:func:`turn_errors`).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
from typing import Any, Final

import aioice.ice

from softphone.media.aiortc_seams.ice_pair import ice_connection
from softphone.media.aiortc_seams.pinned import SeamMismatch, check_versions

log = logging.getLogger(__name__)

#: Seconds aioice may wait for STUN/TURN servers while gathering candidates,
#: unless :func:`limit_gathering` says otherwise for a peer connection.
DEFAULT_GATHER_TIMEOUT: Final = 1.0
_GATHER_TIMEOUT_ATTR: Final = "_softphone_gather_timeout"
_TURN_ERRORS_ATTR: Final = "_softphone_turn_errors"

#: The aioice Connection gathering in this task (its STUN and TURN tasks inherit
#: the context); None outside gathering.
gathering_connection: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "softphone_gathering", default=None)

_original_get_component_candidates: Any = None
_original_relayed_candidate: Any = None


def check_internals() -> None:
    """Raise :class:`SeamMismatch` if aioice no longer gathers as these seams expect."""
    params = inspect.signature(stock_get_component_candidates()).parameters
    if list(params) != ["self", "component", "addresses", "timeout"] or \
            params["timeout"].default != 5:
        raise SeamMismatch("aioice Connection.get_component_candidates changed signature")
    relayed = _original_relayed_candidate or getattr(aioice.ice, "relayed_candidate", None)
    if relayed is None or "turn_server" not in inspect.signature(relayed).parameters:
        raise SeamMismatch("aioice.ice.relayed_candidate is gone or changed signature")


def stock_get_component_candidates() -> Any:
    """aioice's own ``Connection.get_component_candidates`` (before our wrapper)."""
    return _original_get_component_candidates or \
        aioice.ice.Connection.get_component_candidates


def installed() -> bool:
    """Whether :func:`install_gathering` has run."""
    return _original_get_component_candidates is not None


def install_gathering() -> None:
    """Apply the gathering timeout and the TURN error seam (idempotent)."""
    global _original_get_component_candidates
    if installed():
        return
    check_versions()
    check_internals()
    original = aioice.ice.Connection.get_component_candidates
    _original_get_component_candidates = original

    @functools.wraps(original)
    async def get_component_candidates(self: Any, component: int, addresses: list[str],
                                       timeout: int = 5) -> Any:  # noqa: ASYNC109
        token = gathering_connection.set(self)
        limit = getattr(self, _GATHER_TIMEOUT_ATTR, DEFAULT_GATHER_TIMEOUT)
        try:
            return await original(self, component=component, addresses=addresses,
                                  timeout=min(timeout, limit))  # type: ignore[arg-type]
        finally:
            gathering_connection.reset(token)

    aioice.ice.Connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign]
    _install_turn_errors()
    log.debug("gathering seams installed (timeout %.1fs unless set per connection)",
              DEFAULT_GATHER_TIMEOUT)


def limit_gathering(pc: Any, seconds: float) -> None:
    """Let ``pc``'s ICE gathering wait at most ``seconds`` for each STUN/TURN server.

    For a peer connection whose transceivers are added (its gatherers exist).
    """
    if seconds <= 0:
        raise ValueError("the gathering timeout must be > 0 seconds")
    for transceiver in pc.getTransceivers():
        gatherer = transceiver.sender.transport.transport.iceGatherer
        setattr(gatherer._connection, _GATHER_TIMEOUT_ATTR, seconds)


# -- TURN allocation errors ---------------------------------------------------------


def _install_turn_errors() -> None:
    global _original_relayed_candidate
    if _original_relayed_candidate is not None:
        return
    original = aioice.ice.relayed_candidate
    _original_relayed_candidate = original

    @functools.wraps(original)
    async def relayed_candidate(**kwargs: Any) -> Any:
        try:
            return await original(**kwargs)
        except Exception as exc:
            host, port = kwargs.get("turn_server", ("?", 0))
            text = (f"TURN server {host}:{port} over {kwargs.get('turn_transport', 'udp')}: "
                    f"{describe_turn_error(exc)}")
            log.warning("%s; no relay candidate", text)
            connection = gathering_connection.get()
            if connection is not None:
                errors = getattr(connection, _TURN_ERRORS_ATTR, None)
                if errors is None:
                    errors = []
                    setattr(connection, _TURN_ERRORS_ATTR, errors)
                errors.append(text)
            raise

    aioice.ice.relayed_candidate = relayed_candidate


def describe_turn_error(exc: BaseException) -> str:
    """One line for a failed TURN allocation (401: bad or expired credentials)."""
    response = getattr(exc, "response", None)
    attributes = getattr(response, "attributes", None) or {}
    if "ERROR-CODE" in attributes:
        code, reason = attributes["ERROR-CODE"]
        if code == 401:
            return (f"credentials refused ({code} {reason}): the TURN username/credential "
                    "is wrong, expired or missing")
        return f"allocation refused ({code} {reason})"
    if isinstance(exc, TimeoutError):
        return "no answer"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def turn_errors(pc: Any) -> list[str]:
    """Why TURN allocations failed for this peer connection (empty if none did)."""
    return list(getattr(ice_connection(pc), _TURN_ERRORS_ATTR, None) or [])
