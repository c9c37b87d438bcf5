// Drives vigi-turn's demo call page (served by the signaling companion at /) in real browsers
// through puppeteer-core: headless Chromium over the DevTools protocol and headless Firefox over
// WebDriver BiDi, each the distribution's own build. Two users, each in a browser profile of its
// own, log in through the page's form, and for each call given alice places a video call to bob
// with iceTransportPolicy 'relay' and only that call's TURN URI. Asserted on both sides from
// getStats(): the selected pair is relay <-> relay, the local relay candidate reached the TURN
// server over the expected protocol (udp, tcp or tls), and media flows (bytesReceived and decoded
// frames grow). Asserted on vigi-turn's side through its admin API while the call is up: the
// two allocations whose relayed addresses the browsers use exist there on the expected transport,
// relay bytes both ways, and carry channels (Chromium: ChannelData) or none (Firefox: Send and
// Data indications only). Each call's RTT (from getStats) is logged, not asserted.
//
// Run by tests/browser.rs. Environment:
//   DEMO_URL       the page, e.g. http://127.0.0.1:8080/
//   SIGNAL_SECRET  --signaling-secret (handshake tokens are minted here, as an app backend would)
//   CALLS          JSON [{name, uri, relayProtocol, alice, bob, adminUrl}], one call each:
//                  alice and bob name the browser ("chromium", the default, or "firefox"),
//                  adminUrl the admin API of the server expected to hold the allocations
//                  (default ADMIN_URL)
//   ADMIN_URL      vigi-turn's admin API base (http://127.0.0.1:PORT), ADMIN_TOKEN its token
//   CHROMIUM       Chromium (default /usr/bin/chromium), FIREFOX Firefox (default /usr/bin/firefox-esr)
//   BROWSER_ARGS   JSON list of extra Chromium flags (e.g. how to accept the test certificate)
import { createHmac } from "node:crypto";
import puppeteer from "puppeteer-core";

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (v === undefined) throw new Error(`${k} is not set`);
  return v;
};
const DEMO_URL = env("DEMO_URL");
const SECRET = env("SIGNAL_SECRET");
const CALLS = JSON.parse(env("CALLS"));
const ADMIN_URL = env("ADMIN_URL");
const ADMIN_TOKEN = env("ADMIN_TOKEN");
const EXTRA_ARGS = JSON.parse(env("BROWSER_ARGS", "[]"));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const t0 = Date.now();
const say = (m) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ${m}`);

// `promise`, or an error naming `what` after `ms`: no step may hang the run.
function within(ms, what, promise) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms / 1000} s`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

function assert(cond, msg) {
  if (!cond) throw new Error(`assertion failed: ${msg}`);
}

// How each browser is started. Both get fake camera and microphone with no permission prompt.
const LAUNCH = {
  chromium: () =>
    puppeteer.launch({
      browser: "chrome",
      executablePath: env("CHROMIUM", "/usr/bin/chromium"),
      headless: true,
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        ...EXTRA_ARGS,
      ],
    }),
  // puppeteer's own Firefox preferences already turn off updates, telemetry and the other
  // background requests; these add media without devices and ICE over loopback.
  firefox: () =>
    puppeteer.launch({
      browser: "firefox",
      executablePath: env("FIREFOX", "/usr/bin/firefox-esr"),
      headless: true,
      extraPrefsFirefox: {
        "media.navigator.streams.fake": true,
        "media.navigator.permission.disabled": true,
        "media.peerconnection.ice.loopback": true,
        "media.peerconnection.ice.obfuscate_host_addresses": false,
        "network.captive-portal-service.enabled": false,
        "network.connectivity-service.enabled": false,
      },
    }),
};

// The handshake token of the signaling companion: hex HMAC-SHA256(secret, "user:expiry").
function token(user) {
  const expiry = Math.floor(Date.now() / 1000) + 3600;
  return { expiry, token: createHmac("sha256", SECRET).update(`${user}:${expiry}`).digest("hex") };
}

async function allocations(adminUrl) {
  const r = await fetch(`${adminUrl}/api/allocations`, {
    headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    signal: AbortSignal.timeout(15000),
  });
  assert(r.ok, `admin API answered ${r.status}`);
  return (await r.json()).allocations;
}

async function state(page) {
  return page.evaluate(() => JSON.parse(JSON.stringify(window.vigiDemo.state)));
}

const waitFor = (page, fn, timeout) => page.waitForFunction(fn, { timeout, polling: 200 });

async function fill(page, sel, value) {
  await page.$eval(
    sel,
    (el, v) => {
      el.value = v;
      el.dispatchEvent(new Event("input", { bubbles: true }));
    },
    value,
  );
}

// A click dispatched in the page. Input emulated through WebDriver BiDi sometimes never
// completes on a Firefox page whose window is behind another (seen on the second call of a run).
async function press(page, sel) {
  await within(15000, `click ${sel}`, page.$eval(sel, (el) => el.click()));
}

async function setChecked(page, sel, on) {
  await page.$eval(sel, (el, v) => el.checked !== v && el.click(), on);
}

async function openAs(browser, user) {
  const page = await (await browser.createBrowserContext()).newPage();
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warn") say(`${user} console ${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => say(`${user} page error: ${e}`));
  await page.goto(DEMO_URL);
  // Through the form, as a person would.
  const t = token(user);
  await fill(page, "#user", user);
  await press(page, "#token-box summary");
  await fill(page, "#expiry", String(t.expiry));
  await fill(page, "#token", t.token);
  await press(page, "#login");
  await waitFor(page, () => window.vigiDemo.state.signaling === "online" && window.vigiDemo.state.credentials, 15000);
  say(`${user} logged in; the server offers ${JSON.stringify((await state(page)).credentials.uris)}`);
  return page;
}

// A sample of the selected pair's counters, read now.
async function sample(page) {
  return page.evaluate(async () => {
    const r = await window.vigiDemo.refreshStats();
    return JSON.parse(JSON.stringify(r));
  });
}

async function placeCall({ page: alice }, { page: bob, id: callee }, c) {
  const adminUrl = c.adminUrl || ADMIN_URL;
  say(`--- ${c.name}: ${c.uri}, ${c.alice || "chromium"} calls ${c.bob || "chromium"}`);
  for (const p of [alice, bob]) {
    await p.evaluate((uri) => window.vigiDemo.selectUris([uri]), c.uri);
    await setChecked(p, "#relay-only", true);
  }
  await fill(alice, "#callee", callee);
  await alice.select("#call-type", "video");
  await press(alice, "#call");
  await bob.waitForSelector("#answer", { visible: true, timeout: 15000 });
  await press(bob, "#answer");

  const connected = () =>
    window.vigiDemo.state.callState === "active" &&
    window.vigiDemo.state.pair &&
    window.vigiDemo.state.pair.state === "succeeded";
  for (const [name, p] of [["alice", alice], ["bob", bob]]) {
    try {
      await waitFor(p, connected, 30000);
    } catch (e) {
      const s = await state(p);
      throw new Error(
        `${name}: call not connected over ${c.name}: state ${s.callState}, ICE ${s.iceConnectionState}, ` +
          `errors ${JSON.stringify(s.errors)}\nlog:\n${s.log.join("\n")}`,
      );
    }
  }
  say(`${c.name}: both sides connected`);

  // Media flowing is a condition, not an interval: each side's counters must grow by a margin
  // within 30 s of the first sample.
  const first = { alice: await sample(alice), bob: await sample(bob) };
  const rtts = {};
  const relayed = {}; // each side's relayed address, as its local relay candidate says
  for (const [name, p] of [["alice", alice], ["bob", bob]]) {
    const before = first[name];
    let s;
    const until = Date.now() + 30000;
    for (;;) {
      s = await sample(p);
      const grew =
        s.pair.bytesReceived > before.pair.bytesReceived + 10000 &&
        s.media.videoBytesReceived > before.media.videoBytesReceived &&
        s.media.framesDecoded > before.media.framesDecoded + 10;
      if (grew || Date.now() > until) break;
      await sleep(250);
    }
    const pair = s.pair;
    say(`${name} ${c.name}: ${JSON.stringify(pair)} media ${JSON.stringify(s.media)}`);
    assert(pair.localCandidateType === "relay", `${name}: local candidate is ${pair.localCandidateType}, not relay`);
    assert(pair.remoteCandidateType === "relay", `${name}: remote candidate is ${pair.remoteCandidateType}, not relay`);
    assert(
      pair.relayProtocol === c.relayProtocol,
      `${name}: relay protocol ${pair.relayProtocol}, expected ${c.relayProtocol}`,
    );
    assert(pair.local.url === c.uri || !pair.local.url, `${name}: candidate from ${pair.local.url}, expected ${c.uri}`);
    assert(
      pair.bytesReceived > before.pair.bytesReceived + 10000,
      `${name}: bytesReceived ${before.pair.bytesReceived} -> ${pair.bytesReceived} in 30 s`,
    );
    assert(
      s.media.videoBytesReceived > before.media.videoBytesReceived && s.media.framesDecoded > before.media.framesDecoded + 10,
      `${name}: video not flowing: ${JSON.stringify(before.media)} -> ${JSON.stringify(s.media)}`,
    );
    // RTT between the two browsers through vigi-turn (ICE consent checks): the last one, and
    // the mean over the call so far.
    rtts[name] = {
      now: pair.currentRoundTripTime,
      mean: pair.responsesReceived ? pair.totalRoundTripTime / pair.responsesReceived : null,
      checks: pair.responsesReceived,
    };
    relayed[name] = `${pair.local.address}:${pair.local.port}`;
  }

  // vigi-turn's side: the call's two allocations on this transport, relaying both ways. The
  // admin API reads the workers' snapshots, published every second.
  const want = c.relayProtocol;
  const at = (a, r) => a.reported_relay === r || a.relay === r;
  let used = [];
  const deadline = Date.now() + 30000;
  for (;;) {
    const ours = (await allocations(adminUrl)).filter((a) => a.transport === want);
    const flowing = ours.filter(
      (a) => a.traffic.rcv.bytes > 10000 && a.traffic.sent.bytes > 10000 && a.traffic.peer_sent.bytes > 10000,
    );
    // The allocations whose relayed addresses the two browsers use are vigi-turn's, on this
    // transport, and relayed the video.
    used = [relayed.alice, relayed.bob].map((r) => flowing.find((a) => at(a, r)));
    if (used.every(Boolean) || Date.now() > deadline) {
      assert(
        used.every(Boolean),
        `${adminUrl} has no relaying ${want} allocation for ${relayed.alice} and ${relayed.bob}: ${JSON.stringify(ours)}`,
      );
      break;
    }
    await sleep(500);
  }
  for (const [name, a] of [["alice", used[0]], ["bob", used[1]]]) {
    say(
      `vigi-turn ${a.id} (${name}) ${a.transport} client ${a.client} relay ${a.relay}: ` +
        `${a.permissions} permissions, ${a.channels} channels; ` +
        `from client ${a.traffic.rcv.bytes} B, to client ${a.traffic.sent.bytes} B, ` +
        `to peer ${a.traffic.peer_sent.bytes} B, from peer ${a.traffic.peer_rcv.bytes} B`,
    );
    // Firefox's TURN client never binds a channel: everything it relays is Send and Data
    // indications (RFC 8656 §11), and an allocation with no channel can carry nothing else, since
    // ChannelData needs a bound channel and the server sends Data indications to a client for
    // peers without one. Chromium binds a channel to its peer and relays ChannelData.
    const browser = name === "alice" ? c.alice || "chromium" : c.bob || "chromium";
    if (browser === "firefox") {
      assert(a.channels === 0, `${name} (firefox): ${a.channels} channels bound, expected Send/Data indications only`);
    } else {
      assert(a.channels > 0, `${name} (${browser}): no channel bound, expected ChannelData`);
    }
  }

  // The toggles act on the local tracks.
  await press(alice, "#mute");
  await press(alice, "#video-toggle");
  const toggled = await alice.evaluate(() => ({
    muted: window.vigiDemo.state.muted,
    videoOff: window.vigiDemo.state.videoOff,
    audio: window.vigiDemo.localStream.getAudioTracks().map((t) => t.enabled),
    video: window.vigiDemo.localStream.getVideoTracks().map((t) => t.enabled),
  }));
  assert(
    toggled.muted && toggled.videoOff && !toggled.audio.includes(true) && !toggled.video.includes(true),
    `toggles: ${JSON.stringify(toggled)}`,
  );

  say(`${c.name}: hanging up`);
  await press(alice, "#hangup");
  await waitFor(bob, () => window.vigiDemo.state.callState === "ended", 10000);
  // Browsers release their allocations (Refresh lifetime 0) when the connection closes; wait
  // up to 10 s for the call's to be gone, so that the next call's allocations are the only ones.
  const gone = Date.now() + 10000;
  let left = [];
  for (;;) {
    left = (await allocations(adminUrl)).filter((a) => used.some((u) => u.id === a.id));
    if (!left.length || Date.now() > gone) break;
    await sleep(250);
  }
  if (left.length) say(`${c.name}: ${left.length} allocations still held after the hang-up`);
  say(
    `ok - ${c.name}: relay<->relay over ${c.relayProtocol}, bytes flowing; ` +
      `RTT alice ${fmtRtt(rtts.alice)}, bob ${fmtRtt(rtts.bob)}`,
  );
}

const fmt = (s) => (s == null ? "n/a" : `${(s * 1000).toFixed(1)} ms`);
const fmtRtt = (r) => `${fmt(r.now)} (mean ${fmt(r.mean)} over ${r.checks} checks)`;

// One browser of each kind the calls name, and one page per (browser, user), logged in once.
// Users of one browser kind have ids of their own (alice in Chromium, alice-firefox in Firefox),
// so that a login in one browser does not take over another's session.
const browsers = {};
const pages = {};
async function pageFor(kind, user) {
  const id = kind === "chromium" ? user : `${user}-${kind}`;
  if (!pages[id]) {
    if (!browsers[kind]) {
      assert(LAUNCH[kind], `no browser ${kind}`);
      browsers[kind] = await LAUNCH[kind]();
      say(`${kind}: ${await browsers[kind].version()}`);
    }
    pages[id] = { page: await openAs(browsers[kind], id), id };
  }
  return pages[id];
}

let code = 0;
try {
  for (const c of CALLS) {
    const alice = await pageFor(c.alice || "chromium", "alice");
    const bob = await pageFor(c.bob || "chromium", "bob");
    await placeCall(alice, bob, c);
  }
  say("ok - all calls relayed");
} catch (e) {
  console.error(String(e.stack || e));
  code = 1;
} finally {
  for (const b of Object.values(browsers)) await within(15000, "close", b.close()).catch(() => {});
}
process.exit(code);
