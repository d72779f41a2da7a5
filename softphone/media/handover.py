"""One call's audio across its peer connections (media restart: make before break).

A call whose media path died gets a fresh peer connection (a new
*generation*) while the old one stays open (``docs/protocol.md``, "Media
restart and hold"). Both are plugged into the call's one
:class:`~softphone.media.audiopath.CallAudio`, so source, playout, recorder and
meters carry over; :class:`Handover` (one per call, ``CallAudio.handover``)
says which connection does what:

- **sending**: one generation's sender takes the call's source at a time (two
  senders reading one source would split its frames between them, and a
  closing sender stops its track). Each connection sends a stand-in track
  (:class:`_SendTrack`, or :class:`_SendEncoded` for an
  :class:`~softphone.media.encoded.EncodedSource`) that reads the source only
  while its generation is the sender; :meth:`Handover.send_from` moves it. The
  first connection sends at once; a later one when the restart adapter says
  (when it connects).
- **playing**: packets of one generation reach the playout. A newer one takes
  over at its first packet (the moment the new connection carries RTP) and the
  older one's packets are dropped from then on (one playout, so its jitter
  buffer restarts once, on the new SSRC). ``on_playing`` tells the adapter.

The cost on the audio path is one comparison per received packet (the gate in
:meth:`Generation.gate`) and one extra call per frame sent. The restart
adapter learns that RTP arrives by sampling :meth:`Generation.packets_received`
(aiortc's own per-stream counter) on a timer: nothing is counted per packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from softphone.media.aiortc_seams import PacketHandler, SeamMismatch
from softphone.media.encoded import EncodedFrame, EncodedSource
from softphone.media.tracks import AudioSource

log = logging.getLogger(__name__)

_STREAMS: Final = "_RTCRtpReceiver__remote_streams"
#: Decoded frames (aiortc's pipeline) waiting to be played, at most.
_TRACK_QUEUE: Final = 10


class Generation:
    """One peer connection's share of the call's audio (see :class:`Handover`)."""

    def __init__(self, handover: Handover, index: int, track: AudioSource) -> None:
        self.handover = handover
        #: Creation order within the call: a higher index is a newer connection.
        self.index = index
        #: What this connection's sender sends (a stand-in for the call's source).
        self.track = track
        self.rtp_receiver: Any = None
        #: Sends our XR at once on this connection (the playout's early loss report).
        self.early_report: Callable[[], None] | None = None
        self.closed = False
        self._reader: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Generation #{self.index}{' closed' if self.closed else ''}>"

    def gate(self, push: PacketHandler) -> PacketHandler:
        """``push`` for this connection's packets: played while it is the playing one;
        a newer connection's first packet makes it so; an older one's are dropped."""
        handover = self.handover

        def gated(ssrc: int, seq: int, timestamp: int, payload: bytes, is_red: bool) -> None:
            if handover.playing is not self and not handover.take_playing(self):
                return
            push(ssrc, seq, timestamp, payload, is_red)

        return gated

    def watch(self, rtp_receiver: Any) -> None:
        """This connection's audio receiver (for :meth:`packets_received`)."""
        if not isinstance(getattr(rtp_receiver, _STREAMS, None), dict):
            raise SeamMismatch("aiortc's RTCRtpReceiver has no __remote_streams any more")
        self.rtp_receiver = rtp_receiver

    def packets_received(self) -> int:
        """RTP packets received on this connection so far (aiortc's RTCP statistics)."""
        receiver = self.rtp_receiver
        if receiver is None:
            return 0
        streams: dict[int, Any] = getattr(receiver, _STREAMS)
        return sum(int(s.packets_received) for s in list(streams.values()))

    def remote_track(self, track: MediaStreamTrack) -> MediaStreamTrack | None:
        """aiortc's pipeline: this connection's decoded track. Returns the track the call
        plays (the first time only: later connections' frames go through it)."""
        handover = self.handover
        first = handover.played is None
        if first:
            handover.played = _PlayedTrack()
        self._reader = asyncio.create_task(self._read(track), name="handover-reader")
        return handover.played if first else None

    async def _read(self, track: MediaStreamTrack) -> None:
        handover = self.handover
        played = handover.played
        assert played is not None
        while not self.closed:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if isinstance(frame, av.AudioFrame) and (
                    handover.playing is self or handover.take_playing(self)):
                played.put(frame)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        # (Its receiver's tap holds our gate: no cycle. Closed, it counts nothing more.)
        self.rtp_receiver = None
        self.handover.close(self)


class Handover:
    """Which of a call's connections sends its source and whose packets are played."""

    def __init__(self, source: AudioSource) -> None:
        self.source = source
        self.sending: Generation | None = None
        self.playing: Generation | None = None
        #: Told when a newer connection's packets start being played (its first packet).
        self.on_playing: Callable[[Generation], None] | None = None
        #: Told (with the early-report function) when the playing connection changes.
        self.on_report: Callable[[Callable[[], None]], None] | None = None
        #: aiortc's pipeline: the one track the call plays.
        self.played: _PlayedTrack | None = None
        self._count = 0
        self._changed = asyncio.Event()

    def open(self) -> Generation:
        """A new connection's share: the first one sends and plays at once."""
        track: AudioSource
        if isinstance(self.source, EncodedSource):
            track = _SendEncoded(self)
        else:
            track = _SendTrack(self)
        gen = Generation(self, self._count, track)
        self._count += 1
        if isinstance(track, _SendEncoded | _SendTrack):
            track.generation = gen
        if self.sending is None:
            self.send_from(gen)
        if self.playing is None:
            self.playing = gen
        return gen

    def send_from(self, gen: Generation) -> None:
        """``gen``'s sender takes the call's source (the previous sender pauses)."""
        if gen.closed or self.sending is gen:
            return
        self.sending = gen
        track = gen.track
        if isinstance(track, _SendEncoded):
            track.taken()
        self._changed.set()
        self._changed = asyncio.Event()

    def play_from(self, gen: Generation) -> None:
        """Play ``gen``'s packets from now on (older or newer)."""
        if gen.closed or self.playing is gen:
            return
        self.playing = gen
        if gen.early_report is not None and self.on_report is not None:
            self.on_report(gen.early_report)

    def take_playing(self, gen: Generation) -> bool:
        """A packet from ``gen``, not the playing connection: newer ones take over."""
        playing = self.playing
        if gen.closed or (playing is not None and not playing.closed
                          and gen.index < playing.index):
            return False
        log.info("playing the audio of connection #%d from now on", gen.index)
        self.play_from(gen)
        if self.on_playing is not None:
            self.on_playing(gen)
        return True

    def close(self, gen: Generation) -> None:
        gen.closed = True
        gen.track.stop()
        track = gen.track
        if isinstance(track, _SendEncoded | _SendTrack):
            track.generation = None  # (stopped: it sends nothing more) no cycle with gen
        self._changed.set()  # a stand-in waiting for its turn ends
        self._changed = asyncio.Event()

    def finish(self) -> None:
        """The call is over (its connections closed): let go of their shares and of
        whom we tell, so that no cycle keeps the call's objects for the garbage
        collector (issue 15)."""
        self.sending = self.playing = None
        self.on_playing = self.on_report = None
        if isinstance(self.source, EncodedSource):  # (it delivered to a stand-in)
            self.source.attach(None)

    async def wait_change(self) -> None:
        await self._changed.wait()


class _SendTrack(AudioSource):
    """A connection's stand-in for the call's source: its frames while it is the sender.

    Never stops the source (a closing connection stops its own track); reports
    the source's level (the RTP audio-level extension).
    """

    def __init__(self, handover: Handover) -> None:
        super().__init__()
        self.handover = handover
        self.generation: Generation | None = None

    @property
    def level_dbfs(self) -> float:
        return self.handover.source.level_dbfs

    @level_dbfs.setter
    def level_dbfs(self, value: float) -> None:
        pass  # the source's own

    async def recv(self) -> av.AudioFrame:
        handover = self.handover
        while handover.sending is not self.generation:
            if self.readyState != "live":
                raise MediaStreamError
            await handover.wait_change()
        if self.readyState != "live":
            raise MediaStreamError
        frame = await handover.source.recv()
        assert isinstance(frame, av.AudioFrame)
        return frame


class _SendEncoded(EncodedSource):
    """:class:`_SendTrack` for a source of encoded frames (a prompt, a packet echo).

    The send loop attaches to this stand-in; the source delivers to the
    stand-in of the sending connection (:meth:`taken`), which sends the frame
    at once or queues it for its own loop.
    """

    def __init__(self, handover: Handover) -> None:
        super().__init__()
        self.handover = handover
        self.generation: Generation | None = None

    def bind(self, mime_type: str, parameters: dict[str, Any]) -> None:
        source = self.handover.source
        assert isinstance(source, EncodedSource)
        source.bind(mime_type, parameters)

    def attach(self, direct: Callable[[EncodedFrame], bool] | None) -> None:
        super().attach(direct)
        if direct is not None and self.handover.sending is self.generation:
            self.taken()

    def taken(self) -> None:
        """This connection is the sender now: the source delivers to it."""
        source = self.handover.source
        if self._direct is not None and isinstance(source, EncodedSource) and \
                self.readyState == "live":
            source.attach(self._deliver)

    def _deliver(self, frame: EncodedFrame) -> bool:
        self.deliver(frame)
        return True


class _PlayedTrack(MediaStreamTrack):
    """aiortc's pipeline: the one track a call plays, fed by the playing connection."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._frames: asyncio.Queue[av.AudioFrame] = asyncio.Queue(_TRACK_QUEUE)

    def put(self, frame: av.AudioFrame) -> None:
        if self._frames.full():  # a stalled player: the oldest goes
            with contextlib.suppress(asyncio.QueueEmpty):
                self._frames.get_nowait()
        self._frames.put_nowait(frame)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        return await self._frames.get()
