// softphone's browser phone: plain JavaScript, served by the hub, no build step.
//
// Layout, as in the Python package:
//   - CallMachine: the call state machine, sans I/O. It mirrors
//     softphone/callstate.py: the same states, events, outcomes and timeouts,
//     and TRANSITIONS below is the same table as TRANSITIONS there
//     (tests/test_browser.py checks that the two tables agree).
//   - Line: which call a hub message belongs to; a second caller gets busy
//     (mirrors softphone/line.py).
//   - Phone: the adapter: WebSocket to the hub (reconnects with backoff),
//     RTCPeerConnection, microphone, WebAudio, and the page.
//
// For tests and scripts the page exposes window.phone (snapshot(),
// receivedAudio(), inboundAudio(), ...) and mirrors its state in data-*
// attributes of <main id="phone">.
"use strict";

const State = Object.freeze({
  DIALING: "dialing", // caller: call-request sent, waiting for accept/reject
  RINGING: "ringing", // callee: call-request received, waiting for the user
  CONNECTING: "connecting", // accepted: offer/answer and ICE under way
  CONNECTED: "connected", // media flows
  ENDED: "ended",
});

const Outcome = Object.freeze({
  COMPLETED: "completed",
  REJECTED: "rejected",
  BUSY: "busy",
  NO_ANSWER: "no-answer",
  OFFLINE: "offline",
  HUB_UNREACHABLE: "hub-unreachable",
  MEDIA_FAILED: "media-failed",
  MISSED: "missed",
  CANCELLED: "cancelled",
});

// (role, state, event) -> next state. Mirrors TRANSITIONS in
// softphone/callstate.py, entry for entry. Anything not listed is not allowed:
// a local event throws, a remote or media event is ignored.
const TRANSITIONS = [
  // caller, waiting for the callee
  ["caller", "dialing", "RemoteAccept", "connecting"],
  ["caller", "dialing", "RemoteReject", "ended"], // rejected or busy
  ["caller", "dialing", "RemoteHangup", "ended"],
  ["caller", "dialing", "PeerOffline", "ended"],
  ["caller", "dialing", "LocalHangup", "ended"], // cancelled; prompt withdrawn
  ["caller", "dialing", "HubLost", "ended"],
  ["caller", "dialing", "RingTimeout", "ended"], // no answer; prompt withdrawn
  // callee, prompt shown
  ["callee", "ringing", "LocalAccept", "connecting"],
  ["callee", "ringing", "LocalReject", "ended"],
  ["callee", "ringing", "LocalHangup", "ended"], // same as reject
  ["callee", "ringing", "RemoteHangup", "ended"], // missed: the caller gave up
  ["callee", "ringing", "HubLost", "ended"],
  // both, media being set up
  ["caller", "connecting", "LocalDescription", "connecting"], // our offer
  ["caller", "connecting", "RemoteAnswer", "connecting"],
  ["callee", "connecting", "RemoteOffer", "connecting"],
  ["callee", "connecting", "LocalDescription", "connecting"], // our answer
  ["caller", "connecting", "RemoteCandidate", "connecting"],
  ["callee", "connecting", "RemoteCandidate", "connecting"],
  ["caller", "connecting", "OfferDue", "connecting"],
  ["caller", "connecting", "SetupTimeout", "ended"],
  ["callee", "connecting", "SetupTimeout", "ended"],
  ["caller", "connecting", "MediaConnected", "connected"],
  ["callee", "connecting", "MediaConnected", "connected"],
  ["caller", "connecting", "MediaFailed", "ended"],
  ["callee", "connecting", "MediaFailed", "ended"],
  ["caller", "connecting", "RemoteHangup", "ended"],
  ["callee", "connecting", "RemoteHangup", "ended"],
  ["caller", "connecting", "LocalHangup", "ended"],
  ["callee", "connecting", "LocalHangup", "ended"],
  ["caller", "connecting", "PeerOffline", "ended"],
  ["callee", "connecting", "PeerOffline", "ended"],
  ["caller", "connecting", "HubLost", "ended"],
  ["callee", "connecting", "HubLost", "ended"],
  // both, in the call
  ["caller", "connected", "RemoteCandidate", "connected"], // late trickle
  ["callee", "connected", "RemoteCandidate", "connected"],
  ["caller", "connected", "HubLost", "connected"], // media is peer to peer: keep talking
  ["callee", "connected", "HubLost", "connected"],
  ["caller", "connected", "RemoteHangup", "ended"],
  ["callee", "connected", "RemoteHangup", "ended"],
  ["caller", "connected", "LocalHangup", "ended"],
  ["callee", "connected", "LocalHangup", "ended"],
  ["caller", "connected", "MediaFailed", "ended"],
  ["callee", "connected", "MediaFailed", "ended"],
];

const TABLE = new Map(TRANSITIONS.map(([role, state, event, next]) =>
  [`${role} ${state} ${event}`, next]));
const LOCAL_EVENTS = new Set(["LocalAccept", "LocalReject", "LocalHangup", "LocalDescription"]);

// Same defaults as CallTimeouts in softphone/callstate.py (seconds).
const DEFAULT_TIMEOUTS = Object.freeze({ring: 30.0, setup: 15.0, offerDelay: 0.3});

const REASON_NO_ANSWER = "no-answer";
const REASON_MEDIA_FAILED = "media-failed";
const REASON_BUSY = "busy";
const REASON_GLARE = "glare";

const ID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;

function causeOf(eventType) {
  if (eventType.startsWith("Local")) return "local";
  if (eventType.startsWith("Remote")) return "remote";
  if (eventType.endsWith("Timeout") || eventType.endsWith("Due")) return "timeout";
  return "network";
}

class CallStateError extends Error {}

// The state of one call, as seen from one side. Events are plain objects
// {type: "RemoteAccept", ...}; handle() returns actions for the adapter:
// {kind: "send" | "startMedia" | "applyOffer" | "applyAnswer" |
//  "addCandidate" | "stopMedia" | "state" | "ended", ...}.
class CallMachine {
  constructor(role, peer, now, timeouts = DEFAULT_TIMEOUTS) {
    this.role = role;
    this.peer = peer;
    this.timeouts = timeouts;
    this.state = role === "caller" ? State.DIALING : State.RINGING;
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

  get isEnded() { return this.state === State.ENDED; }

  start() {
    return this.role === "caller" ? [send("call-request", this.peer)] : [];
  }

  deadline() {
    return this.deadlines.size ? Math.min(...this.deadlines.values()) : null;
  }

  handleTimer(now) {
    let actions = [];
    const due = [...this.deadlines.entries()].sort((x, y) => x[1] - y[1]);
    for (const [kind, when] of due) {
      if (when <= now && this.deadlines.has(kind) && this.state !== State.ENDED) {
        this.deadlines.delete(kind);
        actions = actions.concat(this.handle({type: kind}, now));
      }
    }
    return actions;
  }

  handle(event, now) {
    const next = TABLE.get(`${this.role} ${this.state} ${event.type}`);
    if (next === undefined) {
      if (LOCAL_EVENTS.has(event.type)) {
        throw new CallStateError(`${event.type} is not allowed when the ${this.role} is ${this.state}`);
      }
      return [];
    }
    this.cause = causeOf(event.type);
    const actions = this["on" + event.type](event, now);
    if (this.state !== next) throw new Error(`table says ${next}, handler went to ${this.state}`);
    return actions;
  }

  goto(state, now) {
    const old = this.state;
    if (old === state) return [];
    this.state = state;
    this.history.push([state, now]);
    if (state === State.CONNECTING) {
      this.deadlines.delete("RingTimeout");
      this.deadlines.set("SetupTimeout", now + this.timeouts.setup);
    } else if (state === State.CONNECTED) {
      this.connectedAt = now;
      this.deadlines.clear();
    }
    return [{kind: "state", old, state, at: now}];
  }

  end(outcome, reason, now, message = null) {
    const media = this.state === State.CONNECTING || this.state === State.CONNECTED;
    const actions = [];
    if (message) actions.push(message);
    if (media) actions.push({kind: "stopMedia"});
    actions.push(...this.goto(State.ENDED, now));
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
    const actions = this.goto(State.CONNECTING, now);
    if (!event.mediaReady && this.timeouts.offerDelay > 0) {
      this.deadlines.set("OfferDue", now + this.timeouts.offerDelay);
    }
    return [...actions, {kind: "startMedia", offerer: true}];
  }

  onRemoteReject(event, now) {
    const busy = event.reason === REASON_BUSY || event.reason === REASON_GLARE;
    return this.end(busy ? Outcome.BUSY : Outcome.REJECTED, event.reason ?? null, now);
  }

  onRemoteHangup(event, now) {
    const reason = event.reason ?? null;
    if (this.state === State.DIALING) return this.end(Outcome.REJECTED, reason, now);
    if (this.state === State.RINGING) return this.end(Outcome.MISSED, reason, now);
    if (this.state === State.CONNECTED) {
      return this.end(Outcome.COMPLETED, reason || "remote-hangup", now);
    }
    if (reason === REASON_MEDIA_FAILED) return this.end(Outcome.MEDIA_FAILED, reason, now);
    return this.end(Outcome.CANCELLED, reason || "remote-hangup", now);
  }

  onPeerOffline(event, now) { return this.end(Outcome.OFFLINE, null, now); }

  onHubLost(event, now) {
    if (this.state === State.CONNECTED) return [];
    return this.end(Outcome.HUB_UNREACHABLE, "hub-lost", now);
  }

  onLocalAccept(event, now) {
    return [send("call-accept", this.peer, {media: "ready"}),
      ...this.goto(State.CONNECTING, now), {kind: "startMedia", offerer: false}];
  }

  onLocalReject(event, now) {
    const reason = event.reason || "declined";
    return this.end(Outcome.REJECTED, reason, now, send("call-reject", this.peer, {reason}));
  }

  onLocalHangup(event, now) {
    const reason = event.reason || "hangup";
    if (this.state === State.RINGING) return this.onLocalReject({reason}, now);
    const outcome = this.state === State.CONNECTED ? Outcome.COMPLETED : Outcome.CANCELLED;
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

  onMediaConnected(event, now) { return this.goto(State.CONNECTED, now); }

  onMediaFailed(event, now) {
    return this.end(Outcome.MEDIA_FAILED, event.reason || "ice-failed", now,
      this.hangupMessage(REASON_MEDIA_FAILED));
  }

  onRingTimeout(event, now) {
    return this.end(Outcome.NO_ANSWER, REASON_NO_ANSWER, now, this.hangupMessage(REASON_NO_ANSWER));
  }

  onOfferDue(event, now) {
    const sdp = this.pendingOffer;
    this.pendingOffer = null;
    if (sdp === null) return []; // not made yet: it is sent as soon as it is
    return [send("offer", this.peer, {type: "offer", sdp})];
  }

  onSetupTimeout(event, now) {
    return this.end(Outcome.MEDIA_FAILED, "setup-timeout", now,
      this.hangupMessage(REASON_MEDIA_FAILED));
  }
}

function send(type, to, data) {
  const message = {type, to};
  if (data !== undefined) message.data = data;
  return {kind: "send", message};
}

function reasonOf(data) {
  return data && typeof data === "object" && typeof data.reason === "string" ? data.reason : null;
}

// Hub message -> call event (as _event_of in softphone/line.py), or null.
function eventOf(message) {
  const data = message.data;
  switch (message.type) {
    case "call-accept":
      return {type: "RemoteAccept", mediaReady: !!data && typeof data === "object" && data.media === "ready"};
    case "call-reject": return {type: "RemoteReject", reason: reasonOf(data)};
    case "hangup": return {type: "RemoteHangup", reason: reasonOf(data)};
    case "offer":
    case "answer":
      if (!data || typeof data.sdp !== "string") return null;
      return {type: message.type === "offer" ? "RemoteOffer" : "RemoteAnswer", sdp: data.sdp};
    case "candidate":
      return {type: "RemoteCandidate", candidate: data && typeof data === "object" ? data : {candidate: ""}};
    default: return null;
  }
}

// One phone line: routes hub messages to the one current call (softphone/line.py).
class Line {
  constructor(myId, timeouts = DEFAULT_TIMEOUTS) {
    this.myId = myId;
    this.timeouts = timeouts;
    this.call = null;
  }

  get active() { return this.call !== null && !this.call.isEnded; }

  dial(peer, now) {
    if (this.active) throw new CallStateError(`already in a call with ${this.call.peer}`);
    this.call = new CallMachine("caller", peer, now, this.timeouts);
    return this.call.start();
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
      if (this.active && call.peer === from && call.state === State.DIALING && this.myId > from) {
        // Glare: we called each other at once. The smaller id's call wins.
        const ended = call.handle({type: "RemoteReject", reason: REASON_GLARE}, now);
        this.call = new CallMachine("callee", from, now, this.timeouts);
        return [...ended, {kind: "incoming", call: this.call}];
      }
      if (this.active && call.peer !== from) {
        return [send("call-reject", from, {reason: REASON_BUSY}), {kind: "busy", peer: from}];
      }
      if (this.active) return []; // a repeated request from our peer
      this.call = new CallMachine("callee", from, now, this.timeouts);
      return [{kind: "incoming", call: this.call}];
    }
    if (!this.active || from !== call.peer) return []; // not our peer: ignored, as the original pages do
    const event = eventOf(message);
    return event ? call.handle(event, now) : [];
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

// ------------------------------------------------------------- the adapter --

const OUTCOME_TEXT = {
  "completed": "call with {peer} completed",
  "rejected": "{peer} rejected the call",
  "busy": "{peer} is busy (in another call)",
  "no-answer": "no answer from {peer}",
  "offline": "{peer} is offline (not connected to the hub)",
  "hub-unreachable": "lost the hub before the call was set up",
  "media-failed": "media failed: could not connect audio with {peer}",
  "missed": "missed call from {peer} (the caller hung up)",
  "cancelled": "call cancelled before audio connected",
};
// Outcomes that are shown as errors, not just as news.
const ERROR_OUTCOMES = new Set(["rejected", "busy", "no-answer", "offline", "hub-unreachable",
  "media-failed"]);

function outcomeText(peer, outcome, reason, by) {
  if (outcome === "rejected" && by === "local") {
    return `you rejected the call from ${peer}` + (reason && reason !== "declined" ? ` (${reason})` : "");
  }
  let text = OUTCOME_TEXT[outcome].replace("{peer}", peer);
  if (reason && (outcome === "media-failed" || outcome === "rejected")) text += ` (${reason})`;
  return text;
}

function nowSeconds() { return performance.now() / 1000; }

function hubUrl(path) {
  const url = new URL(path, window.location.href);
  return url;
}

function wsUrl(id) {
  const url = hubUrl("ws");
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = "?id=" + encodeURIComponent(id);
  const token = new URLSearchParams(window.location.search).get("token");
  if (token) url.search += "&token=" + encodeURIComponent(token); // a hub run with --secret
  return url.toString();
}

function fixedIdOfPage() {
  const m = /\/caller([AB])\.html$/.exec(window.location.pathname);
  if (!m) return null;
  return m[1] === "A" ? {id: "a", peer: "b"} : {id: "b", peer: "a"};
}

class Phone {
  constructor(ui) {
    this.ui = ui;
    this.id = null;
    this.ws = null;
    this.hub = "offline"; // offline | connecting | connected | reconnecting | refused
    this.line = null;
    this.wanted = false; // the user wants to be connected
    this.backoff = 0.5;
    this.reconnectTimer = null;
    this.reconnectAt = null;
    this.timer = null;
    this.errors = [];
    this.log = [];
    this.results = [];
    this.media = null; // per call: {pc, mic, remote, ...}
    this.micPromise = null;
    this.micStream = null;
    this.iceServersPromise = null;
    this.muted = false;
    this.autoAccept = false;
    this.audioContext = null;
    this.analyser = null;
    this.connectCount = 0;
    this.busyRejected = [];
  }

  // -- errors and log ----------------------------------------------------------

  error(code, message) {
    const entry = {code, message, at: Date.now()};
    this.errors.push(entry);
    console.warn(`softphone error ${code}: ${message}`);
    this.note(`error: ${message}`);
    this.ui.showError(entry);
    this.render();
  }

  note(text) {
    this.log.push({at: Date.now(), text});
    this.ui.addLog(text);
  }

  // -- the hub ---------------------------------------------------------------

  connect(id) {
    if (!ID_PATTERN.test(id)) {
      this.error("bad-id", `"${id}" is not a valid id: use 1 to 64 characters of A-Z a-z 0-9 . _ -`);
      return;
    }
    if (this.id !== id) {
      if (this.line && this.line.active) {
        this.error("busy", "hang up before changing your id");
        return;
      }
      this.line = new Line(id);
    }
    this.id = id;
    this.wanted = true;
    this.backoff = 0.5;
    this.openSocket();
  }

  disconnect() {
    this.wanted = false;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    if (this.ws) this.ws.close(1000, "bye");
    this.hub = "offline";
    this.render();
  }

  openSocket() {
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.reconnectAt = null;
    if (this.ws) {
      const old = this.ws;
      this.ws = null;
      old.onclose = old.onmessage = old.onerror = null;
      old.close(1000, "reconnecting");
    }
    this.hub = this.connectCount ? "reconnecting" : "connecting";
    this.render();
    let ws;
    try {
      ws = new WebSocket(wsUrl(this.id));
    } catch (err) {
      this.error("hub-unreachable", `cannot open a WebSocket to the hub: ${err.message}`);
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.connectCount += 1;
      this.backoff = 0.5;
      this.hub = "connected";
      this.note(`connected to the hub as ${this.id}`);
      this.render();
    };
    ws.onmessage = (ev) => this.onFrame(ev.data);
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.onHubClosed(ev, opened);
    };
  }

  onHubClosed(ev, opened) {
    this.run(this.line.handleLocal({type: "HubLost"}, nowSeconds()));
    if (!this.wanted) {
      this.hub = "offline";
      this.render();
      return;
    }
    if (ev.code === 1008) { // policy violation: a refused id, or replaced by a newer tab
      this.hub = "refused";
      this.wanted = false;
      this.error("hub-refused", `the hub closed the connection: ${ev.reason || "refused"}`);
      return;
    }
    const what = opened ? "lost the hub connection" : "cannot reach the hub";
    const delay = this.scheduleReconnect();
    this.error("hub-unreachable", `${what}; retrying in ${delay.toFixed(1)} s`);
  }

  scheduleReconnect() {
    const delay = this.backoff * (0.5 + Math.random());
    this.backoff = Math.min(this.backoff * 2, 10);
    this.hub = "reconnecting";
    this.reconnectAt = Date.now() + delay * 1000;
    this.reconnectTimer = setTimeout(() => this.openSocket(), delay * 1000);
    this.render();
    return delay;
  }

  onFrame(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch (err) {
      this.note(`ignoring a frame that is not JSON`);
      return;
    }
    if (!message || typeof message !== "object" || typeof message.type !== "string") return;
    this.run(this.line.receive(message, nowSeconds()));
  }

  sendMessage(message) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      this.note(`cannot send ${message.type}: not connected to the hub`);
      queueMicrotask(() => this.run(this.line.handleLocal({type: "HubLost"}, nowSeconds())));
      return false;
    }
    ws.send(JSON.stringify(message));
    return true;
  }

  // -- the user's actions --------------------------------------------------------

  async dial(peer) {
    this.unlockAudio();
    if (!this.line || this.hub !== "connected") {
      this.error("not-connected", "connect to the hub before calling");
      return;
    }
    if (!ID_PATTERN.test(peer)) {
      this.error("bad-id", `"${peer}" is not a valid id`);
      return;
    }
    if (peer === this.id) {
      this.error("bad-id", "you cannot call yourself");
      return;
    }
    if (this.line.active) {
      this.error("busy", `already in a call with ${this.line.call.peer}`);
      return;
    }
    // The microphone first: no point in ringing someone we cannot talk to.
    this.prefetchIceServers();
    try {
      await this.getMicrophone();
    } catch (err) {
      return; // getMicrophone showed the error
    }
    if (this.line.active) return;
    this.muted = false;
    this.run(this.line.dial(peer, nowSeconds()));
    this.newMedia(this.line.call);
    this.note(`calling ${peer}`);
  }

  async accept() {
    this.unlockAudio();
    const call = this.line && this.line.call;
    if (!call || call.state !== State.RINGING) return;
    // Get the microphone BEFORE accepting: our call-accept says {"media": "ready"}
    // and the caller offers at once; the original callee page did it after and
    // answered early offers receive-only (one-way audio).
    try {
      await this.getMicrophone();
    } catch (err) {
      if (this.line.call === call && call.state === State.RINGING) {
        this.feed(call, {type: "LocalReject", reason: "no-microphone"});
      }
      return;
    }
    if (this.line.call !== call || call.state !== State.RINGING) return;
    this.muted = false;
    this.newMedia(call);
    this.feed(call, {type: "LocalAccept"});
  }

  reject() {
    const call = this.line && this.line.call;
    if (call && call.state === State.RINGING) this.feed(call, {type: "LocalReject", reason: "declined"});
  }

  hangup() {
    const call = this.line && this.line.call;
    if (call && !call.isEnded) this.feed(call, {type: "LocalHangup", reason: "hangup"});
  }

  setMuted(muted) {
    this.muted = !!muted;
    if (this.micStream) for (const t of this.micStream.getAudioTracks()) t.enabled = !this.muted;
    this.note(this.muted ? "muted" : "unmuted");
    this.render();
  }

  // -- running the core ---------------------------------------------------------

  feed(call, event) {
    if (!this.line || this.line.call !== call) return;
    try {
      this.run(this.line.handleLocal(event, nowSeconds()));
    } catch (err) {
      this.error("internal", err.message);
    }
  }

  run(actions) {
    for (const action of actions) {
      const call = this.line.call;
      switch (action.kind) {
        case "send":
          this.sendMessage(action.message);
          if (action.message.type === "offer" || action.message.type === "answer") {
            this.localDescriptionSent(call);
          }
          break;
        case "incoming": this.onIncoming(action.call); break;
        case "busy":
          this.busyRejected.push(action.peer);
          this.note(`${action.peer} called while we were busy: told them busy`);
          break;
        case "hubError": this.onHubError(action.error); break;
        case "startMedia": this.mediaOp(call, () => this.startMedia(call, action.offerer)); break;
        case "applyOffer": this.mediaOp(call, () => this.applyOffer(call, action.sdp)); break;
        case "applyAnswer": this.mediaOp(call, () => this.applyAnswer(call, action.sdp)); break;
        case "addCandidate": this.mediaOp(call, () => this.addCandidate(call, action.candidate)); break;
        case "stopMedia": break; // done once the call has ended
        case "state":
          this.note(`call ${action.old} -> ${action.state}`);
          break;
        case "ended": this.onEnded(call, action); break;
        default: break;
      }
    }
    this.armTimer();
    this.render();
  }

  armTimer() {
    clearTimeout(this.timer);
    const deadline = this.line ? this.line.deadline() : null;
    if (deadline === null) return;
    const wait = Math.max(0, deadline - nowSeconds());
    this.timer = setTimeout(() => this.run(this.line.handleTimer(nowSeconds())), wait * 1000 + 1);
  }

  onIncoming(call) {
    this.note(`incoming call from ${call.peer}`);
    this.prefetchIceServers();
    this.getMicrophone().catch(() => {}); // early, so accepting is quick; errors shown
    if (this.autoAccept) queueMicrotask(() => this.accept());
  }

  onHubError(error) {
    const code = error.code || "error";
    this.error(code, error.message || code);
  }

  onEnded(call, action) {
    const result = {
      peer: call.peer, role: call.role, outcome: action.outcome, reason: action.reason,
      endedBy: action.by,
      setupSeconds: call.connectedAt === null ? null : call.connectedAt - call.startedAt,
      talkSeconds: call.connectedAt === null ? 0 : action.at - call.connectedAt,
    };
    this.results.push(result);
    const text = outcomeText(call.peer, action.outcome, action.reason, action.by);
    if (ERROR_OUTCOMES.has(action.outcome) && action.by !== "local") this.error(action.outcome, text);
    else this.note(text);
    this.stopMedia(call);
  }

  // -- media -----------------------------------------------------------------------

  prefetchIceServers() {
    if (this.iceServersPromise) return this.iceServersPromise;
    this.iceServersPromise = fetch(hubUrl("ice-servers"), {cache: "no-store"})
      .then((resp) => {
        if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
        return resp.json();
      })
      .then((body) => {
        if (!body || !Array.isArray(body.iceServers)) throw new Error("not {\"iceServers\": [...]}");
        return body.iceServers;
      })
      .catch((err) => {
        this.iceServersPromise = null;
        this.error("ice-servers", `cannot get ICE servers from the hub (${err.message}); using none`);
        return [];
      });
    return this.iceServersPromise;
  }

  getMicrophone() {
    if (this.micStream && this.micStream.getAudioTracks().some((t) => t.readyState === "live")) {
      return Promise.resolve(this.micStream);
    }
    if (this.micPromise) return this.micPromise;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      const msg = window.isSecureContext
        ? "this browser cannot use a microphone (no getUserMedia)"
        : "the microphone needs a secure page: open it over https (softphone serve --self-signed) or on localhost";
      this.error("microphone-unavailable", msg);
      return Promise.reject(new Error(msg));
    }
    this.micPromise = navigator.mediaDevices.getUserMedia({audio: true, video: false})
      .then((stream) => {
        this.micStream = stream;
        this.micPromise = null;
        for (const t of stream.getAudioTracks()) t.enabled = !this.muted;
        return stream;
      }, (err) => {
        this.micPromise = null;
        const name = err && err.name;
        if (name === "NotAllowedError" || name === "SecurityError") {
          this.error("microphone-denied", "microphone access was denied: allow it in the browser to make calls");
        } else if (name === "NotFoundError" || name === "OverconstrainedError") {
          this.error("microphone-missing", "no microphone found");
        } else {
          this.error("microphone-error", `cannot open the microphone: ${name || ""} ${err && err.message}`);
        }
        throw err;
      });
    return this.micPromise;
  }

  releaseMicrophone() {
    if (this.micStream) for (const t of this.micStream.getTracks()) t.stop();
    this.micStream = null;
  }

  newMedia(call) {
    this.media = {call, pc: null, chain: Promise.resolve(), localSent: false, localQueue: [],
      remote: null, closed: false};
  }

  mediaOp(call, op) {
    const media = this.media;
    if (!media || media.call !== call) return;
    media.chain = media.chain.then(() => (media.closed ? undefined : op())).catch((err) => {
      if (media.closed) return;
      this.note(`media operation failed: ${err.message}`);
      this.feed(call, {type: "MediaFailed", reason: `media-error: ${err.message}`.slice(0, 120)});
    });
  }

  async startMedia(call, offerer) {
    const media = this.media;
    const [iceServers, mic] = await Promise.all([this.prefetchIceServers(), this.getMicrophone()]);
    this.iceServersPromise = null; // fetch again for the next call (TURN credentials expire)
    if (media.closed) return;
    const pc = new RTCPeerConnection({iceServers});
    media.pc = pc;
    for (const track of mic.getAudioTracks()) pc.addTrack(track, mic);
    pc.onicecandidate = (ev) => {
      if (!ev.candidate || media.closed) return; // end of candidates: not sent (the original pages choke on it)
      this.sendCandidate(media, ev.candidate.toJSON());
    };
    pc.ontrack = (ev) => this.onRemoteTrack(media, ev);
    pc.onconnectionstatechange = () => {
      const s = pc.connectionState;
      this.note(`media ${s}`);
      if (s === "connected") this.feed(call, {type: "MediaConnected"});
      else if (s === "failed") this.feed(call, {type: "MediaFailed", reason: "ice-failed"});
      this.render();
    };
    if (offerer) {
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      this.feed(call, {type: "LocalDescription", sdp: pc.localDescription.sdp});
    }
  }

  // Our candidates go after our offer/answer: a peer that drops candidates
  // that arrive before its remote description (the original pages) misses none.
  sendCandidate(media, candidate) {
    if (!media.localSent) {
      media.localQueue.push(candidate);
      return;
    }
    this.sendMessage({type: "candidate", to: media.call.peer, data: candidate});
  }

  localDescriptionSent(call) {
    const media = this.media;
    if (!media || media.call !== call || media.localSent) return;
    media.localSent = true;
    const queued = media.localQueue;
    media.localQueue = [];
    for (const c of queued) this.sendMessage({type: "candidate", to: call.peer, data: c});
  }

  async applyOffer(call, sdp) {
    const pc = this.media.pc;
    await pc.setRemoteDescription({type: "offer", sdp});
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    this.feed(call, {type: "LocalDescription", sdp: pc.localDescription.sdp});
  }

  async applyAnswer(call, sdp) {
    await this.media.pc.setRemoteDescription({type: "answer", sdp});
  }

  async addCandidate(call, candidate) {
    const pc = this.media.pc;
    if (!candidate || !candidate.candidate) {
      await pc.addIceCandidate(null).catch(() => {});
      return;
    }
    const init = {candidate: candidate.candidate, sdpMid: candidate.sdpMid ?? null,
      sdpMLineIndex: candidate.sdpMLineIndex ?? null};
    if (init.sdpMid === null && init.sdpMLineIndex === null) init.sdpMLineIndex = 0;
    try {
      await pc.addIceCandidate(init);
    } catch (err) { // a bad candidate from the peer must not end the call
      this.note(`ignoring remote candidate: ${err.message}`);
    }
  }

  onRemoteTrack(media, ev) {
    const stream = ev.streams && ev.streams[0] ? ev.streams[0] : new MediaStream([ev.track]);
    media.remote = stream;
    this.ui.audio.srcObject = stream; // Chrome feeds WebAudio only from a played remote stream
    this.ui.audio.play().catch((err) => this.note(`audio playback blocked: ${err.message}`));
    try {
      const ctx = this.unlockAudio();
      const source = ctx.createMediaStreamSource(stream);
      const analyser = ctx.createAnalyser();
      analyser.fftSize = 32768;
      analyser.smoothingTimeConstant = 0;
      source.connect(analyser);
      this.analyser = analyser;
      media.source = source;
    } catch (err) {
      this.note(`no audio analyser: ${err.message}`);
    }
  }

  unlockAudio() {
    if (!this.audioContext) {
      const Ctx = window.AudioContext || window.webkitAudioContext;
      if (!Ctx) return null;
      this.audioContext = new Ctx();
    }
    if (this.audioContext.state === "suspended") this.audioContext.resume().catch(() => {});
    return this.audioContext;
  }

  stopMedia(call) {
    const media = this.media;
    if (!media || media.call !== call) {
      this.releaseMicrophone();
      return;
    }
    media.closed = true;
    if (media.pc) {
      media.lastStatsPc = media.pc;
      media.pc.close();
    }
    if (media.source) media.source.disconnect();
    this.analyser = null;
    this.ui.audio.srcObject = null;
    this.releaseMicrophone();
    this.muted = false;
  }

  // -- for tests and scripts -----------------------------------------------------------

  // What the page received: the last `analyser.fftSize` samples (-1..1) and the rate.
  receivedAudio() {
    if (!this.analyser) return null;
    const buf = new Float32Array(this.analyser.fftSize);
    this.analyser.getFloatTimeDomainData(buf);
    return {rate: this.audioContext.sampleRate, samples: Array.from(buf)};
  }

  // getStats() of the inbound audio: energy, level, packets.
  async inboundAudio() {
    const pc = this.media && this.media.pc;
    if (!pc) return null;
    const stats = await pc.getStats();
    for (const report of stats.values()) {
      if (report.type === "inbound-rtp" && report.kind === "audio") {
        return {totalAudioEnergy: report.totalAudioEnergy || 0, audioLevel: report.audioLevel || 0,
          totalSamplesDuration: report.totalSamplesDuration || 0,
          packetsReceived: report.packetsReceived || 0, bytesReceived: report.bytesReceived || 0};
      }
    }
    return null;
  }

  snapshot() {
    const call = this.line && this.line.call;
    return {
      id: this.id,
      hub: this.hub,
      muted: this.muted,
      call: call ? {
        role: call.role, peer: call.peer, state: call.state, outcome: call.outcome,
        reason: call.reason, endedBy: call.endedBy,
        history: call.history.map(([s, t]) => [s, t - call.startedAt]),
        setupSeconds: call.connectedAt === null ? null : call.connectedAt - call.startedAt,
      } : null,
      results: this.results.slice(),
      errors: this.errors.slice(),
      busyRejected: this.busyRejected.slice(),
      connects: this.connectCount,
    };
  }

  render() { this.ui.render(this); }
}

// ----------------------------------------------------------------- the page --

class PageUI {
  constructor(doc) {
    const $ = (id) => doc.getElementById(id);
    this.root = $("phone");
    this.el = {
      myId: $("my-id"), connect: $("connect"), hubStatus: $("hub-status"),
      peerId: $("peer-id"), call: $("call"), incoming: $("incoming"), caller: $("caller"),
      accept: $("accept"), reject: $("reject"), inCall: $("in-call"), callState: $("call-state"),
      callPeer: $("call-peer"), callTime: $("call-time"), hangup: $("hangup"), mute: $("mute"),
      errors: $("errors"), log: $("log"), level: $("level"), outcome: $("outcome"),
      clearErrors: $("clear-errors"),
    };
    this.audio = $("remote-audio");
  }

  showError(entry) {
    const time = new Date(entry.at).toLocaleTimeString();
    const top = this.el.errors.firstElementChild;
    if (top && top.dataset.code === entry.code && entry.code === "hub-unreachable") {
      // The same error again (reconnect attempts): one line, counted.
      const count = Number(top.dataset.count || "1") + 1;
      top.dataset.count = String(count);
      top.textContent = `${time} ${entry.message} (${count} times)`;
      return;
    }
    const li = document.createElement("li");
    li.dataset.code = entry.code;
    li.textContent = `${time} ${entry.message}`;
    this.el.errors.prepend(li);
    while (this.el.errors.children.length > 20) this.el.errors.lastChild.remove();
  }

  addLog(text) {
    const li = document.createElement("li");
    li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
    this.el.log.prepend(li);
    while (this.el.log.children.length > 200) this.el.log.lastChild.remove();
  }

  render(phone) {
    const el = this.el;
    const call = phone.line && phone.line.call;
    const state = call ? call.state : "idle";
    const active = call && !call.isEnded;
    const hubText = {
      offline: "not connected", connecting: "connecting…", connected: `connected as ${phone.id}`,
      reconnecting: "hub unreachable: reconnecting…", refused: "refused by the hub",
    }[phone.hub];
    this.root.dataset.hub = phone.hub;
    this.root.dataset.callState = state;
    this.root.dataset.outcome = call && call.outcome ? call.outcome : "";
    this.root.dataset.muted = phone.muted ? "true" : "false";
    el.hubStatus.textContent = hubText;
    el.hubStatus.dataset.status = phone.hub;
    el.connect.textContent = phone.wanted ? "Disconnect" : "Connect";
    el.call.disabled = phone.hub !== "connected" || !!active;
    el.incoming.hidden = !(call && call.state === State.RINGING);
    el.caller.textContent = call ? call.peer : "";
    el.inCall.hidden = !active || state === State.RINGING;
    el.callState.textContent = state;
    el.callState.dataset.state = state;
    el.callPeer.textContent = call ? call.peer : "";
    el.mute.setAttribute("aria-pressed", phone.muted ? "true" : "false");
    el.mute.textContent = phone.muted ? "Unmute" : "Mute";
    el.outcome.textContent = call && call.isEnded
      ? outcomeText(call.peer, call.outcome, call.reason, call.endedBy) : "";
  }

  tick(phone) {
    const call = phone.line && phone.line.call;
    if (call && call.state === State.CONNECTED) {
      const s = Math.floor(nowSeconds() - call.connectedAt);
      this.el.callTime.textContent = `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
    } else {
      this.el.callTime.textContent = "";
    }
    if (phone.analyser) {
      const buf = new Float32Array(2048);
      phone.analyser.getFloatTimeDomainData(buf);
      let sum = 0;
      for (const x of buf) sum += x * x;
      this.el.level.value = Math.min(1, Math.sqrt(sum / buf.length) * 4);
    } else {
      this.el.level.value = 0;
    }
  }
}

function main() {
  const ui = new PageUI(document);
  const phone = new Phone(ui);
  window.phone = phone;
  const params = new URLSearchParams(window.location.search);
  const fixed = fixedIdOfPage();
  phone.autoAccept = params.get("autoaccept") === "1";
  const el = ui.el;
  if (fixed) {
    el.myId.value = fixed.id;
    el.myId.readOnly = true;
    el.peerId.value = fixed.peer;
  } else {
    el.myId.value = params.get("id") || localStorage.getItem("softphone-id") || "";
    el.peerId.value = params.get("call") || "";
  }
  el.connect.addEventListener("click", () => {
    if (phone.wanted) {
      phone.disconnect();
      return;
    }
    const id = el.myId.value.trim();
    if (!fixed && ID_PATTERN.test(id)) localStorage.setItem("softphone-id", id);
    phone.connect(id);
  });
  el.myId.addEventListener("keydown", (ev) => { if (ev.key === "Enter") el.connect.click(); });
  el.call.addEventListener("click", () => phone.dial(el.peerId.value.trim()));
  el.peerId.addEventListener("keydown", (ev) => { if (ev.key === "Enter") el.call.click(); });
  el.accept.addEventListener("click", () => phone.accept());
  el.reject.addEventListener("click", () => phone.reject());
  el.hangup.addEventListener("click", () => phone.hangup());
  el.mute.addEventListener("click", () => phone.setMuted(!phone.muted));
  el.clearErrors.addEventListener("click", () => { el.errors.textContent = ""; });
  phone.render();
  setInterval(() => ui.tick(phone), 200);
  if (fixed || params.get("id")) phone.connect(el.myId.value.trim());
}

if (typeof document !== "undefined") {
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", main);
  else main();
}
