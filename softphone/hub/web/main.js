// The browser phone's entry point (phone.html loads it as <script type="module">):
// get the call table from the hub, make the phone, wire the page.

import {CallTableError, loadCallTable} from "./callstate.js";
import {ID_PATTERN, Phone} from "./phone.js";
import {restartSettings} from "./restart.js";
import {PageUI} from "./ui.js";

const RETRY_SECONDS = 2;

/** /callerA.html and /callerB.html: the original system's pages, fixed to ids a and b. */
function fixedIdOfPage(location) {
  const m = /\/caller([AB])\.html$/.exec(location.pathname);
  if (!m) return null;
  return m[1] === "A" ? {id: "a", peer: "b"} : {id: "b", peer: "a"};
}

/** The hub's call table; retried while the hub cannot be reached, null if it is unusable. */
async function callTable(ui, url) {
  for (;;) {
    try {
      return await loadCallTable(url);
    } catch (err) {
      const bad = err instanceof CallTableError;
      const entry = bad
        ? {code: "call-table", message: `this page cannot use the hub's call table: ${err.message}`}
        : {code: "hub-unreachable",
          message: `cannot get the call table from the hub (${err.message}); retrying in ${RETRY_SECONDS} s`};
      console.warn(`softphone error ${entry.code}: ${entry.message}`);
      ui.showError({...entry, at: Date.now()});
      if (bad) return null;
      await new Promise((resolve) => setTimeout(resolve, RETRY_SECONDS * 1000));
    }
  }
}

/** For tests: make things happen that a real network would (window.__softphoneTest). */
function testHooks(phone) {
  const session = () => {
    if (!phone.session || phone.session.closed) throw new Error("no call with media");
    return phone.session;
  };
  return {
    /** Restart the call's media now, as if it had been lost (`reason`: what the offer says). */
    restartMedia: (reason = "rtp-silence") => session().force(reason),
    /** Restart limits for the next calls, e.g. {giveUp: 5} (restart.js DEFAULT_SETTINGS). */
    setRestartSettings: (overrides) => { phone.restartSettings = restartSettings(overrides); },
    /** The ICE username fragments: ours in the local description, and the selected pair's. */
    ufrags: () => ({local: session().currentMedia().localUfrag(),
      selected: session().currentMedia().selectedUfrag()}),
    /** Stop sending our audio (the peer then sees no RTP), or send it again. */
    silence: (on = true) => {
      const media = session().currentMedia();
      const track = on ? null : phone.microphone.stream.getAudioTracks()[0];
      media.run(() => media.setSending(track));
    },
  };
}

async function main() {
  const ui = new PageUI(document);
  const table = await callTable(ui, new URL("callstate.json", window.location.href));
  if (table === null) return;
  const phone = new Phone(ui, table, window.location.href);
  window.phone = phone;
  window.__softphoneTest = testHooks(phone);
  const params = new URLSearchParams(window.location.search);
  const fixed = fixedIdOfPage(window.location);
  // No URL parameter answers calls: a link could otherwise make a victim's page answer
  // an attacker's call and send its microphone (phone.autoAccept is for scripts only).
  const el = ui.el;
  if (fixed) {
    el.myId.value = fixed.id;
    el.myId.readOnly = true;
    el.peerId.value = fixed.peer;
  } else {
    el.myId.value = params.get("id") || localStorage.getItem("softphone-id") || "";
    el.peerId.value = params.get("call") || "";
  }
  ui.bind(phone, fixed, (id) => { if (ID_PATTERN.test(id)) localStorage.setItem("softphone-id", id); });
  phone.render();
  setInterval(() => ui.tick(phone), 200);
  window.addEventListener("pagehide", () => phone.leave());
  if (fixed || params.get("id")) phone.connect(el.myId.value.trim());
}

main();
