"""libopus through opuslib-next: the encoder we send with, the decoder we play with.

Why opuslib-next: it is a maintained ctypes binding of the system libopus
(Debian ``libopus0``) that exposes what aiortc's PyAV-based codec hides:
in-band FEC and expected-loss settings on the encoder, and on the decoder
packet loss concealment (decode with no packet) and FEC decoding (recover a
lost frame from the LBRR data in the next packet). We use its encoder class
and its ctypes function declarations; for decoding we call its declared
``opus_decode`` with a buffer allocated once, so the 50-a-second path makes
no Python lists.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from softphone.core.errors import MissingDependency
from softphone.media.audio import FRAME_SAMPLES, SAMPLE_RATE, Int16Array


def require_libopus() -> None:
    """Raise :class:`MissingDependency` now if libopus or its binding is missing."""
    _opuslib()


def _opuslib() -> Any:
    """Import opuslib-next (and so load libopus) on first use, with a clear error."""
    try:
        import opuslib_next
        import opuslib_next.api.decoder
    except ImportError as exc:
        raise MissingDependency(
            "opuslib-next is not installed: pip install opuslib-next") from exc
    except Exception as exc:  # opuslib-next raises a bare Exception without libopus
        raise MissingDependency("libopus is not installed: apt-get install libopus0") from exc
    return opuslib_next

#: Longest Opus frame (120 ms at 48 kHz): the decode buffer's size.
_MAX_FRAME: Final = 5760


@dataclass(frozen=True)
class EncoderSettings:
    """How we encode the voice we send. Defaults suit a voice call on a lossy network."""

    #: bit/s. High for voice, on purpose: with Debian's libopus 1.3 it takes 128 kbit/s
    #: mono for PESQ-WB >= 4.4 (benchmarks/README.md); --bitrate lowers it.
    bitrate: int = 128_000
    expected_loss: int = 10  # percent; makes libopus spend bits on in-band FEC
    fec: bool = True
    complexity: int = 10  # 0..10; 10 costs about 0.3 ms a frame here (benchmarks/README.md)
    dtx: bool = False
    #: Earlier frames repeated in each packet (RED, RFC 2198) when the peer
    #: accepts ``red/48000/2``: a lost packet is then rebuilt exactly from the
    #: next one. Costs that many times the bitrate again. 0: Opus alone.
    redundancy: int = 1

    def __post_init__(self) -> None:
        if not 6_000 <= self.bitrate <= 510_000:
            raise ValueError("Opus bitrate must be 6000..510000 bit/s")
        if not 0 <= self.expected_loss <= 100:
            raise ValueError("expected loss must be 0..100 %")
        if not 0 <= self.complexity <= 10:
            raise ValueError("complexity must be 0..10")
        if not 0 <= self.redundancy <= 3:
            raise ValueError("redundancy must be 0..3 frames")


class OpusEncoder:
    """Mono 48 kHz voice encoder, 20 ms frames."""

    def __init__(self, settings: EncoderSettings | None = None) -> None:
        self.settings = settings or EncoderSettings()
        lib = _opuslib()
        enc = lib.Encoder(SAMPLE_RATE, 1, lib.APPLICATION_VOIP)
        enc.bitrate = self.settings.bitrate
        enc.signal = lib.SIGNAL_VOICE
        enc.complexity = self.settings.complexity
        enc.inband_fec = int(self.settings.fec)
        enc.packet_loss_perc = self.settings.expected_loss
        enc.dtx = int(self.settings.dtx)
        self._encoder = enc

    def encode(self, pcm: Int16Array) -> bytes:
        """One 20 ms frame (960 int16 samples) -> one Opus packet."""
        data: bytes = self._encoder.encode(pcm.tobytes(), pcm.size)
        return data

    @property
    def inband_fec(self) -> bool:
        return bool(self._encoder.inband_fec)


class OpusDecoder:
    """Mono 48 kHz decoder with packet loss concealment and FEC recovery."""

    def __init__(self) -> None:
        lib = _opuslib()
        self._lib = lib
        self._dec = lib.api.decoder
        self._state: Any = self._dec.create_state(SAMPLE_RATE, 1)
        self._buffer = (ctypes.c_int16 * _MAX_FRAME)()
        self._pointer = ctypes.cast(self._buffer, lib.api.c_int16_pointer)
        self._view: Int16Array = np.frombuffer(memoryview(self._buffer).cast("B"),
                                               dtype=np.int16)

    def _run(self, data: bytes | None, frame_size: int, fec: bool) -> Int16Array:
        n = self._dec.libopus_decode(self._state, data, 0 if data is None else len(data),
                                     self._pointer, frame_size, int(fec))
        if n < 0:
            raise self._lib.OpusError(n)
        out: Int16Array = self._view[:n].copy()
        return out

    def decode(self, packet: bytes) -> Int16Array:
        """A received packet -> its samples."""
        return self._run(packet, _MAX_FRAME, False)

    def conceal(self, samples: int = FRAME_SAMPLES) -> Int16Array:
        """Packet loss concealment: a plausible continuation of what was playing."""
        return self._run(None, samples, False)

    def recover(self, next_packet: bytes, samples: int = FRAME_SAMPLES) -> Int16Array:
        """Rebuild the lost frame before ``next_packet`` from its in-band FEC data.

        Without FEC data in ``next_packet``, libopus conceals instead.
        """
        return self._run(next_packet, samples, True)

    def __del__(self) -> None:
        state = getattr(self, "_state", None)
        if state is not None:
            self._dec.destroy(state)
            self._state = None


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
