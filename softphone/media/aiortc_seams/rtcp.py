"""RTCP for the send-side adaptation (:mod:`softphone.media.sending`).

aiortc keeps the peer's receiver reports to itself (``getStats``), skips
RTCP XR packets when it parses a compound, and sends receiver reports of
its own making.

- :func:`watch_reports` wraps a sender's ``_handle_rtcp_packet`` to hand
  each report block about its stream to the call, and (once sending starts)
  its DTLS transport's ``_handle_rtcp_data`` to hand over each compound
  packet that holds an XR packet.
- :func:`report_with` replaces a receiver's ``_send_rtcp`` to append our XR
  packet (runs of lost packets) to the receiver reports it sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import weakref
from collections.abc import Callable
from typing import Any, Final

import aiortc
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender

from softphone._tasks import spawn_kept
from softphone.media.aiortc_seams.pinned import SeamMismatch, getsource

log = logging.getLogger(__name__)

#: (aiortc's ``RtcpReceiverInfo`` about our stream, the 64-bit NTP time it arrived)
ReportHandler = Callable[[Any, int], None]
#: (an RTCP compound packet that holds an XR packet, our stream's SSRC)
XrHandler = Callable[[bytes, int], None]
_RTCP_XR: Final = 207


def check_internals() -> None:
    """Raise :class:`SeamMismatch` if aiortc no longer handles RTCP as these seams expect."""
    handle = getsource(RTCRtpSender._handle_rtcp_packet)
    dtls = getsource(aiortc.RTCDtlsTransport)
    receiver = getsource(RTCRtpReceiver)
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
    # Weak: the function returned is kept by the call's playout, which the receiver
    # reaches (its packets are played): no cycle through the receiver (issue 15).
    receiver_ref = weakref.ref(receiver)
    # And ``extra`` (the call's audio, whose playout keeps the function returned).
    extra_ref = weakref.WeakMethod(extra) if inspect.ismethod(extra) else lambda: extra

    def ssrc() -> int | None:
        value = getattr(receiver_ref(), "_RTCRtpReceiver__rtcp_ssrc", None)
        return value if isinstance(value, int) else None

    def more() -> bytes:
        own = ssrc()
        if own is None:
            return b""
        make = extra_ref()
        if make is None:
            return b""
        try:
            return make(own)
        except Exception:
            log.exception("RTCP extra packet failed")
            return b""

    async def send(data: bytes) -> None:
        live = receiver_ref()
        if live is not None:
            with contextlib.suppress(ConnectionError):
                await live.transport._send_rtp(data)

    async def send_rtcp(packet: Any) -> None:
        await send(bytes(packet) + more())

    def send_now() -> None:
        data = more()
        if data:
            spawn_kept(tasks, functools.partial(send, data))

    receiver._send_rtcp = send_rtcp  # type: ignore[method-assign]
    return send_now
