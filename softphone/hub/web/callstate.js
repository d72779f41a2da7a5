// The call state machine, sans I/O: softphone/core/callstate.py's CallMachine for the page.
//
// The transition table is not written here. The hub serves callstate.py's own
// (GET callstate.json: states, outcomes, transitions, local events, timeouts,
// reasons), loadCallTable() checks it and makes a CallTable of it, and every
// CallMachine is given that table: what it allows is what the Python core
// allows, entry for entry. Only the handlers, one per event type (as the _on_*
// methods there), are written here.
//
// Our extension (docs/protocol.md "Media restart and hold", core/midcall.py):
// call-request and call-accept carry the features this side announces
// (`features`), and `peerFeatures` is what the peer announced; restart and hold
// messages come in as RemoteMidCall and go out as "midCall" actions for the
// media (session.js), which says MediaInterrupted (media lost / back) and
// MediaGiveUp (a call whose media could not be restored ends "media-lost").
//
// Events are plain objects {type: "RemoteAccept", ...}; handle() returns
// actions for the adapter: {kind: "send" | "startMedia" | "applyOffer" |
// "applyAnswer" | "addCandidate" | "stopMedia" | "state" | "ended", ...}.

/** A local event that is not allowed in the call's current state. */
export class CallStateError extends Error {}

/** A served table this page cannot run (a name it has no handler or use for). */
export class CallTableError extends Error {}

// The names the handlers below use. The table must have them all.
const NEEDS = {
  roles: ["caller", "callee"],
  states: ["DIALING", "RINGING", "CONNECTING", "CONNECTED", "ENDED"],
  outcomes: ["COMPLETED", "REJECTED", "BUSY", "NO_ANSWER", "OFFLINE", "HUB_UNREACHABLE",
    "MEDIA_FAILED", "MISSED", "CANCELLED"],
  reasons: ["NO_ANSWER", "MEDIA_FAILED", "BUSY", "GLARE"],
  timeouts: ["ring", "setup", "offerDelay"],
};

function nameMap(spec, key) {
  const value = spec[key];
  if (!value || typeof value !== "object" || Array.isArray(value)) {
    throw new CallTableError(`the call table has no "${key}"`);
  }
  for (const name of NEEDS[key]) {
    if (!(name in value)) throw new CallTableError(`the call table's "${key}" lacks ${name}`);
  }
  return Object.freeze({...value});
}

/** The hub's transition table and the constants that go with it, checked. */
export class CallTable {
  constructor(spec) {
    if (!spec || typeof spec !== "object") throw new CallTableError("the call table is not an object");
    this.states = nameMap(spec, "states");
    this.outcomes = nameMap(spec, "outcomes");
    this.reasons = nameMap(spec, "reasons");
    this.timeouts = nameMap(spec, "timeouts");
    if (!Array.isArray(spec.transitions) || !Array.isArray(spec.localEvents)) {
      throw new CallTableError("the call table has no \"transitions\" or \"localEvents\" list");
    }
    const states = new Set(Object.values(this.states));
    this.localEvents = new Set(spec.localEvents);
    this.transitions = new Map();
    for (const row of spec.transitions) {
      const [role, state, event, next] = Array.isArray(row) ? row : [];
      if (!NEEDS.roles.includes(role) || !states.has(state) || !states.has(next)) {
        throw new CallTableError(`bad call table row: ${JSON.stringify(row)}`);
      }
      if (typeof CallMachine.prototype[`on${event}`] !== "function") {
        throw new CallTableError(`the call table has an event this page cannot handle: ${event}`);
      }
      this.transitions.set(`${role} ${state} ${event}`, next);
    }
    Object.freeze(this);
  }

  /** The state (role, state, eventType) leads to, or undefined if it is not allowed. */
  next(role, state, eventType) {
    return this.transitions.get(`${role} ${state} ${eventType}`);
  }
}

/** GET the hub's table (callstate.json) and check it; rejects with Error or CallTableError. */
export async function loadCallTable(url) {
  const resp = await fetch(url, {cache: "no-store"});
  if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
  let spec;
  try {
    spec = await resp.json();
  } catch (err) {
    throw new CallTableError(`the call table is not JSON: ${err.message}`);
  }
  return new CallTable(spec);
}

/** A "send" action: a message to the peer through the hub. */
export function send(type, to, data) {
  const message = {type, to};
  if (data !== undefined) message.data = data;
  return {kind: "send", message};
}

function causeOf(eventType) {
  if (eventType.startsWith("Local")) return "local";
  if (eventType.startsWith("Remote")) return "remote";
  if (eventType.endsWith("Timeout") || eventType.endsWith("Due")) return "timeout";
  return "network";
}

/** How a call whose media died and could not be restored ends (core/restart_events.py). */
export const MEDIA_LOST = "media-lost";

/** The state of one call, as seen from one side. */
export class CallMachine {
  constructor(role, peer, now, table, timeouts = table.timeouts, features = []) {
    this.table = table;
    this.role = role;
    this.peer = peer;
    this.timeouts = timeouts;
    this.features = features; // what we announce (none: the original protocol, to the letter)
    this.peerFeatures = []; // what the peer announced (call-request / call-accept data)
    this.mediaLost = false; // media is lost and not restored (MediaInterrupted)
    this.state = role === "caller" ? table.states.DIALING : table.states.RINGING;
    this.outcome = null;
    this.reason = null;
    this.endedBy = null;
    this.startedAt = now;
    this.connectedAt = null;
    this.endedAt = null;
    this.history = [[this.state, now]];
    this.deadlines = new Map();
    this.pendingOffer = null;
    this.remoteDescription = false;
    this.earlyCandidates = [];
    this.cause = "local";
    if (role === "caller") this.deadlines.set("RingTimeout", now + timeouts.ring);
  }

  get isEnded() { return this.state === this.table.states.ENDED; }

  start() {
    if (this.role !== "caller") return [];
    return [this.features.length ? send("call-request", this.peer, {features: this.features})
      : send("call-request", this.peer)];
  }

  deadline() {
    return this.deadlines.size ? Math.min(...this.deadlines.values()) : null;
  }

  handleTimer(now) {
    let actions = [];
    const due = [...this.deadlines.entries()].sort((x, y) => x[1] - y[1]);
    for (const [kind, when] of due) {
      if (when <= now && this.deadlines.has(kind) && !this.isEnded) {
        this.deadlines.delete(kind);
        actions = actions.concat(this.handle({type: kind}, now));
      }
    }
    return actions;
  }

  /** Feed one event; the actions to carry out, in order. The table decides what is allowed. */
  handle(event, now) {
    const next = this.table.next(this.role, this.state, event.type);
    if (next === undefined) {
      if (this.table.localEvents.has(event.type)) {
        throw new CallStateError(`${event.type} is not allowed when the ${this.role} is ${this.state}`);
      }
      return []; // a remote or media event: the peer or the network is late, not us
    }
    this.cause = causeOf(event.type);
    const actions = this[`on${event.type}`](event, now);
    if (this.state !== next) throw new Error(`the table says ${next}, the handler went to ${this.state}`);
    return actions;
  }

  goto(state, now) {
    const old = this.state;
    if (old === state) return [];
    const S = this.table.states;
    this.state = state;
    this.history.push([state, now]);
    if (state === S.CONNECTING) {
      this.deadlines.delete("RingTimeout");
      this.deadlines.set("SetupTimeout", now + this.timeouts.setup);
    } else if (state === S.CONNECTED) {
      this.connectedAt = now;
      this.deadlines.clear();
    }
    return [{kind: "state", old, state, at: now}];
  }

  end(outcome, reason, now, message = null) {
    const S = this.table.states;
    const media = this.state === S.CONNECTING || this.state === S.CONNECTED;
    const actions = [];
    if (message) actions.push(message);
    if (media) actions.push({kind: "stopMedia"});
    actions.push(...this.goto(S.ENDED, now));
    this.deadlines.clear();
    this.outcome = outcome;
    this.reason = reason;
    this.endedAt = now;
    this.endedBy = this.cause;
    actions.push({kind: "ended", outcome, reason, at: now, by: this.cause});
    return actions;
  }

  hangupMessage(reason) {
    return reason == null ? send("hangup", this.peer) : send("hangup", this.peer, {reason});
  }

  // -- handlers, one per event type (as the _on_* methods in callstate.py) --

  onRemoteAccept(event, now) {
    this.peerFeatures = event.features || [];
    const actions = this.goto(this.table.states.CONNECTING, now);
    if (!event.mediaReady && this.timeouts.offerDelay > 0) {
      this.deadlines.set("OfferDue", now + this.timeouts.offerDelay);
    }
    return [...actions, {kind: "startMedia", offerer: true}];
  }

  onRemoteReject(event, now) {
    const {outcomes: O, reasons: R} = this.table;
    const busy = event.reason === R.BUSY || event.reason === R.GLARE;
    return this.end(busy ? O.BUSY : O.REJECTED, event.reason ?? null, now);
  }

  onRemoteHangup(event, now) {
    const {states: S, outcomes: O, reasons: R} = this.table;
    const reason = event.reason ?? null;
    if (this.state === S.DIALING) return this.end(O.REJECTED, reason, now);
    if (this.state === S.RINGING) return this.end(O.MISSED, reason, now);
    if (this.state === S.CONNECTED) return this.end(this.hungUp(reason), reason || "remote-hangup", now);
    if (reason === R.MEDIA_FAILED) return this.end(O.MEDIA_FAILED, reason, now);
    return this.end(O.CANCELLED, reason || "remote-hangup", now);
  }

  onPeerOffline(event, now) { return this.end(this.table.outcomes.OFFLINE, null, now); }

  /** Refused by the hub for good (replaced by another tab, unauthorized): the call ends
   * (a connected one too), with no hangup: the hub is gone for us. */
  onHubGone(event, now) {
    return this.end(this.table.outcomes.HUB_UNREACHABLE, event.reason || "replaced", now);
  }

  onHubLost(event, now) {
    if (this.state === this.table.states.CONNECTED) return []; // media is peer to peer
    return this.end(this.table.outcomes.HUB_UNREACHABLE, "hub-lost", now);
  }

  onLocalAccept(event, now) {
    const data = this.features.length ? {media: "ready", features: this.features} : {media: "ready"};
    return [send("call-accept", this.peer, data),
      ...this.goto(this.table.states.CONNECTING, now), {kind: "startMedia", offerer: false}];
  }

  onLocalReject(event, now) {
    const reason = event.reason || "declined";
    return this.end(this.table.outcomes.REJECTED, reason, now,
      send("call-reject", this.peer, {reason}));
  }

  onLocalHangup(event, now) {
    const {states: S, outcomes: O} = this.table;
    const reason = event.reason || "hangup";
    if (this.state === S.RINGING) return this.onLocalReject({reason}, now);
    // (a connected call we hang up is completed, also while its media is being
    // restarted: media-lost is for giving up)
    const outcome = this.state === S.CONNECTED ? O.COMPLETED : O.CANCELLED;
    return this.end(outcome, reason, now, this.hangupMessage(reason));
  }

  onLocalDescription(event, now) {
    if (this.role === "caller") {
      if (this.deadlines.has("OfferDue")) {
        this.pendingOffer = event.sdp;
        return [];
      }
      return [send("offer", this.peer, {type: "offer", sdp: event.sdp})];
    }
    return [send("answer", this.peer, {type: "answer", sdp: event.sdp})];
  }

  remoteDescriptionSet() {
    this.remoteDescription = true;
    const held = this.earlyCandidates.map((candidate) => ({kind: "addCandidate", candidate}));
    this.earlyCandidates = [];
    return held;
  }

  onRemoteOffer(event, now) {
    if (this.remoteDescription) return []; // a second offer: renegotiation is not supported
    return [{kind: "applyOffer", sdp: event.sdp}, ...this.remoteDescriptionSet()];
  }

  onRemoteAnswer(event, now) {
    if (this.remoteDescription) return [];
    return [{kind: "applyAnswer", sdp: event.sdp}, ...this.remoteDescriptionSet()];
  }

  onRemoteCandidate(event, now) {
    if (!this.remoteDescription) {
      this.earlyCandidates.push(event.candidate); // hold until we can use it
      return [];
    }
    return [{kind: "addCandidate", candidate: event.candidate}];
  }

  onMediaConnected(event, now) { return this.goto(this.table.states.CONNECTED, now); }

  /** How a connected call ends on the peer's hangup (as callstate.py): completed, or
   * media-lost when the peer gave up on the media, or when ours is lost and the hangup
   * is no one's choice (the hub's peer-disconnected, media-failed, or no reason). */
  hungUp(reason) {
    const R = this.table.reasons;
    const lostMedia = R.MEDIA_LOST || MEDIA_LOST;
    const noChoice = reason === null || reason === (R.PEER_DISCONNECTED || "peer-disconnected")
      || reason === R.MEDIA_FAILED || reason === "no-such-call";
    const lost = reason === lostMedia || (this.mediaLost && noChoice);
    return lost ? (this.table.outcomes.MEDIA_LOST || MEDIA_LOST) : this.table.outcomes.COMPLETED;
  }

  onRemoteMidCall(event, now) { return [{kind: "midCall", message: event.message}]; }

  onMediaInterrupted(event, now) {
    this.mediaLost = event.lost !== false;
    return [];
  }

  onMediaFailed(event, now) {
    if (event.lost) return this.onMediaGiveUp(event, now); // a table without MediaGiveUp
    return this.end(this.table.outcomes.MEDIA_FAILED, event.reason || "ice-failed", now,
      this.hangupMessage(this.table.reasons.MEDIA_FAILED));
  }

  /** Media went away during the call and did not come back within the give-up time. */
  onMediaGiveUp(event, now) {
    this.mediaLost = true;
    const lost = this.table.outcomes.MEDIA_LOST || MEDIA_LOST;
    return this.end(lost, event.reason || lost, now, this.hangupMessage(this.table.reasons.MEDIA_LOST || lost));
  }

  onRingTimeout(event, now) {
    const R = this.table.reasons;
    return this.end(this.table.outcomes.NO_ANSWER, R.NO_ANSWER, now,
      this.hangupMessage(R.NO_ANSWER));
  }

  onOfferDue(event, now) {
    const sdp = this.pendingOffer;
    this.pendingOffer = null;
    if (sdp === null) return []; // not made yet: it is sent as soon as it is
    return [send("offer", this.peer, {type: "offer", sdp})];
  }

  onSetupTimeout(event, now) {
    return this.end(this.table.outcomes.MEDIA_FAILED, "setup-timeout", now,
      this.hangupMessage(this.table.reasons.MEDIA_FAILED));
  }
}
