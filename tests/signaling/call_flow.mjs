// The seed's Socket.io call flow between real socket.io-client 4.x clients, against a running
// vigi-turn --signaling-listen. Driven by tests/signaling.rs:
//   SIGNAL_URL=http://127.0.0.1:PORT SIGNAL_SECRET=... node call_flow.mjs
// Exits 0 when every step passed, 1 (with the failed step) otherwise.
import { createHmac } from 'node:crypto';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';

const URL = process.env.SIGNAL_URL;
// With --signaling-presence an offline callee answers user_offline; by default it looks busy.
const OFFLINE = process.env.PRESENCE === '1' ? 'user_offline' : 'busy';
const SECRET = process.env.SIGNAL_SECRET;
assert.ok(URL, 'SIGNAL_URL is required');
assert.ok(SECRET, 'SIGNAL_SECRET is required');

const token = (user, expiry, secret = SECRET) =>
  createHmac('sha256', secret).update(`${user}:${expiry}`).digest('hex');
const later = () => Math.floor(Date.now() / 1000) + 3600;

const sockets = [];
function open(auth, opts = {}) {
  const s = io(URL, { auth, reconnection: false, forceNew: true, timeout: 20000, ...opts });
  sockets.push(s);
  return s;
}

// The next `event` on `s` (fails after `ms`).
function next(s, event, ms = 20000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timed out waiting for ${event}`)), ms);
    s.once(event, (data) => {
      clearTimeout(t);
      resolve(data);
    });
  });
}

// Fails if `event` arrives on `s` within `ms`.
function never(s, event, ms = 400) {
  return new Promise((resolve, reject) => {
    const h = (data) => reject(new Error(`unexpected ${event}: ${JSON.stringify(data)}`));
    s.once(event, h);
    setTimeout(() => {
      s.off(event, h);
      resolve();
    }, ms);
  });
}

async function login(user, opts) {
  const expiry = later();
  const s = open({ userId: user, expiry, token: token(user, expiry) }, opts);
  await next(s, 'connect');
  return s;
}

async function refused(auth) {
  const s = open(auth);
  const err = await next(s, 'connect_error');
  s.close();
  return err.message;
}

// One call from `a` (user `aId`) to `b`; returns the call id.
async function ring(a, b, aId, calleeId, type = 'video') {
  const incoming = next(b, 'incoming_call');
  const initiated = next(a, 'call_initiated');
  a.emit('call_initiate', { calleeId, type });
  const inc = await incoming;
  const ini = await initiated;
  assert.equal(inc.callerId, aId);
  assert.equal(inc.type, type);
  assert.equal(inc.callId, ini.callId);
  assert.ok(ini.callId);
  return ini.callId;
}

const steps = [];
const step = (name, fn) => steps.push([name, fn]);
let alice, bob, carol;

step('unauthorized handshakes are refused', async () => {
  const exp = later();
  assert.match(await refused({ userId: 'mallory', expiry: exp, token: token('mallory', exp, 'wrong') }), /invalid token/);
  const past = Math.floor(Date.now() / 1000) - 10;
  assert.match(await refused({ userId: 'mallory', expiry: past, token: token('mallory', past) }), /expired/);
  assert.match(await refused({ userId: 'mallory' }), /missing token/);
  assert.match(await refused({ userId: 'bob', expiry: exp, token: token('alice', exp) }), /invalid token/);
  assert.match(await refused({}), /userId/);
});

step('clients connect (polling+upgrade and websocket only)', async () => {
  alice = await login('alice');
  bob = await login('bob', { transports: ['websocket'] });
  carol = await login('carol');
});

let callId;
step('initiate -> incoming_call and call_initiated', async () => {
  callId = await ring(alice, bob, 'alice', 'bob', 'video');
});

step('busy callee -> call_busy', async () => {
  const busy = next(carol, 'call_busy');
  const noRing = never(bob, 'incoming_call');
  carol.emit('call_initiate', { calleeId: 'bob', type: 'voice' });
  await busy;
  await noRing;
});

step('answer -> call_answered to both', async () => {
  const a = next(alice, 'call_answered');
  const b = next(bob, 'call_answered');
  bob.emit('call_answer', { callId });
  assert.equal((await a).callId, callId);
  assert.equal((await b).callId, callId);
});

step('offer, answer and candidates are relayed with from', async () => {
  const offer = { type: 'offer', sdp: 'v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n' };
  let got = next(bob, 'webrtc_offer');
  alice.emit('webrtc_offer', { offer, to: 'bob' });
  assert.deepEqual(await got, { offer, from: 'alice' });

  const answer = { type: 'answer', sdp: 'v=0\r\n' };
  got = next(alice, 'webrtc_answer');
  bob.emit('webrtc_answer', { answer, to: 'alice' });
  assert.deepEqual(await got, { answer, from: 'bob' });

  const candidate = { candidate: 'candidate:1 1 udp 2113937151 127.0.0.1 5000 typ relay', sdpMid: '0', sdpMLineIndex: 0 };
  got = next(bob, 'webrtc_ice_candidate');
  alice.emit('webrtc_ice_candidate', { candidate, to: 'bob' });
  assert.deepEqual(await got, { candidate, from: 'alice' });
  got = next(alice, 'webrtc_ice_candidate');
  bob.emit('webrtc_ice_candidate', { candidate, to: 'alice' });
  assert.deepEqual(await got, { candidate, from: 'bob' });
});

step('a third party cannot relay into the call', async () => {
  const err = next(carol, 'call_error');
  const nothing = never(bob, 'webrtc_offer');
  carol.emit('webrtc_offer', { offer: { type: 'offer', sdp: 'x' }, to: 'bob' });
  assert.equal((await err).code, 'not_in_call');
  await nothing;
});

step('oversized and invalid payloads are refused', async () => {
  let err = next(alice, 'call_error');
  const nothing = never(bob, 'webrtc_offer');
  alice.emit('webrtc_offer', { offer: { type: 'offer', sdp: 'a'.repeat(100 * 1024) }, to: 'bob' });
  const e = await err;
  assert.equal(e.code, 'payload_too_large');
  assert.ok(e.message);
  await nothing;
  err = next(carol, 'call_error');
  carol.emit('call_initiate', { calleeId: 'alice', type: 'fax' });
  assert.equal((await err).code, 'invalid_payload');
  err = next(carol, 'call_error');
  carol.emit('call_answer', { nope: 1 });
  assert.equal((await err).code, 'invalid_payload');
});

step('end -> the other party gets call_ended', async () => {
  const ended = next(bob, 'call_ended');
  const quiet = never(alice, 'call_ended');
  alice.emit('call_end', { callId });
  assert.equal((await ended).callId, callId);
  await quiet;
  const err = next(alice, 'call_error');
  alice.emit('webrtc_offer', { offer: { type: 'offer', sdp: 'x' }, to: 'bob' });
  assert.equal((await err).code, 'not_in_call');
});

step('reject and decline -> call_rejected', async () => {
  for (const ev of ['call_reject', 'call_decline']) {
    const id = await ring(carol, bob, 'carol', 'bob', 'voice');
    const rejected = next(carol, 'call_rejected');
    bob.emit(ev, { callId: id });
    assert.equal((await rejected).callId, id);
  }
});

step('disconnect ends the call for the other party', async () => {
  const id = await ring(alice, bob, 'alice', 'bob');
  const answered = next(alice, 'call_answered');
  bob.emit('call_answer', { callId: id });
  await answered;
  const ended = next(alice, 'call_ended');
  bob.close();
  assert.equal((await ended).callId, id);
  // Alice is free again.
  await ring(alice, carol, 'alice', 'carol');
});

// The next `call_busy` or `call_error` on `s`, as a code.
function outcome(s, ms = 20000) {
  return new Promise((resolve, reject) => {
    const done = (v) => {
      clearTimeout(t);
      s.off('call_busy', busy);
      s.off('call_error', error);
      resolve(v);
    };
    const busy = () => done('busy');
    const error = (e) => done(e.code);
    const t = setTimeout(() => {
      s.off('call_busy', busy);
      s.off('call_error', error);
      reject(new Error('timed out waiting for call_busy or call_error'));
    }, ms);
    s.on('call_busy', busy);
    s.on('call_error', error);
  });
}

step(`offline answers ${OFFLINE}`, async () => {
  const kim = await login('kim');
  const o = outcome(kim);
  kim.emit('call_initiate', { calleeId: 'nobody-at-all', type: 'voice' });
  assert.equal(await o, OFFLINE);
  kim.close();
});

step('call_initiate is rate limited per user, across reconnects', async () => {
  let dave = await login('dave');
  // All six are sent at once: sent one after another, a loaded machine could take longer than
  // the bucket's refill time (4 s) between the first and the last and see a token come back.
  const codes = [];
  const all = new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`only ${codes.length} answers`)), 20000);
    const add = (code) => {
      codes.push(code);
      if (codes.length === 6) {
        clearTimeout(t);
        resolve();
      }
    };
    dave.on('call_busy', () => add('busy'));
    dave.on('call_error', (e) => add(e.code));
  });
  for (let i = 0; i < 6; i++) {
    dave.emit('call_initiate', { calleeId: `nobody${i}`, type: 'voice' });
  }
  await all;
  // Answered in any order: with --signaling-redis the first five wait on Redis, the sixth not.
  assert.deepEqual([...codes].sort(), [...Array(5).fill(OFFLINE), 'rate_limited'].sort());
  dave.close();
  dave = await login('dave');
  const o = outcome(dave);
  dave.emit('call_initiate', { calleeId: 'nobody9', type: 'voice' });
  assert.equal(await o, 'rate_limited');
  dave.close();
});

step('ringing one callee again and again is limited', async () => {
  const gina = await login('gina');
  const hank = await login('hank');
  for (let i = 0; i < 3; i++) {
    const id = await ring(gina, hank, 'gina', 'hank', 'voice');
    const rejected = next(gina, 'call_rejected');
    hank.emit('call_reject', { callId: id });
    await rejected;
  }
  const o = outcome(gina);
  const noRing = never(hank, 'incoming_call');
  gina.emit('call_initiate', { calleeId: 'hank', type: 'voice' });
  assert.equal(await o, 'rate_limited');
  await noRing;
  // Others still reach hank.
  const lou = await login('lou');
  const id = await ring(lou, hank, 'lou', 'hank', 'voice');
  const ended = next(hank, 'call_ended');
  lou.emit('call_end', { callId: id });
  await ended;
  lou.close();
  gina.close();
  hank.close();
});

step('offers and candidates wait for call_answered, then are rate limited', async () => {
  const ivy = await login('ivy', { transports: ['websocket'] });
  const jon = await login('jon', { transports: ['websocket'] });
  const id = await ring(ivy, jon, 'ivy', 'jon', 'video');
  const offer = { type: 'offer', sdp: 'v=0\r\n' };
  const err = next(ivy, 'call_error');
  const nothing = never(jon, 'webrtc_offer');
  ivy.emit('webrtc_offer', { offer, to: 'jon' });
  assert.equal((await err).code, 'not_answered');
  await nothing;
  const answered = next(ivy, 'call_answered');
  jon.emit('call_answer', { callId: id });
  await answered;
  const got = next(jon, 'webrtc_offer');
  ivy.emit('webrtc_offer', { offer, to: 'jon' });
  assert.deepEqual(await got, { offer, from: 'ivy' });
  // A flood of candidates: 200 at once pass, the rest are refused.
  let received = 0;
  jon.on('webrtc_ice_candidate', () => received++);
  let limited = 0;
  ivy.on('call_error', (e) => { if (e.code === 'rate_limited') limited++; });
  const candidate = { candidate: 'candidate:1 1 udp 1 127.0.0.1 5000 typ host', sdpMid: '0', sdpMLineIndex: 0 };
  const t0 = Date.now();
  for (let i = 0; i < 400; i++) ivy.emit('webrtc_ice_candidate', { candidate, to: 'jon' });
  // Wait for the refusals (the server answers every event it drops with one) and deliveries to
  // settle. Socket.io may also drop deliveries when the callee's send buffer is full.
  // Settled: all 400 answered, or something came and nothing more for a second (a loaded
  // machine, or --signaling-redis asking Redis first, can pause longer than a few ms); 20 s at
  // most.
  let seen = 0;
  let changed = Date.now();
  while (received + limited < 400 && Date.now() - t0 < 20000) {
    if (received + limited !== seen) {
      seen = received + limited;
      changed = Date.now();
    } else if (seen > 0 && Date.now() - changed > 1000) {
      break;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const secs = (Date.now() - t0) / 1000;
  console.log(`# 400 candidates at once: ${received} delivered, ${limited} refused as rate_limited in ${secs} s`);
  // 200 at once, then 50 per second (refusals may be dropped too when the caller's buffer fills).
  assert.ok(limited >= 1, `rate_limited ${limited}`);
  assert.ok(received >= 50 && received <= 201 + 50 * secs, `received ${received}`);
  ivy.close();
  jon.close();
});

step('a token in the handshake query is checked before a session exists', async () => {
  const exp = later();
  const bad = open(
    { userId: 'erin', expiry: exp, token: token('erin', exp) },
    { query: { userId: 'erin', expiry: exp, token: token('erin', exp, 'wrong') } },
  );
  await next(bad, 'connect_error');
  bad.close();
  const good = await login('erin', { query: { userId: 'erin', expiry: exp, token: token('erin', exp) } });
  good.close();
});

step('sockets per user are capped at 16', async () => {
  const mine = [];
  for (let i = 0; i < 16; i++) mine.push(await login('frank', { transports: ['websocket'] }));
  const exp = later();
  assert.match(await refused({ userId: 'frank', expiry: exp, token: token('frank', exp) }), /too many connections of this user/);
  for (const s of mine) s.close();
});

const deadline = setTimeout(() => {
  console.error('call_flow: timed out');
  process.exit(1);
}, 60000);

let failed = false;
for (const [name, fn] of steps) {
  try {
    await fn();
    console.log(`ok - ${name}`);
  } catch (e) {
    console.error(`FAILED - ${name}: ${e.stack || e}`);
    failed = true;
    break;
  }
}
for (const s of sockets) s.close();
clearTimeout(deadline);
process.exit(failed ? 1 : 0);
