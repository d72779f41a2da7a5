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
