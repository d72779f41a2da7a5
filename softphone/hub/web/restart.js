// Media restart inside a call, sans I/O: softphone/core/restart.py's RestartMachine
// for the page (docs/protocol.md "Media restart and hold").
//
// The same decisions, minus what a browser cannot see: no path probe (no STUN
// request of our own on the selected pair) and no local address watch. Lost
// media (an *episode*) starts on the current connection's ICE state
// disconnected/failed, on no RTP for `silence` seconds while connected and not
// held, or on the peer's restart offer. Each attempt takes a new *generation*;
// one attempt is in flight; glare: the higher (generation, sent by the caller)
// wins; an offer unanswered within `answerTimeout` is abandoned and the next
// attempt starts `retryInterval` after the previous one; media away `giveUp`
// seconds ends the call (GiveUp, outcome "media-lost").
//
// Events are plain objects {type: "RtpReceived", generation}, actions
// {kind: "SendRestartOffer", generation, reason}; time is passed in as `now`
// (seconds) and deadline() says when handleTimer() is next due.

export const MEDIA_LOST = "media-lost";

export const REASONS = Object.freeze({
  ICE_DISCONNECTED: "ice-disconnected", ICE_FAILED: "ice-failed", RTP_SILENCE: "rtp-silence",
  PEER: "peer",
});

/** The limits (seconds); core/restart_events.py RestartSettings without the probe. */
export const DEFAULT_SETTINGS = Object.freeze({
  silence: 2, retryInterval: 2, answerTimeout: 2, connectTimeout: 5, prepareTimeout: 8,
  giveUp: 45,
});

/** Settings from `overrides` (an object of positive numbers), checked. */
export function restartSettings(overrides = {}) {
  const s = {...DEFAULT_SETTINGS};
  for (const [name, value] of Object.entries(overrides || {})) {
    if (!(name in DEFAULT_SETTINGS)) throw new Error(`no restart setting "${name}"`);
    if (!(typeof value === "number" && value > 0)) {
      throw new Error(`restart setting ${name} must be a positive number of seconds, not ${value}`);
    }
    s[name] = value;
  }
  return Object.freeze(s);
}

const PREPARING = "preparing"; // our offer or answer being made
const OFFERED = "offered"; // our offer sent, waiting for the answer
const CONNECTING = "connecting"; // answered (or our answer sent): waiting for RTP

export class RestartMachine {
  constructor(isCaller, enabled = true, settings = DEFAULT_SETTINGS) {
    this.isCaller = isCaller;
    this.enabled = enabled; // both sides announced "restart" (else: detect and give up only)
    this.settings = settings;
    this.current = 0; // the generation that carries media
    this.highest = 0;
    this.armed = false; // the current connection has connected once
    this.held = false;
    this.signalingUp = true;
    this.ended = false;
    this.attempt = null; // {generation, offerer, phase, deadline, connected}
    this.episode = null; // {reason, startedAt, lastAudioAt, attempts, audioBackAt}
    this.lastRtp = 0;
    this.lastAttemptAt = null;
  }

  get restarting() { return this.episode !== null; }

  handle(event, now) {
    if (this.ended) return [];
    const handler = this[`on${event.type}`];
    if (typeof handler !== "function") throw new Error(`no restart event ${event.type}`);
    return handler.call(this, event, now);
  }

  deadline() {
    if (this.ended || !this.armed) return null;
    const episode = this.episode;
    if (episode === null) return this.held ? null : this.lastRtp + this.settings.silence;
    const times = [episode.startedAt + this.settings.giveUp];
    if (this.attempt !== null) times.push(this.attempt.deadline);
    else if (this.enabled && this.signalingUp) times.push(this.nextAttemptAt());
    return Math.min(...times);
  }

  handleTimer(now) {
    if (this.ended || !this.armed) return [];
    const episode = this.episode;
    if (episode === null) {
      if (!this.held && now >= this.lastRtp + this.settings.silence) {
        return this.lost(REASONS.RTP_SILENCE, now);
      }
      return [];
    }
    if (now >= episode.startedAt + this.settings.giveUp) {
      const actions = [];
      if (this.attempt !== null) actions.push({kind: "CloseConnection", generation: this.attempt.generation});
      this.attempt = null;
      this.ended = true;
      this.episode = null;
      return [...actions, {kind: "GiveUp", outcome: MEDIA_LOST, reason: episode.reason}];
    }
    const attempt = this.attempt;
    if (attempt !== null && now >= attempt.deadline) {
      const actions = this.abandon();
      // No answer: the offer (or the answer) may sit in a dead hub connection.
      if (attempt.phase === OFFERED) actions.push({kind: "CheckSignaling"});
      return [...actions, ...this.settleOrRetry(now)];
    }
    return attempt === null ? this.try(now) : [];
  }

  /** The call ended: nothing more is decided. */
  finish() { this.ended = true; }

  // -- helpers --

  nextAttemptAt() {
    return this.lastAttemptAt === null ? 0 : this.lastAttemptAt + this.settings.retryInterval;
  }

  lost(reason, now) {
    this.episode = {reason, startedAt: now, lastAudioAt: this.lastRtp, attempts: 0, audioBackAt: null};
    if (!this.enabled) return [{kind: "MediaStalled", reason}];
    const check = this.signalingUp ? [{kind: "CheckSignaling"}] : [];
    return [...check, {kind: "StartRestart", reason, generation: this.current}, ...this.try(now, true)];
  }

  try(now, atOnce = false) {
    if (!this.enabled || this.episode === null || this.attempt !== null || !this.signalingUp) return [];
    if (!atOnce && now < this.nextAttemptAt()) return [];
    this.highest += 1;
    const generation = this.highest;
    this.attempt = {generation, offerer: true, phase: PREPARING,
      deadline: now + this.settings.prepareTimeout, connected: false};
    this.lastAttemptAt = now;
    this.episode.attempts += 1;
    return [{kind: "SendRestartOffer", generation, reason: this.episode.reason}];
  }

  abandon() {
    const attempt = this.attempt;
    this.attempt = null;
    return attempt === null ? [] : [{kind: "CloseConnection", generation: attempt.generation}];
  }

  settleOrRetry(now) {
    const episode = this.episode;
    if (episode !== null && episode.audioBackAt !== null && now - this.lastRtp < this.settings.silence) {
      return this.done(this.current, now);
    }
    return this.try(now);
  }

  done(generation, now) {
    const episode = this.episode;
    const back = episode.audioBackAt !== null ? episode.audioBackAt : now;
    const gapMs = Math.max(0, Math.round((back - episode.lastAudioAt) * 1000));
    this.episode = null;
    this.lastAttemptAt = null;
    const actions = [{kind: "RestartDone", generation, gapMs, reason: episode.reason,
      attempts: episode.attempts}];
    if (generation !== this.current) {
      actions.push({kind: "CloseConnection", generation: this.current});
      this.current = generation;
    }
    this.lastRtp = now;
    return actions;
  }

  mediaBack(generation, now) {
    const attempt = this.attempt;
    if (attempt !== null && attempt.generation === generation) {
      this.attempt = null;
      return this.done(generation, now);
    }
    return [];
  }

  // -- handlers, one per event type (as the _on_* methods in restart.py) --

  onConnectionChanged(event, now) {
    const {generation: gen, state} = event;
    if (gen === this.current) {
      if (state === "connected" && !this.armed) {
        this.armed = true;
        this.lastRtp = now;
        return [];
      }
      if (this.armed && this.episode === null && (state === "disconnected" || state === "failed")) {
        return this.lost(state === "failed" ? REASONS.ICE_FAILED : REASONS.ICE_DISCONNECTED, now);
      }
      return [];
    }
    const attempt = this.attempt;
    if (attempt === null || attempt.generation !== gen) return [];
    if (state === "connected") {
      attempt.connected = true;
      if (this.held) return this.mediaBack(gen, now);
    } else if (state === "failed") {
      return [...this.abandon(), ...this.settleOrRetry(now)];
    }
    return [];
  }

  onRtpReceived(event, now) {
    if (event.generation === this.current) {
      this.lastRtp = now;
      const episode = this.episode;
      if (episode !== null) {
        if (episode.audioBackAt === null) episode.audioBackAt = now;
        if (this.attempt === null) return this.done(this.current, now); // the old path is back
      }
      return [];
    }
    return this.mediaBack(event.generation, now);
  }

  onSignalingChanged(event, now) {
    const wasUp = this.signalingUp;
    this.signalingUp = event.up;
    if (!event.up || wasUp || this.episode === null) return [];
    // Back on the hub while media is lost: offer afresh now.
    const attempt = this.attempt;
    const actions = attempt !== null && !attempt.connected ? this.abandon() : [];
    return [...actions, ...this.try(now, true)];
  }

  /** (pages, tests) Start an episode now, as if media had been lost for `reason`. */
  onForce(event, now) {
    if (!this.armed || this.episode !== null) return [];
    return this.lost(event.reason || REASONS.RTP_SILENCE, now);
  }

  onRemoteRestartOffer(event, now) {
    const gen = event.generation;
    const stale = (why) => ({kind: "IgnoreStale", what: "offer", generation: gen, why});
    if (!this.enabled) return [stale("restart was not agreed")];
    if (!this.armed) return [stale("not connected yet")];
    if (gen <= this.current) return [stale(`stale (current is ${this.current})`)];
    const attempt = this.attempt;
    const actions = [];
    if (attempt !== null) {
      if (attempt.offerer) {
        // Glare: (generation, sent by the caller), the larger wins.
        const oursWins = attempt.generation > gen || (attempt.generation === gen && this.isCaller);
        if (oursWins) {
          return [stale("glare: our offer wins"), {kind: "ResendRestartOffer", generation: attempt.generation}];
        }
      } else if (gen === attempt.generation) {
        return [stale("repeated")];
      } else if (gen < attempt.generation) {
        return [stale("stale (a newer one was accepted)")];
      }
      actions.push(...this.abandon());
    }
    if (this.episode === null) {
      this.episode = {reason: REASONS.PEER, startedAt: now, lastAudioAt: this.lastRtp, attempts: 0,
        audioBackAt: null};
      actions.push({kind: "StartRestart", reason: REASONS.PEER, generation: this.current});
    }
    this.highest = Math.max(this.highest, gen);
    this.attempt = {generation: gen, offerer: false, phase: PREPARING,
      deadline: now + this.settings.prepareTimeout, connected: false};
    this.lastAttemptAt = now;
    this.episode.attempts += 1;
    return [...actions, {kind: "AcceptRestartOffer", generation: gen, sdp: event.sdp}];
  }

  onRemoteRestartAnswer(event, now) {
    const attempt = this.attempt;
    const gen = event.generation;
    if (attempt === null || !attempt.offerer || attempt.generation !== gen || attempt.phase === CONNECTING) {
      return [{kind: "IgnoreStale", what: "answer", generation: gen, why: "no offer of ours is waiting for it"}];
    }
    attempt.phase = CONNECTING;
    attempt.deadline = now + this.settings.connectTimeout;
    return [{kind: "ApplyRestartAnswer", generation: gen, sdp: event.sdp}];
  }

  onOfferSent(event, now) {
    const attempt = this.attempt;
    if (attempt !== null && attempt.offerer && attempt.generation === event.generation
        && attempt.phase === PREPARING) {
      attempt.phase = OFFERED;
      attempt.deadline = now + this.settings.answerTimeout;
    }
    return [];
  }

  onAnswerSent(event, now) {
    const attempt = this.attempt;
    if (attempt !== null && !attempt.offerer && attempt.generation === event.generation
        && attempt.phase === PREPARING) {
      attempt.phase = CONNECTING;
      attempt.deadline = now + this.settings.connectTimeout;
    }
    return [];
  }

  onPeerUnreachable(event, now) {
    const attempt = this.attempt;
    if (attempt === null || !attempt.offerer || attempt.connected) return [];
    return [...this.abandon(), ...this.settleOrRetry(now)];
  }

  onHoldChanged(event, now) {
    const was = this.held;
    this.held = event.held;
    if (was && !event.held) {
      // Resumed: the peer gets a full silence period to start sending again.
      this.lastRtp = Math.max(this.lastRtp, now);
    } else if (event.held && this.attempt !== null && this.attempt.connected) {
      return this.mediaBack(this.attempt.generation, now);
    }
    return [];
  }
}
