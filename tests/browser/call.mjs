// Drives vigi-turn's demo call page (served by the signaling companion at /) in headless
// Chromium: two pages log in as two users, and for each TURN URI given, alice places a video
// call to bob with iceTransportPolicy 'relay' and only that URI. Asserted on both sides from
// getStats(): the selected pair is relay <-> relay, the local relay candidate reached vigi-turn
// over the expected protocol (udp, tcp or tls), and bytes flow (bytesReceived grows). Asserted
// on vigi-turn's side through its admin API while the call is up: the two allocations of the call
// exist on the expected transport and relayed bytes both ways. Each call's RTT (from getStats)
// is logged, not asserted.
//
// Run by tests/browser.rs. Environment:
//   DEMO_URL       the page, e.g. http://127.0.0.1:8080/
//   SIGNAL_SECRET  --signaling-secret (handshake tokens are minted here, as an app backend would)
//   CALLS          JSON [{name, uri, relayProtocol}], one call each
//   ADMIN_URL      vigi-turn's admin API base (http://127.0.0.1:PORT), ADMIN_TOKEN its token
//   CHROMIUM       the browser (default /usr/bin/chromium)
//   BROWSER_ARGS   JSON list of extra Chromium flags (e.g. how to accept the test certificate)
import { createHmac } from "node:crypto";
import { chromium } from "playwright-core";

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

function assert(cond, msg) {
  if (!cond) throw new Error(`assertion failed: ${msg}`);
}

// The handshake token of the signaling companion: hex HMAC-SHA256(secret, "user:expiry").
function token(user) {
  const expiry = Math.floor(Date.now() / 1000) + 3600;
  return { expiry, token: createHmac("sha256", SECRET).update(`${user}:${expiry}`).digest("hex") };
}

async function allocations() {
  const r = await fetch(`${ADMIN_URL}/api/allocations`, {
    headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
  });
  assert(r.ok, `admin API answered ${r.status}`);
  return (await r.json()).allocations;
}

async function state(page) {
  return page.evaluate(() => JSON.parse(JSON.stringify(window.vigiDemo.state)));
}

async function openAs(context, user) {
  const page = await context.newPage();
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") say(`${user} console ${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => say(`${user} page error: ${e}`));
  page.on("response", (r) => {
    if (r.status() >= 400) say(`${user}: ${r.status()} for ${r.url()}`);
  });
  await page.goto(DEMO_URL);
  // Through the form, as a person would.
  const t = token(user);
  await page.fill("#user", user);
  await page.locator("#token-box summary").click();
  await page.fill("#expiry", String(t.expiry));
  await page.fill("#token", t.token);
  await page.click("#login");
  await page.waitForFunction(
    () => window.vigiDemo.state.signaling === "online" && window.vigiDemo.state.credentials,
    null,
    { timeout: 15000 },
  );
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

async function placeCall(alice, bob, c) {
  say(`--- ${c.name}: ${c.uri}`);
  for (const p of [alice, bob]) {
    await p.evaluate((uri) => window.vigiDemo.selectUris([uri]), c.uri);
    await p.setChecked("#relay-only", true);
  }
  await alice.fill("#callee", "bob");
  await alice.selectOption("#call-type", "video");
  await alice.click("#call");
  await bob.waitForSelector("#answer:visible", { timeout: 15000 });
  await bob.click("#answer");

  const connected = () =>
    window.vigiDemo.state.callState === "active" &&
    window.vigiDemo.state.pair &&
    window.vigiDemo.state.pair.state === "succeeded";
  for (const [name, p] of [["alice", alice], ["bob", bob]]) {
    try {
      await p.waitForFunction(connected, null, { timeout: 30000, polling: 200 });
    } catch (e) {
      const s = await state(p);
      throw new Error(
        `${name}: call not connected over ${c.name}: state ${s.callState}, ICE ${s.iceConnectionState}, ` +
          `errors ${JSON.stringify(s.errors)}\nlog:\n${s.log.join("\n")}`,
      );
    }
  }
  say(`${c.name}: both sides connected`);

  const first = { alice: await sample(alice), bob: await sample(bob) };
  await sleep(3000);
  const rtts = {};
  const relayed = {}; // each side's relayed address, as its local relay candidate says
  for (const [name, p] of [["alice", alice], ["bob", bob]]) {
    const s = await sample(p);
    const pair = s.pair;
    say(`${name} ${c.name}: ${JSON.stringify(pair)} media ${JSON.stringify(s.media)}`);
    assert(pair.localCandidateType === "relay", `${name}: local candidate is ${pair.localCandidateType}, not relay`);
    assert(pair.remoteCandidateType === "relay", `${name}: remote candidate is ${pair.remoteCandidateType}, not relay`);
    assert(
      pair.relayProtocol === c.relayProtocol,
      `${name}: relay protocol ${pair.relayProtocol}, expected ${c.relayProtocol}`,
    );
    assert(pair.local.url === c.uri || !pair.local.url, `${name}: candidate from ${pair.local.url}, expected ${c.uri}`);
    const before = first[name];
    assert(
      pair.bytesReceived > before.pair.bytesReceived + 10000,
      `${name}: bytesReceived ${before.pair.bytesReceived} -> ${pair.bytesReceived} in 3 s`,
    );
    assert(
      s.media.videoBytesReceived > before.media.videoBytesReceived && s.media.framesDecoded > before.media.framesDecoded,
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
  let ours = [];
  const deadline = Date.now() + 30000;
  for (;;) {
    ours = (await allocations()).filter((a) => a.transport === want);
    const flowing = ours.filter(
      (a) => a.traffic.rcv.bytes > 10000 && a.traffic.sent.bytes > 10000 && a.traffic.peer_sent.bytes > 10000,
    );
    // The allocations whose relayed addresses the two browsers use are vigi-turn's, on this
    // transport, and relayed the video.
    const at = (a, r) => a.reported_relay === r || a.relay === r;
    const used = [relayed.alice, relayed.bob].map((r) => flowing.find((a) => at(a, r)));
    if (used.every(Boolean) || Date.now() > deadline) {
      assert(
        used.every(Boolean),
        `vigi-turn has no relaying ${want} allocation for ${relayed.alice} and ${relayed.bob}: ${JSON.stringify(ours)}`,
      );
      break;
    }
    await sleep(500);
  }
  const mine = (a) => [relayed.alice, relayed.bob].some((r) => r === a.reported_relay || r === a.relay);
  for (const a of ours.filter(mine)) {
    say(
      `vigi-turn ${a.id} ${a.transport} client ${a.client} relay ${a.relay}: ` +
        `from client ${a.traffic.rcv.bytes} B, to client ${a.traffic.sent.bytes} B, ` +
        `to peer ${a.traffic.peer_sent.bytes} B, from peer ${a.traffic.peer_rcv.bytes} B`,
    );
  }

  // The toggles act on the local tracks.
  await alice.click("#mute");
  await alice.click("#video-toggle");
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

  await alice.click("#hangup");
  await bob.waitForFunction(() => window.vigiDemo.state.callState === "ended", null, { timeout: 10000 });
  // Chromium releases its allocations (Refresh lifetime 0) when the connection closes; wait for
  // them to be gone so that the next call's allocations are the only ones.
  const gone = Date.now() + 10000;
  while ((await allocations()).length && Date.now() < gone) await sleep(250);
  say(
    `ok - ${c.name}: relay<->relay over ${c.relayProtocol}, bytes flowing; ` +
      `RTT alice ${fmtRtt(rtts.alice)}, bob ${fmtRtt(rtts.bob)}`,
  );
}

const fmt = (s) => (s == null ? "n/a" : `${(s * 1000).toFixed(1)} ms`);
const fmtRtt = (r) => `${fmt(r.now)} (mean ${fmt(r.mean)} over ${r.checks} checks)`;

const browser = await chromium.launch({
  executablePath: env("CHROMIUM", "/usr/bin/chromium"),
  headless: true,
  // playwright starts every launch with a fresh temporary --user-data-dir of its own.
  args: [
    "--headless",
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
});
let code = 0;
try {
  say(`chromium ${browser.version()}`);
  // Two contexts: two separate browser profiles, as two people would be.
  const alice = await openAs(await browser.newContext(), "alice");
  const bob = await openAs(await browser.newContext(), "bob");
  for (const c of CALLS) await placeCall(alice, bob, c);
  say("ok - all calls relayed");
} catch (e) {
  console.error(String(e.stack || e));
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
