// The media of the page: the microphone, the hub's ICE servers, the speaker
// (an <audio> element and a WebAudio analyser of what we hear), and one
// RTCPeerConnection per call (CallMedia).
//
// Problems are told to a report(code, text) / note(text) pair given by the
// phone; nothing here touches the call state machine except through the
// feed(event) each CallMedia is given.

/** The microphone: opened once per call (or early, while ringing), muted by disabling tracks. */
export class Microphone {
  constructor(report) {
    this.report = report; // (code, text) -> shows an error
    this.stream = null;
    this.pending = null;
    this.releases = 0; // release() calls: a stream asked for before the last one is not kept
    this.muted = false;
  }

  get() {
    if (this.stream && this.stream.getAudioTracks().some((t) => t.readyState === "live")) {
      return Promise.resolve(this.stream);
    }
    if (this.pending) return this.pending;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      const msg = window.isSecureContext
        ? "this browser cannot use a microphone (no getUserMedia)"
        : "the microphone needs a secure page: open it over https (softphone serve --self-signed) or on localhost";
      this.report("microphone-unavailable", msg);
      return Promise.reject(new Error(msg));
    }
    const asked = this.releases;
    this.pending = navigator.mediaDevices.getUserMedia({audio: true, video: false})
      .then((stream) => {
        if (asked !== this.releases) {
          // Released while the browser asked (the user answered its prompt after the
          // call was missed or ended): the microphone goes off at once, nobody keeps it.
          for (const t of stream.getTracks()) t.stop();
          return stream;
        }
        this.stream = stream;
        this.pending = null;
        for (const t of stream.getAudioTracks()) t.enabled = !this.muted;
        return stream;
      }, (err) => {
        if (asked === this.releases) this.pending = null;
        const name = err && err.name;
        if (name === "NotAllowedError" || name === "SecurityError") {
          this.report("microphone-denied", "microphone access was denied: allow it in the browser to make calls");
        } else if (name === "NotFoundError" || name === "OverconstrainedError") {
          this.report("microphone-missing", "no microphone found");
        } else {
          this.report("microphone-error", `cannot open the microphone: ${name || ""} ${err && err.message}`);
        }
        throw err;
      });
    return this.pending;
  }

  setMuted(muted) {
    this.muted = !!muted;
    if (this.stream) for (const t of this.stream.getAudioTracks()) t.enabled = !this.muted;
  }

  release() {
    if (this.stream) for (const t of this.stream.getTracks()) t.stop();
    this.stream = null;
    this.pending = null; // a stream still being asked for is stopped when it comes
    this.releases += 1;
    this.muted = false;
  }
}

/** How long a list fetched ahead stays good (ms): TURN credentials expire, and the
 * CLI phone uses the same 60 s (client/media_setup.py ICE_SERVERS_FRESH). */
export const ICE_SERVERS_FRESH_MS = 60_000;

/** GET ice-servers from the hub: fetched early (while dialing or ringing), once per call.
 * `url`: a function giving the URL at the time (it carries the id we are connected as).
 * A list fetched ahead for a call that never used it (rejected, missed) is used by the
 * next call only while fresh and for the same id. */
export class IceServers {
  constructor(url, report) {
    this.url = url;
    this.report = report;
    this.pending = null;
    this.fetchedAt = 0; // performance.now() when `pending` was asked for
    this.fetchedUrl = "";
  }

  prefetch() {
    const url = this.url();
    const fresh = performance.now() - this.fetchedAt <= ICE_SERVERS_FRESH_MS;
    if (this.pending && fresh && url === this.fetchedUrl) return this.pending;
    this.fetchedAt = performance.now();
    this.fetchedUrl = url;
    this.pending = fetch(url, {cache: "no-store"})
      .then((resp) => {
        if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
        return resp.json();
      })
      .then((body) => {
        if (!body || !Array.isArray(body.iceServers)) throw new Error("not {\"iceServers\": [...]}");
        return body.iceServers;
      })
      .catch((err) => {
        this.pending = null;
        this.report("ice-servers", `cannot get ICE servers from the hub (${err.message}); using none`);
        return [];
      });
    return this.pending;
  }

  /** The servers for a call; the next call fetches again (TURN credentials expire). */
  take() {
    const servers = this.prefetch();
    this.pending = null;
    return servers;
  }
}

/** What we hear: the <audio> element that plays it and a WebAudio analyser of it. */
export class Speaker {
  constructor(audioElement, note) {
    this.audio = audioElement;
    this.note = note;
    this.context = null;
    this.analyser = null;
    this.source = null;
    this.gain = null;
    this.muted = false;
  }

  /** Make (or resume) the AudioContext; call it from a user gesture. */
  unlock() {
    if (!this.context) {
      const Ctx = window.AudioContext || window.webkitAudioContext;
      if (!Ctx) return null;
      this.context = new Ctx();
    }
    if (this.context.state === "suspended") this.context.resume().catch(() => {});
    return this.context;
  }

  play(stream) {
    if (this.source) this.source.disconnect(); // a restart's new connection replaces the old
    this.audio.srcObject = stream; // Chrome feeds WebAudio only from a played remote stream
    this.audio.play().catch((err) => this.note(`audio playback blocked: ${err.message}`));
    try {
      const ctx = this.unlock();
      const source = ctx.createMediaStreamSource(stream);
      if (!this.analyser) {
        this.gain = ctx.createGain(); // 0 while on hold: the analyser hears what the user hears
        this.gain.gain.value = this.muted ? 0 : 1;
        this.analyser = ctx.createAnalyser();
        this.analyser.fftSize = 32768;
        this.analyser.smoothingTimeConstant = 0;
        this.gain.connect(this.analyser);
      }
      source.connect(this.gain);
      this.source = source;
    } catch (err) {
      this.note(`no audio analyser: ${err.message}`);
    }
  }

  /** Mute or unmute what we play (hold). */
  setMuted(muted) {
    this.muted = !!muted;
    this.audio.muted = this.muted;
    if (this.gain) this.gain.gain.value = this.muted ? 0 : 1;
  }

  stop() {
    if (this.source) this.source.disconnect();
    if (this.gain) this.gain.disconnect();
    this.source = this.gain = this.analyser = null;
    this.audio.srcObject = null;
    this.setMuted(false);
  }

  /** The level of the last 2048 samples heard, 0..1 (for the meter). */
  level() {
    if (!this.analyser) return 0;
    const buf = new Float32Array(2048);
    this.analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const x of buf) sum += x * x;
    return Math.min(1, Math.sqrt(sum / buf.length) * 4);
  }

  /** The last `fftSize` samples heard (-1..1) and the rate, or null. */
  received() {
    if (!this.analyser) return null;
    const buf = new Float32Array(this.analyser.fftSize);
    this.analyser.getFloatTimeDomainData(buf);
    return {rate: this.context.sampleRate, samples: Array.from(buf)};
  }
}

/**
 * One RTCPeerConnection of a call: generation 0 is the call's first, each
 * media restart with a fresh connection makes another (docs/protocol.md
 * "Media restart and hold"). Its operations run one after another; one that
 * fails calls its `failed` handler (generation 0: MediaFailed, the call ends).
 * Our candidates go after our offer/answer: a peer that drops candidates
 * arriving before its remote description (the original pages) misses none;
 * those of a restart generation carry its number ("restart").
 */
export class CallMedia {
  // call: whose media this is (opaque here); handlers: {feed(event), send(message),
  // note(text), heard(stream), iceState(state)?, failed(reason)?}
  constructor(call, peer, handlers, generation = 0) {
    this.call = call;
    this.peer = peer;
    this.on = handlers;
    this.generation = generation; // the one our candidates are tagged with
    this.pc = null;
    this.stream = null; // what the peer sends us, once its track arrived
    this.chain = Promise.resolve();
    this.localSent = false;
    this.localQueue = [];
    this.closed = false;
    this.pendingOffer = null; // an ICE-restart offer sent but not applied yet
  }

  /** Queue one operation (a function returning a promise) after the ones before it. */
  run(op, failed = null) {
    this.chain = this.chain.then(() => (this.closed ? undefined : op())).catch((err) => {
      if (this.closed) return;
      const reason = `media-error: ${err.message}`.slice(0, 120);
      this.on.note(`media operation failed: ${err.message}`);
      if (failed) failed(reason);
      else if (this.on.failed) this.on.failed(reason);
      else this.on.feed({type: "MediaFailed", reason});
    });
  }

  /** Make the connection (and, as `offerer`, its offer); `certificates`: our DTLS ones to keep. */
  async start(offerer, iceServers, microphone, certificates = null) {
    const [servers, mic] = await Promise.all([iceServers.take(), microphone.get()]);
    if (this.closed) return;
    const config = {iceServers: servers};
    if (certificates && certificates.length) config.certificates = certificates;
    const pc = new RTCPeerConnection(config);
    this.pc = pc;
    for (const track of mic.getAudioTracks()) pc.addTrack(track, mic);
    pc.onicecandidate = (ev) => {
      if (!ev.candidate || this.closed) return; // end of candidates: not sent (the original pages choke on it)
      this.sendCandidate(ev.candidate.toJSON());
    };
    pc.ontrack = (ev) => {
      this.stream = ev.streams && ev.streams[0] ? ev.streams[0] : new MediaStream([ev.track]);
      this.on.heard(this.stream);
    };
    pc.onconnectionstatechange = () => {
      if (this.closed) return;
      const s = pc.connectionState;
      this.on.note(`media ${s}${this.generation ? ` (generation ${this.generation})` : ""}`);
      if (s === "connected") this.on.feed({type: "MediaConnected"});
      else if (s === "failed") this.on.feed({type: "MediaFailed", reason: "ice-failed"});
    };
    pc.oniceconnectionstatechange = () => {
      if (!this.closed && this.on.iceState) this.on.iceState(pc.iceConnectionState);
    };
    if (offerer) {
      await pc.setLocalDescription(await pc.createOffer());
      this.on.feed({type: "LocalDescription", sdp: pc.localDescription.sdp});
    }
  }

  sendCandidate(candidate) {
    if (!this.localSent) {
      this.localQueue.push(candidate);
      return;
    }
    this.on.send({type: "candidate", to: this.peer, data: this.tagged(candidate)});
  }

  tagged(candidate) {
    return this.generation ? {...candidate, restart: this.generation} : candidate;
  }

  /** Our offer or answer has gone to the peer: the candidates held back follow it. */
  localDescriptionSent() {
    if (this.localSent) return;
    this.localSent = true;
    const queued = this.localQueue;
    this.localQueue = [];
    for (const c of queued) this.on.send({type: "candidate", to: this.peer, data: this.tagged(c)});
  }

  async applyOffer(sdp) {
    await this.pc.setRemoteDescription({type: "offer", sdp});
    await this.pc.setLocalDescription(await this.pc.createAnswer());
    this.on.feed({type: "LocalDescription", sdp: this.pc.localDescription.sdp});
  }

  async applyAnswer(sdp) {
    if (this.pendingOffer) { // an ICE-restart offer: applied now
      const offer = this.pendingOffer;
      this.pendingOffer = null;
      await this.pc.setLocalDescription(offer);
    }
    await this.pc.setRemoteDescription({type: "answer", sdp});
  }

  async addCandidate(candidate) {
    const pc = this.pc;
    if (!candidate || !candidate.candidate) {
      await pc.addIceCandidate(null).catch(() => {});
      return;
    }
    const init = {candidate: candidate.candidate, sdpMid: candidate.sdpMid ?? null,
      sdpMLineIndex: candidate.sdpMLineIndex ?? null};
    if (init.sdpMid === null && init.sdpMLineIndex === null) init.sdpMLineIndex = 0;
    if (typeof candidate.usernameFragment === "string") init.usernameFragment = candidate.usernameFragment;
    try {
      await pc.addIceCandidate(init);
    } catch (err) { // a bad candidate from the peer must not end the call
      this.on.note(`ignoring remote candidate: ${err.message}`);
    }
  }

  // -- media restart and hold (docs/protocol.md "Media restart and hold") --

  /**
   * ICE restart on this connection (pages only): an offer with new ICE credentials.
   * It is applied only with its answer (applyAnswer): an offer that loses a glare
   * needs no rollback (Chrome's rollback restarts the RTP stream: seconds of
   * concealment at the peer).
   */
  async iceRestartOffer(generation) {
    this.renumber(generation);
    this.pc.restartIce();
    const offer = await this.pc.createOffer({iceRestart: true});
    this.pendingOffer = offer;
    return offer.sdp;
  }

  /** The peer's ICE-restart offer, applied to this connection; our answer's sdp. */
  async iceRestartAnswer(generation, sdp) {
    this.renumber(generation);
    this.pendingOffer = null;
    await this.pc.setRemoteDescription({type: "offer", sdp});
    await this.pc.setLocalDescription(await this.pc.createAnswer());
    return this.pc.localDescription.sdp;
  }

  /** Our candidates from now on belong to `generation` and wait for its offer/answer. */
  renumber(generation) {
    this.generation = generation;
    this.localSent = false;
    this.localQueue = [];
  }

  /** Forget an ICE-restart offer of ours that was abandoned; candidates are `generation`'s again. */
  dropOffer(generation) {
    this.pendingOffer = null;
    this.generation = generation;
    this.localSent = true;
  }

  /** Send `track` (null: nothing, on hold) instead of the microphone's. */
  async setSending(track) {
    const sender = this.pc && this.pc.getSenders().find((s) => !s.track || s.track.kind === "audio");
    if (sender && sender.track !== track) await sender.replaceTrack(track);
  }

  /** Our DTLS certificates (a restart's fresh connection keeps them: same verification code side). */
  certificates() {
    return this.pc ? this.pc.getConfiguration().certificates || [] : [];
  }

  /** The local ICE username fragment of the selected candidate pair, or null. */
  selectedUfrag() {
    const sender = this.pc && this.pc.getSenders()[0];
    const ice = sender && sender.transport && sender.transport.iceTransport;
    const pair = ice && typeof ice.getSelectedCandidatePair === "function" ? ice.getSelectedCandidatePair() : null;
    return pair && pair.local ? pair.local.usernameFragment : null;
  }

  /** The ICE username fragment of `sdp` (default: our local description), or null. */
  localUfrag(sdp = this.pc && this.pc.localDescription ? this.pc.localDescription.sdp : "") {
    const m = /^a=ice-ufrag:(\S+)/m.exec(sdp);
    return m ? m[1] : null;
  }

  /**
   * Press keys: RFC 4733 telephone events through the audio sender's RTCDTMFSender
   * (insertDTMF: ',' is a 2 s pause). False when the call cannot carry them (no audio
   * sender yet, or the peer's answer had no telephone-event).
   */
  sendDtmf(tones, duration = 100, gap = 70, ontone = null) {
    const sender = this.pc && this.pc.getSenders().find((s) => s.track && s.track.kind === "audio");
    const dtmf = sender && sender.dtmf;
    if (!dtmf || !dtmf.canInsertDTMF) return false;
    if (ontone) dtmf.ontonechange = (ev) => { if (ev.tone) ontone(ev.tone); };
    dtmf.insertDTMF(tones, duration, gap);
    return true;
  }

  close() {
    this.closed = true;
    if (this.pc) this.pc.close();
  }

  /** getStats() of the inbound audio: energy, level, packets; or null. */
  async inboundAudio() {
    if (!this.pc) return null;
    const stats = await this.pc.getStats();
    for (const report of stats.values()) {
      if (report.type === "inbound-rtp" && report.kind === "audio") {
        return {totalAudioEnergy: report.totalAudioEnergy || 0, audioLevel: report.audioLevel || 0,
          totalSamplesDuration: report.totalSamplesDuration || 0,
          packetsReceived: report.packetsReceived || 0, bytesReceived: report.bytesReceived || 0};
      }
    }
    return null;
  }
}
