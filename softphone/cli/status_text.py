"""The words and figures of a call's status line (pure: no terminal, no I/O).

:func:`status_text` builds the line :class:`softphone.cli.tui.CallScreen` redraws
(and the plain ``status:`` lines off a terminal); :func:`hold_text` and
:func:`media_text` are the lines said when a call is held or its media comes and goes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from softphone.client.call import Call
    from softphone.media.apm import VoiceStats
    from softphone.media.delay import DelayParts
    from softphone.media.rtc import MediaStats

METER_WIDTH = 6
#: The keys pressed each way shown on the line (the last ones).
KEYS_SHOWN = 8


def meter(dbfs: float, width: int = METER_WIDTH) -> str:
    """A level meter from -60 dBFS (empty) to 0 dBFS (full): ``[#####---]``."""
    if not math.isfinite(dbfs):
        filled = 0
    else:
        filled = max(0, min(width, round((dbfs + 60.0) / 60.0 * width)))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def voice_status(voice: VoiceStats | None, devices: dict[str, Any]) -> list[str]:
    """The echo canceller's state (and echo level) and the devices' underruns, for the line."""
    parts: list[str] = []
    if voice is not None:
        if voice.state == "unavailable":
            parts.append("aec n/a")
        elif not voice.aec:
            parts.append("aec off")
        elif voice.state == "no-echo":  # nothing of the far end in the microphone
            parts.append("aec no echo")
        else:  # waiting (nothing played yet), converging, converged; and the echo left
            echo = "" if voice.echo_db is None else f" echo {voice.echo_db:.0f}dB"
            parts.append(f"aec {voice.state}{echo}")
    xruns = int(devices.get("speaker_underruns", 0)) + int(devices.get("mic_overflows", 0))
    if xruns:
        parts.append(f"xrun {xruns}")
    return parts


def status_text(*, state: str, seconds: float, codec: str, stats: MediaStats | None,
                mic_dbfs: float,
                speaker_dbfs: float, muted: bool, keys: bool, heard: str = "",
                pressed: str = "", voice: VoiceStats | None = None,
                devices: dict[str, Any] | None = None, sas: str | None = None,
                held: str = "", on_hold: bool = False, delay: DelayParts | None = None,
                width: int | None = None) -> str:
    """The status line (pure: figures in, text out), at most ``width`` characters.

    ``held``: who holds the call ("local", "remote", "local, remote"; "" for
    nobody); ``on_hold``: we hold it (the key then resumes);
    ``heard``/``pressed``: the last DTMF keys the peer pressed / we pressed;
    ``sas``: the call's verification code (the "connected to" line above the
    status line has it in full); ``delay``: our voice's way to the peer's ear, once
    the peer has said its part.

    What the user must see comes first and is never cut: the state, on hold, the
    time, MUTED. A line longer than ``width`` loses whole parts, the least
    important first (:data:`CUT_ORDER`: the verification code, then the network
    figures, ...; the keys last), before it is cut at ``width``.
    """
    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:.0f}ms" if x >= 10 else f"{x:.1f}ms"

    # (kind, text) in the line's order; kind names the part in CUT_ORDER.
    parts: list[tuple[str, str]] = [("must", state)]
    if held:
        parts.append(("must", f"on hold ({held})"))
    parts.append(("must", clock(seconds)))
    if muted:
        parts.append(("must", "MUTED"))
    parts.append(("codec", codec))
    if stats is not None:
        expected = stats.packets_received + stats.packets_lost
        loss = 100.0 * stats.packets_lost / expected if expected else 0.0
        parts += [("rtt", f"rtt {ms(stats.rtt_ms)}"), ("jit", f"jit {ms(stats.jitter_ms)}"),
                  ("loss", f"loss {loss:.1f}%")]
        if stats.buffer_ms is not None:
            parts.append(("buf", f"buf {ms(stats.buffer_ms)}"))
    parts += [("mic", f"mic {meter(mic_dbfs)}"), ("spk", f"spk {meter(speaker_dbfs)}")]
    if heard or pressed:
        parts.append(("dtmf", " ".join(["dtmf", *([f"in {heard[-KEYS_SHOWN:]}"] if heard else []),
                                        *([f"out {pressed[-KEYS_SHOWN:]}"] if pressed
                                          else [])])))
    if keys:
        parts.append(("keys", "m:" + ("unmute" if muted else "mute") + " h:hangup"
                      + (" p:resume" if on_hold else " p:hold")
                      + ("" if heard or pressed else " 0-9*#:keys")))
    mouth_to_ear = None if delay is None else delay.mouth_to_ear_ms
    if mouth_to_ear is not None:
        parts.append(("delay", f"delay {ms(mouth_to_ear)}"))
    parts += [("voice", text) for text in voice_status(voice, devices or {})]
    if sas:
        parts.append(("code", f"code: {sas}"))
    def joined(kinds: set[str]) -> str:
        return "  ".join(text for kind, text in parts if kind in kinds)

    shown = {kind for kind, _ in parts}
    if width is None:
        return joined(shown)
    cut: list[str] = []
    for kind in CUT_ORDER:
        if len(joined(shown)) <= width:
            break
        if kind in shown:
            shown.discard(kind)
            cut.append(kind)
    for kind in reversed(cut):  # (a small part cut early may fit after a big one went;
        if len(joined(shown | {kind})) > width:  # never one less important than one cut)
            break
        shown.add(kind)
    return joined(shown)[:width]


#: The parts a status line too long for the terminal loses, first to last ("must":
#: state, on hold, time and MUTED, are never cut).
CUT_ORDER = ("code", "buf", "jit", "rtt", "delay", "codec", "loss", "voice", "spk", "mic",
             "dtmf", "keys")


def held_by(call: Call) -> str:
    """Who holds ``call``, for the status line: "local", "remote", "local, remote" or ""."""
    return ", ".join(who for who, held in (("local", call.on_hold),
                                           ("remote", call.held_by_remote)) if held)


def hold_text(kind: str, by: str, peer: str) -> str:
    """The line said for a ``hold``/``resume`` event."""
    if by == "local":
        return "call on hold (p resumes)" if kind == "hold" else "call resumed"
    return f"{peer} put the call on hold" if kind == "hold" else f"{peer} resumed the call"


def media_text(event: dict[str, Any]) -> str:
    """The line said for a ``media-lost``/``media-restart`` event (media restart)."""
    if event.get("event") == "media-restart":
        return f"media back after {event.get('gap_ms')} ms"
    then = "restarting" if event.get("restarting") else "waiting for it (no restart agreed)"
    return f"media lost ({event.get('reason')}), {then}"
