// The page: finds the elements of phone.html, shows a phone's state in them,
// and turns clicks and keys into the phone's actions.

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
  "media-lost": "media lost: the audio with {peer} did not come back, so the call ended",
};

/** Outcomes that are shown as errors, not just as news (unless we ended the call). */
export const ERROR_OUTCOMES = new Set(["rejected", "busy", "no-answer", "offline",
  "hub-unreachable", "media-failed", "media-lost"]);

/** One line for how a call ended. */
export function outcomeText(peer, outcome, reason, by) {
  if (outcome === "rejected" && by === "local") {
    return `you rejected the call from ${peer}` + (reason && reason !== "declined" ? ` (${reason})` : "");
  }
  let text = (OUTCOME_TEXT[outcome] || `call with {peer} ended: ${outcome}`).replace("{peer}", peer);
  if (reason && ["media-failed", "rejected", "media-lost"].includes(outcome)) text += ` (${reason})`;
  return text;
}

/** "on hold (you)", "on hold (peer)", "on hold (you and peer)", or "" (hold.js state). */
export function holdText(hold) {
  if (!hold || (!hold.localHeld && !hold.remoteHeld)) return "";
  const who = hold.localHeld && hold.remoteHeld ? "you and peer" : hold.localHeld ? "you" : "peer";
  return `on hold (${who})` + (hold.mode === "muted" ? ": the peer's phone does not know hold, it hears silence" : "");
}

/** How long "media back" stays on the page (seconds). */
const MEDIA_BACK_SECONDS = 5;

const HUB_TEXT = {
  offline: "not connected", connecting: "connecting…", reconnecting: "hub unreachable: reconnecting…",
  refused: "refused by the hub",
};

export class PageUI {
  constructor(doc) {
    this.doc = doc;
    const $ = (id) => doc.getElementById(id);
    this.root = $("phone");
    this.el = {
      myId: $("my-id"), connect: $("connect"), hubStatus: $("hub-status"),
      peerId: $("peer-id"), call: $("call"), incoming: $("incoming"), caller: $("caller"),
      accept: $("accept"), reject: $("reject"), inCall: $("in-call"), callState: $("call-state"),
      callPeer: $("call-peer"), callTime: $("call-time"), hangup: $("hangup"), mute: $("mute"),
      errors: $("errors"), log: $("log"), level: $("level"), outcome: $("outcome"),
      clearErrors: $("clear-errors"), keypad: $("keypad"), keysSent: $("keys-sent"),
      sas: $("sas"), sasLine: $("sas-line"), hold: $("hold"), holdStatus: $("hold-status"),
      mediaStatus: $("media-status"),
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
    const li = this.doc.createElement("li");
    li.dataset.code = entry.code;
    li.textContent = `${time} ${entry.message}`;
    this.el.errors.prepend(li);
    while (this.el.errors.children.length > 20) this.el.errors.lastChild.remove();
  }

  addLog(text) {
    const li = this.doc.createElement("li");
    li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
    this.el.log.prepend(li);
    while (this.el.log.children.length > 200) this.el.log.lastChild.remove();
  }

  /** Show the phone's state: the hub, the call, the buttons that make sense now. */
  render(phone) {
    const el = this.el;
    const call = phone.line && phone.line.call;
    const S = phone.table.states;
    const state = call ? call.state : "idle";
    const active = call && !call.isEnded;
    this.root.dataset.hub = phone.hub;
    this.root.dataset.callState = state;
    this.root.dataset.outcome = call && call.outcome ? call.outcome : "";
    this.root.dataset.muted = phone.muted ? "true" : "false";
    el.hubStatus.textContent = phone.hub === "connected" ? `connected as ${phone.id}` : HUB_TEXT[phone.hub];
    el.hubStatus.dataset.status = phone.hub;
    el.connect.disabled = false;
    el.connect.textContent = phone.wanted ? "Disconnect" : "Connect";
    el.call.disabled = phone.hub !== "connected" || !!active;
    el.incoming.hidden = !(call && call.state === S.RINGING);
    el.caller.textContent = call ? call.peer : "";
    el.inCall.hidden = !active || state === S.RINGING;
    el.callState.textContent = state;
    el.callState.dataset.state = state;
    el.callPeer.textContent = call ? call.peer : "";
    const talking = !!active && state === S.CONNECTED;
    for (const key of el.keypad.querySelectorAll("button")) key.disabled = !talking;
    el.keysSent.textContent = phone.keysSent;
    el.sas.textContent = phone.sas || ""; // the verification code, to read to the peer
    el.sasLine.hidden = !phone.sas;
    this.root.dataset.sas = phone.sas || "";
    this.renderMedia(phone, talking);
    el.mute.setAttribute("aria-pressed", phone.muted ? "true" : "false");
    el.mute.textContent = phone.muted ? "Unmute" : "Mute";
    el.outcome.textContent = call && call.isEnded
      ? outcomeText(call.peer, call.outcome, call.reason, call.endedBy) : "";
  }

  /** Hold (button and line) and media restart ("media lost, restarting" / "media back"). */
  renderMedia(phone, talking) {
    const el = this.el;
    const session = talking && phone.session && phone.session.call === phone.line.call ? phone.session : null;
    const hold = session ? session.hold : null;
    const held = !!hold && hold.localHeld;
    el.hold.disabled = !session;
    el.hold.setAttribute("aria-pressed", held ? "true" : "false");
    el.hold.textContent = held ? "Resume" : "Hold";
    el.holdStatus.textContent = holdText(hold);
    el.holdStatus.hidden = !el.holdStatus.textContent;
    this.root.dataset.hold = !hold ? "" : hold.localHeld && hold.remoteHeld ? "both"
      : hold.localHeld ? "local" : hold.remoteHeld ? "remote" : "";
    const status = session ? session.status : "";
    const fresh = session && (status !== "ok" || phone.now() - session.statusAt < MEDIA_BACK_SECONDS);
    el.mediaStatus.textContent = fresh ? session.statusText : "";
    el.mediaStatus.dataset.status = status;
    el.mediaStatus.hidden = !el.mediaStatus.textContent;
    this.root.dataset.media = status;
  }

  /** Five times a second: the call timer and the level meter. */
  tick(phone) {
    const call = phone.line && phone.line.call;
    if (call && call.state === phone.table.states.CONNECTED) {
      const s = Math.floor(phone.now() - call.connectedAt);
      this.el.callTime.textContent = `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
    } else {
      this.el.callTime.textContent = "";
    }
    this.el.level.value = phone.speaker.level();
    if (phone.session && !this.el.mediaStatus.hidden) this.render(phone); // "media back" fades
  }

  /** Buttons and keys -> the phone's actions. `fixed`: the id is fixed (callerA/B.html). */
  bind(phone, fixed, remember) {
    const el = this.el;
    el.connect.addEventListener("click", () => {
      if (phone.wanted) {
        phone.disconnect();
        return;
      }
      const id = el.myId.value.trim();
      if (!fixed) remember(id);
      phone.connect(id);
    });
    el.myId.addEventListener("keydown", (ev) => { if (ev.key === "Enter") el.connect.click(); });
    el.call.addEventListener("click", () => phone.dial(el.peerId.value.trim()));
    el.peerId.addEventListener("keydown", (ev) => { if (ev.key === "Enter") el.call.click(); });
    el.accept.addEventListener("click", () => phone.accept());
    el.reject.addEventListener("click", () => phone.reject());
    el.hangup.addEventListener("click", () => phone.hangup());
    el.mute.addEventListener("click", () => phone.setMuted(!phone.muted));
    el.hold.addEventListener("click", () => phone.setHeld(!phone.held));
    el.clearErrors.addEventListener("click", () => { el.errors.textContent = ""; });
    el.keypad.addEventListener("click", (ev) => {
      const key = ev.target && ev.target.dataset ? ev.target.dataset.key : null;
      if (key) phone.pressKeys(key);
    });
    // During a call, the keyboard's 0-9, * and # press keys too (not while typing in a field).
    this.doc.addEventListener("keydown", (ev) => {
      const typing = ev.target && (ev.target.tagName === "INPUT" || ev.target.tagName === "TEXTAREA");
      const call = phone.line && phone.line.call;
      if (typing || ev.repeat || !/^[0-9*#]$/.test(ev.key)) return;
      if (call && call.state === phone.table.states.CONNECTED) phone.pressKeys(ev.key);
    });
  }
}
