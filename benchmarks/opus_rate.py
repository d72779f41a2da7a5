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
  as stock aiortc encodes (at 96 kbit/s);
- ``ctypes-1.6 mono``: the same libopus 1.6, called through ctypes
  (:mod:`softphone.media.libopus`, what softphone sends with), where every
  setting is a CTL: ``--fec PCT`` (in-band FEC with that expected loss),
  ``--complexity``, ``--application``, ``--vbr`` (on, constrained, off).

Each is decoded by PyAV's libopus 1.6 decoder (mono), so only the encoder
differs. CPU is the process time of encoding (and of decoding) one 20 ms frame.

``--playout``: the receive side too, still offline and deterministic (no
real-time load can warp it): the sample is encoded as the adaptation's
levels send it (RED and FEC included), packets are lost and delayed as
``audio_quality.py``'s scenarios have them (the same seeded
:class:`~softphone.media.netsim.Impairment`), pushed into our playout
(:class:`~softphone.media.playout.StretchPlayout`: jitter buffer, RED and
FEC repair, concealment, time stretching) at their arrival times and pulled
every 20 ms on a simulated clock; what it plays is scored.

Usage::

    python benchmarks/opus_rate.py                 # every bitrate
    python benchmarks/opus_rate.py --rates 32 64   # kbit/s
    python benchmarks/opus_rate.py --encoders 'ctypes-1.6 mono' --fec 10 --complexity 5
    python benchmarks/opus_rate.py --playout         # the levels through our playout

Needs espeak-ng (apt-get install espeak-ng) and pesq (pip install 'softphone[bench]').
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from softphone.media.audio import FRAME_SAMPLES, SAMPLE_RATE
from softphone.media.tracks import load_audio_file

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


@dataclass(frozen=True)
class Knobs:
    """The ctypes encoder's settings (each an OPUS_SET_* CTL)."""

    fec: int | None = None  # expected loss %, FEC on; None: FEC off
    complexity: int = 10
    application: str = "voip"
    vbr: str = "on"  # on, constrained, off


def ctypes_encoder(kbps: int, knobs: Knobs) -> Encode:
    from softphone.media import libopus

    lib = libopus.load()
    app = libopus.APPLICATION_VOIP if knobs.application == "voip" else \
        libopus.APPLICATION_AUDIO
    enc = libopus.Encoder(lib, app)
    enc.set(libopus.SET_BITRATE, kbps * 1000)
    enc.set(libopus.SET_COMPLEXITY, knobs.complexity)
    enc.set(libopus.SET_VBR, int(knobs.vbr != "off"))
    enc.set(libopus.SET_VBR_CONSTRAINT, int(knobs.vbr == "constrained"))
    enc.set(libopus.SET_INBAND_FEC, int(knobs.fec is not None))
    enc.set(libopus.SET_PACKET_LOSS_PERC, knobs.fec or 0)

    def encode(pcm: np.ndarray) -> list[bytes]:
        return [enc.encode(np.ascontiguousarray(pcm))]

    return encode


ENCODERS: dict[str, Callable[[int, Knobs], Encode]] = {
    "debian-1.3 mono": lambda kbps, _: debian_encoder(kbps),
    "pyav-1.6 mono": lambda kbps, _: pyav_encoder(kbps, "mono"),
    "pyav-1.6 stereo": lambda kbps, _: pyav_encoder(kbps, "stereo"),
    "ctypes-1.6 mono": ctypes_encoder,
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


def measure(name: str, kbps: int, speech: np.ndarray,
            knobs: Knobs = Knobs()) -> dict[str, float]:
    from pesq import pesq

    encode = ENCODERS[name](kbps, knobs)
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


#: (scenario, the level's decision) rows of --playout; the scenarios are audio_quality.py's.
JITTER = {"delay": 0.02, "jitter": 0.01}
PLAYOUT_ROWS = [
    ("jitter only, level 0", JITTER, (0, 0, False, 0, 87_000, 1)),
    ("5 % loss + jitter, level 1", {"loss": 0.05, **JITTER}, (1, 1, True, 5, 64_000, 1)),
    ("10 % loss + jitter, level 1", {"loss": 0.10, **JITTER}, (1, 1, True, 5, 64_000, 1)),
    ("10 % loss + jitter, level 2", {"loss": 0.10, **JITTER}, (2, 2, True, 5, 52_000, 1)),
    ("bursty + jitter, level 1", {"burst_rate": 0.01, "burst_length": 6, **JITTER},
     (1, 1, True, 5, 64_000, 1)),
    ("bursty + jitter, level 1 spread 6", {"burst_rate": 0.01, "burst_length": 6, **JITTER},
     (1, 1, True, 5, 64_000, 6)),
    ("clean, adapting", {}, None),
    ("jitter only, adapting", JITTER, None),
    ("5 % loss + jitter, adapting", {"loss": 0.05, **JITTER}, None),
    ("10 % loss + jitter, adapting", {"loss": 0.10, **JITTER}, None),
    ("bursty + jitter, adapting", {"burst_rate": 0.01, "burst_length": 6, **JITTER}, None),
]
#: (adapting rows) The receiver's reports reach the sender this long after they are
#: made (the hub on 127.0.0.1), and a receiver report with its XR goes out this often.
FEEDBACK_DELAY = 0.002
REPORT_EVERY = 1.0


def closed_loop(padded: np.ndarray, impairment: object, playout: object,
                now: list[float], phase: float) -> tuple[list[np.ndarray], list[bytes]]:
    """(adapting rows) Send as a call does: the adaptation (``SendControl``) follows
    the receiver's XR reports (at once on a loss after a clean second, and every
    ``REPORT_EVERY``), delivered ``FEEDBACK_DELAY`` later; the player pulls ``phase``
    seconds after each frame is sent (in a call: anywhere in the 20 ms). Returns
    what was pulled and the packets sent."""
    import heapq

    from softphone.media import red
    from softphone.media.netsim import Impairment
    from softphone.media.opus import EncoderSettings, OpusEncoder
    from softphone.media.playout import StretchPlayout
    from softphone.media.sending import SendControl

    assert isinstance(impairment, Impairment) and isinstance(playout, StretchPlayout)
    control = SendControl(EncoderSettings(), clock=lambda: now[0])
    control.start(red_agreed=True)
    encoder = OpusEncoder(EncoderSettings())
    packer = red.RedPacker(111, 0, FRAME_SAMPLES, history=17)
    applied = None
    pcm = list(frames(padded))
    events: list[tuple[float, int, int, bytes]] = []  # (when, kind, index, data)
    for i in range(len(pcm)):
        heapq.heappush(events, (i * 0.02, 0, i, b""))  # send
    for k in range(len(pcm) + 10):
        heapq.heappush(events, (k * 0.02 + phase, 2, k, b""))  # pull
    k = 1
    while k * REPORT_EVERY < len(pcm) * 0.02:
        heapq.heappush(events, (k * REPORT_EVERY, 3, 0, b""))  # a periodic report
        k += 1

    def report() -> None:
        data = playout.xr_report(2)
        if data:
            heapq.heappush(events, (now[0] + FEEDBACK_DELAY, 4, 0, data))

    playout.on_loss = report
    packets: list[bytes] = []
    out: list[np.ndarray] = []
    while events:
        when, kind, i, data = heapq.heappop(events)
        now[0] = when
        if kind == 0:
            decision = control.decision
            if decision is not applied:
                encoder.apply(decision)
                packer.depth, packer.spacing = decision.red_depth, decision.distance
                applied = decision
            packet = packer.wrap(i * FRAME_SAMPLES, encoder.encode(np.ascontiguousarray(pcm[i])))
            packets.append(packet)
            late = impairment.decide()
            if late is not None:
                heapq.heappush(events, (when + 0.001 + late, 1, i, packet))
        elif kind == 1:
            playout.push(1, i, i * FRAME_SAMPLES, data, True)
        elif kind == 2:
            out.append(playout.pull())
        elif kind == 3:
            report()
        else:
            control.on_xr(data, 1)
    return out, packets


def playout_run(speech: np.ndarray, scenario: dict[str, float],
                decision: tuple[int, int, bool, int, int, int] | None, seed: int,
                lead: int = 50) -> dict[str, float]:
    """One offline call through our playout (module docstring): PESQ-WB and what it did.

    ``lead``: frames of silence sent before the speech (50: the call's start is
    not what is measured; 0: the speech starts with the call, as in
    ``audio_quality.py``, where the buffer's delay grows while it is spoken).
    ``decision`` None: the adaptation chooses, from the receiver's reports
    (:func:`closed_loop`)."""
    from pesq import pesq

    from softphone.core.adapt import Decision
    from softphone.media import red
    from softphone.media.netsim import Impairment
    from softphone.media.opus import EncoderSettings, OpusEncoder
    from softphone.media.playout import StretchPlayout

    padded = np.concatenate((np.zeros(lead * FRAME_SAMPLES, np.int16), speech,
                             np.zeros(50 * FRAME_SAMPLES, np.int16)))
    impairment = Impairment(seed=seed, **scenario)
    now = [0.0]
    playout = StretchPlayout(clock=lambda: now[0])
    if decision is None:
        # The pull clock's phase against the sender's: the seed's, as in a call.
        phase = 0.001 + random.Random(seed).uniform(0.0, 0.019)
        out, packets = closed_loop(padded, impairment, playout, now, phase)
    else:
        level, depth, fec, loss, bitrate, spacing = decision
        encoder = OpusEncoder(EncoderSettings())
        encoder.apply(Decision(level, depth, fec, loss, bitrate, 0, spacing))
        packer = red.RedPacker(111, depth, FRAME_SAMPLES, spacing=spacing, history=17)
        packets = [packer.wrap(i * FRAME_SAMPLES, encoder.encode(np.ascontiguousarray(pcm)))
                   for i, pcm in enumerate(frames(padded))]
        events = []
        for i in range(len(packets)):
            late = impairment.decide()
            if late is not None:
                events.append((i * 0.02 + 0.001 + late, 0, i))
        events += [(k * 0.02 + 0.0055, 1, k) for k in range(len(packets) + 10)]
        out = []
        for when, kind, i in sorted(events):
            now[0] = when
            if kind == 0:
                playout.push(1, i, i * FRAME_SAMPLES, packets[i], True)
            else:
                out.append(playout.pull())
    played = np.concatenate(out)[max(0, lead - 5) * FRAME_SAMPLES:]
    score = float(pesq(16000, resample16(speech).astype(np.float32),
                       resample16(played).astype(np.float32), "wb"))
    stats = playout.buffer.stats
    return {"pesq": score, "repaired": stats.repaired, "recovered": stats.recovered,
            "stretched": playout.stretch_stats.accelerated + playout.stretch_stats.expanded,
            "kbps": sum(len(p) for p in packets) * 8 / (len(packets) * 0.02) / 1000}


def playout_table(speech: np.ndarray, seeds: int, lead: int = 50,
                  rows: list[str] | None = None) -> None:
    print(f"{'scenario, what is sent':<36} {'sent':>7} {'PESQ-WB by seed':>22} {'mean':>5} "
          f"{'repaired/FEC/stretched':>23}")
    for name, scenario, decision in PLAYOUT_ROWS:
        if rows and not any(r in name for r in rows):
            continue
        runs = [playout_run(speech, scenario, decision, seed, lead)
                for seed in range(1, seeds + 1)]
        scores = " ".join(f"{r['pesq']:.2f}" for r in runs)
        mean = sum(r["pesq"] for r in runs) / len(runs)
        last = runs[-1]
        print(f"{name:<36} {last['kbps']:>6.0f}k {scores:>22} {mean:>5.2f} "
              f"{last['repaired']:>9.0f}/{last['recovered']:.0f}/{last['stretched']:.0f}",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=int, nargs="+",
                        default=[16, 24, 32, 40, 48, 64, 96, 128],
                        help="bitrates to try, kbit/s")
    parser.add_argument("--encoders", nargs="+", choices=list(ENCODERS),
                        default=list(ENCODERS))
    parser.add_argument("--fec", type=int, metavar="PCT",
                        help="ctypes encoder: in-band FEC on, this expected loss")
    parser.add_argument("--complexity", type=int, default=10, choices=range(11))
    parser.add_argument("--application", choices=("voip", "audio"), default="voip")
    parser.add_argument("--vbr", choices=("on", "constrained", "off"), default="on")
    parser.add_argument("--playout", action="store_true",
                        help="the adaptation's levels through our playout, offline")
    parser.add_argument("--seeds", type=int, default=3, help="--playout: loss patterns")
    parser.add_argument("--lead", type=float, default=1.0,
                        help="--playout: seconds of silence before the speech (0: it "
                             "starts with the call, as in a real call)")
    parser.add_argument("--rows", nargs="+", metavar="TEXT",
                        help="--playout: only the rows whose name holds one of these")
    args = parser.parse_args()
    knobs = Knobs(args.fec, args.complexity, args.application, args.vbr)
    with tempfile.TemporaryDirectory() as folder:
        speech = make_speech(folder)
    if args.playout:
        playout_table(speech, args.seeds, round(args.lead * 50), args.rows)
        return
    print(f"speech sample: {speech.size / SAMPLE_RATE:.1f} s; libopus versions: "
          f"Debian (opuslib-next) and PyAV {av.__version__}'s bundled one")
    print(f"{'encoder':<16} {'target':>7} {'sent':>7} {'PESQ-WB':>8} "
          f"{'enc us/frame':>13} {'dec us/frame':>13}")
    for name in args.encoders:
        for kbps in args.rates:
            r = measure(name, kbps, speech, knobs)
            print(f"{name:<16} {kbps:>5}k {r['kbps']:>6.1f}k {r['pesq']:>8.2f} "
                  f"{r['enc_us']:>13.0f} {r['dec_us']:>13.0f}", flush=True)


if __name__ == "__main__":
    main()
