"""What ``softphone`` exports: every name in ``__all__`` imports, and type checkers see
the real types of the lazily imported ones (a typo is a mypy error, not ``Any``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import softphone

ROOT = Path(__file__).resolve().parents[1]


def test_every_exported_name_imports() -> None:
    for name in softphone.__all__:
        assert getattr(softphone, name) is not None, name
    assert {"DtmfEvent", "RecordingThread"} <= set(softphone.__all__)
    from softphone.core.dtmf import DtmfEvent
    from softphone.media.recording import RecordingThread
    assert (softphone.DtmfEvent, softphone.RecordingThread) == (DtmfEvent, RecordingThread)


def test_mypy_sees_the_real_types_of_the_lazy_exports(tmp_path: Path) -> None:
    """A typo imported from softphone fails `mypy --strict`; the real names (one of
    them eager, the others lazy) type-check with their own types."""
    (tmp_path / "typo.py").write_text("from softphone import Phoen\n")
    (tmp_path / "good.py").write_text(
        "from softphone import DtmfEvent, Phone, RecordingThread\n\n\n"
        "def use(event: DtmfEvent, phone: Phone, thread: RecordingThread) -> str:\n"
        "    thread.close()\n"
        "    return event.digit + phone.client_id\n")
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file",
         str(ROOT / "pyproject.toml"), "--cache-dir", str(tmp_path / "cache"),
         "typo.py", "good.py"],
        cwd=tmp_path, env={"MYPYPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=300)
    errors = [line for line in run.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and errors[0].startswith("typo.py:1:") and "Phoen" in errors[0], \
        run.stdout + run.stderr
