"""The verification code of a call (short authentication string, SAS), sans I/O.

Media is encrypted end to end (DTLS-SRTP), but the DTLS certificate
fingerprints travel through the hub in the SDP (``a=fingerprint:sha-256
AA:BB:...``). A hub that answers each side from its own peer connection
(a man in the middle) can read and relay the audio, and the DTLS checks pass,
since each phone only checks the fingerprint the hub handed it.

Each side derives a code from the two fingerprints *it* used: its own local
one and the remote one it was given. Without a man in the middle these are
the same two fingerprints on both sides, so the codes match (the two are
sorted first: the result does not depend on who is local). With one, caller
A's leg has (fp_A, fp_M1) and callee B's leg (fp_M2, fp_B): the hub cannot
put fp_A on B's leg or fp_B on A's leg without A's or B's private key, so
the codes are two different pairs' codes. Two people reading them to each
other catch it.

**Form: four words of the PGP word list** (32 bits), e.g. ``"Trojan
Atlantic snapline October"``: bytes at even positions from the 256
two-syllable words, at odd positions from the 256 three-syllable ones, so a
swapped, repeated or dropped word is noticed, and the words were chosen to
sound distinct over a phone line. ZRTP shows the same list. Why 32 bits and
not 6 digits (20 bits): see below.

**Derivation** (so the browser page can compute it with WebCrypto, which
has PBKDF2 but no scrypt)::

    text  = "softphone-sas-1\\n" + "\\n".join(sorted([canonical(a), canonical(b)]))
    code  = PBKDF2-HMAC-SHA256(password=utf8(text), salt=b"softphone-sas-1",
                               iterations=100_000, length=4 bytes)
    words = EVEN[code[0]], ODD[code[1]], EVEN[code[2]], ODD[code[3]]

where ``canonical(fp)`` is ``"sha-256 AA:BB:..."`` (algorithm in lower case,
upper-case hex pairs joined by ``:``). The domain tag keeps these bytes from
meaning anything in another protocol; the version in it changes if the
derivation ever does. Only sha-256 fingerprints are used: aiortc, Chrome,
Firefox and Safari all send one.

**What a man in the middle must do, honestly.** The codes are compared,
never sent, so the hub's only way through is to make the two legs' codes
equal. Today nothing commits either side to its fingerprint before it sees
the other's: the hub can hold A's offer (fp_A), send B its own offer
(fp_M2), read B's answer (fp_B), and only then choose the certificate it
answers A with. It needs ``SAS(fp_A, fp_M1) == SAS(fp_M2, fp_B)`` with
everything fixed but fp_M1: a search over certificates, 2**bits tries on
average. A try is cheap: a certificate for the same key with another serial
number (a self-signature costs tens of microseconds, and a stack that checks
only the fingerprint does not even need a valid one), then our derivation.
Orders of magnitude (not measured):

- one plain SHA-256 as the derivation: a 20-bit code falls in about a second
  on one CPU core; a 32-bit one in about an hour on a core, seconds on a GPU;
- PBKDF2 with 100,000 iterations (2 x 10^5 SHA-256 blocks, about 25 ms on
  one core here, once per call on each side): a 20-bit code costs about 7
  core-hours, or ~10 s on one high-end GPU (~2 x 10^10 SHA-256 blocks/s):
  within a call's setup for a determined operator. A 32-bit code costs ~3
  core-years or ~12 GPU-hours per call, to be spent inside the few seconds
  a caller waits: about 10^4 GPUs per intercepted call. Hence 4 words, not
  6 digits.

So the cost is bought with bits and stretching, not with a proof. The real
fix is a commitment (as ZRTP's hash commitment): the callee sends
``H(its fingerprint)`` in ``call-accept``, before it sees the offer, and the
caller checks the answer against it. Then the hub facing A must fix fp_M1
before it sees fp_A, and facing B must send fp_M2 while fp_B is only a hash,
so one leg's code is fixed before the other's can be computed: the chance
of a match is 2**-32 per call whatever the hub's computing power (fresh
certificates per call are needed: aiortc and browsers make one per peer
connection). That is wiring for the signaling (a lead's task), not this
module.

Caveats. The code vouches only for fingerprints the DTLS stack really
checks: aiortc 1.16 requires *every* fingerprint of an algorithm it knows
(sha-256/384/512) to match the peer's certificate, so the sha-256 one used
here is checked. A stack that accepts the certificate when *any* listed
fingerprint matches would let a hub add a sha-256 line of its choice next
to the one that matches; :func:`sdp_fingerprint` refuses SDPs with two
different sha-256 values, but a page must use a stack that checks the
sha-256 one. And users who do not compare the words are not protected.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

#: The derivation's domain tag and version (see the module docstring).
SAS_DOMAIN: Final = "softphone-sas-1"
#: PBKDF2 iterations: what each try of a man in the middle's search costs.
SAS_ITERATIONS: Final = 100_000
#: Bytes of the code: one word each.
SAS_BYTES: Final = 4
#: The fingerprint algorithm the code is derived from.
SAS_ALGORITHM: Final = "sha-256"

#: Digest lengths (bytes) of the hash functions RFC 8122 names for fingerprints.
DIGEST_SIZES: Final[Mapping[str, int]] = MappingProxyType({
    "md2": 16, "md5": 16, "sha-1": 20, "sha-224": 28, "sha-256": 32, "sha-384": 48,
    "sha-512": 64})

_ALGORITHM: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
_HEX_PAIRS: Final = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})*")


class FingerprintError(ValueError):
    """An SDP without a usable fingerprint; the message says what is wrong."""


@dataclass(frozen=True)
class Fingerprint:
    """One ``a=fingerprint`` value: hash function (lower case) and digest."""

    algorithm: str
    digest: bytes

    @classmethod
    def parse(cls, value: str) -> Fingerprint:
        """``"sha-256 AA:BB:..."`` (the attribute's value) -> Fingerprint.

        Hex in either case; the hash function's name in any case. A known hash
        function's digest must have its length.
        """
        parts = value.split()
        if len(parts) != 2:
            raise FingerprintError(
                f"bad fingerprint {_clip(value)!r}: expected '<hash-function> <hex:hex:...>'")
        name, hexes = parts
        if not _ALGORITHM.fullmatch(name):
            raise FingerprintError(f"bad fingerprint hash function {_clip(name)!r}")
        if not _HEX_PAIRS.fullmatch(hexes):
            raise FingerprintError(
                f"bad {name.lower()} fingerprint {_clip(hexes)!r}: expected hex pairs "
                "separated by ':'")
        algorithm = name.lower()
        digest = bytes.fromhex(hexes.replace(":", ""))
        size = DIGEST_SIZES.get(algorithm)
        if size is not None and len(digest) != size:
            raise FingerprintError(
                f"bad {algorithm} fingerprint: {len(digest)} bytes, a {algorithm} digest "
                f"has {size}")
        return cls(algorithm, digest)

    def __str__(self) -> str:
        """Canonical form: ``sha-256 AA:BB:...`` (what the derivation hashes)."""
        return f"{self.algorithm} {':'.join(f'{b:02X}' for b in self.digest)}"


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def fingerprints_in_sdp(sdp: str) -> list[Fingerprint]:
    """Every ``a=fingerprint:`` of ``sdp`` (session and media level), in order.

    Raises :class:`FingerprintError` for a malformed one.
    """
    found: list[Fingerprint] = []
    for line in sdp.splitlines():
        line = line.strip()
        if line[:14].lower() == "a=fingerprint:":
            found.append(Fingerprint.parse(line[14:]))
    return found


def sdp_fingerprint(sdp: str, algorithm: str = SAS_ALGORITHM) -> Fingerprint:
    """The ``algorithm`` fingerprint of ``sdp``, the one the code is derived from.

    Others (sha-1, sha-384, ...) may be listed too and are ignored. The same
    value repeated (session level and each media section) is one fingerprint;
    two different ones are refused, since the code would not say which
    certificate was checked.
    """
    algorithm = algorithm.lower()
    every = fingerprints_in_sdp(sdp)
    chosen = {fp for fp in every if fp.algorithm == algorithm}
    if not chosen:
        if not every:
            raise FingerprintError("the SDP has no a=fingerprint line (no DTLS certificate "
                                   "to verify)")
        others = ", ".join(sorted({fp.algorithm for fp in every}))
        raise FingerprintError(f"the SDP has no {algorithm} fingerprint (only {others})")
    if len(chosen) > 1:
        raise FingerprintError(f"the SDP has {len(chosen)} different {algorithm} "
                               "fingerprints (one certificate per call expected)")
    return chosen.pop()


@dataclass(frozen=True)
class Sas:
    """A call's verification code: :data:`SAS_BYTES` bytes, shown as PGP words."""

    code: bytes

    def __post_init__(self) -> None:
        if len(self.code) != SAS_BYTES:
            raise ValueError(f"a code has {SAS_BYTES} bytes, not {len(self.code)}")

    @property
    def words(self) -> tuple[str, ...]:
        """Even positions from the two-syllable list, odd ones from the three-syllable."""
        return tuple(PGP_ODD_WORDS[b] if i % 2 else PGP_EVEN_WORDS[b]
                     for i, b in enumerate(self.code))

    def __str__(self) -> str:
        return " ".join(self.words)


def sas_input(a: Fingerprint, b: Fingerprint) -> bytes:
    """What the derivation hashes: the domain tag and both fingerprints, sorted."""
    first, second = sorted((str(a), str(b)))
    return f"{SAS_DOMAIN}\n{first}\n{second}".encode()


def derive_sas(local: Fingerprint, remote: Fingerprint, *,
               iterations: int = SAS_ITERATIONS) -> Sas:
    """The code for a call whose DTLS fingerprints are ``local`` and ``remote``.

    The same whichever side computes it (the order does not matter), and a
    different one if either fingerprint differs. Costs ``iterations`` PBKDF2
    rounds (about 25 ms at the default): run it off an event loop that must not
    stall. Fewer iterations only for tests of the construction.
    """
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    code = hashlib.pbkdf2_hmac("sha256", sas_input(local, remote), SAS_DOMAIN.encode(),
                               iterations, SAS_BYTES)
    return Sas(code)


def sas_from_sdp(local_sdp: str, remote_sdp: str, *,
                 iterations: int = SAS_ITERATIONS) -> Sas:
    """The code from a call's local and remote SDP (their sha-256 fingerprints)."""
    return derive_sas(sdp_fingerprint(local_sdp), sdp_fingerprint(remote_sdp),
                      iterations=iterations)


# The PGP word list (Juola and Zimmermann, 1995), as PGPfone and ZRTP (RFC 6189)
# use it: the index is the byte.
PGP_EVEN_WORDS: Final[tuple[str, ...]] = (
    "aardvark", "absurd", "accrue", "acme", "adrift", "adult", "afflict", "ahead", "aimless",
    "Algol", "allow", "alone", "ammo", "ancient", "apple", "artist", "assume", "Athens",
    "atlas", "Aztec", "baboon", "backfield", "backward", "banjo", "beaming", "bedlamp",
    "beehive", "beeswax", "befriend", "Belfast", "berserk", "billiard", "bison", "blackjack",
    "blockade", "blowtorch", "bluebird", "bombast", "bookshelf", "brackish", "breadline",
    "breakup", "brickyard", "briefcase", "Burbank", "button", "buzzard", "cement", "chairlift",
    "chatter", "checkup", "chisel", "choking", "chopper", "Christmas", "clamshell", "classic",
    "classroom", "cleanup", "clockwork", "cobra", "commence", "concert", "cowbell", "crackdown",
    "cranky", "crowfoot", "crucial", "crumpled", "crusade", "cubic", "dashboard", "deadbolt",
    "deckhand", "dogsled", "dragnet", "drainage", "dreadful", "drifter", "dropper", "drumbeat",
    "drunken", "Dupont", "dwelling", "eating", "edict", "egghead", "eightball", "endorse",
    "endow", "enlist", "erase", "escape", "exceed", "eyeglass", "eyetooth", "facial", "fallout",
    "flagpole", "flatfoot", "flytrap", "fracture", "framework", "freedom", "frighten",
    "gazelle", "Geiger", "glitter", "glucose", "goggles", "goldfish", "gremlin", "guidance",
    "hamlet", "highchair", "hockey", "indoors", "indulge", "inverse", "involve", "island",
    "jawbone", "keyboard", "kickoff", "kiwi", "klaxon", "locale", "lockup", "merit", "minnow",
    "miser", "Mohawk", "mural", "music", "necklace", "Neptune", "newborn", "nightbird",
    "Oakland", "obtuse", "offload", "optic", "orca", "payday", "peachy", "pheasant", "physique",
    "playhouse", "Pluto", "preclude", "prefer", "preshrunk", "printer", "prowler", "pupil",
    "puppy", "python", "quadrant", "quiver", "quota", "ragtime", "ratchet", "rebirth", "reform",
    "regain", "reindeer", "rematch", "repay", "retouch", "revenge", "reward", "rhythm",
    "ribcage", "ringbolt", "robust", "rocker", "ruffled", "sailboat", "sawdust", "scallion",
    "scenic", "scorecard", "Scotland", "seabird", "select", "sentence", "shadow", "shamrock",
    "showgirl", "skullcap", "skydive", "slingshot", "slowdown", "snapline", "snapshot",
    "snowcap", "snowslide", "solo", "southward", "soybean", "spaniel", "spearhead", "spellbind",
    "spheroid", "spigot", "spindle", "spyglass", "stagehand", "stagnate", "stairway",
    "standard", "stapler", "steamship", "sterling", "stockman", "stopwatch", "stormy", "sugar",
    "surmount", "suspense", "sweatband", "swelter", "tactics", "talon", "tapeworm", "tempest",
    "tiger", "tissue", "tonic", "topmost", "tracker", "transit", "trauma", "treadmill",
    "Trojan", "trouble", "tumor", "tunnel", "tycoon", "uncut", "unearth", "unwind", "uproot",
    "upset", "upshot", "vapor", "village", "virus", "Vulcan", "waffle", "wallet", "watchword",
    "wayside", "willow", "woodlark", "Zulu"
)
PGP_ODD_WORDS: Final[tuple[str, ...]] = (
    "adroitness", "adviser", "aftermath", "aggregate", "alkali", "almighty", "amulet",
    "amusement", "antenna", "applicant", "Apollo", "armistice", "article", "asteroid",
    "Atlantic", "atmosphere", "autopsy", "Babylon", "backwater", "barbecue", "belowground",
    "bifocals", "bodyguard", "bookseller", "borderline", "bottomless", "Bradbury", "bravado",
    "Brazilian", "breakaway", "Burlington", "businessman", "butterfat", "Camelot", "candidate",
    "cannonball", "Capricorn", "caravan", "caretaker", "celebrate", "cellulose", "certify",
    "chambermaid", "Cherokee", "Chicago", "clergyman", "coherence", "combustion", "commando",
    "company", "component", "concurrent", "confidence", "conformist", "congregate", "consensus",
    "consulting", "corporate", "corrosion", "councilman", "crossover", "crucifix", "cumbersome",
    "customer", "Dakota", "decadence", "December", "decimal", "designing", "detector",
    "detergent", "determine", "dictator", "dinosaur", "direction", "disable", "disbelief",
    "disruptive", "distortion", "document", "embezzle", "enchanting", "enrollment",
    "enterprise", "equation", "equipment", "escapade", "Eskimo", "everyday", "examine",
    "existence", "exodus", "fascinate", "filament", "finicky", "forever", "fortitude",
    "frequency", "gadgetry", "Galveston", "getaway", "glossary", "gossamer", "graduate",
    "gravity", "guitarist", "hamburger", "Hamilton", "handiwork", "hazardous", "headwaters",
    "hemisphere", "hesitate", "hideaway", "holiness", "hurricane", "hydraulic", "impartial",
    "impetus", "inception", "indigo", "inertia", "infancy", "inferno", "informant", "insincere",
    "insurgent", "integrate", "intention", "inventive", "Istanbul", "Jamaica", "Jupiter",
    "leprosy", "letterhead", "liberty", "maritime", "matchmaker", "maverick", "Medusa",
    "megaton", "microscope", "microwave", "midsummer", "millionaire", "miracle", "misnomer",
    "molasses", "molecule", "Montana", "monument", "mosquito", "narrative", "nebula",
    "newsletter", "Norwegian", "October", "Ohio", "onlooker", "opulent", "Orlando",
    "outfielder", "Pacific", "pandemic", "Pandora", "paperweight", "paragon", "paragraph",
    "paramount", "passenger", "pedigree", "Pegasus", "penetrate", "perceptive", "performance",
    "pharmacy", "phonetic", "photograph", "pioneer", "pocketful", "politeness", "positive",
    "potato", "processor", "provincial", "proximate", "puberty", "publisher", "pyramid",
    "quantity", "racketeer", "rebellion", "recipe", "recover", "repellent", "replica",
    "reproduce", "resistor", "responsive", "retraction", "retrieval", "retrospect", "revenue",
    "revival", "revolver", "sandalwood", "sardonic", "Saturday", "savagery", "scavenger",
    "sensation", "sociable", "souvenir", "specialist", "speculate", "stethoscope", "stupendous",
    "supportive", "surrender", "suspicious", "sympathy", "tambourine", "telephone", "therapist",
    "tobacco", "tolerance", "tomorrow", "torpedo", "tradition", "travesty", "trombonist",
    "truncated", "typewriter", "ultimate", "undaunted", "underfoot", "unicorn", "unify",
    "universe", "unravel", "upcoming", "vacancy", "vagabond", "vertigo", "Virginia", "visitor",
    "vocalist", "voyager", "warranty", "Waterloo", "whimsical", "Wichita", "Wilmington",
    "Wyoming", "yesteryear", "Yucatan"
)
