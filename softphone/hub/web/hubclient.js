// The WebSocket to the hub: connect as an id, reconnect with backoff, JSON frames.
//
// It knows nothing of calls: it hands each parsed message to onMessage and
// tells onLost when the connection is gone, before it decides to retry.

/** The hub's WebSocket URL for `id`, next to the page (with its ?token= for a hub run with --secret). */
export function wsUrl(pageUrl, id) {
  const page = new URL(pageUrl);
  const url = new URL("ws", page);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = "?id=" + encodeURIComponent(id);
  const token = page.searchParams.get("token");
  if (token) url.search += "&token=" + encodeURIComponent(token);
  return url.toString();
}

/** The hub's ice-servers URL for `id`, next to the page: with the id and the page's
 * ?token=, which a hub run with --secret and --turn wants for TURN credentials. */
export function iceUrl(pageUrl, id) {
  const page = new URL(pageUrl);
  const url = new URL("ice-servers", page);
  url.search = "?id=" + encodeURIComponent(id || "");
  const token = page.searchParams.get("token");
  if (token) url.search += "&token=" + encodeURIComponent(token);
  return url.toString();
}

const FIRST_BACKOFF = 0.5; // seconds; doubles up to MAX_BACKOFF, with jitter
const MAX_BACKOFF = 10;
const HURRY_BACKOFF = 1; // while a call's media is being restarted (docs/protocol.md)

export class HubClient {
  // handlers: {changed(), message(msg), lost(), note(text), error(code, text)}
  constructor(pageUrl, handlers) {
    this.pageUrl = pageUrl;
    this.on = handlers;
    this.id = null;
    this.ws = null;
    this.status = "offline"; // offline | connecting | connected | reconnecting | refused
    this.wanted = false; // the user wants to be connected
    this.backoff = FIRST_BACKOFF;
    this.maxBackoff = MAX_BACKOFF;
    this.reconnectTimer = null;
    this.reconnectAt = null;
    this.connectCount = 0;
  }

  setStatus(status) {
    this.status = status;
    this.on.changed();
  }

  connect(id) {
    this.id = id;
    this.wanted = true;
    this.backoff = FIRST_BACKOFF;
    this.open();
  }

  disconnect() {
    this.wanted = false;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    if (this.ws) this.ws.close(1000, "bye");
    this.setStatus("offline");
  }

  open() {
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.reconnectAt = null;
    if (this.ws) {
      const old = this.ws;
      this.ws = null;
      old.onclose = old.onmessage = old.onerror = null;
      old.close(1000, "reconnecting");
    }
    this.setStatus(this.connectCount ? "reconnecting" : "connecting");
    let ws;
    try {
      ws = new WebSocket(wsUrl(this.pageUrl, this.id));
    } catch (err) {
      this.on.error("hub-unreachable", `cannot open a WebSocket to the hub: ${err.message}`);
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    this.hubError = null; // the hub's error message, when it was the last frame on this connection
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.connectCount += 1;
      this.backoff = FIRST_BACKOFF;
      this.on.note(`connected to the hub as ${this.id}`);
      this.setStatus("connected");
    };
    ws.onmessage = (ev) => this.frame(ev.data);
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.closed(ev, opened);
    };
  }

  closed(ev, opened) {
    this.on.lost();
    if (!this.wanted) {
      this.setStatus("offline");
      return;
    }
    if (ev.code === 1008) { // policy violation: a refused id, or replaced by a newer tab
      this.wanted = false;
      if (this.on.refused) this.on.refused((this.hubError && this.hubError.code) || ev.reason || "refused");
      if (this.hubError) { // the hub said why in an error message, already shown: once is enough
        this.on.note(`the hub closed the connection: ${ev.reason || this.hubError.code || "refused"}`);
        this.setStatus("refused");
        return;
      }
      this.status = "refused";
      this.on.error("hub-refused", `the hub closed the connection: ${ev.reason || "refused"}`);
      return;
    }
    const what = opened ? "lost the hub connection" : "cannot reach the hub";
    const delay = this.scheduleReconnect();
    this.on.error("hub-unreachable", `${what}; retrying in ${delay.toFixed(1)} s`);
  }

  /** While media is restarted: reconnect attempts at most a second apart (a retry due later comes now). */
  hurry(on) {
    this.maxBackoff = on ? HURRY_BACKOFF : MAX_BACKOFF;
    if (!on) return;
    this.backoff = Math.min(this.backoff, HURRY_BACKOFF);
    if (this.reconnectTimer && this.reconnectAt - Date.now() > HURRY_BACKOFF * 1000) {
      clearTimeout(this.reconnectTimer);
      this.reconnectAt = Date.now();
      this.reconnectTimer = setTimeout(() => this.open(), 0);
    }
  }

  scheduleReconnect() {
    const delay = Math.min(this.backoff * (0.5 + Math.random()), this.maxBackoff);
    this.backoff = Math.min(this.backoff * 2, this.maxBackoff);
    this.reconnectAt = Date.now() + delay * 1000;
    this.reconnectTimer = setTimeout(() => this.open(), delay * 1000);
    this.setStatus("reconnecting");
    return delay;
  }

  frame(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch (err) {
      this.on.note("ignoring a frame that is not JSON");
      return;
    }
    if (!message || typeof message !== "object" || typeof message.type !== "string") return;
    // A refusal is an error message just before the close: the close need not say it again.
    this.hubError = message.type === "error" && !message.from ? message.data || {} : null;
    this.on.message(message);
  }

  /** Send one message; false (and nothing sent) when not connected. */
  send(message) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(message));
    return true;
  }
}
