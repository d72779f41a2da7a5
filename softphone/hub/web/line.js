// One phone line, sans I/O (softphone/core/line.py): which call a hub message
// belongs to, busy for a second caller, glare when two ids call each other.

import {CallMachine, CallStateError, send} from "./callstate.js";
import {extensionOf, featuresOf} from "./features.js";

function reasonOf(data) {
  return data && typeof data === "object" && typeof data.reason === "string" ? data.reason : null;
}

/** The messages of a call (not a new one) that a page without that call answers with a hangup. */
const STRAY_TYPES = new Set(["offer", "answer", "candidate", "call-accept"]);
/** Seconds: at most one such hangup per peer this often. */
export const STRAY_HANGUP_GAP = 5;
/** Its reason, as the CLI phone's (softphone/core/line.py): the peer hung up, not lost media. */
const STRAY_HANGUP_REASON = "no-such-call";

/** Hub message -> call event (as _event_of in softphone/core/line.py), or null. */
export function eventOf(message) {
  const data = message.data;
  switch (message.type) {
    case "call-accept":
      return {type: "RemoteAccept", mediaReady: !!data && typeof data === "object" && data.media === "ready",
        features: featuresOf(data)};
    case "call-reject": return {type: "RemoteReject", reason: reasonOf(data)};
    case "hangup": return {type: "RemoteHangup", reason: reasonOf(data)};
    case "offer":
    case "answer": {
      const midCall = extensionOf(message); // a restart or hold message, not the first connection's
      if (midCall) return {type: "RemoteMidCall", message: midCall};
      if (!data || typeof data.sdp !== "string") return null;
      return {type: message.type === "offer" ? "RemoteOffer" : "RemoteAnswer", sdp: data.sdp};
    }
    case "candidate": {
      const midCall = extensionOf(message);
      if (midCall) return {type: "RemoteMidCall", message: midCall};
      return {type: "RemoteCandidate", candidate: data && typeof data === "object" ? data : {candidate: ""}};
    }
    default: return null;
  }
}

/**
 * Routes hub messages to the one current call of one client id. `features`: what
 * its calls announce; the peer's restart and hold messages are RemoteMidCall
 * events of the call (features.js extensionOf), handed on as "midCall" actions.
 */
export class Line {
  constructor(myId, table, timeouts = table.timeouts, features = []) {
    this.myId = myId;
    this.table = table;
    this.timeouts = timeouts;
    this.features = features;
    this.call = null;
    this.strayHangups = new Map(); // peer -> when we last answered its stray call message
  }

  get active() { return this.call !== null && !this.call.isEnded; }

  newCall(role, peer, now) {
    const old = this.call;
    if (old && old.isEnded && old.endedAt !== null && old.endedAt !== undefined) {
      // Its late messages are as good as told, as for the latest call (stray below),
      // like the phone's line (softphone/core/line.py _prune).
      const told = this.strayHangups.get(old.peer);
      this.strayHangups.set(old.peer, told === undefined ? old.endedAt : Math.max(told, old.endedAt));
    }
    this.call = new CallMachine(role, peer, now, this.table, this.timeouts, this.features);
    return this.call;
  }

  dial(peer, now) {
    if (this.active) throw new CallStateError(`already in a call with ${this.call.peer}`);
    return this.newCall("caller", peer, now).start();
  }

  incomingCall(peer, data, now) {
    const call = this.newCall("callee", peer, now);
    call.peerFeatures = featuresOf(data);
    return call;
  }

  handleLocal(event, now) {
    return this.active ? this.call.handle(event, now) : [];
  }

  handleTimer(now) { return this.call ? this.call.handleTimer(now) : []; }

  deadline() { return this.call ? this.call.deadline() : null; }

  receive(message, now) {
    if (message.type === "error") return this.hubError(message.data || {}, now);
    const call = this.call;
    const from = message.from;
    if (message.type === "call-request" && from) {
      const {states: S, reasons: R} = this.table;
      if (this.active && call.peer === from && call.state === S.DIALING && this.myId > from) {
        // Glare: we called each other at once. The smaller id's call wins.
        const ended = call.handle({type: "RemoteReject", reason: R.GLARE}, now);
        return [...ended, {kind: "incoming", call: this.incomingCall(from, message.data, now)}];
      }
      if (this.active && call.peer !== from) {
        return [send("call-reject", from, {reason: R.BUSY}), {kind: "busy", peer: from}];
      }
      if (this.active && call.state === S.CONNECTED) {
        // The peer of our connected call calls again: it holds no such call any more
        // (started again under its id). The old call ends as its no-such-call hangup
        // would end it (softphone/core/line.py), and the new one rings.
        const ended = call.handle({type: "RemoteHangup", reason: STRAY_HANGUP_REASON}, now);
        return [...ended, {kind: "incoming", call: this.incomingCall(from, message.data, now)}];
      }
      if (this.active) return []; // a repeated request from our peer (ringing, or being answered)
      return [{kind: "incoming", call: this.incomingCall(from, message.data, now)}];
    }
    if (!this.active || from !== call.peer) return this.stray(message, now);
    const event = eventOf(message);
    return event ? call.handle(event, now) : [];
  }

  /**
   * A message of a call we do not have: a peer still in a call with this id (this
   * page was reloaded, or took the id from another tab: the hub kept the call for
   * the id), whose media restart offers would go unanswered until it gives up.
   * Its offer, answer, candidate or call-accept is answered with a hangup, at most one per peer
   * every STRAY_HANGUP_GAP seconds; anything else (a hangup above all) is ignored.
   */
  stray(message, now) {
    const from = message.from;
    if (!from || !STRAY_TYPES.has(message.type)) return [];
    const call = this.call;
    // Our call with `from` just ended: our hangup or reject crossed its last messages.
    if (call && call.peer === from && call.isEnded && now - call.endedAt < STRAY_HANGUP_GAP) return [];
    const last = this.strayHangups.get(from);
    if (last !== undefined && now - last < STRAY_HANGUP_GAP) return [];
    this.strayHangups.set(from, now);
    for (const [peer, at] of this.strayHangups) { // (forget the old ones)
      if (now - at >= STRAY_HANGUP_GAP) this.strayHangups.delete(peer);
    }
    return [send("hangup", from, {reason: STRAY_HANGUP_REASON}), {kind: "stray", peer: from, type: message.type}];
  }

  hubError(error, now) {
    const call = this.call;
    if (error.code === "offline" && this.active && (!error.to || error.to === call.peer)
        && error.ref !== "hangup") {
      const actions = call.handle({type: "PeerOffline"}, now);
      if (actions.length) return actions;
    }
    return [{kind: "hubError", error}];
  }
}
