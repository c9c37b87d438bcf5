// A small Socket.io v5 client (Engine.IO v4 over WebSocket only) for vigi-turn's demo page.
// Enough for the signaling companion: connect to namespace "/" with `auth`, JSON events both
// ways, answer the server's pings, reconnect with backoff. No long-polling, no binary packets,
// no acknowledgements, no other namespaces.
//
// Engine.IO v4 packets (text frames): 0 open {sid, pingInterval, pingTimeout, maxPayload},
// 1 close, 2 ping, 3 pong, 4 message. A message carries a Socket.io packet: 0 connect [auth],
// 1 disconnect, 2 event [name, ...args], 3 ack, 4 connect_error {message}.
//
// Licensed as the rest of vigi-turn (MIT OR Apache-2.0).
"use strict";

class SioClient {
  // url: the page's origin (ws/wss is derived); auth: the handshake object sent with "40".
  constructor(url, auth) {
    const u = new URL(url, location.href);
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    u.pathname = "/socket.io/";
    const q = new URLSearchParams({ EIO: "4", transport: "websocket" });
    // The token rides in the handshake's query too, so the server checks it before it opens
    // a session at all (and again in "40").
    if (auth && auth.token) {
      q.set("userId", String(auth.userId));
      q.set("expiry", String(auth.expiry));
      q.set("token", String(auth.token));
    }
    u.search = "?" + q.toString();
    this.url = u.toString();
    this.auth = auth;
    this.handlers = new Map();
    this.connected = false;
    this.closedByUser = false;
    this.retries = 0;
    this.ws = null;
    this.pingTimer = null;
    this.retryTimer = null;
  }

  on(event, fn) {
    if (!this.handlers.has(event)) this.handlers.set(event, []);
    this.handlers.get(event).push(fn);
    return this;
  }

  fire(event, ...args) {
    for (const fn of this.handlers.get(event) || []) {
      try {
        fn(...args);
      } catch (e) {
        console.error(`handler of ${event}:`, e);
      }
    }
  }

  connect() {
    this.closedByUser = false;
    clearTimeout(this.retryTimer);
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onmessage = (ev) => {
      if (ws === this.ws && typeof ev.data === "string") this.onPacket(ev.data);
    };
    ws.onclose = () => {
      if (ws === this.ws) this.onClose("transport close");
    };
    ws.onerror = () => {}; // onclose follows
    return this;
  }

  onPacket(data) {
    switch (data[0]) {
      case "0": {
        // Engine.IO open: the server pings every pingInterval; give up after pingTimeout more.
        const o = JSON.parse(data.slice(1));
        this.pingWindow = (o.pingInterval || 25000) + (o.pingTimeout || 20000);
        this.armPingTimer();
        this.ws.send("40" + JSON.stringify(this.auth || {}));
        break;
      }
      case "2":
        this.ws.send("3" + data.slice(1));
        this.armPingTimer();
        break;
      case "1":
        this.ws.close();
        break;
      case "4":
        this.onSio(data.slice(1));
        break;
      default:
        break;
    }
  }

  onSio(p) {
    const type = p[0];
    // Namespace "/" only: no "/nsp," prefix. Skip an ack id (digits) before the JSON.
    let i = 1;
    while (i < p.length && p[i] >= "0" && p[i] <= "9") i++;
    const json = p.slice(i);
    const body = json ? JSON.parse(json) : undefined;
    switch (type) {
      case "0":
        this.connected = true;
        this.retries = 0;
        this.id = body && body.sid;
        this.fire("connect");
        break;
      case "4":
        // Refused by the server (bad userId or token): do not retry with the same auth.
        this.closedByUser = true;
        this.fire("connect_error", (body && body.message) || "refused");
        this.ws.close();
        break;
      case "1":
        this.closedByUser = true;
        this.ws.close();
        break;
      case "2":
        if (Array.isArray(body) && typeof body[0] === "string") {
          this.fire(body[0], ...body.slice(1));
        }
        break;
      default:
        break;
    }
  }

  armPingTimer() {
    clearTimeout(this.pingTimer);
    this.pingTimer = setTimeout(() => {
      if (this.ws) this.ws.close();
      this.onClose("ping timeout");
    }, this.pingWindow || 45000);
  }

  onClose(reason) {
    clearTimeout(this.pingTimer);
    const was = this.connected;
    this.connected = false;
    this.ws = null;
    if (was) this.fire("disconnect", reason);
    if (!this.closedByUser) {
      // 0.5 s, 1 s, 2 s ... at most 10 s between attempts.
      const delay = Math.min(10000, 500 * 2 ** this.retries++);
      this.retryTimer = setTimeout(() => this.connect(), delay);
    }
  }

  emit(event, data) {
    if (!this.connected) return false;
    this.ws.send("42" + JSON.stringify([event, data]));
    return true;
  }

  disconnect() {
    this.closedByUser = true;
    clearTimeout(this.retryTimer);
    if (this.ws) {
      if (this.ws.readyState === WebSocket.OPEN) this.ws.send("41");
      this.ws.close();
    }
  }
}

window.SioClient = SioClient;
