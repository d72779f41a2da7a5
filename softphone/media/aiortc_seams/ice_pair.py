"""The ICE candidate pair a peer connection uses, as aioice has it.

aiortc's ``getStats()`` has no entry for the selected candidate pair;
:func:`selected_candidate_pair` reads aioice's nominated pair from the
``Connection`` under aiortc's ``RTCIceTransport`` (:func:`ice_connection`,
also how the other seams reach a peer connection's aioice ``Connection``).
"""

from __future__ import annotations

from typing import Any

import aioice.ice
import aiortc

from softphone.media.aiortc_seams.pinned import SeamMismatch, getsource


def check_internals() -> None:
    """Raise :class:`SeamMismatch` if aioice/aiortc no longer keep what this module reads."""
    probe = aioice.ice.Connection(ice_controlling=True)
    if not isinstance(getattr(probe, "_nominated", None), dict) or \
            not hasattr(probe, "turn_transport"):
        raise SeamMismatch("aioice Connection no longer has _nominated / turn_transport")
    if "self._connection = gatherer._connection" not in \
            getsource(aiortc.RTCIceTransport.__init__):
        raise SeamMismatch("aiortc RTCIceTransport no longer keeps its aioice _connection")


def ice_connection(pc: Any) -> Any:
    """The aioice Connection under a peer connection's first transceiver, or None."""
    for transceiver in pc.getTransceivers():
        dtls = transceiver.sender.transport
        return getattr(getattr(dtls, "transport", None), "_connection", None)
    return None


def _candidate_json(candidate: Any) -> dict[str, Any]:
    return {"type": str(candidate.type), "protocol": str(candidate.transport).lower(),
            "address": str(candidate.host), "port": int(candidate.port),
            "related_address": candidate.related_address,
            "related_port": candidate.related_port}


def selected_candidate_pair(pc: Any) -> dict[str, Any] | None:
    """The nominated ICE pair as aioice has it, or None before one is nominated.

    ``{"local": C, "remote": C, "relay_protocol": "udp"|"tcp"|None,
    "local_candidates": [C, ...]}`` with ``C = {"type", "protocol", "address",
    "port", "related_address", "related_port"}``. aioice pairs from the *base*
    candidate, so a path through our own NAT shows a local ``host`` candidate;
    :func:`softphone.media.rtc.candidate_pair_from_seam` makes the usual report of it.
    ``relay_protocol`` is how we reach the TURN server when the local
    candidate is a relay one.
    """
    connection = ice_connection(pc)
    nominated = getattr(connection, "_nominated", None)
    if not nominated:
        return None
    pair = nominated[min(nominated)]
    local = pair.local_candidate
    return {
        "local": _candidate_json(local),
        "remote": _candidate_json(pair.remote_candidate),
        "relay_protocol": str(connection.turn_transport).lower()
        if local.type == "relay" else None,
        "local_candidates": [_candidate_json(c) for c in connection.local_candidates],
    }
