// Two vigi-turn nodes sharing one Redis (--signaling-redis) as one signaling service, driven by
// tests/signaling.rs with real socket.io-client 4.x clients:
//   SIGNAL_URL_A=http://127.0.0.1:PA SIGNAL_URL_B=http://127.0.0.1:PB SIGNAL_SECRET=... \
//     MODE=flow|outage node cross_node.mjs
// MODE=flow: the seed's whole call flow with alice on node A and bob on node B, busy and
// presence across nodes. MODE=outage: a cross-node call, then `PAUSE redis-down` (the test
// kills Redis and answers `go` on stdin), calls within one node while Redis is away, then
// `PAUSE redis-up` (Redis is back), and cross-node calls again. MODE=restart: a cross-node
// call, `PAUSE kill-b` (the test kills node B), then its user reconnects to node A and the
// call goes on from its state in Redis.
// Prints `ok - <step>` per step; exits 0 when every step passed, 1 otherwise.
import { createHmac } from 'node:crypto';
import { createInterface } from 'node:readline';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';

const A = process.env.SIGNAL_URL_A;
const B = process.env.SIGNAL_URL_B;
const SECRET = process.env.SIGNAL_SECRET;
const MODE = process.env.MODE ?? 'flow';
assert.ok(A && B && SECRET, 'SIGNAL_URL_A, SIGNAL_URL_B and SIGNAL_SECRET are required');

const token = (user, expiry) => createHmac('sha256', SECRET).update(`${user}:${expiry}`).digest('hex');
const later = () => Math.floor(Date.now() / 1000) + 3600;

const sockets = [];
async function login(url, user, opts = {}) {
  const expiry = later();
  const s = io(url, {
    auth: { userId: user, expiry, token: token(user, expiry) },
    reconnection: false,
    forceNew: true,
    timeout: 20000,
    ...opts,
  });
  sockets.push(s);
  await next(s, 'connect');
  return s;
}

// The next `event` on `s` (fails after `ms`).
function next(s, event, ms = 25000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timed out waiting for ${event}`)), ms);
    s.once(event, (data) => {
      clearTimeout(t);
      resolve(data);
    });
  });
}

// Fails if `event` arrives on `s` within `ms`.
function never(s, event, ms = 500) {
  return new Promise((resolve, reject) => {
    const h = (data) => reject(new Error(`unexpected ${event}: ${JSON.stringify(data)}`));
    s.once(event, h);
    setTimeout(() => {
      s.off(event, h);
      resolve();
    }, ms);
  });
}

// `a` (user `aId`) rings `calleeId` on socket `b`; the call id.
async function ring(a, b, aId, calleeId, type = 'video') {
  const incoming = next(b, 'incoming_call');
  const initiated = next(a, 'call_initiated');
  a.emit('call_initiate', { calleeId, type });
  const inc = await incoming;
  const ini = await initiated;
  assert.equal(inc.callerId, aId);
  assert.equal(inc.type, type);
  assert.equal(inc.callId, ini.callId);
  return ini.callId;
}

async function answer(a, b, callId) {
  const onA = next(a, 'call_answered');
  const onB = next(b, 'call_answered');
  b.emit('call_answer', { callId });
  assert.equal((await onA).callId, callId);
  assert.equal((await onB).callId, callId);
}

// An offer from `a` (`aId`) to `bId` on socket `b`, the answer back and a candidate each way.
async function negotiate(a, aId, b, bId) {
  const offer = { type: 'offer', sdp: `v=0\r\no=${aId} 1 2 IN IP4 127.0.0.1\r\n` };
  const gotOffer = next(b, 'webrtc_offer');
  a.emit('webrtc_offer', { offer, to: bId });
  assert.deepEqual(await gotOffer, { offer, from: aId });
  const ans = { type: 'answer', sdp: `v=0\r\no=${bId} 3 4 IN IP4 127.0.0.1\r\n` };
  const gotAnswer = next(a, 'webrtc_answer');
  b.emit('webrtc_answer', { answer: ans, to: aId });
  assert.deepEqual(await gotAnswer, { answer: ans, from: bId });
  const cand = { candidate: 'candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host', sdpMid: '0' };
  const c1 = next(b, 'webrtc_ice_candidate');
  const c2 = next(a, 'webrtc_ice_candidate');
  a.emit('webrtc_ice_candidate', { candidate: cand, to: bId });
  b.emit('webrtc_ice_candidate', { candidate: cand, to: aId });
  assert.deepEqual(await c1, { candidate: cand, from: aId });
  assert.deepEqual(await c2, { candidate: cand, from: bId });
}

async function hangUp(a, aId, b, callId) {
  const ended = next(b, 'call_ended');
  a.emit('call_end', { callId });
  const e = await ended;
  assert.equal(e.callId, callId);
  assert.equal(e.endedBy, aId);
}

async function busy(caller, calleeId) {
  const b = next(caller, 'call_busy');
  caller.emit('call_initiate', { calleeId, type: 'voice' });
  assert.equal((await b).calleeId, calleeId);
}

async function refusedWith(s, event, data, code) {
  const err = next(s, 'call_error');
  s.emit(event, data);
  assert.equal((await err).code, code);
}

// Lines the test writes on stdin: one `go` per PAUSE.
const stdin = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function pause(name) {
  console.log(`PAUSE ${name}`);
  const { value, done } = await stdin.next();
  assert.ok(!done && value.trim() === 'go', `expected go after PAUSE ${name}, got ${value}`);
}

const steps = [];
const step = (name, fn) => steps.push([name, fn]);
let alice, bob, carol, dave, callId;

if (MODE === 'flow') {
  step('clients connect to both nodes', async () => {
    alice = await login(A, 'alice');
    bob = await login(B, 'bob', { transports: ['websocket'] });
    carol = await login(B, 'carol');
    dave = await login(A, 'dave');
  });

  step('alice on A rings bob on B', async () => {
    const t = performance.now();
    callId = await ring(alice, bob, 'alice', 'bob', 'video');
    console.log(`# call_initiate -> incoming_call on the other node: ${(performance.now() - t).toFixed(1)} ms`);
  });

  step('busy across nodes: carol on B rings alice, dave on A rings bob', async () => {
    const noRing = never(alice, 'incoming_call');
    await busy(carol, 'alice');
    await busy(dave, 'bob');
    await noRing;
  });

  step('no offer while it rings, across nodes', async () => {
    await refusedWith(alice, 'webrtc_offer', { offer: { type: 'offer', sdp: 'x' }, to: 'bob' }, 'not_answered');
  });

  step('bob answers on B -> call_answered on both nodes', async () => {
    await answer(alice, bob, callId);
  });

  step('offer, answer and candidates cross nodes with from', async () => {
    const t = performance.now();
    await negotiate(alice, 'alice', bob, 'bob');
    console.log(`# offer, answer and two candidates across nodes: ${(performance.now() - t).toFixed(1)} ms`);
  });

  step('a third party cannot relay into the call', async () => {
    await refusedWith(carol, 'webrtc_offer', { offer: { type: 'offer', sdp: 'x' }, to: 'alice' }, 'not_in_call');
  });

  step('alice ends on A -> call_ended on B', async () => {
    await hangUp(alice, 'alice', bob, callId);
  });

  step('bob on B rings alice on A, alice rejects', async () => {
    const id = await ring(bob, alice, 'bob', 'alice', 'voice');
    const rejected = next(bob, 'call_rejected');
    alice.emit('call_reject', { callId: id });
    assert.equal((await rejected).callId, id);
  });

  step('presence across nodes: someone online nowhere looks busy', async () => {
    await busy(dave, 'zed');
  });

  step('bob leaving B ends his call on A, and he comes back', async () => {
    const id = await ring(dave, bob, 'dave', 'bob', 'voice');
    await answer(dave, bob, id);
    const ended = next(dave, 'call_ended');
    bob.close();
    const e = await ended;
    assert.equal(e.callId, id);
    assert.equal(e.reason, 'disconnected');
    // Gone everywhere: calling him is busy, until he is back (on the other node this time).
    await busy(carol, 'bob');
    bob = await login(A, 'bob');
    const again = await ring(carol, bob, 'carol', 'bob', 'voice');
    await hangUp(carol, 'carol', bob, again);
  });

  step('a user on both nodes rings on both', async () => {
    const bobOnB = await login(B, 'bob');
    const other = next(bobOnB, 'incoming_call');
    const id = await ring(alice, bob, 'alice', 'bob', 'video');
    assert.equal((await other).callId, id);
    await answer(alice, bobOnB, id);
    await hangUp(bobOnB, 'bob', alice, id);
  });
} else if (MODE === 'restart') {
  step('a cross-node call is up', async () => {
    alice = await login(A, 'alice');
    bob = await login(B, 'bob', { transports: ['websocket'] });
    callId = await ring(alice, bob, 'alice', 'bob', 'video');
    await answer(alice, bob, callId);
  });

  step('node B dies', async () => {
    const gone = next(bob, 'disconnect');
    await pause('kill-b');
    await gone;
  });

  step('bob reconnects to A and the call goes on', async () => {
    bob = await login(A, 'bob', { transports: ['websocket'] });
    await busy(await login(A, 'carol'), 'bob');
    await negotiate(bob, 'bob', alice, 'alice');
    await hangUp(bob, 'bob', alice, callId);
  });
} else {
  step('a cross-node call is up', async () => {
    alice = await login(A, 'alice');
    bob = await login(B, 'bob', { transports: ['websocket'] });
    carol = await login(A, 'carol');
    callId = await ring(alice, bob, 'alice', 'bob', 'video');
    await answer(alice, bob, callId);
    await negotiate(alice, 'alice', bob, 'bob');
  });

  step('Redis goes away', async () => {
    await pause('redis-down');
  });

  step('the call Redis kept goes on in A: alice stays busy, and may hang up', async () => {
    await busy(carol, 'alice');
    const quiet = never(alice, 'call_error');
    alice.emit('call_end', { callId });
    await quiet;
  });

  step('each node serves its own users: carol and dave on A call each other', async () => {
    dave = await login(A, 'dave');
    const id = await ring(carol, dave, 'carol', 'dave', 'voice');
    await answer(carol, dave, id);
    await negotiate(carol, 'carol', dave, 'dave');
    await hangUp(dave, 'dave', carol, id);
  });

  step('users of the other node are out of reach meanwhile', async () => {
    await busy(carol, 'bob');
  });

  step('Redis is back', async () => {
    await pause('redis-up');
  });

  step('cross-node calls again: carol on A rings bob on B', async () => {
    const id = await ring(carol, bob, 'carol', 'bob', 'voice');
    await answer(carol, bob, id);
    await negotiate(bob, 'bob', carol, 'carol');
    await hangUp(bob, 'bob', carol, id);
  });
}

let failed = false;
for (const [name, fn] of steps) {
  try {
    await fn();
    console.log(`ok - ${name}`);
  } catch (e) {
    console.log(`not ok - ${name}: ${e.stack ?? e}`);
    failed = true;
    break;
  }
}
for (const s of sockets) s.close();
process.exit(failed ? 1 : 0);
