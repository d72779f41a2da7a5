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
    this.pending = navigator.mediaDevices.getUserMedia({audio: true, video: false})
      .then((stream) => {
        this.stream = stream;
        this.pending = null;
        for (const t of stream.getAudioTracks()) t.enabled = !this.muted;
        return stream;
      }, (err) => {
        this.pending = null;
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
    this.muted = false;
  }
}

/** GET ice-servers from the hub: fetched early (while dialing or ringing), once per call. */
export class IceServers {
  constructor(url, report) {
    this.url = url;
    this.report = report;
    this.pending = null;
  }

  prefetch() {
    if (this.pending) return this.pending;
    this.pending = fetch(this.url, {cache: "no-store"})
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
    this.audio.srcObject = stream; // Chrome feeds WebAudio only from a played remote stream
    this.audio.play().catch((err) => this.note(`audio playback blocked: ${err.message}`));
    try {
      const ctx = this.unlock();
      const source = ctx.createMediaStreamSource(stream);
      const analyser = ctx.createAnalyser();
      analyser.fftSize = 32768;
      analyser.smoothingTimeConstant = 0;
      source.connect(analyser);
      this.source = source;
      this.analyser = analyser;
    } catch (err) {
      this.note(`no audio analyser: ${err.message}`);
    }
  }

  stop() {
    if (this.source) this.source.disconnect();
    this.source = null;
    this.analyser = null;
    this.audio.srcObject = null;
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
 * One call's RTCPeerConnection. Its operations run one after another; one
 * that fails ends the call (MediaFailed). Our candidates go after our
 * offer/answer: a peer that drops candidates arriving before its remote
 * description (the original pages) misses none.
 */
export class CallMedia {
  // call: whose media this is (opaque here); handlers: {feed(event), send(message),
  // note(text), heard(stream)}
  constructor(call, peer, handlers) {
    this.call = call;
    this.peer = peer;
    this.on = handlers;
    this.pc = null;
    this.chain = Promise.resolve();
    this.localSent = false;
    this.localQueue = [];
    this.closed = false;
  }

  /** Queue one operation (a function returning a promise) after the ones before it. */
  run(op) {
    this.chain = this.chain.then(() => (this.closed ? undefined : op())).catch((err) => {
      if (this.closed) return;
      this.on.note(`media operation failed: ${err.message}`);
      this.on.feed({type: "MediaFailed", reason: `media-error: ${err.message}`.slice(0, 120)});
    });
  }

  async start(offerer, iceServers, microphone) {
    const [servers, mic] = await Promise.all([iceServers.take(), microphone.get()]);
    if (this.closed) return;
    const pc = new RTCPeerConnection({iceServers: servers});
    this.pc = pc;
    for (const track of mic.getAudioTracks()) pc.addTrack(track, mic);
    pc.onicecandidate = (ev) => {
      if (!ev.candidate || this.closed) return; // end of candidates: not sent (the original pages choke on it)
      this.sendCandidate(ev.candidate.toJSON());
    };
    pc.ontrack = (ev) => {
      this.on.heard(ev.streams && ev.streams[0] ? ev.streams[0] : new MediaStream([ev.track]));
    };
    pc.onconnectionstatechange = () => {
      const s = pc.connectionState;
      this.on.note(`media ${s}`);
      if (s === "connected") this.on.feed({type: "MediaConnected"});
      else if (s === "failed") this.on.feed({type: "MediaFailed", reason: "ice-failed"});
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
    this.on.send({type: "candidate", to: this.peer, data: candidate});
  }

  /** Our offer or answer has gone to the peer: the candidates held back follow it. */
  localDescriptionSent() {
    if (this.localSent) return;
    this.localSent = true;
    const queued = this.localQueue;
    this.localQueue = [];
    for (const c of queued) this.on.send({type: "candidate", to: this.peer, data: c});
  }

  async applyOffer(sdp) {
    await this.pc.setRemoteDescription({type: "offer", sdp});
    await this.pc.setLocalDescription(await this.pc.createAnswer());
    this.on.feed({type: "LocalDescription", sdp: this.pc.localDescription.sdp});
  }

  async applyAnswer(sdp) {
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
    try {
      await pc.addIceCandidate(init);
    } catch (err) { // a bad candidate from the peer must not end the call
      this.on.note(`ignoring remote candidate: ${err.message}`);
    }
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
