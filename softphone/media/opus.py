"""Opus for a voice call: the encoder we send with, the decoder we play with.

Both run on the libopus :func:`softphone.media.libopus.load` finds: the 1.6
that PyAV bundles, else the system's (through opuslib-next). The encoder's
settings are CTLs on the running encoder: :meth:`OpusEncoder.apply` takes a
:class:`softphone.core.adapt.Decision` (bitrate, in-band FEC, expected
loss) between two frames. The decoder exposes what aiortc's PyAV-based codec
hides: packet loss concealment (decode with no packet) and FEC decoding
(recover a lost frame from the LBRR data in the next packet), into a buffer
allocated once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from softphone.core.adapt import LIBOPUS_13, LIBOPUS_16, AdaptConfig, Decision, EncoderProfile
from softphone.core.errors import MissingDependency
from softphone.media import libopus
from softphone.media.audio import FRAME_SAMPLES, SAMPLE_RATE, Int16Array


def require_libopus() -> None:
    """Raise :class:`MissingDependency` now if libopus or its binding is missing."""
    try:
        import opuslib_next  # noqa: F401  (declared: it finds the system libopus)
    except ImportError as exc:
        raise MissingDependency("opuslib-next is not installed: pip install opuslib-next") \
            from exc
    except Exception:  # opuslib-next raises a bare Exception without a system libopus
        pass  # PyAV's copy may still be there: load() says
    libopus.load()


#: The Opus bitrate sent when the adaptation is off and no bitrate is given.
FIXED_BITRATE: Final = 64_000


@dataclass(frozen=True)
class EncoderSettings:
    """How one call encodes the voice it sends. The defaults follow the network.

    With ``adapt`` (the default) the call's :class:`softphone.core.adapt.Adaptation`
    chooses the bitrate, in-band FEC, the expected loss and the RED depth
    from the loss the peer reports: no redundancy on a clean path, more as
    loss appears (``benchmarks/README.md``); ``bitrate`` is then a ceiling
    and ``redundancy`` the most RED copies it may send. Without ``adapt``
    these settings hold for the whole call.
    """

    #: Most bit/s asked of the Opus encoder (``--bitrate``); None: as the adaptation
    #: chooses (or :data:`FIXED_BITRATE` without it).
    bitrate: int | None = None
    #: Most earlier frames repeated in each packet (RED, RFC 2198) when the peer
    #: accepts ``red/48000/2``; 0: never (``--redundancy``).
    redundancy: int = 2
    #: Follow the loss the peer reports (:mod:`softphone.core.adapt`)...
    adapt: bool = True
    #: ...with these rules (hold, thresholds; None: the defaults). Its profile,
    #: bitrate ceiling and RED depth come from the library and the settings above.
    adaptation: AdaptConfig | None = None
    #: Without ``adapt``: in-band FEC, and the loss (percent) the encoder expects.
    fec: bool = True
    expected_loss: int = 10
    #: 0..10. 10 costs about 0.1 ms a frame in CELT mode, 0.25 in hybrid (the
    #: mode with FEC); 8 sounds the same here, 5 loses 0.08 of PESQ-WB.
    complexity: int = 10
    dtx: bool = False

    def __post_init__(self) -> None:
        if self.bitrate is not None and not 6_000 <= self.bitrate <= 510_000:
            raise ValueError("Opus bitrate must be 6000..510000 bit/s")
        if not 0 <= self.expected_loss <= 100:
            raise ValueError("expected loss must be 0..100 %")
        if not 0 <= self.complexity <= 10:
            raise ValueError("complexity must be 0..10")
        if not 0 <= self.redundancy <= 3:
            raise ValueError("redundancy must be 0..3 frames")

    def fixed(self) -> Decision:
        """What is sent without the adaptation (``redundancy`` copies when RED is agreed)."""
        bitrate = self.bitrate or FIXED_BITRATE
        return Decision(level=0, red_depth=self.redundancy, fec=self.fec,
                        expected_loss=self.expected_loss, bitrate=bitrate,
                        sent=bitrate * (1 + self.redundancy))


def profile_of(lib: libopus.Libopus) -> EncoderProfile:
    """The measured rate profile for a loaded libopus (1.5 and newer behave as 1.6)."""
    return LIBOPUS_16 if lib.modern else LIBOPUS_13


class OpusEncoder:
    """Mono 48 kHz voice encoder, 20 ms frames, settings changeable between frames."""

    def __init__(self, settings: EncoderSettings | None = None,
                 lib: libopus.Libopus | None = None) -> None:
        self.settings = settings or EncoderSettings()
        self.lib = lib or libopus.load()
        enc = libopus.Encoder(self.lib, libopus.APPLICATION_VOIP)
        enc.set(libopus.SET_COMPLEXITY, self.settings.complexity)
        # Unconstrained VBR, as measured (libopus's default, constrained VBR, sends
        # less in CELT mode and scores far less: 64 kbit/s -> 56 k, PESQ-WB 3.95).
        enc.set(libopus.SET_VBR, 1)
        enc.set(libopus.SET_VBR_CONSTRAINT, 0)
        enc.set(libopus.SET_DTX, int(self.settings.dtx))
        self._encoder = enc
        self._bitrate = self._fec = self._loss = -1
        self.apply(self.settings.fixed())

    def apply(self, decision: Decision) -> None:
        """Send with ``decision``'s bitrate, FEC and expected loss from the next frame."""
        enc = self._encoder
        if decision.bitrate != self._bitrate:
            enc.set(libopus.SET_BITRATE, decision.bitrate)
            self._bitrate = decision.bitrate
        if int(decision.fec) != self._fec:
            enc.set(libopus.SET_INBAND_FEC, int(decision.fec))
            self._fec = int(decision.fec)
        if decision.expected_loss != self._loss:
            enc.set(libopus.SET_PACKET_LOSS_PERC, decision.expected_loss)
            self._loss = decision.expected_loss

    def encode(self, pcm: Int16Array) -> bytes:
        """One 20 ms frame (960 C-contiguous int16 samples) -> one Opus packet."""
        return self._encoder.encode(pcm)

    @property
    def bitrate(self) -> int:
        return self._bitrate

    @property
    def delay(self) -> float:
        """Seconds by which the decoded sound lags what was encoded: the encoder's
        look-ahead (6.5 ms at 48 kHz for voice), on top of the frame itself."""
        return self._encoder.get(libopus.GET_LOOKAHEAD) / SAMPLE_RATE

    @property
    def inband_fec(self) -> bool:
        return bool(self._fec)


class OpusDecoder:
    """Mono 48 kHz decoder with packet loss concealment and FEC recovery.

    Each result is a new array, or with ``copy=False`` a view of the
    decoder's buffer that its next call overwrites (for a caller that copies
    the samples on at once: no allocation).
    """

    def __init__(self, lib: libopus.Libopus | None = None) -> None:
        self._decoder = libopus.Decoder(lib or libopus.load())

    @staticmethod
    def _out(pcm: Int16Array, copy: bool) -> Int16Array:
        return pcm.copy() if copy else pcm

    def decode(self, packet: bytes, copy: bool = True) -> Int16Array:
        """A received packet -> its samples."""
        return self._out(self._decoder.decode(packet, libopus.MAX_FRAME), copy)

    def conceal(self, samples: int = FRAME_SAMPLES, copy: bool = True) -> Int16Array:
        """Packet loss concealment: a plausible continuation of what was playing."""
        return self._out(self._decoder.decode(None, samples), copy)

    def recover(self, next_packet: bytes, samples: int = FRAME_SAMPLES,
                copy: bool = True) -> Int16Array:
        """Rebuild the lost frame before ``next_packet`` from its in-band FEC data.

        Without FEC data in ``next_packet``, libopus conceals instead.
        """
        return self._out(self._decoder.decode(next_packet, samples, fec=True), copy)


def packet_samples(packet: bytes) -> int:
    """How many samples (at 48 kHz) an Opus packet holds, from its TOC byte."""
    if not packet:
        return 0
    toc = packet[0]
    config = toc >> 3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        per_frame = (480, 960, 1920, 2880)[config & 3]
    elif config < 16:  # hybrid: 10, 20 ms
        per_frame = (480, 960)[config & 1]
    else:  # CELT: 2.5, 5, 10, 20 ms
        per_frame = (120, 240, 480, 960)[config & 3]
    code = toc & 3
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    else:
        frames = (packet[1] & 0x3F) if len(packet) > 1 else 0
    return per_frame * frames
