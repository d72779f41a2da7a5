"""Opus offline: PESQ-WB against bitrate for each encoder we could send with, and its CPU.

No network and no call: an espeak-ng speech sample is encoded in 20 ms frames,
decoded again, and scored with PESQ-WB (ITU-T P.862.2, the ``pesq`` package)
against the original. This separates what the *encoder* costs in quality per
bit from what the network and the playout cost (``benchmarks/audio_quality.py``).

Encoders:

- ``debian-1.3 mono``: Debian's libopus 1.3.1 through opuslib-next, mono,
  ``APPLICATION_VOIP``, complexity 10 (what softphone sent until now);
- ``pyav-1.6 mono``: the libopus 1.6 that PyAV bundles, through FFmpeg's
  ``libopus`` encoder, mono, ``application=voip``;
- ``pyav-1.6 stereo``: the same, stereo (the mono signal on both channels),
  as stock aiortc encodes (at 96 kbit/s).

Each is decoded by PyAV's libopus 1.6 decoder (mono), so only the encoder
differs. CPU is the process time of encoding (and of decoding) one 20 ms frame.

Usage::

    python benchmarks/opus_rate.py                 # every bitrate
    python benchmarks/opus_rate.py --rates 32 64   # kbit/s

Needs espeak-ng (apt-get install espeak-ng) and pesq (pip install 'softphone[bench]').
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from softphone.media.audio import FRAME_SAMPLES, SAMPLE_RATE  # noqa: E402
from softphone.media.tracks import load_audio_file  # noqa: E402

SPEECH = (
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
    "It is easy to tell the depth of a well. These days a chicken leg is a rare dish. "
    "Rice is often served in round bowls. The juice of lemons makes fine punch."
)

Encode = Callable[[np.ndarray], list[bytes]]


def frames(samples: np.ndarray) -> Iterator[np.ndarray]:
    usable = samples.size - samples.size % FRAME_SAMPLES
    for start in range(0, usable, FRAME_SAMPLES):
        yield samples[start:start + FRAME_SAMPLES]


def debian_encoder(kbps: int) -> Encode:
    import opuslib_next

    enc = opuslib_next.Encoder(SAMPLE_RATE, 1, opuslib_next.APPLICATION_VOIP)
    enc.bitrate = kbps * 1000
    enc.complexity = 10

    def encode(pcm: np.ndarray) -> list[bytes]:
        return [bytes(enc.encode(pcm.tobytes(), FRAME_SAMPLES))]

    return encode


def pyav_encoder(kbps: int, layout: str) -> Encode:
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate = kbps * 1000
    codec.format = "s16"
    codec.layout = layout
    codec.sample_rate = SAMPLE_RATE
    codec.options = {"application": "voip", "frame_duration": "20"}
    pts = 0

    def encode(pcm: np.ndarray) -> list[bytes]:
        nonlocal pts
        data = pcm.reshape(1, -1) if layout == "mono" else \
            np.repeat(pcm, 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout=layout)
        frame.sample_rate = SAMPLE_RATE
        frame.pts = pts
        pts += FRAME_SAMPLES
        return [bytes(p) for p in codec.encode(frame)]

    return encode


ENCODERS: dict[str, Callable[[int], Encode]] = {
    "debian-1.3 mono": debian_encoder,
    "pyav-1.6 mono": lambda kbps: pyav_encoder(kbps, "mono"),
    "pyav-1.6 stereo": lambda kbps: pyav_encoder(kbps, "stereo"),
}


def decode_all(packets: list[bytes]) -> tuple[np.ndarray, float]:
    codec = av.CodecContext.create("libopus", "r")
    codec.format = "s16"
    codec.layout = "mono"
    codec.sample_rate = SAMPLE_RATE
    out: list[np.ndarray] = []
    started = time.process_time()
    for data in packets:
        for frame in codec.decode(av.Packet(data)):
            out.append(frame.to_ndarray().reshape(-1))
    cpu = time.process_time() - started
    return np.concatenate(out).astype(np.int16), cpu


def resample16(samples: np.ndarray) -> np.ndarray:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    parts = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(parts).astype(np.int16)


def measure(name: str, kbps: int, speech: np.ndarray) -> dict[str, float]:
    from pesq import pesq

    encode = ENCODERS[name](kbps)
    packets: list[bytes] = []
    started = time.process_time()
    for pcm in frames(speech):
        packets.extend(encode(pcm))
    enc_cpu = time.process_time() - started
    decoded, dec_cpu = decode_all(packets)
    n = max(1, len(packets))
    sent_kbps = sum(len(p) for p in packets) * 8 / (n * 0.02) / 1000
    score = float(pesq(16000, resample16(speech).astype(np.float32),
                       resample16(decoded).astype(np.float32), "wb"))
    return {"pesq": score, "kbps": sent_kbps, "enc_us": 1e6 * enc_cpu / n,
            "dec_us": 1e6 * dec_cpu / n}


def make_speech(folder: str) -> np.ndarray:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        sys.exit("espeak-ng is missing: apt-get install espeak-ng")
    path = os.path.join(folder, "speech.wav")
    subprocess.run([espeak, "-v", "en-us", "-s", "150", "-w", path, SPEECH], check=True)
    return load_audio_file(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=int, nargs="+",
                        default=[16, 24, 32, 40, 48, 64, 96, 128],
                        help="bitrates to try, kbit/s")
    parser.add_argument("--encoders", nargs="+", choices=list(ENCODERS),
                        default=list(ENCODERS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        speech = make_speech(folder)
    print(f"speech sample: {speech.size / SAMPLE_RATE:.1f} s; libopus versions: "
          f"Debian (opuslib-next) and PyAV {av.__version__}'s bundled one")
    print(f"{'encoder':<16} {'target':>7} {'sent':>7} {'PESQ-WB':>8} "
          f"{'enc us/frame':>13} {'dec us/frame':>13}")
    for name in args.encoders:
        for kbps in args.rates:
            r = measure(name, kbps, speech)
            print(f"{name:<16} {kbps:>5}k {r['kbps']:>6.1f}k {r['pesq']:>8.2f} "
                  f"{r['enc_us']:>13.0f} {r['dec_us']:>13.0f}", flush=True)


if __name__ == "__main__":
    main()
