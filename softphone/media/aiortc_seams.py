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
   call asks for (:class:`softphone.media.sending.AdaptiveEncoder`: mono
   voice whose bitrate, FEC and RED follow the peer's reports): settings
   travel with the sender, so two
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
7. RTCP for the send-side adaptation (:mod:`softphone.media.sending`):
   aiortc keeps the peer's receiver reports to itself (getStats).
   :func:`watch_reports` hands each report block about a sender's stream,
   and each RTCP XR packet (which aiortc skips), to the call;
   :func:`report_with` appends our XR packet (runs of lost packets) to the
   receiver reports a receiver sends.
8. Call setup time (issue 16): :func:`speed_up_setup` gives one peer
   connection the timing of its :class:`FastSetup`: connectivity checks
   paced at 5 ms instead of aioice's 20 ms loop (which also noticed the end
   of the checks only at its next tick); the STUN requests of checks and
   gathering retransmitted after 0.1 s instead of 0.5 s (consent checks
   keep aioice's); the triggered check of
   RFC 8445 section 7.3.1.4 for an In-Progress pair (the peer's check
   resends ours at once, instead of aioice waiting 0.5 s after its first
   was dropped by the peer's NAT); DTLS handshake flights sent again after
   0.1 s instead of OpenSSL's 1 s; no more waiting for a STUN server once
   a TURN server gave a relay candidate. :func:`answer_as_dtls_server`
   makes the callee the DTLS server, so the caller, done with ICE first,
   starts the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import aioice
import aioice.ice
import aioice.stun
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
    _check_rtcp_internals()
    _check_setup_internals()


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
    """Drop or delay RTP packets as they reach ``receiver`` (before any buffer).

    ``impairment`` is read for every packet: changing its fields during the
    call changes the loss from then on (a clean start, then loss, then clean).
    """
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


# -- 7. RTCP for the send-side adaptation -------------------------------------------

#: (aiortc's ``RtcpReceiverInfo`` about our stream, the 64-bit NTP time it arrived)
ReportHandler = Callable[[Any, int], None]
#: (an RTCP compound packet that holds an XR packet, our stream's SSRC)
XrHandler = Callable[[bytes, int], None]
_RTCP_XR: Final = 207


def _check_rtcp_internals() -> None:
    handle = inspect.getsource(RTCRtpSender._handle_rtcp_packet)
    dtls = inspect.getsource(aiortc.RTCDtlsTransport)
    receiver = inspect.getsource(RTCRtpReceiver)
    if "isinstance(packet, (RtcpRrPacket, RtcpSrPacket))" not in handle or \
            "x.ssrc == self._ssrc, packet.reports" not in handle or \
            "await recipient._handle_rtcp_packet(packet)" not in dtls or \
            "async def _handle_rtcp_data(self, data: bytes)" not in dtls or \
            "await self._send_rtcp(packet)" not in receiver or \
            "await self.transport._send_rtp(bytes(packet))" not in receiver:
        raise SeamMismatch("aiortc's RTCP handling changed")


def watch_reports(sender: RTCRtpSender, on_report: ReportHandler,
                  on_xr: XrHandler | None = None) -> None:
    """Hand ``on_report`` each RTCP report block the peer sends about ``sender``'s stream
    (in its receiver or sender reports), and ``on_xr`` each RTCP packet that holds
    an XR packet; aiortc handles them as before. A handler that fails is logged."""
    from aiortc import clock
    from aiortc.rtp import RtcpRrPacket, RtcpSrPacket

    original_handle = sender._handle_rtcp_packet

    async def handle(packet: Any) -> None:
        if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            arrival = clock.current_ntp_time()
            for report in packet.reports:
                if report.ssrc == sender._ssrc:
                    try:
                        on_report(report, arrival)
                    except Exception:
                        log.exception("receiver report handler failed")
        await original_handle(packet)

    sender._handle_rtcp_packet = handle  # type: ignore[method-assign]
    if on_xr is None:
        return
    original_send = sender.send
    watching = False

    async def send(parameters: Any) -> None:
        nonlocal watching
        if not watching:  # the transport is final once sending starts
            watching = True
            _watch_xr(sender, on_xr)
        await original_send(parameters)

    sender.send = send  # type: ignore[method-assign]


def _watch_xr(sender: RTCRtpSender, on_xr: XrHandler) -> None:
    transport = sender.transport
    original = transport._handle_rtcp_data

    async def handle_rtcp_data(data: bytes) -> None:
        # An XR packet anywhere in the compound (aiortc's parser skips XR).
        pos, n = 0, len(data)
        while pos + 4 <= n:
            if data[pos + 1] == _RTCP_XR:
                try:
                    on_xr(data, sender._ssrc)
                except Exception:
                    log.exception("RTCP XR handler failed")
                break
            pos += 4 * (int.from_bytes(data[pos + 2:pos + 4], "big") + 1)
        await original(data)

    transport._handle_rtcp_data = handle_rtcp_data  # type: ignore[method-assign]


def report_with(receiver: RTCRtpReceiver, extra: Callable[[int], bytes]) -> Callable[[], None]:
    """Append ``extra(rtcp_ssrc)`` (RTCP packets: our XR) to each RTCP compound packet
    ``receiver`` sends (its receiver reports): one compound, as RFC 3550 asks.

    Returns a function (for the event loop) that sends ``extra`` at once, alone
    (reduced-size RTCP, RFC 5506): news that should not wait for the next report.
    """
    tasks: set[asyncio.Task[None]] = set()

    def ssrc() -> int | None:
        value = getattr(receiver, "_RTCRtpReceiver__rtcp_ssrc", None)
        return value if isinstance(value, int) else None

    def more() -> bytes:
        own = ssrc()
        if own is None:
            return b""
        try:
            return extra(own)
        except Exception:
            log.exception("RTCP extra packet failed")
            return b""

    async def send(data: bytes) -> None:
        with contextlib.suppress(ConnectionError):
            await receiver.transport._send_rtp(data)

    async def send_rtcp(packet: Any) -> None:
        await send(bytes(packet) + more())

    def send_now() -> None:
        data = more()
        if data:
            task = asyncio.get_running_loop().create_task(send(data))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    receiver._send_rtcp = send_rtcp  # type: ignore[method-assign]
    return send_now


# -- 8. fast call setup ---------------------------------------------------------------


@dataclass(frozen=True)
class FastSetup:
    """How fast one peer connection's ICE and DTLS set up (:func:`speed_up_setup`,
    :func:`answer_as_dtls_server`; :attr:`MediaConfig.fast_setup
    <softphone.media.audiopath.MediaConfig.fast_setup>` of a call).

    ``None`` / ``False`` keeps aiortc's, aioice's or OpenSSL's own: :data:`STOCK_SETUP`.
    """

    #: Seconds between starting two connectivity checks: RFC 8445's Ta, at
    #: least 5 ms (aioice: 20 ms, and it noticed the end of the checks only at
    #: its next 20 ms tick).
    check_pacing: float | None = 0.005
    #: First retransmission of a STUN request made to set the call up,
    #: doubling (aioice: 0.5 s): connectivity checks, and while gathering the
    #: binding request to the STUN server and the requests to a TURN server
    #: over UDP. Consent checks (RFC 7675, one try each) keep aioice's timing.
    stun_rto: float | None = 0.1
    #: A check from the peer on a pair whose own check is under way sends ours
    #: again at once (RFC 8445 section 7.3.1.4): the first one was most likely
    #: dropped by the peer's NAT, which the peer's check has just opened.
    triggered_checks: bool = True
    #: First retransmission of a DTLS handshake flight, doubling up to
    #: :data:`DTLS_TIMER_MAX` (OpenSSL: 1 s; RFC 9147 section 5.8.2 suggests 100 ms).
    dtls_timer: float | None = 0.1
    #: Once a TURN server gave us a relay candidate, seconds more to wait for
    #: the STUN server's answer (at least as long as the relay took): a STUN
    #: server behind blocked UDP held the gathering to its timeout (1 s) when
    #: the relay, over TCP, was there in a few round trips.
    stun_after_relay: float | None = 0.05
    #: Answer an offer's ``a=setup:actpass`` with ``passive``: we, the callee,
    #: are the DTLS server. The caller's checks open its NAT to ours, so it
    #: finishes ICE first and, as the DTLS client, starts the handshake at
    #: once: its first audio comes a round trip sooner. (RFC 8842 lets the
    #: answerer choose; JSEP's "SHOULD" is active, as aiortc answers.)
    dtls_server_answers: bool = True

    def __post_init__(self) -> None:
        if self.check_pacing is not None and self.check_pacing < 0.005:
            raise ValueError("the check pacing (Ta) must be at least 5 ms (RFC 8445)")
        for name in ("stun_rto", "dtls_timer", "stun_after_relay"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 seconds")


#: aioice's and OpenSSL's own timing (stock aiortc).
STOCK_SETUP: Final = FastSetup(check_pacing=None, stun_rto=None, triggered_checks=False,
                               dtls_timer=None, stun_after_relay=None,
                               dtls_server_answers=False)
#: Our DTLS resends stop once the timer would exceed this; OpenSSL's own go on.
DTLS_TIMER_MAX: Final = 0.8
_SPED_UP_ATTR: Final = "_softphone_fast_setup"
_RELAY_READY_ATTR: Final = "_softphone_relay_ready"
_original_transaction_init: Any = None
_original_srflx_candidate: Any = None
#: The first retransmission of a STUN transaction made in this task (a check's, or
#: gathering's); None: aioice's.
_stun_rto: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "softphone_stun_rto", default=None)


def _check_setup_internals() -> None:
    connect = inspect.getsource(aioice.ice.Connection.connect)
    connection = inspect.getsource(aioice.ice.Connection)
    transaction = inspect.getsource(_original_transaction_init or
                                    aioice.stun.Transaction.__init__)
    if "if not self._check_periodic():" not in connect or \
            "await asyncio.sleep(0.02)" not in connect or \
            "res = await self._check_list_state.get()" not in connect or \
            "pair.task = asyncio.create_task(self.check_start(pair))" not in connection or \
            connection.count("self.check_incoming(") != 2 or \
            "if pair.state == CandidatePair.State.WAITING:" not in connection or \
            list(inspect.signature(aioice.ice.Connection._find_pair).parameters) != \
            ["self", "protocol", "remote_candidate"] or \
            "self.transactions: dict[bytes, stun.Transaction] = {}" not in \
            inspect.getsource(aioice.ice.StunProtocol.__init__):
        raise SeamMismatch("aioice's connectivity checks changed")
    if list(inspect.signature(aioice.stun.Transaction.__init__).parameters)[:5] != \
            ["self", "request", "addr", "protocol", "retransmissions"] or \
            any(line not in transaction for line in (
                "self.__addr = addr", "self.__request = request",
                "self.__timeout_delay = RETRY_RTO", "self.__tries_max = 1 + (",
                "self.__future: asyncio.Future")):
        raise SeamMismatch("aioice's STUN transactions changed")
    srflx = _original_srflx_candidate or aioice.ice.server_reflexive_candidate
    gather = inspect.getsource(_original_get_component_candidates or
                               aioice.ice.Connection.get_component_candidates)
    if list(inspect.signature(srflx).parameters) != ["protocol", "stun_server"] or \
            "server_reflexive_candidate(protocol, self.stun_server)" not in gather or \
            "relayed_candidate(" not in gather or \
            "done, pending = await asyncio.wait(tasks, timeout=timeout)" not in gather:
        raise SeamMismatch("aioice no longer gathers with server_reflexive_candidate / "
                           "relayed_candidate tasks")
    answer = inspect.getsource(aiortc.RTCPeerConnection.createAnswer)
    if 'if dtlsTransport._role == "auto":' not in answer or \
            "media.dtls.role = dtlsTransport._role" not in answer or \
            "def _set_role(self, role: str)" not in inspect.getsource(aiortc.RTCDtlsTransport):
        raise SeamMismatch("aiortc no longer answers with its DTLS transport's role")
    ice = inspect.getsource(aiortc.RTCIceTransport.__init__)
    dtls = inspect.getsource(aiortc.RTCDtlsTransport)
    if "self._recv = self._connection.recv" not in ice or \
            "self._send = self._connection.send" not in ice or \
            "await self.transport._send(data)" not in dtls or \
            "self.transport._recv()" not in dtls or "self.encrypted = True" not in dtls:
        raise SeamMismatch("aiortc's DTLS transport no longer sends and receives "
                           "through its ICE transport's _send/_recv")


def speed_up_setup(pc: Any, setup: FastSetup) -> None:
    """Give ``pc``'s ICE checks and DTLS handshake the timing of ``setup``.

    For a peer connection whose transceivers are added (its transports exist);
    once per transport (a second call changes nothing). Other peer
    connections, and this one's consent checks, keep aioice's timing.
    """
    for transceiver in pc.getTransceivers():
        dtls = transceiver.sender.transport
        if speed_up_ice(dtls.transport._connection, setup) and setup.dtls_timer is not None:
            _DtlsFlights(dtls, setup.dtls_timer)


def answer_as_dtls_server(pc: Any, offer_sdp: str) -> bool:
    """Before ``pc`` answers ``offer_sdp``: take the DTLS server role, if the offer
    leaves it to us (``a=setup:actpass``); see :attr:`FastSetup.dtls_server_answers`.
    Whether it did."""
    roles = set(re.findall(r"^a=setup:(\w+)", offer_sdp, re.M))
    if roles != {"actpass"}:
        return False
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        if dtls._role == "auto":
            dtls._set_role("server")
    return True


def speed_up_ice(connection: aioice.Connection, setup: FastSetup) -> bool:
    """The ICE part of :func:`speed_up_setup`, for an aioice ``Connection`` (before
    its ``connect()``). False if it was done already."""
    if getattr(connection, _SPED_UP_ATTR, None) is not None:
        return False
    setattr(connection, _SPED_UP_ATTR, setup)
    if setup.check_pacing is not None:
        _pace_checks(connection, setup.check_pacing)
    if setup.stun_rto is not None:
        _time_checks(connection, setup.stun_rto)
    if setup.triggered_checks:
        _trigger_checks(connection)
    if setup.stun_after_relay is not None or setup.stun_rto is not None:
        _install_gathering_seams()
    return True


def _pace_checks(connection: Any, pacing: float) -> None:
    """Start a check every ``pacing`` seconds, and let connect() return as soon as
    the check list is done: aioice's connect() loop sleeps 20 ms between checks,
    and noticed success or failure only at its next tick.

    Once there are pairs to check, connect()'s loop is told to stop (it then
    waits for the result, as it would at its end), and a task of ours starts
    the checks instead, with aioice's own ``_check_periodic``.
    """
    periodic = connection._check_periodic
    handed_over = False

    async def pace() -> None:
        while True:
            await asyncio.sleep(pacing)
            if not periodic():
                return

    def check_periodic() -> bool:
        nonlocal handed_over
        if handed_over or not connection._check_list:
            return bool(periodic())  # nothing to check yet: aioice's loop goes on
        handed_over = True
        if periodic():
            connection._softphone_pacer = asyncio.ensure_future(pace())
        return False

    connection._check_periodic = check_periodic


def _time_checks(connection: Any, rto: float) -> None:
    """The STUN transactions of ``connection``'s checks retransmit after ``rto``, doubling."""
    _install_transaction_rto()
    check_start = connection.check_start

    async def timed_check_start(pair: Any) -> None:
        token = _stun_rto.set(rto)  # the check runs in a task of its own
        try:
            await check_start(pair)
        finally:
            _stun_rto.reset(token)

    connection.check_start = timed_check_start


def _install_transaction_rto() -> None:
    global _original_transaction_init
    if _original_transaction_init is not None:
        return
    original = aioice.stun.Transaction.__init__
    _original_transaction_init = original
    stock_tries = 1 + aioice.stun.RETRY_MAX

    @functools.wraps(original)
    def __init__(self: Any, request: Any, addr: Any, protocol: Any,
                 retransmissions: int | None = None, *args: Any, **kwargs: Any) -> None:
        original(self, request, addr, protocol, retransmissions, *args, **kwargs)
        rto = _stun_rto.get()
        if rto is not None and retransmissions is None:
            self._Transaction__timeout_delay = rto
            # Give up about when aioice would (0.1 s: 9 tries over 51 s, aioice 7 over 64 s).
            extra = max(0, int(math.log2(aioice.stun.RETRY_RTO / rto)))
            self._Transaction__tries_max = stock_tries + extra

    aioice.stun.Transaction.__init__ = __init__  # type: ignore[method-assign]


def _install_gathering_seams() -> None:
    """For connections whose :class:`FastSetup` say so: the requests to the STUN
    server and to a TURN server over UDP retransmit after ``stun_rto``; STUN and
    TURN servers are asked at once, and once the relay candidate is there, the
    STUN answer is waited for only ``stun_after_relay`` (or as long as the
    relay took) more."""
    global _original_srflx_candidate
    if _original_srflx_candidate is not None:
        return
    install()  # the gathering seam (1.) tells which connection a relay is for
    _install_transaction_rto()
    srflx = _original_srflx_candidate = aioice.ice.server_reflexive_candidate
    relayed = aioice.ice.relayed_candidate  # with the TURN error seam (5.) around it

    def relay_ready(connection: Any) -> asyncio.Event:
        event = getattr(connection, _RELAY_READY_ATTR, None)
        if event is None:
            event = asyncio.Event()
            setattr(connection, _RELAY_READY_ATTR, event)
        return event

    @functools.wraps(srflx)
    async def server_reflexive_candidate(protocol: Any, stun_server: Any) -> Any:
        connection = protocol.receiver
        timers = getattr(connection, _SPED_UP_ATTR, None)
        if timers is None:
            return await srflx(protocol, stun_server)
        token = _stun_rto.set(timers.stun_rto)  # the query's task inherits it
        try:
            query = asyncio.ensure_future(srflx(protocol, stun_server))
        finally:
            _stun_rto.reset(token)
        grace = timers.stun_after_relay
        if grace is None or connection.turn_server is None:
            return await query
        loop = asyncio.get_running_loop()
        started = loop.time()
        relay = asyncio.ensure_future(relay_ready(connection).wait())
        try:
            await asyncio.wait({query, relay}, return_when=asyncio.FIRST_COMPLETED)
            if not query.done():
                await asyncio.wait({query}, timeout=max(grace, loop.time() - started))
            if not query.done():
                log.debug("no answer from STUN server %s:%s; going on with the relay",
                          *stun_server)
                raise TimeoutError("no STUN answer (a relay candidate is there)")
            return query.result()
        finally:
            for task in (query, relay):
                task.cancel()

    @functools.wraps(relayed)
    async def relayed_candidate(**kwargs: Any) -> Any:
        connection = _gathering.get()
        timers = getattr(connection, _SPED_UP_ATTR, None)
        # Over TCP or TLS a request is not retransmitted (RFC 8489 section 6.2.2).
        rto = timers.stun_rto if timers is not None and \
            kwargs.get("turn_transport", "udp") == "udp" and not kwargs.get("turn_ssl") else None
        token = _stun_rto.set(rto)  # the allocation and its refreshes
        try:
            result = await relayed(**kwargs)
        finally:
            _stun_rto.reset(token)
        if connection is not None:
            relay_ready(connection).set()
        return result

    aioice.ice.server_reflexive_candidate = server_reflexive_candidate
    aioice.ice.relayed_candidate = relayed_candidate


def _trigger_checks(connection: Any) -> None:
    """RFC 8445 section 7.3.1.4 for a pair whose check is In-Progress: send it again now.

    aioice starts a triggered check for a Frozen, Waiting or Failed pair, but
    left an In-Progress one to its retransmission timer (0.5 s). The usual
    case: our first check was dropped by the peer's NAT, which had no mapping
    for us yet; the peer's check through it has just made one.
    """
    check_incoming = connection.check_incoming

    def triggered_check_incoming(message: Any, addr: tuple[str, int], protocol: Any) -> None:
        pair = None
        for candidate in connection._remote_candidates:
            if candidate._network_host == addr[0] and candidate.port == addr[1]:
                pair = connection._find_pair(protocol, candidate)
                break
        if pair is not None and pair.state == aioice.ice.CandidatePair.State.IN_PROGRESS:
            for transaction in list(pair.protocol.transactions.values()):
                if transaction._Transaction__addr == pair.remote_addr and \
                        not transaction._Transaction__future.done():
                    log.debug("ICE: the peer's check on %s sends ours again", pair)
                    pair.protocol.send_stun(transaction._Transaction__request,
                                            pair.remote_addr)
                    break
        check_incoming(message, addr, protocol)

    connection.check_incoming = triggered_check_incoming


class _DtlsFlights:
    """Sends a DTLS transport's handshake flights again sooner than OpenSSL (1 s).

    It watches the datagrams the transport sends and receives through its ICE
    transport until the handshake is over both ways (ours done, and the
    peer's SRTP or SRTCP arrived), then steps aside. A flight is what we sent
    since we last received something new. It is sent again, byte for byte:

    - when nothing new arrived ``timer`` seconds after it, doubling, while
      our handshake is not done (up to :data:`DTLS_TIMER_MAX`; OpenSSL's own
      retransmissions go on as before);
    - when the peer sends again what it had sent (it did not hear us), even
      after our handshake is done: our last flight (the server's Finished) may
      have been lost, and a flight sent again byte for byte is discarded by
      the peer's replay check, so OpenSSL would not answer it.
    """

    def __init__(self, dtls: Any, timer: float) -> None:
        self.dtls = dtls
        self.ice = dtls.transport
        self.timer = timer
        self.delay = timer
        self.flight: list[bytes] = []
        self.answered = True  # something new arrived since our last flight
        self.seen: set[bytes] = set()  # DTLS datagrams received
        self.handle: asyncio.TimerHandle | None = None
        self.resent_at = -math.inf
        self.tasks: set[asyncio.Task[None]] = set()
        self.original_send = self.ice._send
        self.original_recv = self.ice._recv
        self.ice._send = self.send
        self.ice._recv = self.recv

    async def send(self, data: bytes) -> None:
        if data and 19 < data[0] < 64:  # DTLS (RFC 7983)
            if self.answered:
                self.flight, self.answered, self.delay = [], False, self.timer
            if len(self.flight) < 16:
                self.flight.append(data)
            if self.handle is None and not self.dtls.encrypted:
                self.handle = asyncio.get_running_loop().call_later(self.delay, self.expired)
        await self.original_send(data)

    async def recv(self) -> bytes:
        data: bytes = await self.original_recv()
        if data and 19 < data[0] < 64:
            if data not in self.seen:
                self.seen.add(data)
                self.answered = True
                self.cancel()
            elif not self.answered and \
                    asyncio.get_running_loop().time() - self.resent_at >= self.timer / 2:
                self.resend("the peer sent its flight again")
        elif data and 127 < data[0] < 192 and self.dtls.encrypted:  # SRTP/SRTCP: done
            self.ice._send, self.ice._recv = self.original_send, self.original_recv
            self.cancel()
            self.seen.clear()
            self.flight = []
        return data

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def expired(self) -> None:
        self.handle = None
        if self.answered or self.dtls.encrypted or self.dtls.state != "connecting":
            return
        self.resend(f"no answer in {self.delay * 1000:.0f} ms")
        self.delay *= 2
        if self.delay <= DTLS_TIMER_MAX:
            self.handle = asyncio.get_running_loop().call_later(self.delay, self.expired)

    def resend(self, why: str) -> None:
        log.debug("DTLS: sending our last flight again (%s)", why)
        self.resent_at = asyncio.get_running_loop().time()
        task = asyncio.ensure_future(self._send_all(list(self.flight)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send_all(self, flight: list[bytes]) -> None:
        for data in flight:
            try:
                await self.original_send(data)
            except ConnectionError:
                return
