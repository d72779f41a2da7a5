"""The voice codec: what we offer and answer, and the encoder a sender uses.

aiortc's Opus encoder is fixed at 96 kbit/s stereo without FEC, and aiortc
makes a sender's encoder from the codec alone, when sending starts.

- :func:`encode_with` gives one sender the encoder its call asks for
  (:class:`softphone.media.sending.AdaptiveEncoder`: mono voice whose
  bitrate, FEC and RED follow the peer's reports): settings travel with the
  sender, so two calls in one process each send with their own. It wraps
  the sender's ``send`` and sets its name-mangled ``__encoder``.
- :func:`install_voice_codec` adds ``useinbandfec=1;minptime=10`` to the
  Opus fmtp in ``aiortc.codecs.CODECS`` and teaches aiortc ``red/48000/2``
  (redundant audio, RFC 2198, as browsers have it): a codec entry, and, by
  replacing ``aiortc.rtcpeerconnection.find_common_codecs``, an answer
  whose RED fmtp names the Opus payload type actually agreed (aiortc would
  copy ours), with RED agreed only inside :func:`red_allowed`.
- :func:`prefer_red` puts RED first in an offer.

(Telephone events are added beside these by :mod:`softphone.media.dtmf_rtp`.)
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Final

import aiortc
import aiortc.codecs
import aiortc.rtcpeerconnection
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpsender import RTCRtpSender

from softphone.media.aiortc_seams.gathering import install_gathering
from softphone.media.aiortc_seams.pinned import SeamMismatch, check_versions, getsource

#: The payload type we offer RED with (Chrome's choice too).
RED_PAYLOAD_TYPE: Final = 63

#: Makes the encoder for the codec a sender starts with (None: aiortc's own).
EncoderFactory = Callable[[RTCRtpCodecParameters], Any]

_original_find_common_codecs: Any = None

#: Whether the description being applied may agree on RED: only our own
#: pipeline can send and receive it, not aiortc's (nor a stand-in built on it).
_red_allowed: contextvars.ContextVar[bool] = contextvars.ContextVar("softphone_red_allowed",
                                                                    default=False)


def check_internals() -> None:
    """Raise :class:`SeamMismatch` if aiortc no longer makes encoders or
    negotiates codecs as these seams expect."""
    send = getsource(RTCRtpSender.send)
    next_frame = getsource(RTCRtpSender._next_encoded_frame)
    if "self._run_rtp(parameters.codecs[0])" not in send or \
            "if self.__encoder is None:" not in next_frame or \
            "self.__encoder.encode" not in next_frame:
        raise SeamMismatch("aiortc's RTCRtpSender no longer makes its encoder when sending")
    opus = aiortc.codecs.CODECS["audio"][0]
    if opus.mimeType != "audio/opus" or not isinstance(opus.parameters, dict):
        raise SeamMismatch("aiortc's first audio codec is no longer Opus")
    common = _original_find_common_codecs or \
        getattr(aiortc.rtcpeerconnection, "find_common_codecs", None)
    if common is None or list(inspect.signature(common).parameters) != \
            ["local_codecs", "remote_codecs"] or \
            "find_common_codecs(CODECS[media.kind], media.rtp.codecs)" not in \
            getsource(aiortc.rtcpeerconnection.RTCPeerConnection):
        raise SeamMismatch("aiortc no longer negotiates codecs with find_common_codecs")


#: :func:`check_internals` once a process (see ``fast_setup.checked``).
checked = functools.cache(check_internals)


def install_voice_codec() -> None:
    """Add our Opus fmtp and the RED codec to what aiortc offers and answers (idempotent)."""
    global _original_find_common_codecs

    install_gathering()  # the gathering timeout too, as with every installed seam
    if _original_find_common_codecs is None:
        check_versions()
        checked()
    audio = aiortc.codecs.CODECS["audio"]
    opus = audio[0]
    opus.parameters.update({"minptime": 10, "useinbandfec": 1})
    if _original_find_common_codecs is not None:
        return
    # Last in the list: an offer made without prefer_red() still leads with Opus.
    audio.append(RTCRtpCodecParameters(
        mimeType="audio/red", clockRate=48000, channels=2, payloadType=RED_PAYLOAD_TYPE,
        parameters={f"{opus.payloadType}/{opus.payloadType}": None}))
    _original_find_common_codecs = aiortc.rtcpeerconnection.find_common_codecs
    aiortc.rtcpeerconnection.find_common_codecs = _find_common_codecs


def encode_with(sender: RTCRtpSender, make_encoder: EncoderFactory) -> None:
    """Make ``sender`` encode with ``make_encoder(codec)`` for the codec it starts sending.

    aiortc makes a sender's encoder from the codec alone when the first frame
    is sent; the encoder given here, made when the sender starts (the codec
    is agreed then), is used instead. ``make_encoder`` returning None leaves
    aiortc's own encoder.
    """
    original = sender.send
    started = False

    async def send(parameters: Any) -> None:
        nonlocal started
        if not started and parameters.codecs:
            started = True
            encoder = make_encoder(parameters.codecs[0])
            if encoder is not None:
                sender._RTCRtpSender__encoder = encoder  # type: ignore[attr-defined]
        await original(parameters)

    sender.send = send  # type: ignore[method-assign]


@contextlib.contextmanager
def red_allowed(allowed: bool) -> Iterator[None]:
    """Around ``setRemoteDescription``: may the codecs agreed include RED?"""
    token = _red_allowed.set(allowed)
    try:
        yield
    finally:
        _red_allowed.reset(token)


def _find_common_codecs(local_codecs: list[Any], remote_codecs: list[Any]) -> list[Any]:
    """aiortc's, with each RED codec naming the agreed Opus payload type (or dropped)."""
    common = _original_find_common_codecs(local_codecs, remote_codecs)
    opus = next((c for c in common if c.mimeType.lower() == "audio/opus"), None)
    result = []
    for codec in common:
        if codec.mimeType.lower() == "audio/red":
            if opus is None or not _red_allowed.get():
                continue
            codec.parameters = {f"{opus.payloadType}/{opus.payloadType}": None}
        result.append(codec)
    return result


def prefer_red(transceiver: Any, enabled: bool) -> None:
    """Offer RED before Opus (``enabled``), or not at all; other codecs keep their order.

    For the transceiver of an offer. (An answer follows the offer's order,
    and agrees on RED only inside :func:`red_allowed`.)
    """
    caps = aiortc.RTCRtpSender.getCapabilities("audio").codecs
    red = [c for c in caps if c.mimeType.lower() == "audio/red"]
    rest = [c for c in caps if c.mimeType.lower() != "audio/red"]
    transceiver.setCodecPreferences(red + rest if enabled else rest)
