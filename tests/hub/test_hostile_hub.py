"""A hub that bridges the call through its own peer connections (tests/support/hostile_hub.py).

Today: two real ``softphone`` CLI phones connect through it and hear each
other's tones (the man in the middle works, and nothing tells the users);
the verification codes each side would derive from the fingerprints it used
differ (what the codes are for). The control: the same hub as an honest relay,
where both sides' codes are the same.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from softphone.core.sas import derive_sas

from ..support.helpers import Proc, assert_wav_tone, stop_all
from ..support.hostile_hub import HostileHub

pytestmark = pytest.mark.e2e


async def call_through(hub: HostileHub, tmp_path: Path) -> tuple[Path, Path]:
    """``a`` (440 Hz) calls ``b`` (660 Hz) through ``hub`` for 3 s; both must exit 0."""
    rec_a, rec_b = tmp_path / "a.wav", tmp_path / "b.wav"
    procs: list[Proc] = []
    try:
        b = Proc("listen", "--as", "b", "--auto-accept", "--once", "--tone", "660",
                 "--record", str(rec_b), "--server", hub.url)
        procs.append(b)
        await b.wait_for_output("listening as b")
        a = Proc("call", "b", "--as", "a", "--tone", "440", "--record", str(rec_a),
                 "--duration", "3", "--server", hub.url)
        procs.append(a)
        assert await a.wait(40) == 0, a.describe()
        assert await b.wait(15) == 0, b.describe()
        for p in (a, b):
            assert "Traceback" not in p.stderr, p.describe()
    finally:
        stop_all(procs)
    assert hub.errors == []
    return rec_a, rec_b


@pytest.fixture
async def hostile() -> AsyncIterator[HostileHub]:
    hub = HostileHub(bridge=True)
    await hub.start()
    try:
        yield hub
    finally:
        await hub.stop()


@pytest.fixture
async def honest() -> AsyncIterator[HostileHub]:
    hub = HostileHub(bridge=False)
    await hub.start()
    try:
        yield hub
    finally:
        await hub.stop()


async def test_the_man_in_the_middle_works_and_the_codes_differ(hostile: HostileHub,
                                                                tmp_path: Path) -> None:
    rec_a, rec_b = await call_through(hostile, tmp_path)
    # The MITM works: each phone heard the other's tone, relayed by the hub.
    assert_wav_tone(rec_a, 660, what="a heard b through the hub")
    assert_wav_tone(rec_b, 440, what="b heard a through the hub")
    assert len(hostile.bridges) == 1
    relayed = hostile.relayed_frames()
    assert relayed["a"] > 50 and relayed["b"] > 50, relayed  # > 1 s each way, via the hub
    # Each phone checked a certificate of the hub's, not its peer's.
    a_own, a_given = hostile.fingerprints_seen("a")
    b_own, b_given = hostile.fingerprints_seen("b")
    assert len({a_own, a_given, b_own, b_given}) == 4
    # So the codes they would read to each other differ.
    sas_a, sas_b = hostile.expected_sas("a"), hostile.expected_sas("b")
    assert sas_a == derive_sas(a_given, a_own)
    assert sas_a != sas_b, (str(sas_a), str(sas_b))
    # While the code both phones would have had without the hub in the middle is
    # a third one.
    assert derive_sas(a_own, b_own) not in (sas_a, sas_b)


async def test_through_an_honest_relay_the_codes_match(honest: HostileHub,
                                                       tmp_path: Path) -> None:
    rec_a, rec_b = await call_through(honest, tmp_path)
    assert_wav_tone(rec_a, 660, what="a heard b")
    assert_wav_tone(rec_b, 440, what="b heard a")
    assert honest.bridges == []
    a_own, a_given = honest.fingerprints_seen("a")
    b_own, b_given = honest.fingerprints_seen("b")
    assert (a_given, b_given) == (b_own, a_own)
    assert honest.expected_sas("a") == honest.expected_sas("b")
