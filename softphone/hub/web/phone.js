// The phone: the adapter that runs the sans-I/O line (line.js, callstate.js)
// against the hub (hubclient.js), the media (media.js) and the page (ui.js).
// The user's actions come in here; the line's actions are carried out here.
//
// Each call's media is a MediaSession (session.js): its connections, media
// restart and hold.
//
// For tests and scripts it is window.phone: snapshot(), receivedAudio(),
// inboundAudio(), errors, results, hub, line.call, session; and the page
// mirrors its state in data-* attributes of <main id="phone">.

import {CallStateError} from "./callstate.js";
import {FEATURES} from "./features.js";
import {HubClient, iceUrl} from "./hubclient.js";
import {Line} from "./line.js";
import {IceServers, Microphone, Speaker} from "./media.js";
import {restartSettings} from "./restart.js";
import {MediaSession} from "./session.js";
import {connectionClosed, sasOfConnection} from "./sas.js";
import {ERROR_OUTCOMES, outcomeText} from "./ui.js";

/** What the hub accepts as an id (softphone/core/protocol.py ID_PATTERN). */
export const ID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;

/** verify(): how many times getStats is asked for the certificates, how far apart (about 2 s). */
export const VERIFY_ATTEMPTS = 10;
export const VERIFY_RETRY_MS = 200;

export class Phone {
  constructor(ui, table, pageUrl) {
    this.ui = ui;
    this.table = table; // the hub's call table (callstate.js CallTable)
    this.id = null;
    this.line = null;
    this.timer = null;
    this.errors = [];
    this.log = [];
    this.results = [];
    this.busyRejected = [];
    // Answer every call without a click: for tests and scripts (window.phone) only,
    // never set from the page's URL (a link must not make the page answer a call).
    this.autoAccept = false;
    this.keysSent = ""; // the DTMF keys of the current or last call, as they were played
    this.session = null; // the current or last call's MediaSession
    this.restartSettings = restartSettings(); // restart.js DEFAULT_SETTINGS
    this.sas = null; // the current or last call's verification code, once media is connected
    this.sasSource = null;
    this.hubClient = new HubClient(pageUrl, {
      changed: () => this.hubChanged(),
      message: (message) => this.run(this.line.receive(message, this.now())),
      lost: () => this.run(this.line.handleLocal({type: "HubLost"}, this.now())),
      // refused for good (another tab took the id): the call ends, a connected one too
      refused: (reason) => this.run(this.line.handleLocal({type: "HubGone", reason}, this.now())),
      note: (text) => this.note(text),
      error: (code, text) => this.error(code, text),
    });
    const report = (code, text) => this.error(code, text);
    this.microphone = new Microphone(report);
    this.iceServers = new IceServers(() => iceUrl(pageUrl, this.hubClient.id), report);
    this.speaker = new Speaker(ui.audio, (text) => this.note(text));
  }

  now() { return performance.now() / 1000; }

  get hub() { return this.hubClient.status; }
  get wanted() { return this.hubClient.wanted; }
  get muted() { return this.microphone.muted; }
  get analyser() { return this.speaker.analyser; }
  /** The connection that carries the current or last call's media (a CallMedia). */
  get media() { return this.session ? this.session.currentMedia() : null; }

  hubChanged() {
    const up = this.hub === "connected";
    if (this.session && up !== this.hubUp) this.session.signaling(up);
    this.hubUp = up;
    this.render();
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

  // -- the user's actions --------------------------------------------------------

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
      this.line = new Line(id, this.table, undefined, FEATURES);
    }
    this.id = id;
    this.hubClient.connect(id);
  }

  disconnect() { this.hubClient.disconnect(); }

  async dial(peer) {
    this.speaker.unlock();
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
    this.iceServers.prefetch();
    try {
      await this.microphone.get();
    } catch (err) {
      return; // the microphone showed the error
    }
    if (this.line.active) return;
    this.microphone.setMuted(false);
    this.run(this.line.dial(peer, this.now()));
    this.keysSent = "";
    this.newMedia(this.line.call);
    this.note(`calling ${peer}`);
  }

  ringing(call) {
    return this.line && this.line.call === call && call.state === this.table.states.RINGING;
  }

  async accept() {
    this.speaker.unlock();
    const call = this.line && this.line.call;
    if (!call || !this.ringing(call)) return;
    // Get the microphone BEFORE accepting: our call-accept says {"media": "ready"}
    // and the caller offers at once; the original callee page did it after and
    // answered early offers receive-only (one-way audio).
    try {
      await this.microphone.get();
    } catch (err) {
      if (this.ringing(call)) this.feed(call, {type: "LocalReject", reason: "no-microphone"});
      return;
    }
    if (!this.ringing(call)) return;
    this.microphone.setMuted(false);
    this.keysSent = "";
    this.newMedia(call);
    this.feed(call, {type: "LocalAccept"});
  }

  reject() {
    const call = this.line && this.line.call;
    if (call && this.ringing(call)) this.feed(call, {type: "LocalReject", reason: "declined"});
  }

  hangup() {
    const call = this.line && this.line.call;
    if (call && !call.isEnded) this.feed(call, {type: "LocalHangup", reason: "hangup"});
  }

  /** The page is going away (closed, reloaded: pagehide): hang up, best effort, so the
   * peer is not left in a call nobody has (the hub keeps it for an id that comes back). */
  leave() {
    const call = this.line && this.line.call;
    if (call && !call.isEnded && this.hub === "connected") this.feed(call, {type: "LocalHangup", reason: "hangup"});
  }

  /** Press keys on the call (DTMF): "0"-"9", "*", "#", "A"-"D"; "," waits 2 s. */
  pressKeys(tones) {
    const call = this.line && this.line.call;
    if (!call || call.state !== this.table.states.CONNECTED || !this.media || this.media.call !== call) {
      this.error("not-in-call", "keys can be pressed only during a connected call");
      return false;
    }
    const ok = this.media.sendDtmf(tones, 100, 70, (tone) => {
      if (tone !== ",") this.keysSent += tone;
      this.note(`sent key ${tone}`);
      this.render();
    });
    if (!ok) this.error("dtmf-unavailable", `${call.peer} does not accept keys (DTMF)`);
    return ok;
  }

  /** Put the call on hold (true) or resume it (false); hold.js says what goes to the peer. */
  setHeld(held) {
    const call = this.line && this.line.call;
    if (!call || call.state !== this.table.states.CONNECTED || !this.session || this.session.call !== call) {
      this.error("not-in-call", "only a connected call can be put on hold");
      return false;
    }
    this.session.setHeld(held);
    return true;
  }

  get held() { return this.session ? this.session.hold.localHeld : false; }

  setMuted(muted) {
    this.microphone.setMuted(muted);
    this.note(this.muted ? "muted" : "unmuted");
    this.render();
  }

  // -- running the line ---------------------------------------------------------

  /** A local or media event for `call` (dropped if it is no longer the line's call). */
  feed(call, event) {
    if (!this.line || this.line.call !== call) return;
    try {
      this.run(this.line.handleLocal(event, this.now()));
    } catch (err) {
      if (err instanceof CallStateError) this.error("not-allowed", err.message);
      else this.error("internal", err.message);
    }
  }

  run(actions) {
    for (const action of actions) {
      const call = this.line.call;
      switch (action.kind) {
        case "send":
          this.send(action.message);
          if (action.message.type === "offer" || action.message.type === "answer") {
            if (this.session && this.session.call === call) this.session.first.localDescriptionSent();
          }
          break;
        case "incoming": this.incoming(action.call); break;
        case "busy":
          this.busyRejected.push(action.peer);
          this.note(`${action.peer} called while we were busy: told them busy`);
          break;
        case "stray": this.note(`${action.type} from ${action.peer}, with whom we have no call: hung up on it`); break;
        case "hubError": this.hubError(action.error); break;
        case "startMedia": this.mediaOp(call, (m) => m.start(action.offerer, this.iceServers, this.microphone)); break;
        case "applyOffer": this.mediaOp(call, (m) => m.applyOffer(action.sdp)); break;
        case "applyAnswer": this.mediaOp(call, (m) => m.applyAnswer(action.sdp)); break;
        case "addCandidate": this.mediaOp(call, (m) => m.addCandidate(action.candidate)); break;
        case "stopMedia": break; // done once the call has ended
        case "midCall": if (this.session && this.session.call === call) this.session.receive(action.message); break;
        case "state":
          this.note(`call ${action.old} -> ${action.state}`);
          if (action.state === this.table.states.CONNECTED) {
            this.verify(call);
            if (this.session && this.session.call === call) this.session.connected();
          }
          break;
        case "ended": this.ended(call, action); break;
        default: break;
      }
    }
    this.armTimer();
    this.render();
  }

  send(message) {
    if (this.hubClient.send(message)) return true;
    this.note(`cannot send ${message.type}: not connected to the hub`);
    queueMicrotask(() => this.run(this.line.handleLocal({type: "HubLost"}, this.now())));
    return false;
  }

  armTimer() {
    clearTimeout(this.timer);
    const deadline = this.line ? this.line.deadline() : null;
    if (deadline === null) return;
    const wait = Math.max(0, deadline - this.now());
    this.timer = setTimeout(() => this.run(this.line.handleTimer(this.now())), wait * 1000 + 1);
  }

  hubError(error) {
    const code = error.code || "error";
    const session = this.session;
    if (code === "offline" && session && !session.closed && this.line.call === session.call
        && ["offer", "answer", "candidate"].includes(error.ref)) {
      this.note(`${session.peer} is not on the hub (${error.ref} not delivered)`);
      if (session.restarting) session.peerUnreachable();
      return;
    }
    this.error(code, error.message || code);
  }

  incoming(call) {
    this.note(`incoming call from ${call.peer}`);
    this.iceServers.prefetch();
    this.microphone.get().catch(() => {}); // early, so accepting is quick; errors shown
    if (this.autoAccept) queueMicrotask(() => this.accept());
  }

  ended(call, action) {
    this.results.push({
      peer: call.peer, role: call.role, outcome: action.outcome, reason: action.reason,
      endedBy: action.by,
      setupSeconds: call.connectedAt === null ? null : call.connectedAt - call.startedAt,
      talkSeconds: call.connectedAt === null ? 0 : action.at - call.connectedAt,
    });
    const text = outcomeText(call.peer, action.outcome, action.reason, action.by);
    if (ERROR_OUTCOMES.has(action.outcome) && action.by !== "local") this.error(action.outcome, text);
    else this.note(text);
    if (this.session && this.session.call === call) {
      this.session.close();
      this.speaker.stop();
    }
    this.microphone.release();
  }

  // -- media -----------------------------------------------------------------------

  newMedia(call) {
    if (this.session) this.session.close();
    this.sas = this.sasSource = null;
    this.hubUp = this.hub === "connected";
    this.session = new MediaSession(call, {
      now: () => this.now(),
      send: (message) => this.send(message),
      note: (text) => this.note(text),
      changed: () => this.render(),
      feed: (event) => this.feed(call, event),
      play: (stream) => this.speaker.play(stream),
      mediaChanged: () => this.verify(call),
      giveUp: (reason) => this.feed(call, this.table.next(call.role, call.state, "MediaGiveUp")
        ? {type: "MediaGiveUp", reason} : {type: "MediaFailed", reason, lost: true}),
      hurry: (on) => this.hubClient.hurry(on),
      connected: () => call.state === this.table.states.CONNECTED,
      iceServers: this.iceServers, microphone: this.microphone, speaker: this.speaker,
    }, FEATURES, this.restartSettings);
  }

  /**
   * The verification code of `call`, from its two DTLS certificates (sas.js).
   * Dropped, silently, if the call's connection changed, closed or ended before
   * the code was derived: a code of a connection being torn down is nobody's,
   * and its missing certificates are no error.
   */
  async verify(call) {
    const media = this.media;
    if (!media || media.call !== call || !media.pc) return;
    const pc = media.pc;
    const gone = () => this.media !== media || media.closed || media.pc !== pc || connectionClosed(pc);
    let sas;
    try {
      sas = await sasOfConnection(pc, {attempts: VERIFY_ATTEMPTS, delayMs: VERIFY_RETRY_MS, gone});
    } catch (err) {
      if (gone()) return;
      this.error("no-verification-code", `no verification code for this call: ${err.message}`);
      return;
    }
    if (!sas || gone()) return;
    if (this.sas && this.sas !== sas.text) this.note(`the verification code changed: ${this.sas} -> ${sas.text}`);
    this.sas = sas.text;
    this.sasSource = sas.source; // "dtls": from the certificates the handshake used
    this.note(`verification code: ${sas.text}`);
    this.render();
  }

  mediaOp(call, op) {
    const media = this.media;
    if (media && media.call === call) media.run(() => op(media));
  }

  // -- for tests and scripts -----------------------------------------------------------

  receivedAudio() { return this.speaker.received(); }

  inboundAudio() { return this.media ? this.media.inboundAudio() : Promise.resolve(null); }

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
      keysSent: this.keysSent,
      sas: this.sas,
      sasSource: this.sasSource,
      connects: this.hubClient.connectCount,
      media: this.session ? this.session.summary() : null,
    };
  }

  render() { this.ui.render(this); }
}
