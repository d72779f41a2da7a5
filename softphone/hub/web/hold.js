// Hold and resume, sans I/O: softphone/core/hold.py's HoldMachine for the page.
//
// Hold is a message beside the media: an "offer" whose data is {"type": "offer",
// "hold": true|false, "seq": N} without sdp, acknowledged by an "answer" with the
// same hold and seq; an unacknowledged change is sent again every `resend`
// seconds. Each side has its own hold; audio flows only while neither holds.
// With a peer that did not announce "hold", hold is local only ("muted": our
// RTP carries silence and playout is muted, so the peer sees a live stream).
//
// Events: {type: "LocalHold" | "LocalResume"}, {type: "RemoteHold", held, seq},
// {type: "RemoteHoldAck", seq}. Actions: {kind: "SendHold", held, seq},
// {kind: "SendHoldAck", held, seq}, {kind: "HoldChange", event: "hold"|"resume",
// by: "local"|"remote"}, {kind: "SetMediaFlow", mode}.

export const FLOWING = "flowing";
export const HELD = "held"; // no RTP either way (the peer agreed to hold)
export const MUTED = "muted"; // held towards a peer that does not know hold

export class HoldMachine {
  constructor(enabled = true, resend = 1.0) {
    if (!(resend > 0)) throw new Error(`hold resend must be a positive number of seconds, not ${resend}`);
    this.enabled = enabled; // both sides announced "hold"
    this.resend = resend;
    this.localHeld = false;
    this.remoteHeld = false;
    this.seq = 0;
    this.remoteSeq = 0;
    this.resendAt = null;
  }

  get mode() {
    if (!this.localHeld && !this.remoteHeld) return FLOWING;
    return this.enabled ? HELD : MUTED;
  }

  /** Whether RTP should arrive (the restart machine's HoldChanged is the opposite). */
  get expectsRtp() { return this.mode !== HELD; }

  deadline() { return this.resendAt; }

  handleTimer(now) {
    if (this.resendAt === null || now < this.resendAt) return [];
    this.resendAt = now + this.resend;
    return [{kind: "SendHold", held: this.localHeld, seq: this.seq}];
  }

  handle(event, now) {
    const before = this.mode;
    const actions = [];
    if (event.type === "LocalHold" || event.type === "LocalResume") {
      const held = event.type === "LocalHold";
      if (held === this.localHeld) return [];
      this.localHeld = held;
      actions.push({kind: "HoldChange", event: held ? "hold" : "resume", by: "local"});
      if (this.enabled) {
        this.seq += 1;
        this.resendAt = now + this.resend;
        actions.push({kind: "SendHold", held, seq: this.seq});
      }
    } else if (event.type === "RemoteHold") {
      if (!this.enabled) return [];
      if (event.seq > this.remoteSeq) {
        this.remoteSeq = event.seq;
        if (event.held !== this.remoteHeld) {
          this.remoteHeld = event.held;
          actions.push({kind: "HoldChange", event: event.held ? "hold" : "resume", by: "remote"});
        }
      }
      // A repeat (our ack was lost) is acknowledged again, as it was.
      actions.push({kind: "SendHoldAck", held: event.held, seq: event.seq});
    } else if (event.type === "RemoteHoldAck") {
      if (event.seq === this.seq) this.resendAt = null;
    } else {
      throw new Error(`no hold event ${event.type}`);
    }
    if (this.mode !== before) actions.push({kind: "SetMediaFlow", mode: this.mode});
    return actions;
  }
}
