"""A hub that bridges the call through its own peer connections (tests/support/hostile_hub.py).

Two real ``softphone`` CLI phones connect through it and hear each other's
tones (the man in the middle works: the audio alone tells the users
nothing), and the verification codes the phones print (``"sas"`` in their
``--json`` media events, and their "connected to ..." lines) differ: what the
codes are for. Each is the code of the fingerprints that phone really used, as
the hub saw them (:func:`softphone.core.sas.derive_sas` of its SDPs). The
control: the same hub as an honest relay, where both phones print the same
code, the one of their two fingerprints.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from softphone.core.sas import PGP_EVEN_WORDS, PGP_ODD_WORDS, derive_sas

from ..support.helpers import Proc, assert_wav_tone, stop_all
from ..support.hostile_hub import HostileHub

pytestmark = pytest.mark.e2e


CODE_LINE = re.compile(r"^connected to \w+ .*; verification code: (.+)$", re.MULTILINE)


def printed_code(proc: Proc) -> str:
    """The code ``proc`` printed: its ``--json`` media event's ``sas``, which its
    "connected to ..." line (stderr, with --json) must say too."""
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    media: list[dict[str, Any]] = [e for e in events if e.get("event") == "media"]
    assert len(media) == 1, proc.describe()
    sas = media[0]["sas"]
    assert isinstance(sas, str), media[0]
    words = sas.split(" ")
    assert len(words) == 4 and words[0] in PGP_EVEN_WORDS and words[1] in PGP_ODD_WORDS \
        and words[2] in PGP_EVEN_WORDS and words[3] in PGP_ODD_WORDS, sas
    said = CODE_LINE.findall(proc.stderr)
    assert said == [sas], proc.describe()
    ended = [e for e in events if e.get("event") == "ended"]
    assert events.index(media[0]) < events.index(ended[0]), events  # media, then the end
    return sas


async def call_through(hub: HostileHub, tmp_path: Path) -> tuple[Path, Path, str, str]:
    """``a`` (440 Hz) calls ``b`` (660 Hz) through ``hub`` for 3 s; both must exit 0.

    Returns both recordings and the codes ``a`` and ``b`` printed.
    """
    rec_a, rec_b = tmp_path / "a.wav", tmp_path / "b.wav"
    procs: list[Proc] = []
    try:
        b = Proc("listen", "--as", "b", "--auto-accept", "--once", "--tone", "660",
                 "--record", str(rec_b), "--server", hub.url, "--json")
        procs.append(b)
        await b.wait_for_output('"listening"')
        a = Proc("call", "b", "--as", "a", "--tone", "440", "--record", str(rec_a),
                 "--duration", "3", "--server", hub.url, "--json")
        procs.append(a)
        assert await a.wait(40) == 0, a.describe()
        assert await b.wait(15) == 0, b.describe()
        for p in (a, b):
            assert "Traceback" not in p.stderr, p.describe()
    finally:
        stop_all(procs)
    assert hub.errors == []
    return rec_a, rec_b, printed_code(a), printed_code(b)


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
    rec_a, rec_b, printed_a, printed_b = await call_through(hostile, tmp_path)
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
    # And the phones themselves say so: each printed the code of its own leg.
    assert (printed_a, printed_b) == (str(sas_a), str(sas_b))
    assert printed_a != printed_b


async def test_through_an_honest_relay_the_codes_match(honest: HostileHub,
                                                       tmp_path: Path) -> None:
    rec_a, rec_b, printed_a, printed_b = await call_through(honest, tmp_path)
    assert_wav_tone(rec_a, 660, what="a heard b")
    assert_wav_tone(rec_b, 440, what="b heard a")
    assert honest.bridges == []
    a_own, a_given = honest.fingerprints_seen("a")
    b_own, b_given = honest.fingerprints_seen("b")
    assert (a_given, b_given) == (b_own, a_own)
    assert honest.expected_sas("a") == honest.expected_sas("b")
    # Both phones printed that code: the one of their own two fingerprints.
    assert printed_a == printed_b == str(derive_sas(a_own, b_own))
