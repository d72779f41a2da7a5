"""One DTLS certificate for all of a call's peer connections.

The verification code (:mod:`softphone.core.sas`) is derived from both DTLS
fingerprints. aiortc's ``RTCPeerConnection`` makes a fresh certificate for
each connection and has no ``configuration.certificates`` (as browsers have),
so a media restart's fresh connection would change the code the users read to
each other. :func:`use_certificate` gives a new connection the call's first
certificate instead (:func:`certificate_of`), before any of its transports is
made: aiortc 1.16 keeps it in the private ``__certificates`` list and hands
``certificates[0]`` to each ``RTCDtlsTransport`` it creates.
"""

from __future__ import annotations

from typing import Any

import aiortc

from softphone.media.aiortc_seams.pinned import SeamMismatch, getsource

#: The name-mangled list of the connection's certificates.
_CERTIFICATES = "_RTCPeerConnection__certificates"


def check_internals() -> None:
    """Raise :class:`SeamMismatch` if aiortc no longer keeps one certificate per
    connection in ``__certificates`` and hands it to each DTLS transport it makes."""
    init = getsource(aiortc.RTCPeerConnection.__init__)
    whole = getsource(aiortc.RTCPeerConnection)
    dtls = getsource(aiortc.RTCDtlsTransport.__init__)
    if "self.__certificates = [RTCCertificate.generateCertificate()]" not in init or \
            "RTCDtlsTransport(iceTransport, self.__certificates)" not in whole or \
            "certificate = certificates[0]" not in dtls:
        raise SeamMismatch("aiortc no longer keeps a peer connection's DTLS certificate "
                           "in RTCPeerConnection.__certificates")


def certificate_of(pc: Any) -> aiortc.RTCCertificate:
    """The DTLS certificate of ``pc`` (an ``RTCPeerConnection``)."""
    certificates = getattr(pc, _CERTIFICATES)
    certificate = certificates[0]
    assert isinstance(certificate, aiortc.RTCCertificate)
    return certificate


def use_certificate(pc: Any, certificate: aiortc.RTCCertificate) -> None:
    """Make ``pc`` use ``certificate`` (another connection's) instead of its own.

    Only before ``pc`` has transceivers: each DTLS transport takes the
    certificate when it is made (``addTrack``, ``addTransceiver``,
    ``setRemoteDescription``).
    """
    if pc.getTransceivers():
        raise RuntimeError("use_certificate: the peer connection already has transports")
    getattr(pc, _CERTIFICATES)[:] = [certificate]
