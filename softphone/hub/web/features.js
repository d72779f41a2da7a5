// The protocol extension of docs/protocol.md "Media restart and hold", sans I/O:
// the features the page announces, what the peer announced, and the restart and
// hold messages (offer/answer/candidate with "restart", offer/answer with "hold").
//
// A feature is used in a call only when both sides announced it; the original
// pages announce nothing, so none of this happens with them.

/** What this page announces in call-request / call-accept data. */
export const FEATURES = Object.freeze(["restart", "hold", "ice-restart"]);

/** The largest generation number ("restart" is 1 to 2^31 - 1). */
export const MAX_GENERATION = 2 ** 31 - 1;

/** The features in a call-request / call-accept `data`: a list of strings (others dropped). */
export function featuresOf(data) {
  if (!data || typeof data !== "object" || !Array.isArray(data.features)) return [];
  return data.features.filter((f) => typeof f === "string");
}

/** What both sides announced: {restart, hold, iceRestart} booleans. */
export function agreed(ours, theirs) {
  const both = (name) => ours.includes(name) && theirs.includes(name);
  return Object.freeze({restart: both("restart"), hold: both("hold"),
    iceRestart: both("restart") && both("ice-restart")});
}

function generationOf(value) {
  return Number.isInteger(value) && value >= 1 && value <= MAX_GENERATION ? value : null;
}

/**
 * A hub message that belongs to the extension, as an object for the media
 * session, or null when it is a message of the original protocol (generation 0):
 *   {kind: "hold" | "holdAck", held, seq}
 *   {kind: "restartOffer" | "restartAnswer", generation, sdp, reason}
 *   {kind: "restartCandidate", generation, candidate}
 *   {kind: "bad", what}  (an extension message that is not well formed: dropped)
 */
export function extensionOf(message) {
  const data = message.data;
  if (!data || typeof data !== "object" || Array.isArray(data)) return null;
  const type = message.type;
  if (type === "offer" || type === "answer") {
    if ("restart" in data) { // (core/midcall.py classify: a generation first, then hold)
      const generation = generationOf(data.restart);
      if (generation === null || typeof data.sdp !== "string") {
        return {kind: "bad", what: `${type} with a bad restart generation or no sdp`};
      }
      return {kind: type === "offer" ? "restartOffer" : "restartAnswer", generation, sdp: data.sdp,
        reason: typeof data.reason === "string" ? data.reason.slice(0, 64) : null};
    }
    if (!("hold" in data) || data.sdp != null) return null;
    if (typeof data.hold !== "boolean" || !Number.isInteger(data.seq) || data.seq < 1) {
      return {kind: "bad", what: `${type} with a bad hold/seq`};
    }
    return {kind: type === "offer" ? "hold" : "holdAck", held: data.hold, seq: data.seq};
  }
  if (type === "candidate") {
    if (!("restart" in data)) return null;
    const generation = generationOf(data.restart);
    if (generation === null) return {kind: "bad", what: "candidate with a bad restart generation"};
    const candidate = {...data};
    delete candidate.restart;
    return {kind: "restartCandidate", generation, candidate};
  }
  return null;
}

/** The `data` of a restart offer/answer/candidate for `generation` (our side). */
export function restartData(type, generation, sdp, reason = null) {
  const data = {type, sdp, restart: generation};
  if (reason) data.reason = reason;
  return data;
}

/** The `data` of a hold message (type "offer") or of its acknowledgement ("answer"). */
export function holdData(type, held, seq) {
  return {type, hold: held, seq};
}
