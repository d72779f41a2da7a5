"""Each call's first peer connection: made with the ICE servers, set up as the line says.

:class:`MediaSetup` (one per :class:`~softphone.client.phone.Phone`) makes a
call's peer connection with the phone's :class:`MediaFactory` and starts it
gathering candidates (while an outgoing call rings). Its ICE servers are those
given to the phone, else the hub's, asked ahead so that a call need not wait
for them: as the phone connects (for a call dialed within
:data:`ICE_SERVERS_FRESH` seconds) and while an incoming call rings (for its
answer). It carries out the line's media actions for a call (start, apply an
offer or an answer, add a candidate; the phone queues them on the call's media
worker, in order) and feeds the call's machine what the connection says
(connected, failed). The call's later connections are media restart's
(:mod:`softphone.client.restart_link`), made with the same ICE servers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from softphone.client.calltypes import MediaLink
from softphone.client.restart_link import RestartLink
from softphone.client.signaling import HubUnreachable
from softphone.core import callstate as cs
from softphone.media.audiopath import CallAudio
from softphone.media.rtc import RTCCertificate

if TYPE_CHECKING:
    from softphone.client.call import Call
    from softphone.client.phone import Phone


class MediaFactory(Protocol):
    """Makes a call's peer connection (:class:`~softphone.media.rtc.MediaSession`).

    ``certificate``: the DTLS certificate to use (a media restart's connection is given
    the call's first, so the verification code stays); None: its own.
    """

    def __call__(self, ice_servers: Sequence[dict[str, Any]], audio: CallAudio, *,
                 relay_only: bool, on_connected: Callable[[], None],
                 on_failed: Callable[[str], None],
                 certificate: RTCCertificate | None = None) -> MediaLink: ...


#: Seconds the ICE servers fetched as the phone connected serve a call it dials.
ICE_SERVERS_FRESH: Final = 60.0
IceServers = list[dict[str, Any]]


def _forget(fetch: asyncio.Future[IceServers]) -> None:
    """An ICE server fetch no call will use: stopped, its error (if any) taken."""
    fetch.cancel()
    fetch.add_done_callback(lambda f: f.cancelled() or f.exception())


class MediaSetup:
    """The ICE servers of a phone's calls and their first peer connections (module
    docstring). ``ice_servers``: the phone's own (None: the hub's)."""

    def __init__(self, phone: Phone, ice_servers: Sequence[dict[str, Any]] | None) -> None:
        self.phone = phone
        self.ice_servers = None if ice_servers is None else list(ice_servers)
        #: The hub's ICE servers, fetched for an incoming call while it rings (by id of
        #: its machine): its answer need not wait for them.
        self._fetches: dict[int, asyncio.Future[IceServers]] = {}
        #: ... and fetched as the phone connected, for a call dialed soon after (when).
        self._ahead: tuple[float, asyncio.Future[IceServers]] | None = None

    # -- the ICE servers -------------------------------------------------------

    async def connecting(self, connect: Callable[[], Awaitable[None]]) -> None:
        """Await ``connect()`` (the phone's hub connection), asking the hub's ICE servers
        alongside (when the phone has none of its own): a call dialed at once needs them."""
        ahead = None
        if self.ice_servers is None:
            ahead = asyncio.ensure_future(self.phone.hub.ice_servers())
        try:
            await connect()
        except BaseException:
            if ahead is not None:
                _forget(ahead)
            raise
        if ahead is not None:
            self._ahead = (self.phone.loop_time, ahead)

    def ringing(self, call: Call) -> None:
        """An incoming call rings: its ICE servers are fetched now (if the hub's)."""
        if self.ice_servers is None:
            self._fetches[id(call.machine)] = asyncio.ensure_future(self.phone.hub.ice_servers())

    def finished(self, call: Call) -> None:
        """``call`` is over: what was fetched for it and never used is dropped."""
        fetch = self._fetches.pop(id(call.machine), None)
        if fetch is not None:  # never used: the call was not answered
            _forget(fetch)

    def close(self) -> None:
        """The phone closes: what was fetched as it connected, unused, is dropped."""
        if self._ahead is not None:
            _forget(self._ahead[1])
            self._ahead = None

    async def _hub_ice_servers(self, call: Call) -> IceServers:
        """The hub's ICE servers for ``call``: those fetched while it rang (incoming), or
        as the phone connected (if fresh), else fetched now."""
        fetch = self._fetches.pop(id(call.machine), None)
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            if fetch is None and self.phone.loop_time - ahead[0] <= ICE_SERVERS_FRESH:
                fetch = ahead[1]
            else:
                _forget(ahead[1])
        if fetch is not None:
            with contextlib.suppress(HubUnreachable):  # asked again below
                return await fetch
        return await self.phone.hub.ice_servers()

    # -- the line's media actions ------------------------------------------------

    async def prepare(self, call: Call) -> MediaLink:
        """Create the call's peer connection (once) and start gathering candidates."""
        if call.media is None:
            servers = self.ice_servers
            if servers is None:
                servers = await self._hub_ice_servers(call)
            assert call.audio is not None
            phone = self.phone
            media = phone._media_factory(
                servers, call.audio, relay_only=phone.relay_only,
                on_connected=lambda: self._connected(call),
                on_failed=lambda reason: self._failed(call, reason),
            )
            call._attach(media)
            # Media restart (client/restart_link.py): started once this connection is up.
            call.restart_link = RestartLink(phone, call, servers, media)
            media.pregather()
        assert call.media is not None
        return call.media

    async def gather(self, call: Call) -> None:
        """:meth:`prepare`, as a media operation (an outgoing call gathers while it rings)."""
        await self.prepare(call)

    async def start(self, call: Call, offerer: bool) -> None:
        await self.prepare(call)
        assert call.media is not None
        if offerer:
            sdp = await call.media.create_offer()
            self.phone._feed(call, cs.LocalDescription(sdp))

    async def apply_offer(self, call: Call, sdp: str) -> None:
        assert call.media is not None
        answer = await call.media.accept_offer(sdp)
        call._derive_sas()  # both descriptions are set: the code, while ICE connects
        self.phone._feed(call, cs.LocalDescription(answer))

    async def apply_answer(self, call: Call, sdp: str) -> None:
        assert call.media is not None
        await call.media.apply_answer(sdp)
        call._derive_sas()  # both descriptions are set: the code, while ICE connects

    async def add_candidate(self, call: Call, action: cs.AddCandidate) -> None:
        if call.media is not None:
            call.media.add_candidate(action.candidate)

    # -- what the connection says -------------------------------------------------

    def _connected(self, call: Call) -> None:
        call._derive_sas()  # (before connected() waiters wake: they wait for the code)
        self.phone._feed(call, cs.MediaConnected())
        if call.restart_link is not None and call.state is cs.CallState.CONNECTED:
            call.restart_link.start()
        pair = call.candidate_pair
        if pair is not None and call.state is cs.CallState.CONNECTED:
            call._media_up({"event": "media", "candidate_pair": pair.to_json(),
                            "codec": call.codec})

    def _failed(self, call: Call, reason: str) -> None:
        """The call's first connection failed: in a call, media restart's; else the end."""
        if call.restart_link is None or not call.restart_link.first_failed(reason):
            self.phone._feed(call, cs.MediaFailed(reason))
