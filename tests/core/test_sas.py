"""softphone.core.sas, pure: the verification code from two DTLS fingerprints.

The property tests derive with ``iterations=1``: they test the construction
(sorting, domain separation, every input bit reaching the code), which does
not depend on the iteration count, and 100 examples at the default would take
seconds. The default itself is pinned by a known answer, cross-checked with
``openssl kdf -keylen 4 -kdfopt digest:SHA256 ... -kdfopt iter:100000 PBKDF2``.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softphone.core.sas import (
    PGP_EVEN_WORDS,
    PGP_ODD_WORDS,
    SAS_ITERATIONS,
    Fingerprint,
    FingerprintError,
    Sas,
    derive_sas,
    fingerprints_in_sdp,
    sas_from_sdp,
    sas_input,
    sdp_fingerprint,
)

FAST = 1  # PBKDF2 iterations for the property tests (see the module docstring)

digests = st.binary(min_size=32, max_size=32)


def fp(digest: bytes) -> Fingerprint:
    return Fingerprint("sha-256", digest)


def hexed(digest: bytes, upper: bool = True) -> str:
    text = ":".join(f"{b:02X}" for b in digest)
    return text if upper else text.lower()


AB = bytes([0xAB]) * 32
CD = bytes([0xCD]) * 32

#: An SDP as aiortc writes it: three fingerprints per media section.
AIORTC_SHA256 = bytes.fromhex("406F2FC2BFBB07CBDFE8251525AD098331E93127F90A2C260CFD702BFD635F40")
AIORTC_SDP = "\r\n".join([
    "v=0", "o=- 3942411870 3942411870 IN IP4 0.0.0.0", "s=-", "t=0 0",
    "a=group:BUNDLE 0", "a=msid-semantic:WMS *", "m=audio 39290 UDP/TLS/RTP/SAVPF 96 9 0 8",
    "c=IN IP4 127.0.0.1", "a=sendrecv", "a=mid:0",
    "a=fingerprint:sha-256 " + ":".join(f"{b:02X}" for b in AIORTC_SHA256),
    "a=fingerprint:sha-384 26:44:6A:CE:F0:BE:ED:26:70:6A:B8:A2:29:E8:CE:F8:AB:F9:8B:BD:55:64"
    ":A7:77:92:E2:96:AD:46:F3:49:49:9F:E7:75:EE:33:E6:E8:88:FF:D3:35:83:4D:70:7E:3B",
    "a=fingerprint:sha-512 15:E7:2D:5B:16:BB:D2:1A:30:13:F8:BA:28:FF:64:64:28:9F:2B:5E:C9:84"
    ":D0:04:78:45:2F:AA:4A:BD:49:0B:83:2D:1E:38:30:01:AD:99:16:7E:CB:44:B8:53:9B:08:A8:85:E6"
    ":7E:FC:D1:2B:E5:44:06:90:5B:5E:66:F0:6D",
    "a=setup:actpass", ""])


def sdp_with(*lines: str) -> str:
    return "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n" + "".join(
        f"{line}\r\n" for line in lines)


# ------------------------------------------------------------- the code ---


def test_known_answer_at_the_default_iterations() -> None:
    """Pinned (and cross-checked with OpenSSL's PBKDF2): a change of the derivation
    shows here, and a port (the browser page) can check itself against it."""
    assert SAS_ITERATIONS == 100_000
    sas = derive_sas(fp(AB), fp(CD))
    assert sas.code == bytes.fromhex("1bb996f6")
    assert sas.words == ("beeswax", "proximate", "prefer", "vocalist")
    assert str(sas) == "beeswax proximate prefer vocalist"
    assert sas_input(fp(CD), fp(AB)) == (
        b"softphone-sas-1\nsha-256 " + hexed(AB).encode() + b"\nsha-256 "
        + hexed(CD).encode())


@given(digests, digests)
def test_both_sides_get_the_same_code(local: bytes, remote: bytes) -> None:
    # Side A: (local=A's, remote=B's); side B: (local=B's, remote=A's).
    assert derive_sas(fp(local), fp(remote), iterations=FAST) == \
        derive_sas(fp(remote), fp(local), iterations=FAST)


@given(digests, digests, st.integers(0, 255), st.booleans())
def test_any_bit_of_either_fingerprint_changes_the_code(a: bytes, b: bytes, bit: int,
                                                        flip_a: bool) -> None:
    before = derive_sas(fp(a), fp(b), iterations=FAST)
    target = bytearray(a if flip_a else b)
    target[bit // 8] ^= 1 << (bit % 8)
    changed = bytes(target)
    after = derive_sas(fp(changed), fp(b), iterations=FAST) if flip_a else \
        derive_sas(fp(a), fp(changed), iterations=FAST)
    # 32 bits: a random collision is a 1 in 4 billion event per example.
    assert after != before


@given(digests, digests, digests)
def test_a_man_in_the_middle_gives_two_codes(a: bytes, b: bytes, m: bytes) -> None:
    """A hub answering each side itself: A's leg is (a, m), B's leg (m, b)."""
    if len({a, b, m}) < 3:
        return
    assert derive_sas(fp(a), fp(m), iterations=FAST) != derive_sas(fp(m), fp(b),
                                                                   iterations=FAST)


def test_iterations_change_the_code_and_must_be_positive() -> None:
    assert derive_sas(fp(AB), fp(CD), iterations=FAST) != derive_sas(fp(AB), fp(CD))
    with pytest.raises(ValueError, match="at least 1"):
        derive_sas(fp(AB), fp(CD), iterations=0)


def test_the_algorithm_is_part_of_the_input() -> None:
    assert derive_sas(Fingerprint("sha-1", AB[:20]), fp(CD), iterations=FAST) != \
        derive_sas(Fingerprint("sha-1", AB[:20] + b"\0" * 12), fp(CD), iterations=FAST)
    assert sas_input(fp(AB), fp(CD)) != sas_input(Fingerprint("sha-512", AB), fp(CD))


def test_words_come_from_the_pgp_list_even_and_odd() -> None:
    assert len(PGP_EVEN_WORDS) == len(PGP_ODD_WORDS) == 256
    assert len({w.lower() for w in PGP_EVEN_WORDS + PGP_ODD_WORDS}) == 512
    # Spot checks against the published list (index = byte).
    assert (PGP_EVEN_WORDS[0x00], PGP_EVEN_WORDS[0x80], PGP_EVEN_WORDS[0xFF]) == \
        ("aardvark", "merit", "Zulu")
    assert (PGP_ODD_WORDS[0x00], PGP_ODD_WORDS[0x80], PGP_ODD_WORDS[0xFF]) == \
        ("adroitness", "intention", "Yucatan")
    assert Sas(bytes([0, 0, 0xFF, 0xFF])).words == ("aardvark", "adroitness", "Zulu",
                                                    "Yucatan")
    with pytest.raises(ValueError, match="4 bytes"):
        Sas(b"abc")


# --------------------------------------------------------------- parser ---


def test_parse_canonical_upper_and_lower_case() -> None:
    upper = Fingerprint.parse("sha-256 " + hexed(AB))
    lower = Fingerprint.parse("SHA-256 " + hexed(AB, upper=False))
    assert upper == lower == fp(AB)
    assert str(lower) == "sha-256 " + hexed(AB)
    assert derive_sas(upper, fp(CD), iterations=FAST) == derive_sas(lower, fp(CD),
                                                                    iterations=FAST)


def test_an_aiortc_sdp_gives_its_sha256_fingerprint() -> None:
    assert [f.algorithm for f in fingerprints_in_sdp(AIORTC_SDP)] == \
        ["sha-256", "sha-384", "sha-512"]
    assert sdp_fingerprint(AIORTC_SDP) == fp(AIORTC_SHA256)
    assert sdp_fingerprint(AIORTC_SDP, "SHA-384").algorithm == "sha-384"


def test_several_fingerprints_in_any_order_and_levels() -> None:
    sdp = sdp_with(f"a=fingerprint:sha-1 {hexed(AB[:20])}",
                   "m=audio 9 UDP/TLS/RTP/SAVPF 111",
                   f"a=fingerprint:SHA-256 {hexed(CD, upper=False)}",
                   "m=video 9 UDP/TLS/RTP/SAVPF 96",
                   f"a=fingerprint:sha-256 {hexed(CD)}")  # the same one again (BUNDLE)
    assert sdp_fingerprint(sdp) == fp(CD)
    # Bare \n line ends, and spaces around the line, are accepted too.
    assert sdp_fingerprint(sdp.replace("\r\n", "\n  ")) == fp(CD)


def test_sas_from_two_sdps() -> None:
    mine = sdp_with(f"a=fingerprint:sha-256 {hexed(AB)}")
    theirs = sdp_with(f"a=fingerprint:sha-256 {hexed(CD, upper=False)}")
    assert sas_from_sdp(mine, theirs, iterations=FAST) == \
        sas_from_sdp(theirs, mine, iterations=FAST) == derive_sas(fp(AB), fp(CD),
                                                                  iterations=FAST)


@pytest.mark.parametrize(("sdp", "message"), [
    (sdp_with("m=audio 9 UDP/TLS/RTP/SAVPF 111"), "no a=fingerprint line"),
    ("", "no a=fingerprint line"),
    (sdp_with(f"a=fingerprint:sha-1 {hexed(AB[:20])}"), r"no sha-256 fingerprint \(only sha-1\)"),
    (sdp_with(f"a=fingerprint:sha-256 {hexed(AB)}", f"a=fingerprint:sha-256 {hexed(CD)}"),
     "2 different sha-256 fingerprints"),
    (sdp_with("a=fingerprint:sha-256"), "expected '<hash-function> <hex:hex:...>'"),
    (sdp_with("a=fingerprint:sha-256 AB:CD extra"), "expected '<hash-function>"),
    (sdp_with(f"a=fingerprint:sha-256 {hexed(AB[:31])}"), "31 bytes, a sha-256 digest has 32"),
    (sdp_with("a=fingerprint:sha-256 ABCD:EF"), "hex pairs separated by ':'"),
    (sdp_with("a=fingerprint:sha-256 AB::CD"), "hex pairs separated by ':'"),
    (sdp_with("a=fingerprint:sha-256 GG:00"), "hex pairs separated by ':'"),
    (sdp_with(f"a=fingerprint:sha-256 {hexed(AB)}:"), "hex pairs separated by ':'"),
    (sdp_with("a=fingerprint:sha 256 AB"), "expected '<hash-function>"),
    (sdp_with("a=fingerprint:sh@256 AB"), "bad fingerprint hash function"),
])
def test_bad_or_missing_fingerprints_are_clear_errors(sdp: str, message: str) -> None:
    with pytest.raises(FingerprintError, match=message) as exc:
        sdp_fingerprint(sdp)
    assert "\n" not in str(exc.value) and len(str(exc.value)) < 200


def test_an_unknown_hash_function_is_listed_but_not_used() -> None:
    sdp = sdp_with("a=fingerprint:blake9 01:02:03", f"a=fingerprint:sha-256 {hexed(AB)}")
    assert fingerprints_in_sdp(sdp)[0] == Fingerprint("blake9", b"\x01\x02\x03")
    assert sdp_fingerprint(sdp) == fp(AB)


@given(st.text(max_size=300))
def test_the_parser_never_fails_otherwise(text: str) -> None:
    try:
        sdp_fingerprint(text)
    except FingerprintError as exc:
        assert str(exc)
