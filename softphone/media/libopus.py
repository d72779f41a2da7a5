"""libopus through ctypes: the copy PyAV bundles (1.6) when there is one, else the system's.

Why PyAV's copy: the ``av`` wheel we already depend on ships libopus 1.6
(``av.libs/libopus-*.so``), three releases past Debian's 1.3.1, and it is
the quality difference that matters for a call: PESQ-WB 4.47 at 80 kbit/s
target where 1.3.1 needs 128 (``benchmarks/README.md``). Loading it from
the installed ``av`` distribution means a maintained package's own copy,
updated with PyAV, and no binary of ours. FFmpeg's ``libopus`` encoder
through PyAV would give the same library, but its options are read once
when the encoder opens: bitrate, FEC and expected loss could not follow
the network without a new encoder (and a glitch) for each change. Through
ctypes every setting is a CTL on the running encoder, and the 20 ms path
makes no PyAV frame, no Python list and no thread hop.

When PyAV has no libopus (another build), the system's (Debian
``libopus0``, found by opuslib-next) is used, with one log line; its
:attr:`Libopus.modern` is False, so the adaptation takes the 1.3 rate
profile.

:class:`Encoder` and :class:`Decoder` keep their output buffers, allocated
once; each call of :meth:`Encoder.encode` makes only the packet's bytes.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from softphone.core.errors import MissingDependency
from softphone.media.audio import SAMPLE_RATE, Int16Array

log = logging.getLogger(__name__)

OK: Final = 0
APPLICATION_VOIP: Final = 2048
APPLICATION_AUDIO: Final = 2049
SIGNAL_VOICE: Final = 3001
# CTL requests (opus_defines.h).
SET_BITRATE: Final = 4002
SET_VBR: Final = 4006
SET_VBR_CONSTRAINT: Final = 4020
SET_COMPLEXITY: Final = 4010
SET_INBAND_FEC: Final = 4012
SET_PACKET_LOSS_PERC: Final = 4014
SET_DTX: Final = 4016
SET_SIGNAL: Final = 4024
GET_LOOKAHEAD: Final = 4027
GET_FINAL_RANGE: Final = 4031
RESET_STATE: Final = 4028
#: Longest Opus frame (120 ms at 48 kHz): the decode buffer's size.
MAX_FRAME: Final = 5760
#: Largest packet we let the encoder write (RFC 6716 allows 1275 bytes per frame).
MAX_PACKET: Final = 1500

_VERSION = re.compile(r"libopus (\d+)\.(\d+)")


class OpusError(RuntimeError):
    """libopus returned an error code."""

    def __init__(self, code: int, what: str) -> None:
        super().__init__(f"libopus {what} failed ({code})")
        self.code = code


@dataclass(frozen=True, eq=False)
class Libopus:
    """One loaded libopus and the functions we call in it (argument types declared)."""

    path: str
    version: str  # as the library says: "libopus 1.6.1"
    bundled: bool  # PyAV's copy (else the system's)
    cdll: ctypes.CDLL

    @property
    def version_tuple(self) -> tuple[int, int]:
        m = _VERSION.search(self.version)
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)

    @property
    def modern(self) -> bool:
        """1.5 or newer: the rate profile measured on 1.6 applies."""
        return self.version_tuple >= (1, 5)

    def __repr__(self) -> str:
        return f"Libopus({self.version!r}, {self.path!r})"


def _declare(cdll: ctypes.CDLL) -> None:
    p, i = ctypes.c_void_p, ctypes.c_int
    table: dict[str, tuple[Any, tuple[Any, ...]]] = {
        "opus_get_version_string": (ctypes.c_char_p, ()),
        "opus_encoder_create": (p, (i, i, i, ctypes.POINTER(i))),
        "opus_encoder_destroy": (None, (p,)),
        "opus_encode": (ctypes.c_int32, (p, p, i, p, ctypes.c_int32)),
        "opus_encoder_ctl": (i, (p, i)),  # variadic: the value follows
        "opus_decoder_create": (p, (i, i, ctypes.POINTER(i))),
        "opus_decoder_destroy": (None, (p,)),
        "opus_decode": (i, (p, p, ctypes.c_int32, p, i, i)),
        "opus_decoder_ctl": (i, (p, i)),
    }
    for name, (restype, argtypes) in table.items():
        fn = getattr(cdll, name)
        fn.restype = restype
        fn.argtypes = argtypes


def bundled_path() -> Path | None:
    """PyAV's own libopus, from the files its installed distribution lists (None if none)."""
    try:
        dist = importlib.metadata.distribution("av")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        name = file.name.lower()
        if (name.startswith("libopus") or name.startswith("opus")) and \
                (".so" in name or name.endswith((".dylib", ".dll"))):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    return None


def _open(path: str, bundled: bool) -> Libopus:
    cdll = ctypes.CDLL(path)
    _declare(cdll)
    version = cdll.opus_get_version_string()
    text = version.decode() if isinstance(version, bytes) else str(version)
    return Libopus(path, text, bundled, cdll)


def _system() -> Libopus:
    try:
        import opuslib_next.api
    except ImportError as exc:
        raise MissingDependency("opuslib-next is not installed: pip install opuslib-next") \
            from exc
    except Exception as exc:  # opuslib-next raises a bare Exception without libopus
        raise MissingDependency("libopus is not installed: apt-get install libopus0") from exc
    return _open(str(opuslib_next.api.libopus._name), False)


@functools.cache
def load(prefer_bundled: bool = True) -> Libopus:
    """The libopus calls encode and decode with (loaded once, like an import).

    ``prefer_bundled``: PyAV's copy if it is there and loads; else (or with
    False) the system's through opuslib-next. Raises :class:`MissingDependency`.
    """
    if prefer_bundled:
        path = bundled_path()
        if path is not None:
            try:
                return _open(str(path), True)
            except (OSError, AttributeError) as exc:
                log.info("PyAV's libopus (%s) does not load (%s): using the system's, "
                         "with the libopus 1.3 profile", path, exc)
        else:
            log.info("PyAV bundles no libopus: using the system's, with the libopus 1.3 profile")
    return _system()


class Encoder:
    """A libopus encoder, mono 48 kHz; settings are CTLs, changeable between frames."""

    def __init__(self, lib: Libopus, application: int = APPLICATION_VOIP) -> None:
        self.lib = lib
        err = ctypes.c_int()
        self._state = lib.cdll.opus_encoder_create(SAMPLE_RATE, 1, application,
                                                   ctypes.byref(err))
        if err.value != OK or not self._state:
            raise OpusError(err.value, "encoder_create")
        self._encode = lib.cdll.opus_encode
        self._ctl = lib.cdll.opus_encoder_ctl
        self._out = ctypes.create_string_buffer(MAX_PACKET)
        self._out_addr = ctypes.addressof(self._out)

    def set(self, request: int, value: int) -> None:
        """One ``OPUS_SET_*`` CTL."""
        code = self._ctl(self._state, request, ctypes.c_int(value))
        if code != OK:
            raise OpusError(code, f"encoder_ctl({request}, {value})")

    def get(self, request: int) -> int:
        """One ``OPUS_GET_*`` CTL (an int)."""
        value = ctypes.c_int()
        code = self._ctl(self._state, request, ctypes.byref(value))
        if code != OK:
            raise OpusError(code, f"encoder_ctl({request})")
        return value.value

    def encode(self, pcm: Int16Array) -> bytes:
        """One frame of C-contiguous int16 samples -> one Opus packet."""
        n = self._encode(self._state, pcm.ctypes.data, pcm.size, self._out_addr, MAX_PACKET)
        if n < 0:
            raise OpusError(n, "encode")
        return self._out.raw[:n]

    def close(self) -> None:
        state, self._state = getattr(self, "_state", None), None
        if state:
            self.lib.cdll.opus_encoder_destroy(state)

    def __del__(self) -> None:
        self.close()


class Decoder:
    """A libopus decoder, mono 48 kHz, into one buffer allocated once."""

    def __init__(self, lib: Libopus) -> None:
        self.lib = lib
        err = ctypes.c_int()
        self._state = lib.cdll.opus_decoder_create(SAMPLE_RATE, 1, ctypes.byref(err))
        if err.value != OK or not self._state:
            raise OpusError(err.value, "decoder_create")
        self._decode = lib.cdll.opus_decode
        self._ctl = lib.cdll.opus_decoder_ctl
        self._buffer: Int16Array = np.zeros(MAX_FRAME, dtype=np.int16)
        self._addr = self._buffer.ctypes.data

    def set(self, request: int, value: int) -> None:
        code = self._ctl(self._state, request, ctypes.c_int(value))
        if code != OK:
            raise OpusError(code, f"decoder_ctl({request}, {value})")

    def decode(self, data: bytes | None, frame_size: int, fec: bool = False) -> Int16Array:
        """Decode (``data`` None: conceal ``frame_size`` samples) into the shared buffer.

        The result is a view of a buffer the next call overwrites: copy what is kept.
        """
        n = self._decode(self._state, data, 0 if data is None else len(data), self._addr,
                         frame_size, int(fec))
        if n < 0:
            raise OpusError(n, "decode")
        return self._buffer[:n]

    def close(self) -> None:
        state, self._state = getattr(self, "_state", None), None
        if state:
            self.lib.cdll.opus_decoder_destroy(state)

    def __del__(self) -> None:
        self.close()
