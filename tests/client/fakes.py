"""Fakes for the adapter tests of :class:`softphone.client.phone.Phone`.

- :class:`FakeHub` routes messages between :class:`FakeHubConnection`\\ s in
  memory as the hub does (``from`` set by the hub, ``error``/``offline`` for
  an id nobody holds), through the real wire format (each message is
  encoded and parsed again); :meth:`FakeHub.drop` loses a client's
  connection.
- :class:`FakeMediaFactory` makes :class:`FakeMedia` sessions: no peer
  connection; a side is "connected" once it has both descriptions (or
  fails, if told to), and then starts its call's playout as a received
  track would.
- :class:`FakeOutput` stands for the speaker; :class:`FakeMic` for a
  microphone that can be lost; :class:`FakeSink` records whether it was
  closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import numpy as np

from softphone.client.signaling import HubAddress, HubUnreachable
from softphone.core.protocol import ErrorCode, HubError, IceCandidate, Message, parse_hub_message
from softphone.media.audiopath import CallAudio
from softphone.media.dtmf_rtp import DtmfChannel
from softphone.media.rtc import CandidatePair, IceCandidateInfo, MediaStats
from softphone.media.tracks import SilenceSource


class FakeHub:
    """In-memory routing between fake connections, as the real hub routes."""

    def __init__(self) -> None:
        self.clients: dict[str, FakeHubConnection] = {}
        #: Every message as delivered (with its sender), in order.
        self.log: list[Message] = []

    def connection(self, client_id: str) -> FakeHubConnection:
        return FakeHubConnection(self, client_id)

    def types(self) -> list[str]:
        return [m.type for m in self.log]

    def deliver(self, sender: str, message: Message) -> None:
        relayed = parse_hub_message(message.with_sender(sender).encode())
        assert isinstance(relayed, Message)
        self.log.append(relayed)
        target = self.clients.get(message.to)
        if target is None:
            self.clients[sender].receive(HubError(ErrorCode.OFFLINE, f"{message.to} is offline",
                                                  ref=message.type, to=message.to))
        else:
            target.receive(relayed)

    def drop(self, client_id: str) -> None:
        """The client's connection to the hub breaks (code 1006)."""
        self.clients.pop(client_id).lose(1006)


class FakeHubConnection:
    """One client's connection to a :class:`FakeHub` (a ``HubConnection``)."""

    def __init__(self, hub: FakeHub, client_id: str) -> None:
        self.hub = hub
        self.client_id = client_id
        self.address = HubAddress.parse("http://fake-hub.invalid:8080")
        self.close_code: int | None = None
        self._queue: asyncio.Queue[Message | HubError | None] | None = None

    async def connect(self) -> None:
        self._queue = asyncio.Queue()
        self.close_code = None
        self.hub.clients[self.client_id] = self

    async def ice_servers(self) -> list[dict[str, Any]]:
        return []

    async def send(self, message: Message) -> None:
        if self._queue is None or self.close_code is not None:
            raise HubUnreachable("not connected to the hub")
        self.hub.deliver(self.client_id, message)

    async def messages(self) -> AsyncIterator[Message | HubError]:
        queue = self._queue
        assert queue is not None
        while (item := await queue.get()) is not None:
            yield item

    def receive(self, item: Message | HubError) -> None:
        if self._queue is not None and self.close_code is None:
            self._queue.put_nowait(item)

    def lose(self, code: int) -> None:
        if self._queue is not None and self.close_code is None:
            self.close_code = code
            self._queue.put_nowait(None)

    async def close(self) -> None:
        if self.hub.clients.get(self.client_id) is self:
            del self.hub.clients[self.client_id]
        self.lose(1000)


class FakeMedia:
    """A call's media without a peer connection (a ``MediaLink``)."""

    codec = "opus/48000"

    def __init__(self, audio: CallAudio, on_connected: Callable[[], None],
                 on_failed: Callable[[str], None], fail: str | None) -> None:
        self.audio = audio
        self.candidate_pair: CandidatePair | None = None
        self.local: str | None = None
        self.remote: str | None = None
        self.candidates: list[IceCandidate] = []
        self.dtmf = DtmfChannel()  # never agreed: no peer connection to send on
        self.pregathered = False
        self.closed = False
        self._on_connected = on_connected
        self._on_failed = on_failed
        self._fail = fail

    def pregather(self) -> None:
        self.pregathered = True

    def descriptions(self) -> tuple[str | None, str | None]:
        return self.local, self.remote

    async def create_offer(self) -> str:
        self.local = "v=0 fake offer"
        return self.local

    async def accept_offer(self, sdp: str) -> str:
        self.remote = sdp
        self.local = "v=0 fake answer"
        self._up()
        return self.local

    async def apply_answer(self, sdp: str) -> None:
        self.remote = sdp
        self._up()

    def _up(self) -> None:
        loop = asyncio.get_running_loop()
        if self._fail is not None:
            loop.call_soon(self._on_failed, self._fail)
            return
        end = IceCandidateInfo("host", "udp", "127.0.0.1", 9)
        self.candidate_pair = CandidatePair(end, end)
        self.audio.start_playout()  # as aiortc's track event would
        loop.call_soon(self._on_connected)

    def add_candidate(self, candidate: IceCandidate) -> None:
        self.candidates.append(candidate)

    async def stats(self) -> MediaStats:
        return MediaStats(packets_sent=50, frames_received=self.audio.receiver.frames)

    def turn_errors(self) -> list[str]:
        return []

    async def close(self) -> None:
        self.closed = True


class FakeMediaFactory:
    """Makes :class:`FakeMedia` (a ``MediaFactory``); ``fail``: each fails with that reason."""

    def __init__(self, fail: str | None = None) -> None:
        self.fail = fail
        self.sessions: list[FakeMedia] = []

    def __call__(self, ice_servers: Sequence[dict[str, Any]], audio: CallAudio, *,
                 relay_only: bool, on_connected: Callable[[], None],
                 on_failed: Callable[[str], None], certificate: Any = None) -> FakeMedia:
        session = FakeMedia(audio, on_connected, on_failed, self.fail)
        self.sessions.append(session)
        return session


class FakeOutput:
    """Stands for the speaker (an ``AudioOutput``): it never pulls; it can be lost."""

    def __init__(self) -> None:
        self.lost: Callable[[str], None] | None = None
        self.stopped = False

    def drive(self, pull: Callable[[], np.ndarray], lost: Callable[[str], None]) -> None:
        self.lost = lost

    def stop(self) -> None:
        self.stopped = True


class FakeMic(SilenceSource):
    """A microphone that sends silence and can be lost."""

    def lose(self, message: str) -> None:
        self._tell_lost(message)


class FakeSink:
    def __init__(self) -> None:
        self.frames = 0
        self.closed = False

    def write(self, samples: np.ndarray) -> None:
        self.frames += 1

    def close(self) -> None:
        self.closed = True
