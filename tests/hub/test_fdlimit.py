"""softphone.hub.fdlimit: raising RLIMIT_NOFILE.

The first tests run in a real child process whose soft limit was lowered first
(the real kernel decides). The last ones pass a stand-in for the ``resource``
module (an adapter test with a fake, as it says) for what a test process
cannot provoke: a hard limit of "unlimited", and a refusal.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from softphone.hub.fdlimit import raise_nofile

CHILD = """
import json, resource, sys
from softphone.hub.fdlimit import raise_nofile
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), hard))
got, message = raise_nofile(int(sys.argv[2]))
print(json.dumps({"got": got, "message": message, "hard": hard,
                  "now": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}))
"""


def in_child(start: int, wanted: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(start), str(wanted)],
                         capture_output=True, text=True, timeout=30, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def hard_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def test_raises_the_soft_limit_up_to_what_is_wanted() -> None:
    hard = hard_limit()
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard open-file limit here is {hard}")
    r = in_child(256, 2000)
    assert r == {"got": 2000, "message": None, "hard": r["hard"], "now": 2000}


def test_capped_by_the_hard_limit_with_a_message() -> None:
    hard = hard_limit()
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard open-file limit here (see the fake test below)")
    r = in_child(256, hard + 1000)
    assert r["got"] == r["now"] == hard
    assert r["message"].startswith(f"open files: limited to {hard} by the hard limit, "
                                   f"wanted {hard + 1000}")
    assert "\n" not in r["message"]


def test_a_limit_already_high_enough_is_left_alone() -> None:
    r = in_child(512, 100)
    assert (r["got"], r["message"], r["now"]) == (512, None, 512)


class FakeResource(SimpleNamespace):
    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft: int, hard: int, refuse_above: int | None = None) -> None:
        super().__init__(limits=(soft, hard), refuse_above=refuse_above, calls=[])

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == self.RLIMIT_NOFILE
        limits: tuple[int, int] = self.limits
        return limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        self.calls.append(limits)
        if self.refuse_above is not None and limits[0] > self.refuse_above:
            raise ValueError("not allowed to raise maximum limit")
        self.limits = limits


def test_fake_refused_says_why_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import softphone.hub.fdlimit as fdlimit

    monkeypatch.setattr(fdlimit, "_nr_open", lambda: None)
    fake = FakeResource(1024, 4096, refuse_above=1024)
    got, message = raise_nofile(100_000, resource=fake)  # type: ignore[arg-type]
    assert got == 1024
    assert message is not None and message.startswith(
        "open files: cannot raise the limit from 1024 to 4096 (not allowed to raise")
    assert "ulimit -Hn" in message and "\n" not in message


def test_fake_unlimited_hard_limit_falls_back_to_nr_open(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import softphone.hub.fdlimit as fdlimit

    monkeypatch.setattr(fdlimit, "_nr_open", lambda: 1_048_576)
    fake = FakeResource(1024, FakeResource.RLIM_INFINITY, refuse_above=1_048_576)
    assert raise_nofile(2_000_000, resource=fake) == (  # type: ignore[arg-type]
        1_048_576, "open files: limited to 1048576 (the kernel's fs.nr_open), wanted 2000000")
    fake = FakeResource(1024, FakeResource.RLIM_INFINITY)
    assert raise_nofile(200_000, resource=fake) == (200_000, None)  # type: ignore[arg-type]


# ------------------------------------------------- the hub raises its own ---


def test_for_connections_logs_one_line(caplog: pytest.LogCaptureFixture,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    import softphone.hub.fdlimit as fdlimit

    monkeypatch.setattr(fdlimit, "_nr_open", lambda: None)
    caplog.set_level(logging.INFO, "softphone.hub.fdlimit")
    fake = FakeResource(1024, 50_000)
    assert fdlimit.raise_for_connections(20_000, resource=fake) == 20_256  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records] == ["open files: limit 20256"]
    caplog.clear()
    fake = FakeResource(1024, 20_000)  # enough for the connections, not the headroom
    assert fdlimit.raise_for_connections(20_000, resource=fake) == 20_000  # type: ignore[arg-type]
    assert [r.levelname for r in caplog.records] == ["INFO"]
    caplog.clear()
    fake = FakeResource(1024, 20_000)
    assert fdlimit.raise_for_connections(100_000, resource=fake) == 20_000  # type: ignore[arg-type]
    (record,) = caplog.records
    assert record.levelname == "WARNING"
    assert record.getMessage() == (
        "open files: limited to 20000 by the hard limit, wanted 100256; raise the hard "
        "limit (ulimit -Hn as root, LimitNOFILE= in a systemd unit, nofile in "
        "/etc/security/limits.conf); the hub holds about 19744 connections, not "
        "--max-connections 100000")


def serve_with_soft_limit(soft: int, *args: str) -> tuple[int, str]:
    """``softphone serve`` started with a soft open-file limit of ``soft``: the limit it
    runs with once listening, and what it wrote on stderr."""
    import os
    import signal
    import time
    from pathlib import Path

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard_limit()))

    proc = subprocess.Popen(
        [sys.executable, "-m", "softphone", "serve", "--port", "0", "--ice-server", "none",
         *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=lower,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert "listening on" in line, line
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        now = next(int(row.split()[3]) for row in limits.splitlines()
                   if row.startswith("Max open files"))
    finally:
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=10)
    return now, err.decode()


def test_serve_raises_its_limit_for_max_connections() -> None:
    hard = hard_limit()
    if hard != resource.RLIM_INFINITY and hard < 2_000:
        pytest.skip(f"the hard open-file limit here is {hard}")
    now, err = serve_with_soft_limit(256, "--max-connections", "1500")
    assert now == 1500 + 1500 // 8 + 256  # (and the request heads it lets wait)
    assert "open files" not in err, err  # (quietly: info is not shown without -v)


def test_serve_says_in_one_line_what_the_system_refused() -> None:
    hard = hard_limit()
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard open-file limit here")
    now, err = serve_with_soft_limit(256, "--max-connections", str(hard + 5_000))
    assert now == hard
    lines = [line for line in err.splitlines() if "open files" in line]
    assert len(lines) == 1, err
    assert "WARNING" in lines[0] and f"limited to {hard} by the hard limit" in lines[0]
    pending = (hard + 5_000) // 8  # (request heads it lets wait: softphone.hub.pending)
    assert f"the hub holds about {hard - 256 - pending} connections, not --max-connections " \
           f"{hard + 5_000}" in lines[0]
    assert "Traceback" not in err
