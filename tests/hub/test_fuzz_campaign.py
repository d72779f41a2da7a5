"""benchmarks/fuzz_hub.py's quick campaign against a real ``softphone serve``, in CI.

3,000 generated inputs (malformed and deep JSON, invalid UTF-8, broken frames,
bad upgrades, slowloris heads, token garbage, HTTP garbage): each must be
answered or closed with the code a correct hub gives, the hub must survive
with no ERROR or traceback in its log and its memory back. The hub's head
timeout and heartbeat are short (6 s, 4 s) so that the stalled inputs end in
seconds (the head timeout still well above the 3 s over which the slowloris
inputs drip a complete head); the script and the run are otherwise the
benchmark's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def test_quick_fuzz_campaign_passes() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fuzz_hub.py"), "--quick",
         "--head-timeout", "6", "--heartbeat", "4", "--max-seconds", "60"],
        capture_output=True, text=True, timeout=110, cwd=ROOT / "benchmarks")
    report = out.stdout[-3000:] + out.stderr[-2000:]
    assert out.returncode == 0, report
    assert "\nPASS" in out.stdout, report
    assert "unanswered: 0; unexpected answers: 0" in out.stdout, report
    assert "hub log: 0 Traceback/ERROR lines" in out.stdout, report
