"""The verification code on the status line (``status_text``, pure)."""

from __future__ import annotations

import re

from softphone.cli.status_text import status_text

CODE = "beeswax proximate prefer vocalist"


def line(sas: str | None, keys: bool = True) -> str:
    return status_text(state="connected", seconds=12, codec="opus/48000", stats=None,
                       mic_dbfs=-20.0, speaker_dbfs=-30.0, muted=False, keys=keys, sas=sas)


def test_the_code_is_on_the_status_line_once_known() -> None:
    assert "code:" not in line(None)
    shown = line(CODE)
    assert shown.startswith("connected  0:12  opus/48000  ")
    # Last (the "connected to" line above has it in full if a narrow terminal cuts it),
    # after the keys' hint.
    assert shown.endswith(f"m:mute h:hangup p:hold 0-9*#:keys  code: {CODE}")
    assert re.search(r"  spk \[[#-]+\]  code: " + CODE + "$", line(CODE, keys=False))
    assert shown.count(CODE) == 1


def test_our_voice_s_delay_follows_the_keys_once_the_peer_said_its_part() -> None:
    from softphone.media.delay import DelayParts

    def with_delay(delay: DelayParts | None) -> str:
        return status_text(state="connected", seconds=12, codec="opus/48000", stats=None,
                           mic_dbfs=-20.0, speaker_dbfs=-30.0, muted=False, keys=True,
                           sas=CODE, delay=delay)

    ours = DelayParts(mic_ms=2.0, processing_ms=15.9, frame_ms=20.0, codec_ms=6.5,
                      network_ms=1.0)
    assert "delay" not in with_delay(None) and "delay" not in with_delay(ours)
    told = DelayParts(**{**ours.__dict__, "peer_receive_ms": 21.4})
    assert with_delay(told).endswith(f"0-9*#:keys  delay 67ms  code: {CODE}")
