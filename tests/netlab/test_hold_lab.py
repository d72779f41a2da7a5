"""Hold and resume through the network lab (issue 16): both homes behind NAT, STUN.

The caller (a Python-API phone, ``tests/support/hold_caller.py``: the command
line has no scripted hold) puts the call on hold 3 s after media connected
and resumes 3 s later; the callee is ``softphone listen``. Both send tones and
record. Checked: each recording is silent over the span its recorder noted
(``FILE.json``), with the far tone before and again after it; both sides
report ``hold``/``resume`` (``by`` local at the caller, remote at the callee);
the held silence, longer than the restart's 2 s silence watch, restarted no
media; both exit 0, ``completed``, with the held span in the ``ended`` event.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from softphone.media.audio import rms_dbfs

from ..conftest import read_wav
from ..support.helpers import assert_tone
from ..support.netlab import (
    CALLEE_TONE,
    CALLER_TONE,
    NetLab,
    softphone_argv,
    started_lab,
)

HOLD_CALLER = Path(__file__).resolve().parents[1] / "support" / "hold_caller.py"
HOLD_AT, HOLD_FOR, DURATION = 3.0, 3.0, 9.0
#: Seconds at the edges of a held span not checked (audio in flight).
EDGE = 0.2


@pytest.fixture
def netlab(tmp_path: Path) -> Iterator[NetLab]:
    with started_lab(tmp_path / "lab", hub=True) as the_lab:  # cone NAT + STUN
        yield the_lab


def events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def holds(evs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["event"], e["by"]) for e in evs if e.get("event") in ("hold", "resume")]


def check_recording(recording: Path, far: float, what: str) -> None:
    """Silent over the noted span, the far tone before and after it."""
    notes = json.loads(recording.with_name(recording.name + ".json").read_text())
    [(start, end)] = notes["held"]
    assert HOLD_FOR - 0.5 < end - start < HOLD_FOR + 1.0, (what, start, end)
    samples, rate = read_wav(recording)
    level = rms_dbfs(samples[int((start + EDGE) * rate): int((end - EDGE) * rate)])
    assert level < -60, f"{what}: {level:.1f} dBFS while held"
    assert_tone(samples, far, skip=0.5, until=start - EDGE, min_seconds=1.5,
                what=f"{what} before the hold")
    assert_tone(samples, far, skip=end + 0.5, min_seconds=1.5, max_gap=0.1,
                what=f"{what} after the resume")


@pytest.mark.netlab
def test_hold_and_resume_through_nat(netlab: NetLab) -> None:
    rec_a = netlab.workdir / "hold-heard-by-a.wav"
    rec_b = netlab.workdir / "hold-heard-by-b.wav"
    callee = netlab.spawn("b", "hold-callee", softphone_argv(
        "listen", "--as", "b", "--auto-accept", "--once", "--tone", str(CALLEE_TONE),
        "--record", str(rec_b), "--json", "--server", netlab.hub_url))
    try:
        netlab._wait_for(callee, r'"event":\s*"listening"', 20.0)
        caller = netlab.spawn("a", "hold-caller", [
            sys.executable, str(HOLD_CALLER), "b", "--as", "a", "--server", netlab.hub_url,
            "--tone", str(CALLER_TONE), "--record", str(rec_a), "--hold-at", str(HOLD_AT),
            "--hold-for", str(HOLD_FOR), "--duration", str(DURATION)])
        try:
            code = caller.popen.wait(DURATION + 40.0)
        except subprocess.TimeoutExpired:
            caller.stop()
            raise AssertionError(f"the caller did not finish:\n{caller.output()}") from None
        callee.popen.wait(15.0)
    finally:
        callee.stop()
    output = f"caller:\n{caller.output()[-3000:]}\ncallee:\n{callee.output()[-3000:]}"
    assert code == 0 and callee.popen.returncode == 0, output
    for proc, by, far, recording in ((caller, "local", CALLEE_TONE, rec_a),
                                     (callee, "remote", CALLER_TONE, rec_b)):
        evs = events(proc.stdout())
        assert holds(evs) == [("hold", by), ("resume", by)], output
        assert not [e for e in evs if e.get("event") == "media-restart"], output
        [ended] = [e for e in evs if e.get("event") == "ended"]
        assert ended["outcome"] == "completed", output
        [(start, end)] = ended["held"]
        assert abs(start - HOLD_AT) < 1.0 and HOLD_FOR - 0.5 < end - start < HOLD_FOR + 1.0
        check_recording(recording, far, proc.name)
