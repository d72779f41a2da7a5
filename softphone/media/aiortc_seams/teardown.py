"""A closed peer connection's reference cycles, cut at once (issue 15).

After ``RTCPeerConnection.close()`` aiortc's objects still refer to each
other in cycles: each DTLS and ICE transport's event listeners are the peer
connection's bound methods, aioice's check list holds candidate pairs whose
STUN protocols hold the ICE connection, and our seams' closures on a sender
or receiver refer back to it. Only the cyclic garbage collector frees such
objects, and with them everything they reach (the call's audio path, its
buffers and queues): in a bot answering call after call that was some 60
ended calls at a time, and the Python heap grew with each wave of them.
:func:`unlink_closed` cuts those links once the connection is closed, so
the call's objects go as soon as nothing else holds them.
"""

from __future__ import annotations

import inspect
from typing import Any, Final

import aioice
import aiortc
import pyee

from softphone.media.aiortc_seams.pinned import SeamMismatch, getsource

#: What :func:`unlink_closed` relies on in aioice: the check list, which its
#: ``close()`` leaves as it was (it clears the nominated pairs and protocols).
_ICE_NEEDLES: Final = (
    "self._check_list: list[CandidatePair] = []",
    "self._nominated.clear()",
    "self._protocols.clear()",
)


def check_internals() -> None:
    """Raise :class:`SeamMismatch` if the internals :func:`unlink_closed` cuts changed."""
    ice = getsource(aioice.Connection)
    if any(needle not in ice for needle in _ICE_NEEDLES):
        raise SeamMismatch("aioice's Connection no longer keeps its check list as "
                           "unlink_closed expects")
    if "self._connection = Connection(" not in getsource(aiortc.RTCIceGatherer) or \
            not issubclass(aiortc.RTCDtlsTransport, pyee.EventEmitter) or \
            not issubclass(aiortc.RTCIceTransport, pyee.EventEmitter):
        raise SeamMismatch("aiortc's transports are no longer event emitters over an "
                           "aioice Connection")
    if aiortc.RTCPeerConnection.close.__qualname__ != "RTCPeerConnection.close":
        raise SeamMismatch("aiortc's RTCPeerConnection.close is not aiortc's own")


def parts_of(pc: Any) -> list[Any]:
    """The peer connection's objects: itself, its transceivers, their senders,
    receivers, DTLS and ICE transports, ICE gatherers and aioice connections."""
    parts: list[Any] = [pc]
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        ice = dtls.transport
        parts += [transceiver, transceiver.sender, transceiver.receiver, dtls, ice,
                  ice.iceGatherer, ice.iceGatherer._connection]
    unique: dict[int, Any] = {id(part): part for part in parts}
    return list(unique.values())


def _shadowing(part: Any) -> list[str]:
    """Instance attributes of ``part`` that replace one of its class's methods
    (a seam's closure: it may refer back to ``part``)."""
    own = getattr(part, "__dict__", {})
    return [name for name, value in own.items()
            if callable(value) and inspect.isfunction(getattr(type(part), name, None))]


def unlink_closed(pc: Any) -> int:
    """Cut the reference cycles of ``pc``, closed (``close()`` returned); how many
    links it cut (0 if ``pc`` is not closed).

    Each transport's event listeners go (a closed connection emits nothing
    more: aiortc drops the peer connection's own listeners as it closes);
    the seams' closures on its senders, receivers and ICE connections give
    way to the class's own methods again; aioice's check list is emptied
    (``close()`` empties the rest of the connection's pairs and protocols).
    """
    if pc.signalingState != "closed":
        return 0
    cut = 0
    for part in parts_of(pc):
        if isinstance(part, pyee.EventEmitter):
            cut += sum(len(handlers) for handlers in part._events.values())
            part.remove_all_listeners()
        for name in _shadowing(part):
            delattr(part, name)
            cut += 1
        if isinstance(part, aioice.Connection) and part._check_list:
            cut += len(part._check_list)
            part._check_list = []
    return cut
