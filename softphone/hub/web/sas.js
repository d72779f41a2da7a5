// The call's verification code (short authentication string), as
// softphone/core/sas.py derives it: four words of the PGP word list from the
// two DTLS sha-256 fingerprints of the call, with WebCrypto's PBKDF2.
//
//   text  = "softphone-sas-1\n" + sorted([canonical(a), canonical(b)]).join("\n")
//   code  = PBKDF2-HMAC-SHA256(utf8(text), salt "softphone-sas-1", 100000 iterations, 4 bytes)
//   words = EVEN[code[0]], ODD[code[1]], EVEN[code[2]], ODD[code[3]]
//
// canonical(fp) is "sha-256 AA:BB:..." (algorithm in lower case, hex in upper
// case). Both sides of a call show the same words unless someone (the hub)
// sits in the middle with certificates of its own: the users read them to each
// other. Pure: no page, no phone; tests import it and compare with Python's.

export const SAS_DOMAIN = "softphone-sas-1";
export const SAS_ITERATIONS = 100000;
export const SAS_BYTES = 4;
export const SAS_ALGORITHM = "sha-256";

/** Digest lengths (bytes) of the hash functions RFC 8122 names for fingerprints. */
const DIGEST_SIZES = {"md2": 16, "md5": 16, "sha-1": 20, "sha-224": 28, "sha-256": 32,
  "sha-384": 48, "sha-512": 64};
const ALGORITHM = /^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$/;
const HEX_PAIRS = /^[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})*$/;

/** An SDP without a usable fingerprint; the message says what is wrong. */
export class FingerprintError extends Error {
  constructor(message) {
    super(message);
    this.name = "FingerprintError";
  }
}

function clip(text, limit = 60) {
  return text.length <= limit ? text : text.slice(0, limit) + "...";
}

/** "sha-256 aa:BB:..." (an a=fingerprint value) -> canonical "sha-256 AA:BB:...", or throws. */
export function canonicalFingerprint(value) {
  const parts = String(value).split(/\s+/).filter((p) => p !== "");
  if (parts.length !== 2) {
    throw new FingerprintError(`bad fingerprint "${clip(value)}": expected '<hash-function> <hex:hex:...>'`);
  }
  const [name, hexes] = parts;
  if (!ALGORITHM.test(name)) throw new FingerprintError(`bad fingerprint hash function "${clip(name)}"`);
  const algorithm = name.toLowerCase();
  if (!HEX_PAIRS.test(hexes)) {
    throw new FingerprintError(`bad ${algorithm} fingerprint "${clip(hexes)}": expected hex pairs separated by ':'`);
  }
  const size = DIGEST_SIZES[algorithm];
  const length = (hexes.length + 1) / 3;
  if (size !== undefined && length !== size) {
    throw new FingerprintError(`bad ${algorithm} fingerprint: ${length} bytes, a ${algorithm} digest has ${size}`);
  }
  return `${algorithm} ${hexes.toUpperCase()}`;
}

/** Every a=fingerprint of `sdp` (session and media level), canonical, in order. */
export function fingerprintsInSdp(sdp) {
  const found = [];
  for (const raw of String(sdp).split(/\r\n|\r|\n/)) {
    const line = raw.trim();
    if (line.slice(0, 14).toLowerCase() === "a=fingerprint:") found.push(canonicalFingerprint(line.slice(14)));
  }
  return found;
}

/**
 * The sha-256 fingerprint of `sdp` (canonical), the one the code is derived from.
 * The same value repeated is one; two different ones are refused.
 */
export function sdpFingerprint(sdp, algorithm = SAS_ALGORITHM) {
  if (typeof sdp !== "string" || sdp === "") throw new FingerprintError("no SDP (no description set yet)");
  algorithm = algorithm.toLowerCase();
  const every = fingerprintsInSdp(sdp);
  const chosen = new Set(every.filter((fp) => fp.startsWith(algorithm + " ")));
  if (chosen.size === 0) {
    if (every.length === 0) throw new FingerprintError("the SDP has no a=fingerprint line (no DTLS certificate to verify)");
    const others = [...new Set(every.map((fp) => fp.split(" ")[0]))].sort().join(", ");
    throw new FingerprintError(`the SDP has no ${algorithm} fingerprint (only ${others})`);
  }
  if (chosen.size > 1) {
    throw new FingerprintError(`the SDP has ${chosen.size} different ${algorithm} fingerprints (one certificate per call expected)`);
  }
  return [...chosen][0];
}

/** What the derivation hashes: the domain tag and both canonical fingerprints, sorted. */
export function sasInput(a, b) {
  const [first, second] = [canonicalFingerprint(a), canonicalFingerprint(b)].sort();
  return `${SAS_DOMAIN}\n${first}\n${second}`;
}

function webCrypto() {
  const subtle = globalThis.crypto && globalThis.crypto.subtle;
  if (!subtle) throw new FingerprintError("this page cannot compute the code: WebCrypto needs a secure page (https or localhost)");
  return subtle;
}

/** The words of a code (bytes): even positions from the two-syllable list, odd from the three. */
export function sasWords(code) {
  return Array.from(code, (b, i) => (i % 2 ? PGP_ODD_WORDS[b] : PGP_EVEN_WORDS[b]));
}

/**
 * The code for a call whose fingerprints are `local` and `remote` (either order):
 * {code: hex string, words: [4 words], text: "w w w w"}. PBKDF2 runs in WebCrypto
 * (off the page's thread); it needs a secure page (https or localhost).
 */
export async function deriveSas(local, remote, iterations = SAS_ITERATIONS) {
  if (!(iterations >= 1)) throw new RangeError("iterations must be at least 1");
  const subtle = webCrypto();
  const utf8 = new TextEncoder();
  const key = await subtle.importKey("raw", utf8.encode(sasInput(local, remote)), "PBKDF2", false, ["deriveBits"]);
  const bits = await subtle.deriveBits(
    {name: "PBKDF2", hash: "SHA-256", salt: utf8.encode(SAS_DOMAIN), iterations}, key, SAS_BYTES * 8);
  const code = new Uint8Array(bits);
  const words = sasWords(code);
  return {code: Array.from(code, (b) => b.toString(16).padStart(2, "0")).join(""), words,
    text: words.join(" ")};
}

/** The code of a call from its local and remote SDP (pc.localDescription.sdp, remoteDescription.sdp). */
export function sasFromSdp(localSdp, remoteSdp, iterations = SAS_ITERATIONS) {
  let local, remote;
  try {
    local = sdpFingerprint(localSdp);
    remote = sdpFingerprint(remoteSdp);
  } catch (err) {
    return Promise.reject(err);
  }
  return deriveSas(local, remote, iterations);
}

/** "sha-256 AA:BB:..." of a certificate (DER bytes), as an a=fingerprint line gives it. */
export async function certificateFingerprint(der) {
  const digest = new Uint8Array(await webCrypto().digest("SHA-256", der));
  return "sha-256 " + Array.from(digest, (b) => b.toString(16).padStart(2, "0").toUpperCase()).join(":");
}

/**
 * The sha-256 fingerprints of the two certificates the DTLS handshake used
 * ({local, remote}), from pc.getStats() (the transport's certificate stats), or
 * null when the stats do not have them (not connected yet, or a browser without).
 */
export async function dtlsFingerprints(pc) {
  const stats = await pc.getStats();
  const transports = [...stats.values()].filter((r) => r.type === "transport"
    && r.localCertificateId && r.remoteCertificateId);
  const transport = transports.find((r) => r.dtlsState === "connected") || transports[0];
  if (!transport) return null;
  const local = stats.get(transport.localCertificateId);
  const remote = stats.get(transport.remoteCertificateId);
  if (!local || !remote || !local.base64Certificate || !remote.base64Certificate) return null;
  const der = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return {local: await certificateFingerprint(der(local.base64Certificate)),
    remote: await certificateFingerprint(der(remote.base64Certificate))};
}

/** Whether `pc` was closed (RTCPeerConnection.close(): both states say "closed"). */
export function connectionClosed(pc) {
  return pc.signalingState === "closed" || pc.connectionState === "closed";
}

/**
 * The code of a connected RTCPeerConnection, plus `source`: "dtls" when derived
 * from the certificates the handshake really used (getStats), "sdp" when from
 * the descriptions' sha-256 fingerprints. The certificates come first: Chrome
 * keeps (and checks) only one of the remote's a=fingerprint lines, and its
 * remoteDescription shows only that one (sha-512 from aiortc), so the sha-256
 * line the peer sent is not what this browser checked.
 *
 * Just after the connection reports "connected", getStats may not have the
 * certificate stats yet (Chromium, busy): they are asked for `attempts` times,
 * `delayMs` apart, before the SDP is used. The SDP cannot stand in for the
 * certificates with another algorithm: the code is defined on the sha-256
 * fingerprints (softphone/core/sas.py), which a sha-512 one does not give.
 *
 * `gone()`, checked after each wait: true when nobody wants the code any more
 * (the call or its connection changed or ended); then the result is null, and
 * so it is when `pc` is closed: a closed connection's stats and descriptions
 * are no evidence of anything, and no error either.
 */
export async function sasOfConnection(pc, {iterations = SAS_ITERATIONS, attempts = 1, delayMs = 200,
  gone = () => false} = {}) {
  const over = () => gone() || connectionClosed(pc);
  let used = null;
  for (let attempt = 1; ; attempt++) {
    if (over()) return null;
    try {
      used = await dtlsFingerprints(pc);
    } catch (err) {
      if (over()) return null; // (getStats of a connection closed meanwhile)
      throw err;
    }
    if (over()) return null;
    if (used || attempt >= attempts) break;
    await new Promise((resolve) => setTimeout(resolve, delayMs));
  }
  if (used) return {...await deriveSas(used.local, used.remote, iterations), source: "dtls"};
  const local = pc.localDescription, remote = pc.remoteDescription;
  const sas = await sasFromSdp(local && local.sdp, remote && remote.sdp, iterations);
  return {...sas, source: "sdp"};
}

// The PGP word list (Juola and Zimmermann, 1995), as PGPfone and ZRTP (RFC 6189)
// use it: the index is the byte. The same lists as softphone/core/sas.py (a test
// compares them).
/** Byte -> word at even positions (two syllables). */
export const PGP_EVEN_WORDS = Object.freeze([
  "aardvark", "absurd", "accrue", "acme", "adrift", "adult", "afflict", "ahead", "aimless",
  "Algol", "allow", "alone", "ammo", "ancient", "apple", "artist", "assume", "Athens", "atlas",
  "Aztec", "baboon", "backfield", "backward", "banjo", "beaming", "bedlamp", "beehive",
  "beeswax", "befriend", "Belfast", "berserk", "billiard", "bison", "blackjack", "blockade",
  "blowtorch", "bluebird", "bombast", "bookshelf", "brackish", "breadline", "breakup",
  "brickyard", "briefcase", "Burbank", "button", "buzzard", "cement", "chairlift", "chatter",
  "checkup", "chisel", "choking", "chopper", "Christmas", "clamshell", "classic", "classroom",
  "cleanup", "clockwork", "cobra", "commence", "concert", "cowbell", "crackdown", "cranky",
  "crowfoot", "crucial", "crumpled", "crusade", "cubic", "dashboard", "deadbolt", "deckhand",
  "dogsled", "dragnet", "drainage", "dreadful", "drifter", "dropper", "drumbeat", "drunken",
  "Dupont", "dwelling", "eating", "edict", "egghead", "eightball", "endorse", "endow", "enlist",
  "erase", "escape", "exceed", "eyeglass", "eyetooth", "facial", "fallout", "flagpole",
  "flatfoot", "flytrap", "fracture", "framework", "freedom", "frighten", "gazelle", "Geiger",
  "glitter", "glucose", "goggles", "goldfish", "gremlin", "guidance", "hamlet", "highchair",
  "hockey", "indoors", "indulge", "inverse", "involve", "island", "jawbone", "keyboard",
  "kickoff", "kiwi", "klaxon", "locale", "lockup", "merit", "minnow", "miser", "Mohawk",
  "mural", "music", "necklace", "Neptune", "newborn", "nightbird", "Oakland", "obtuse",
  "offload", "optic", "orca", "payday", "peachy", "pheasant", "physique", "playhouse", "Pluto",
  "preclude", "prefer", "preshrunk", "printer", "prowler", "pupil", "puppy", "python",
  "quadrant", "quiver", "quota", "ragtime", "ratchet", "rebirth", "reform", "regain",
  "reindeer", "rematch", "repay", "retouch", "revenge", "reward", "rhythm", "ribcage",
  "ringbolt", "robust", "rocker", "ruffled", "sailboat", "sawdust", "scallion", "scenic",
  "scorecard", "Scotland", "seabird", "select", "sentence", "shadow", "shamrock", "showgirl",
  "skullcap", "skydive", "slingshot", "slowdown", "snapline", "snapshot", "snowcap",
  "snowslide", "solo", "southward", "soybean", "spaniel", "spearhead", "spellbind", "spheroid",
  "spigot", "spindle", "spyglass", "stagehand", "stagnate", "stairway", "standard", "stapler",
  "steamship", "sterling", "stockman", "stopwatch", "stormy", "sugar", "surmount", "suspense",
  "sweatband", "swelter", "tactics", "talon", "tapeworm", "tempest", "tiger", "tissue", "tonic",
  "topmost", "tracker", "transit", "trauma", "treadmill", "Trojan", "trouble", "tumor",
  "tunnel", "tycoon", "uncut", "unearth", "unwind", "uproot", "upset", "upshot", "vapor",
  "village", "virus", "Vulcan", "waffle", "wallet", "watchword", "wayside", "willow",
  "woodlark", "Zulu",
]);
/** Byte -> word at odd positions (three syllables). */
export const PGP_ODD_WORDS = Object.freeze([
  "adroitness", "adviser", "aftermath", "aggregate", "alkali", "almighty", "amulet",
  "amusement", "antenna", "applicant", "Apollo", "armistice", "article", "asteroid", "Atlantic",
  "atmosphere", "autopsy", "Babylon", "backwater", "barbecue", "belowground", "bifocals",
  "bodyguard", "bookseller", "borderline", "bottomless", "Bradbury", "bravado", "Brazilian",
  "breakaway", "Burlington", "businessman", "butterfat", "Camelot", "candidate", "cannonball",
  "Capricorn", "caravan", "caretaker", "celebrate", "cellulose", "certify", "chambermaid",
  "Cherokee", "Chicago", "clergyman", "coherence", "combustion", "commando", "company",
  "component", "concurrent", "confidence", "conformist", "congregate", "consensus",
  "consulting", "corporate", "corrosion", "councilman", "crossover", "crucifix", "cumbersome",
  "customer", "Dakota", "decadence", "December", "decimal", "designing", "detector",
  "detergent", "determine", "dictator", "dinosaur", "direction", "disable", "disbelief",
  "disruptive", "distortion", "document", "embezzle", "enchanting", "enrollment", "enterprise",
  "equation", "equipment", "escapade", "Eskimo", "everyday", "examine", "existence", "exodus",
  "fascinate", "filament", "finicky", "forever", "fortitude", "frequency", "gadgetry",
  "Galveston", "getaway", "glossary", "gossamer", "graduate", "gravity", "guitarist",
  "hamburger", "Hamilton", "handiwork", "hazardous", "headwaters", "hemisphere", "hesitate",
  "hideaway", "holiness", "hurricane", "hydraulic", "impartial", "impetus", "inception",
  "indigo", "inertia", "infancy", "inferno", "informant", "insincere", "insurgent", "integrate",
  "intention", "inventive", "Istanbul", "Jamaica", "Jupiter", "leprosy", "letterhead",
  "liberty", "maritime", "matchmaker", "maverick", "Medusa", "megaton", "microscope",
  "microwave", "midsummer", "millionaire", "miracle", "misnomer", "molasses", "molecule",
  "Montana", "monument", "mosquito", "narrative", "nebula", "newsletter", "Norwegian",
  "October", "Ohio", "onlooker", "opulent", "Orlando", "outfielder", "Pacific", "pandemic",
  "Pandora", "paperweight", "paragon", "paragraph", "paramount", "passenger", "pedigree",
  "Pegasus", "penetrate", "perceptive", "performance", "pharmacy", "phonetic", "photograph",
  "pioneer", "pocketful", "politeness", "positive", "potato", "processor", "provincial",
  "proximate", "puberty", "publisher", "pyramid", "quantity", "racketeer", "rebellion",
  "recipe", "recover", "repellent", "replica", "reproduce", "resistor", "responsive",
  "retraction", "retrieval", "retrospect", "revenue", "revival", "revolver", "sandalwood",
  "sardonic", "Saturday", "savagery", "scavenger", "sensation", "sociable", "souvenir",
  "specialist", "speculate", "stethoscope", "stupendous", "supportive", "surrender",
  "suspicious", "sympathy", "tambourine", "telephone", "therapist", "tobacco", "tolerance",
  "tomorrow", "torpedo", "tradition", "travesty", "trombonist", "truncated", "typewriter",
  "ultimate", "undaunted", "underfoot", "unicorn", "unify", "universe", "unravel", "upcoming",
  "vacancy", "vagabond", "vertigo", "Virginia", "visitor", "vocalist", "voyager", "warranty",
  "Waterloo", "whimsical", "Wichita", "Wilmington", "Wyoming", "yesteryear", "Yucatan",
]);
