// The media of one call: its connections (CallMedia, one per generation),
// media restart (restart.js) and hold (hold.js), carried out against the hub,
// the microphone and the speaker (docs/protocol.md "Media restart and hold").
//
// With a peer that announced "restart" each attempt is a fresh
// RTCPeerConnection (make before break: the old one plays until the new one
// has RTP); between two pages that both announced "ice-restart" it is
// restartIce() on the one connection, under the same generation rules. RTP is
// watched with getStats() every 0.5 s.

import {agreed, holdData, restartData} from "./features.js";
import {FLOWING, HELD, HoldMachine} from "./hold.js";
import {CallMedia} from "./media.js";
import {RestartMachine} from "./restart.js";

const POLL_SECONDS = 0.5;
const PEER_STATE = {new: "new", checking: "connecting", connected: "connected", completed: "connected",
  disconnected: "disconnected", failed: "failed", closed: "closed"};

export class MediaSession {
  // host: {now(), send(message) -> bool, note(text), changed(), feed(event) (the call machine),
  //   play(stream), mediaChanged(media), giveUp(reason), hurry(on), iceServers, microphone,
  //   speaker, connected() (the call is connected)}
  constructor(call, host, ours, settings) {
    this.call = call;
    this.peer = call.peer;
    this.host = host;
    this.ours = ours;
    // What both announced is known once the peer accepted (caller) or called (callee):
    // the machines are told when the call connects.
    this.restart = new RestartMachine(call.role === "caller", false, settings);
    this.hold = new HoldMachine(false);
    this.conns = new Map(); // generation -> CallMedia (in ICE-restart mode, one for all)
    this.negotiated = new Set(); // ICE-restart mode: generations whose offer/answer is done
    this.rtpSeen = new Map(); // CallMedia -> packets received at the last poll
    this.offers = new Map(); // generation -> our restart offer, to send again after a glare
    this.reasons = new Map(); // generation -> why we offer it
    this.status = "ok"; // ok | restarting | stalled | lost
    this.statusText = "";
    this.statusAt = 0;
    this.restarts = []; // media back: {generation, gapMs, reason, attempts, at}
    this.holdEvents = []; // {event, by, at}
    this.flow = FLOWING;
    this.silent = null; // a disabled copy of the microphone track: "hold" towards an old peer
    this.closed = false;
    this.timer = null;
    this.polling = false;
    this.first = this.connection(0);
    this.poller = setInterval(() => this.poll(), POLL_SECONDS * 1000);
  }

  get restarting() { return this.restart.restarting; }

  /** What both sides announced: {restart, hold, iceRestart}. */
  get features() { return agreed(this.ours, this.call.peerFeatures); }

  /** The connection that carries media now. */
  currentMedia() { return this.conns.get(this.restart.current) || this.first; }

  connection(generation) {
    const media = new CallMedia(this.call, this.peer, {
      feed: (event) => this.fromMedia(media, event),
      send: (message) => this.host.send(message),
      note: (text) => this.host.note(text),
      heard: (stream) => { if (media === this.currentMedia()) this.host.play(stream); },
      iceState: (state) => this.iceState(media, state),
      failed: generation === 0 ? null : (reason) => this.attemptFailed(media, reason),
    }, generation);
    this.conns.set(generation, media);
    return media;
  }

  // -- what comes in --

  /** A media event of one connection: generation 0's go to the call machine. */
  fromMedia(media, event) {
    if (media.closed || this.closed) return;
    if (media === this.first && media.generation === 0 && !this.restart.armed) {
      this.host.feed(event); // the call's setup: its state machine decides
      return;
    }
    if (event.type === "LocalDescription" && media !== this.first) {
      const attempt = this.restart.attempt;
      this.described(attempt && attempt.offerer ? "offer" : "answer", media.generation, event.sdp, media);
    }
    // Connected / failed of a running call: the restart machine sees the ICE states.
  }

  /** The call is connected (its first connection's DTLS is up): watch its media. */
  connected() {
    const features = this.features;
    this.restart.enabled = features.restart;
    this.hold.enabled = features.hold;
    const pc = this.first.pc;
    if (pc) this.iceState(this.first, pc.iceConnectionState);
  }

  iceState(media, state) {
    if (media.closed || this.closed) return;
    if (media === this.first && !this.restart.armed && !this.host.connected()) return;
    const generation = this.generationOf(media);
    if (generation !== null) this.feed({type: "ConnectionChanged", generation, state: PEER_STATE[state] || state});
  }

  /**
   * Which generation `media`'s events belong to. ICE-restart mode has one connection:
   * the attempt's once its offer/answer is done (media flowing then is media back, on
   * whichever pair ICE picked), else the current one.
   */
  generationOf(media) {
    if (!this.features.iceRestart) {
      const gen = media.generation;
      return this.conns.get(gen) === media ? gen : null;
    }
    const attempt = this.restart.attempt;
    return attempt && this.negotiated.has(attempt.generation) ? attempt.generation : this.restart.current;
  }

  async poll() {
    if (this.closed || this.polling) return;
    this.polling = true;
    try {
      for (const media of new Set(this.conns.values())) {
        if (media.closed || !media.pc) continue;
        const audio = await media.inboundAudio(); // RTP packets received so far
        if (!audio || this.closed || media.closed) continue;
        const count = audio.packetsReceived;
        const before = this.rtpSeen.get(media) || 0;
        this.rtpSeen.set(media, count);
        const generation = count > before ? this.generationOf(media) : null;
        if (generation !== null) this.feed({type: "RtpReceived", generation});
      }
    } catch (err) {
      this.host.note(`cannot read media statistics: ${err.message}`);
    } finally {
      this.polling = false;
    }
  }

  /** A message of the extension from the peer (features.js extensionOf). */
  receive(ext) {
    switch (ext.kind) {
      case "hold": this.holdEvent({type: "RemoteHold", held: ext.held, seq: ext.seq}); break;
      case "holdAck": this.holdEvent({type: "RemoteHoldAck", seq: ext.seq}); break;
      case "restartOffer":
        this.host.note(`restart offer ${ext.generation} from ${this.peer}${ext.reason ? ` (${ext.reason})` : ""}`);
        this.feed({type: "RemoteRestartOffer", generation: ext.generation, sdp: ext.sdp});
        break;
      case "restartAnswer": this.feed({type: "RemoteRestartAnswer", generation: ext.generation, sdp: ext.sdp}); break;
      case "restartCandidate": {
        const media = this.conns.get(ext.generation);
        if (media) media.run(() => media.addCandidate(ext.candidate), () => {});
        break; // a candidate of a generation that is not open is dropped
      }
      default: this.host.note(`ignoring a bad message from ${this.peer}: ${ext.what}`);
    }
  }

  signaling(up) { this.feed({type: "SignalingChanged", up}); }

  peerUnreachable() { this.feed({type: "PeerUnreachable"}); }

  /** (tests, the user) Restart now, as if media had been lost. */
  force(reason) { this.feed({type: "Force", reason}); }

  setHeld(held) { this.holdEvent({type: held ? "LocalHold" : "LocalResume"}); }

  // -- the machines --

  feed(event) {
    if (this.closed) return;
    this.carryOut(this.restart.handle(event, this.host.now()));
  }

  holdEvent(event) {
    if (this.closed) return;
    this.carryOutHold(this.hold.handle(event, this.host.now()));
  }

  arm() {
    clearTimeout(this.timer);
    if (this.closed) return;
    const times = [this.restart.deadline(), this.hold.deadline()].filter((t) => t !== null);
    if (!times.length) return;
    const wait = Math.max(0.005, Math.min(...times) - this.host.now());
    this.timer = setTimeout(() => this.tick(), wait * 1000);
  }

  tick() {
    if (this.closed) return;
    const now = this.host.now();
    this.carryOutHold(this.hold.handleTimer(now));
    this.carryOut(this.restart.handleTimer(now));
  }

  setStatus(status, text) {
    this.status = status;
    this.statusText = text;
    this.statusAt = this.host.now();
    this.host.note(text);
  }

  carryOut(actions) {
    for (const a of actions) {
      switch (a.kind) {
        case "StartRestart":
          this.setStatus("restarting", `media lost (${a.reason}), restarting`);
          this.host.hurry(true);
          break;
        case "MediaStalled":
          this.setStatus("stalled", `media lost (${a.reason}); ${this.peer} cannot restart it`);
          break;
        case "SendRestartOffer": this.offer(a.generation, a.reason); break;
        case "ResendRestartOffer": {
          const message = this.offers.get(a.generation);
          if (message) this.host.send(message);
          break;
        }
        case "AcceptRestartOffer": this.answer(a.generation, a.sdp); break;
        case "ApplyRestartAnswer": {
          const media = this.conns.get(a.generation);
          if (media) {
            media.run(async () => {
              await media.applyAnswer(a.sdp);
              this.negotiated.add(a.generation);
            }, (why) => this.attemptFailed(media, why, a.generation));
          }
          break;
        }
        case "IgnoreStale": this.host.note(`ignored restart ${a.what} ${a.generation}: ${a.why}`); break;
        case "CloseConnection": this.closeGeneration(a.generation); break;
        case "CheckSignaling": this.host.hurry(true); break;
        case "RestartDone": this.done(a); break;
        case "GiveUp":
          this.setStatus("lost", `media lost (${a.reason}): it did not come back`);
          this.host.giveUp(a.reason);
          break;
        default: break;
      }
    }
    if (this.restart.restarting !== this.call.mediaLost && !this.restart.ended) {
      this.host.feed({type: "MediaInterrupted", lost: this.restart.restarting}); // a hangup now: media-lost
    }
    this.arm();
    this.host.changed();
  }

  carryOutHold(actions) {
    for (const a of actions) {
      switch (a.kind) {
        case "SendHold": this.host.send({type: "offer", to: this.peer, data: holdData("offer", a.held, a.seq)}); break;
        case "SendHoldAck": this.host.send({type: "answer", to: this.peer, data: holdData("answer", a.held, a.seq)}); break;
        case "HoldChange":
          this.holdEvents.push({event: a.event, by: a.by, at: this.host.now()});
          this.host.note(`${a.event === "hold" ? "on hold" : "resumed"} by ${a.by === "local" ? "you" : this.peer}`);
          break;
        case "SetMediaFlow":
          this.flow = a.mode;
          this.host.speaker.setMuted(a.mode !== FLOWING);
          for (const media of new Set(this.conns.values())) this.applyFlow(media);
          this.feed({type: "HoldChanged", held: !this.hold.expectsRtp});
          break;
        default: break;
      }
    }
    this.arm();
    this.host.changed();
  }

  // -- carrying out --

  /** What `media` sends: the microphone, nothing (held), or silence (held, towards an old peer). */
  applyFlow(media) {
    media.run(async () => {
      const mic = this.host.microphone.stream;
      const track = mic ? mic.getAudioTracks()[0] || null : null;
      if (this.flow === FLOWING || !track) {
        await media.setSending(this.flow === HELD ? null : track);
        return;
      }
      if (this.flow === HELD) {
        await media.setSending(null);
        return;
      }
      if (!this.silent) {
        this.silent = track.clone();
        this.silent.enabled = false; // a disabled track sends silence
      }
      await media.setSending(this.silent);
    }, (why) => this.host.note(`cannot change what the call sends: ${why}`));
  }

  offer(generation, reason) {
    this.reasons.set(generation, reason);
    if (this.features.iceRestart) {
      const media = this.currentMedia();
      this.conns.set(generation, media);
      media.run(async () => {
        const sdp = await media.iceRestartOffer(generation);
        this.described("offer", generation, sdp, media);
      }, (why) => this.attemptFailed(media, why, generation));
      return;
    }
    const certificates = this.currentMedia().certificates();
    const media = this.connection(generation);
    media.run(() => media.start(true, this.host.iceServers, this.host.microphone, certificates));
    this.applyFlow(media);
  }

  answer(generation, sdp) {
    if (this.features.iceRestart) {
      const media = this.currentMedia();
      this.conns.set(generation, media);
      media.run(async () => {
        const answer = await media.iceRestartAnswer(generation, sdp);
        this.negotiated.add(generation);
        this.described("answer", generation, answer, media);
      }, (why) => this.attemptFailed(media, why, generation));
      return;
    }
    const certificates = this.currentMedia().certificates();
    const media = this.connection(generation);
    media.run(() => media.start(false, this.host.iceServers, this.host.microphone, certificates));
    media.run(() => media.applyOffer(sdp));
    this.applyFlow(media);
  }

  /** Our restart offer or answer for `generation` is made: send it (if still wanted). */
  described(type, generation, sdp, media) {
    const attempt = this.restart.attempt;
    if (!attempt || attempt.generation !== generation || attempt.offerer !== (type === "offer")) return;
    const reason = type === "offer" ? this.reasons.get(generation) : null;
    const message = {type, to: this.peer, data: restartData(type, generation, sdp, reason)};
    if (type === "offer") this.offers.set(generation, message);
    if (!this.host.send(message)) return; // the attempt times out, or goes again when the hub is back
    media.localDescriptionSent();
    this.feed({type: type === "offer" ? "OfferSent" : "AnswerSent", generation});
  }

  attemptFailed(media, why, generation = media.generation) {
    this.host.note(`media restart ${generation} failed: ${why}`);
    if (this.conns.get(generation) === media) this.feed({type: "ConnectionChanged", generation, state: "failed"});
  }

  closeGeneration(generation) {
    const media = this.conns.get(generation);
    this.conns.delete(generation);
    this.offers.delete(generation);
    this.negotiated.delete(generation);
    if (!media) return;
    if ([...this.conns.values()].includes(media)) { // ICE-restart mode: the connection lives on
      if (generation > this.restart.current) media.dropOffer(this.restart.current);
      return;
    }
    media.close();
    this.rtpSeen.delete(media);
  }

  done(a) {
    this.restarts.push({generation: a.generation, gapMs: a.gapMs, reason: a.reason, attempts: a.attempts,
      at: this.host.now()});
    this.setStatus("ok", `media back (${a.reason}): ${a.gapMs} ms without audio, generation ${a.generation}`);
    this.host.hurry(false);
    const media = this.conns.get(a.generation);
    if (media && media !== this.first && !this.features.iceRestart) {
      if (media.stream) this.host.play(media.stream); // before the old connection closes
    }
    if (media) this.host.mediaChanged(media);
  }

  /** For snapshots and tests: features, status, generation, restarts, hold. */
  summary() {
    const hold = this.hold;
    return {
      features: {...this.features}, peerFeatures: this.call.peerFeatures.slice(),
      status: this.status, statusText: this.statusText, generation: this.restart.current,
      restarts: this.restarts.slice(), attempt: this.restart.attempt ? {...this.restart.attempt} : null,
      hold: {local: hold.localHeld, remote: hold.remoteHeld, mode: hold.mode, events: this.holdEvents.slice()},
      connections: new Set(this.conns.values()).size,
    };
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    clearInterval(this.poller);
    this.restart.finish();
    for (const media of new Set(this.conns.values())) media.close();
    if (this.silent) this.silent.stop();
    this.host.hurry(false);
  }
}
