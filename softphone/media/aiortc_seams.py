"""Every place where softphone relies on aiortc's or aioice's internals.

aiortc offers no public seam for these, so they are replaced here, in one
module, against the pinned versions in ``pyproject.toml``.
``tests/media/test_aiortc_seams.py`` fails loudly if the internals change.

1. ICE gathering timeout. aioice waits up to 5 s for a STUN/TURN server to
   answer while gathering (inside ``setLocalDescription``), so a dead STUN
   server (any public one, on a machine without internet) made each side of
   a call stall 5 s. We cap it at :data:`DEFAULT_GATHER_TIMEOUT` (1 s), or
   at what :func:`limit_gathering` set for that peer connection.
2. The voice encoder. aiortc's Opus encoder is fixed at 96 kbit/s stereo
   without FEC, and aiortc makes a sender's encoder from the codec alone,
   when sending starts. :func:`encode_with` gives one sender the encoder its
   call asks for (:class:`softphone.media.voice.VoiceEncoder`: mono voice,
   in-band FEC, the call's bitrate): settings travel with the sender, so two
   calls in one process each send with their own. :func:`install_voice_codec`
   adds ``useinbandfec=1;minptime=10`` to the Opus fmtp we offer and answer,
   and teaches aiortc ``red/48000/2`` (redundant audio, RFC 2198, as
   browsers have it): a codec entry, and an answer whose RED fmtp names the
   Opus payload type actually agreed (aiortc would copy ours).
   :func:`prefer_red` puts it first in an offer.
3. The receive path. aiortc puts audio packets in a fixed 4-packet jitter
   buffer and decodes them without concealment or FEC;
   :func:`tap_receiver` takes each audio packet from an
   ``RTCRtpReceiver`` before that buffer and hands it to ours
   (:class:`softphone.media.voice.Playout`), saying whether it is RED.
   RTCP statistics are kept by aiortc as before.
4. :func:`impair_receiver` drops or delays packets as they reach a
   receiver (loss simulation, for tests and benchmarks).
5. TURN allocation errors. aioice drops the exception of a failed TURN
   allocation (bad or expired credentials: 401) without a word, so a call
   through a TURN server that refused us just never connected. We log it
   and keep it on the aioice ``Connection`` (:func:`turn_errors`).
6. The selected candidate pair: aiortc's getStats() has no entry for it;
   :func:`selected_candidate_pair` reads aioice's nominated pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any, Final

import aioice
import aioice.ice
import aiortc
import aiortc.codecs
import aiortc.rtcpeerconnection
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender

from softphone.media.netsim import Impairment

log = logging.getLogger(__name__)

#: The versions the seams below were written and tested against.
AIORTC_VERSION: Final = "1.16.0"
AIOICE_VERSION: Final = "0.13.0"

#: Seconds aioice may wait for STUN/TURN servers while gathering candidates,
#: unless :func:`limit_gathering` says otherwise for a peer connection.
DEFAULT_GATHER_TIMEOUT: Final = 1.0
_GATHER_TIMEOUT_ATTR: Final = "_softphone_gather_timeout"

_installed = False
_original_get_component_candidates: Any = None


class SeamMismatch(RuntimeError):
    """aiortc/aioice changed in a way these seams do not know."""


def check() -> None:
    """Raise :class:`SeamMismatch` if the internals we rely on are not as expected."""
    if aiortc.__version__ != AIORTC_VERSION or aioice.__version__ != AIOICE_VERSION:
        raise SeamMismatch(
            f"softphone is tested with aiortc {AIORTC_VERSION} / aioice {AIOICE_VERSION}, "
            f"found {aiortc.__version__} / {aioice.__version__}"
        )
    target = _original_get_component_candidates or \
        aioice.ice.Connection.get_component_candidates
    params = inspect.signature(target).parameters
    if list(params) != ["self", "component", "addresses", "timeout"] or \
            params["timeout"].default != 5:
        raise SeamMismatch("aioice Connection.get_component_candidates changed signature")
    send = inspect.getsource(RTCRtpSender.send)
    next_frame = inspect.getsource(RTCRtpSender._next_encoded_frame)
    if "self._run_rtp(parameters.codecs[0])" not in send or \
            "if self.__encoder is None:" not in next_frame or \
            "self.__encoder.encode" not in next_frame:
        raise SeamMismatch("aiortc's RTCRtpSender no longer makes its encoder when sending")
    opus = aiortc.codecs.CODECS["audio"][0]
    if opus.mimeType != "audio/opus" or not isinstance(opus.parameters, dict):
        raise SeamMismatch("aiortc's first audio codec is no longer Opus")
    source = inspect.getsource(RTCRtpReceiver)
    if "self.__jitter_buffer.add(packet)" not in source or \
            "async def _handle_rtp_packet(self, packet: RtpPacket, arrival_time_ms: int)" \
            not in source or \
            "self.__codecs: dict[int, RTCRtpCodecParameters] = {}" not in source:
        raise SeamMismatch("aiortc's RTCRtpReceiver receive path changed")
    common = _original_find_common_codecs or \
        getattr(aiortc.rtcpeerconnection, "find_common_codecs", None)
    if common is None or list(inspect.signature(common).parameters) != \
            ["local_codecs", "remote_codecs"] or \
            "find_common_codecs(CODECS[media.kind], media.rtp.codecs)" not in \
            inspect.getsource(aiortc.rtcpeerconnection.RTCPeerConnection):
        raise SeamMismatch("aiortc no longer negotiates codecs with find_common_codecs")
    _check_ice_internals()


def install() -> None:
    """Apply the seams (idempotent). Called when :mod:`softphone.media.rtc` is imported."""
    global _installed, _original_get_component_candidates
    if _installed:
        return
    check()
    original = aioice.ice.Connection.get_component_candidates
    _original_get_component_candidates = original

    @functools.wraps(original)
    async def get_component_candidates(self: Any, component: int, addresses: list[str],
                                       timeout: int = 5) -> Any:  # noqa: ASYNC109
        token = _gathering.set(self)  # for the TURN error seam (5.)
        limit = getattr(self, _GATHER_TIMEOUT_ATTR, DEFAULT_GATHER_TIMEOUT)
        try:
            return await original(self, component=component, addresses=addresses,
                                  timeout=min(timeout, limit))  # type: ignore[arg-type]
        finally:
            _gathering.reset(token)

    aioice.ice.Connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign]
    _install_turn_errors()
    _installed = True
    log.debug("aiortc seams installed (gather timeout %.1fs unless set per connection)",
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


# -- 2. the voice encoder ----------------------------------------------------

#: The payload type we offer RED with (Chrome's choice too).
RED_PAYLOAD_TYPE: Final = 63
_original_find_common_codecs: Any = None

#: Makes the encoder for the codec a sender starts with (None: aiortc's own).
EncoderFactory = Callable[[RTCRtpCodecParameters], Any]


def install_voice_codec() -> None:
    """Add our Opus fmtp and the RED codec to what aiortc offers and answers (idempotent)."""
    global _original_find_common_codecs

    install()
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


#: Whether the description being applied may agree on RED: only our own
#: pipeline can send and receive it, not aiortc's (nor a stand-in built on it).
_red_allowed: contextvars.ContextVar[bool] = contextvars.ContextVar("softphone_red_allowed",
                                                                    default=False)


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


# -- 3. the receive path ------------------------------------------------------

#: (ssrc, seq, timestamp, payload, is_red)
PacketHandler = Callable[[int, int, int, bytes, bool], None]


class _Tap:
    """Stands in for aiortc's audio JitterBuffer: passes packets on, returns no frame."""

    def __init__(self, on_packet: PacketHandler, codecs: dict[int, Any]) -> None:
        self.on_packet = on_packet
        self.codecs = codecs  # the receiver's own payload type -> codec table
        self._red: dict[int, bool] = {}  # payload type -> is it RED (looked up once)

    def add(self, packet: Any) -> tuple[bool, None]:
        payload = getattr(packet, "_data", None)
        if payload is None:
            payload = packet.payload
        pt = packet.payload_type
        is_red = self._red.get(pt)
        if is_red is None:
            codec = self.codecs.get(pt)
            is_red = self._red[pt] = codec is not None and \
                codec.mimeType.lower() == "audio/red"
        self.on_packet(packet.ssrc, packet.sequence_number, packet.timestamp, bytes(payload),
                       is_red)
        return False, None

    def remove(self, count: int) -> None:  # pragma: no cover - video only in aiortc
        pass


def tap_receiver(receiver: RTCRtpReceiver, on_packet: PacketHandler) -> None:
    """Send ``receiver``'s audio packets to ``on_packet`` instead of aiortc's decoder."""
    if not hasattr(receiver, "_RTCRtpReceiver__jitter_buffer") or \
            not isinstance(getattr(receiver, "_RTCRtpReceiver__codecs", None), dict):
        raise SeamMismatch("RTCRtpReceiver has no __jitter_buffer / __codecs")
    codecs = getattr(receiver, "_RTCRtpReceiver__codecs")  # noqa: B009 - name-mangled
    receiver._RTCRtpReceiver__jitter_buffer = _Tap(on_packet, codecs)


# -- 4. loss simulation ---------------------------------------------------------


def impair_receiver(receiver: RTCRtpReceiver, impairment: Impairment) -> None:
    """Drop or delay RTP packets as they reach ``receiver`` (before any buffer)."""
    if not impairment.active:
        return
    original = receiver._handle_rtp_packet
    pending: set[asyncio.Task[None]] = set()  # delayed packets on their way

    async def handle(packet: Any, arrival_time_ms: int) -> None:
        delay = impairment.decide()
        if delay is None:
            return
        if delay <= 0:
            await original(packet, arrival_time_ms)
            return
        loop = asyncio.get_running_loop()

        def deliver() -> None:
            task = loop.create_task(original(packet, arrival_time_ms + int(delay * 1000)))
            pending.add(task)
            task.add_done_callback(pending.discard)

        loop.call_later(delay, deliver)

    receiver._handle_rtp_packet = handle  # type: ignore[method-assign]


# -- 5. TURN allocation errors ----------------------------------------------------

_original_relayed_candidate: Any = None
#: The aioice Connection gathering in this task (its TURN task inherits the context).
_gathering: contextvars.ContextVar[Any] = contextvars.ContextVar("softphone_gathering",
                                                                 default=None)
_TURN_ERRORS_ATTR: Final = "_softphone_turn_errors"


def _check_ice_internals() -> None:
    relayed = _original_relayed_candidate or getattr(aioice.ice, "relayed_candidate", None)
    if relayed is None or "turn_server" not in inspect.signature(relayed).parameters:
        raise SeamMismatch("aioice.ice.relayed_candidate is gone or changed signature")
    probe = aioice.ice.Connection(ice_controlling=True)
    if not isinstance(getattr(probe, "_nominated", None), dict) or \
            not hasattr(probe, "turn_transport"):
        raise SeamMismatch("aioice Connection no longer has _nominated / turn_transport")
    if "self._connection = gatherer._connection" not in \
            inspect.getsource(aiortc.RTCIceTransport.__init__):
        raise SeamMismatch("aiortc RTCIceTransport no longer keeps its aioice _connection")


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
            connection = _gathering.get()
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


def _ice_connection(pc: Any) -> Any:
    """The aioice Connection under a peer connection's first transceiver, or None."""
    for transceiver in pc.getTransceivers():
        dtls = transceiver.sender.transport
        return getattr(getattr(dtls, "transport", None), "_connection", None)
    return None


def turn_errors(pc: Any) -> list[str]:
    """Why TURN allocations failed for this peer connection (empty if none did)."""
    return list(getattr(_ice_connection(pc), _TURN_ERRORS_ATTR, None) or [])


# -- 6. the selected candidate pair --------------------------------------------------


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
    connection = _ice_connection(pc)
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
