// vigi-turn's demo call page: log in over Socket.io (sio.js), fetch TURN credentials from
// /api/turn-credentials, place or answer a voice or video call with the seed's events, and show
// what getStats() says about the selected candidate pair.
//
// Everything a test needs is on `window.vigiDemo`: `state` (kept current; see `state` below) and
// the actions `login`, `logout`, `selectUris`, `setRelayOnly`, `call`, `answer`, `reject`,
// `hangup`, `toggleMute`, `toggleVideo`, `refreshStats`. <body> carries `data-call-state`,
// `data-signaling` and `data-relay` for CSS and for tests that prefer the DOM.
//
// Licensed as the rest of vigi-turn (MIT OR Apache-2.0).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  const state = {
    user: null,
    signaling: "offline", // offline | connecting | online | refused
    credentials: null, // {username, password, ttl, uris, iceServers} as fetched
    fetchedAt: 0,
    // idle | calling (sent, no id yet) | ringing (callee rings) | incoming | connecting |
    // active (ICE connected) | ended
    callState: "idle",
    callId: null,
    peer: null,
    callType: null,
    role: null, // caller | callee
    endReason: null,
    muted: false,
    videoOff: false,
    synthetic: false, // generated media in use
    rtcConfig: null, // the RTCConfiguration of the current or last call
    iceConnectionState: "new",
    connectionState: "new",
    pair: null, // the selected candidate pair of the current or last call (see readStats)
    media: null, // inbound RTP totals
    statsSamples: 0,
    errors: [],
    log: [],
  };

  let sio = null;
  let pc = null;
  let localStream = null;
  let mediaReady = null; // Promise<MediaStream> for the current call
  let pendingCandidates = [];
  let statsTimer = null;
  let synthStop = null;

  // ------------------------------------------------------------------ log and render

  function log(msg) {
    const line = `${new Date().toISOString().slice(11, 23)} ${msg}`;
    state.log.push(line);
    if (state.log.length > 300) state.log.shift();
    const li = document.createElement("li");
    li.textContent = line;
    const ol = $("log");
    ol.prepend(li);
    while (ol.children.length > 300) ol.lastChild.remove();
  }

  function error(msg) {
    state.errors.push(msg);
    log(`error: ${msg}`);
  }

  function setCall(s, extra) {
    if (state.callState !== s) log(`call: ${state.callState} -> ${s}`);
    state.callState = s;
    Object.assign(state, extra || {});
    render();
  }

  function render() {
    const inCall = !["idle", "ended"].includes(state.callState);
    const online = state.signaling === "online";
    document.body.dataset.callState = state.callState;
    document.body.dataset.signaling = state.signaling;
    $("signaling-state").textContent = state.user
      ? `${state.signaling} as ${state.user}`
      : state.signaling;
    $("login").disabled = !!state.user;
    $("logout").disabled = !state.user;
    $("user").disabled = !!state.user;
    $("call").disabled = !online || inCall;
    $("incoming").hidden = state.callState !== "incoming";
    $("hangup").disabled = !inCall || state.callState === "incoming";
    $("mute").disabled = !localStream;
    $("video-toggle").disabled = !localStream || !localStream.getVideoTracks().length;
    $("mute").textContent = state.muted ? "Unmute" : "Mute";
    $("video-toggle").textContent = state.videoOff ? "Video on" : "Video off";
    $("call-state").textContent = state.callState + (state.endReason ? ` (${state.endReason})` : "");
    $("call-peer").textContent = state.peer
      ? `${state.role === "caller" ? "to" : "from"} ${state.peer}${state.callType ? `, ${state.callType}` : ""}`
      : "";
    if (state.credentials) {
      const left = Math.max(0, Math.round(state.credentials.ttl - (Date.now() - state.fetchedAt) / 1000));
      $("cred-state").textContent = `${state.credentials.username} (valid ${left} s more)`;
    } else {
      $("cred-state").textContent = "none";
    }
    $("ice-state").textContent = state.iceConnectionState;
    $("pc-state").textContent = state.connectionState;
    const p = state.pair;
    const cand = (c) =>
      c
        ? `${c.candidateType} ${c.protocol}${c.relayProtocol ? ` via TURN/${c.relayProtocol}` : ""} ${c.address}:${c.port}`
        : "-";
    $("pair").textContent = p
      ? `${p.localCandidateType} <-> ${p.remoteCandidateType}${p.relay ? " (relayed)" : ""}, ${p.state}`
      : "-";
    $("local-cand").textContent = p ? cand(p.local) : "-";
    $("remote-cand").textContent = p ? cand(p.remote) : "-";
    $("turn-url").textContent = (p && p.local && p.local.url) || "-";
    $("bytes").textContent = p ? `${p.bytesSent} / ${p.bytesReceived}` : "-";
    $("rtt").textContent =
      p && p.currentRoundTripTime != null ? `${(p.currentRoundTripTime * 1000).toFixed(1)} ms` : "-";
    $("frames").textContent = state.media ? String(state.media.framesDecoded) : "-";
    document.body.dataset.relay = p ? (p.relay ? "yes" : "no") : "";
  }

  // ------------------------------------------------------------------ credentials and URIs

  function authParams() {
    const q = new URLSearchParams();
    if (state.user) q.set("userId", state.user);
    if (state.auth && state.auth.expiry) q.set("expiry", String(state.auth.expiry));
    if (state.auth && state.auth.token) q.set("token", state.auth.token);
    return q;
  }

  async function fetchCredentials() {
    const r = await fetch(`/api/turn-credentials?${authParams()}`, { cache: "no-store" });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(`/api/turn-credentials: ${r.status} ${body.error || ""}`);
    const first = !state.credentials;
    state.credentials = body;
    state.fetchedAt = Date.now();
    renderUris(first);
    render();
    return body;
  }

  // Credentials still valid for a minute, fetched again otherwise.
  async function freshCredentials() {
    const c = state.credentials;
    if (c && Date.now() - state.fetchedAt < (c.ttl - 60) * 1000) return c;
    return fetchCredentials();
  }

  function renderUris(first) {
    const box = $("uri-list");
    const was = new Set(checkedUris());
    box.textContent = "";
    for (const uri of state.credentials.uris || []) {
      const label = document.createElement("label");
      const cb = document.createElement("input");
      cb.type = "checkbox";
      cb.value = uri;
      cb.checked = first || was.has(uri);
      label.append(cb, " ", uri);
      box.append(label);
    }
    if (!(state.credentials.uris || []).length) box.textContent = "(the server lists no URI)";
  }

  function checkedUris() {
    return [...document.querySelectorAll("#uri-list input[type=checkbox]")]
      .filter((cb) => cb.checked)
      .map((cb) => cb.value);
  }

  function extraUris() {
    return $("extra-uris")
      .value.split(/\s+/)
      .map((s) => s.trim())
      .filter(Boolean);
  }

  // Use exactly `uris`: the listed ones are ticked, the others unticked, the rest go to "other URIs".
  function selectUris(uris) {
    const listed = new Set((state.credentials && state.credentials.uris) || []);
    for (const cb of document.querySelectorAll("#uri-list input[type=checkbox]")) {
      cb.checked = uris.includes(cb.value);
    }
    $("extra-uris").value = uris.filter((u) => !listed.has(u)).join("\n");
    log(`TURN URIs: ${uris.join(" ") || "(none)"}`);
  }

  function setRelayOnly(on) {
    $("relay-only").checked = !!on;
  }

  function rtcConfig() {
    const c = state.credentials;
    const urls = [...new Set([...checkedUris(), ...extraUris()])];
    const iceServers = urls.length && c ? [{ urls, username: c.username, credential: c.password }] : [];
    return {
      iceServers,
      iceTransportPolicy: $("relay-only").checked ? "relay" : "all",
    };
  }

  // ------------------------------------------------------------------ signaling

  function login(userId, auth) {
    userId = String(userId || "").trim();
    if (!userId) throw new Error("user id required");
    if (sio) sio.disconnect();
    state.user = userId;
    state.auth = auth && auth.token ? { expiry: Number(auth.expiry), token: String(auth.token) } : null;
    state.signaling = "connecting";
    state.credentials = null;
    render();
    const handshake = { userId, ...(state.auth || {}) };
    sio = new window.SioClient(location.origin, handshake);
    sio.on("connect", () => {
      state.signaling = "online";
      log(`signaling connected as ${userId}`);
      render();
    });
    sio.on("connect_error", (m) => {
      state.signaling = "refused";
      error(`signaling refused: ${m}`);
      render();
    });
    sio.on("disconnect", (why) => {
      state.signaling = state.user ? "connecting" : "offline";
      log(`signaling lost (${why})`);
      if (!["idle", "ended"].includes(state.callState)) endLocally("signaling lost");
      render();
    });
    sio.on("call_initiated", (d) => {
      if (state.callState === "calling") setCall("ringing", { callId: d.callId });
    });
    sio.on("call_busy", () => {
      if (state.callState === "calling") endLocally("busy");
    });
    sio.on("call_error", (d) => {
      error(`call_error ${d.code}: ${d.message}`);
      if (state.callState === "calling") endLocally(d.code);
    });
    sio.on("incoming_call", (d) => {
      if (!["idle", "ended"].includes(state.callState)) {
        // The server keeps one call per user, so this is a stale one; decline it.
        sio.emit("call_decline", { callId: d.callId });
        return;
      }
      resetCallStats();
      setCall("incoming", {
        callId: d.callId,
        peer: String(d.callerId),
        callType: d.type,
        role: "callee",
        endReason: null,
      });
      $("incoming-from").textContent = String(d.callerId);
      $("incoming-type").textContent = d.type;
    });
    sio.on("call_answered", (d) => {
      if (d.callId !== state.callId) return;
      if (state.role === "caller") {
        setCall("connecting");
        startCaller().catch((e) => fail(e));
      }
    });
    sio.on("call_rejected", (d) => {
      if (d.callId === state.callId) endLocally("rejected");
    });
    sio.on("call_ended", (d) => {
      if (d.callId === state.callId) endLocally(d.reason || `ended by ${d.endedBy || "peer"}`);
    });
    sio.on("webrtc_offer", (d) => {
      if (state.role === "callee" && String(d.from) === state.peer) {
        onOffer(d.offer).catch((e) => fail(e));
      }
    });
    sio.on("webrtc_answer", (d) => {
      if (pc && String(d.from) === state.peer) {
        pc.setRemoteDescription(d.answer)
          .then(flushCandidates)
          .catch((e) => fail(e));
      }
    });
    sio.on("webrtc_ice_candidate", (d) => {
      if (String(d.from) !== state.peer || !d.candidate) return;
      if (pc && pc.remoteDescription) {
        pc.addIceCandidate(d.candidate).catch((e) => error(`addIceCandidate: ${e}`));
      } else {
        pendingCandidates.push(d.candidate);
      }
    });
    sio.connect();
    return fetchCredentials().catch((e) => {
      error(String(e.message || e));
      throw e;
    });
  }

  function logout() {
    if (!["idle", "ended"].includes(state.callState)) hangup();
    if (sio) sio.disconnect();
    sio = null;
    state.user = null;
    state.auth = null;
    state.signaling = "offline";
    state.credentials = null;
    $("uri-list").innerHTML = "<em>log in to load them</em>";
    render();
  }

  // ------------------------------------------------------------------ calls

  function call(callee, type) {
    callee = String(callee || "").trim();
    type = type === "voice" ? "voice" : "video";
    if (!callee) throw new Error("callee id required");
    if (state.signaling !== "online") throw new Error("not connected to signaling");
    if (!["idle", "ended"].includes(state.callState)) throw new Error(`busy (${state.callState})`);
    resetCallStats();
    setCall("calling", {
      callId: null,
      peer: callee,
      callType: type,
      role: "caller",
      endReason: null,
    });
    mediaReady = getMedia(type);
    sio.emit("call_initiate", { calleeId: callee, type });
  }

  function resetCallStats() {
    state.pair = null;
    state.media = null;
    state.rtcConfig = null;
    state.iceConnectionState = "new";
    state.connectionState = "new";
    state.errors = [];
  }

  function answer() {
    if (state.callState !== "incoming") throw new Error("no incoming call");
    mediaReady = getMedia(state.callType);
    sio.emit("call_answer", { callId: state.callId });
    setCall("connecting");
  }

  function reject() {
    if (state.callState !== "incoming") return;
    sio.emit("call_reject", { callId: state.callId });
    endLocally("rejected");
  }

  function hangup() {
    if (["idle", "ended"].includes(state.callState)) return;
    if (state.callId && sio) sio.emit("call_end", { callId: state.callId });
    endLocally("hung up");
  }

  function fail(e) {
    error(String((e && e.message) || e));
    hangup();
  }

  async function newPeerConnection() {
    await freshCredentials();
    const cfg = rtcConfig();
    state.rtcConfig = {
      iceTransportPolicy: cfg.iceTransportPolicy,
      urls: cfg.iceServers.length ? cfg.iceServers[0].urls : [],
    };
    log(`RTCPeerConnection: ${cfg.iceTransportPolicy}, ${state.rtcConfig.urls.join(" ") || "no TURN"}`);
    const p = new RTCPeerConnection(cfg);
    const peer = state.peer;
    p.onicecandidate = (e) => {
      if (e.candidate && sio) {
        sio.emit("webrtc_ice_candidate", { candidate: e.candidate.toJSON(), to: peer });
      }
    };
    p.onicecandidateerror = (e) => {
      error(`ICE candidate error ${e.errorCode} ${e.errorText || ""} (${e.url || ""})`);
    };
    p.ontrack = (e) => {
      const v = $("remote");
      if (!v.srcObject) v.srcObject = e.streams[0] || new MediaStream();
      if (!e.streams[0]) v.srcObject.addTrack(e.track);
    };
    p.oniceconnectionstatechange = () => {
      state.iceConnectionState = p.iceConnectionState;
      log(`ICE ${p.iceConnectionState}`);
      render();
    };
    p.onconnectionstatechange = () => {
      state.connectionState = p.connectionState;
      log(`peer connection ${p.connectionState}`);
      if (p.connectionState === "connected" && state.callState === "connecting") setCall("active");
      if (p.connectionState === "failed") fail(new Error("peer connection failed"));
      render();
    };
    const stream = await mediaReady;
    for (const t of stream.getTracks()) p.addTrack(t, stream);
    pc = p;
    statsTimer = setInterval(() => refreshStats().catch(() => {}), 1000);
    return p;
  }

  async function startCaller() {
    const p = await newPeerConnection();
    const offer = await p.createOffer();
    await p.setLocalDescription(offer);
    sio.emit("webrtc_offer", { offer: p.localDescription.toJSON(), to: state.peer });
  }

  async function onOffer(offer) {
    const p = pc || (await newPeerConnection());
    await p.setRemoteDescription(offer);
    await flushCandidates();
    const ans = await p.createAnswer();
    await p.setLocalDescription(ans);
    sio.emit("webrtc_answer", { answer: p.localDescription.toJSON(), to: state.peer });
  }

  async function flushCandidates() {
    const list = pendingCandidates;
    pendingCandidates = [];
    for (const c of list) {
      await pc.addIceCandidate(c).catch((e) => error(`addIceCandidate: ${e}`));
    }
  }

  function endLocally(reason) {
    if (statsTimer) clearInterval(statsTimer);
    statsTimer = null;
    if (pc) {
      // One last reading, so that the page (and a test) keeps what the call used.
      const p = pc;
      readStats(p)
        .catch(() => {})
        .finally(() => p.close());
    }
    pc = null;
    pendingCandidates = [];
    if (localStream) for (const t of localStream.getTracks()) t.stop();
    localStream = null;
    if (synthStop) synthStop();
    synthStop = null;
    mediaReady = null;
    $("local").srcObject = null;
    $("remote").srcObject = null;
    setCall("ended", { endReason: reason, callId: null, muted: false, videoOff: false });
  }

  // ------------------------------------------------------------------ media

  async function getMedia(type) {
    const video = type === "video";
    let stream = null;
    if (!$("synthetic").checked && navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
      try {
        stream = await navigator.mediaDevices.getUserMedia({ audio: true, video });
        state.synthetic = false;
      } catch (e) {
        log(`getUserMedia failed (${e.name}); using generated media`);
      }
    } else if (!$("synthetic").checked) {
      log("no getUserMedia here (the page needs https:// or localhost); using generated media");
    }
    if (!stream) {
      stream = synthetic(video);
      state.synthetic = true;
    }
    localStream = stream;
    $("local").srcObject = stream;
    render();
    return stream;
  }

  // A moving test pattern (canvas) and a quiet tone (Web Audio): works without devices and
  // outside secure contexts.
  function synthetic(video) {
    const tracks = [];
    const stops = [];
    try {
      const ac = new AudioContext();
      const osc = ac.createOscillator();
      const gain = ac.createGain();
      gain.gain.value = 0.05;
      osc.frequency.value = 440;
      const dst = ac.createMediaStreamDestination();
      osc.connect(gain).connect(dst);
      osc.start();
      tracks.push(...dst.stream.getAudioTracks());
      stops.push(() => ac.close());
    } catch (e) {
      log(`no Web Audio: ${e}`);
    }
    if (video) {
      const canvas = document.createElement("canvas");
      canvas.width = 320;
      canvas.height = 240;
      const g = canvas.getContext("2d");
      let n = 0;
      const timer = setInterval(() => {
        n++;
        g.fillStyle = `hsl(${(n * 3) % 360} 60% 35%)`;
        g.fillRect(0, 0, 320, 240);
        g.fillStyle = "#fff";
        g.fillRect((n * 4) % 320, 100, 40, 40);
        g.font = "20px monospace";
        g.fillText(`${state.user || ""} ${n}`, 10, 30);
      }, 66);
      tracks.push(...canvas.captureStream(15).getVideoTracks());
      stops.push(() => clearInterval(timer));
    }
    synthStop = () => stops.forEach((f) => f());
    return new MediaStream(tracks);
  }

  function toggleMute() {
    if (!localStream) return;
    state.muted = !state.muted;
    for (const t of localStream.getAudioTracks()) t.enabled = !state.muted;
    log(state.muted ? "muted" : "unmuted");
    render();
  }

  function toggleVideo() {
    if (!localStream) return;
    state.videoOff = !state.videoOff;
    for (const t of localStream.getVideoTracks()) t.enabled = !state.videoOff;
    log(state.videoOff ? "video off" : "video on");
    render();
  }

  // ------------------------------------------------------------------ stats

  function candidate(c) {
    if (!c) return null;
    return {
      candidateType: c.candidateType,
      protocol: c.protocol,
      relayProtocol: c.relayProtocol || null,
      address: c.address || c.ip || null,
      port: c.port,
      url: c.url || null,
    };
  }

  // The selected pair (the transport's selectedCandidatePairId, else the pair marked selected,
  // else the nominated succeeded pair) and the inbound RTP totals, into state.pair and state.media.
  async function readStats(p) {
    const report = await p.getStats();
    let pairId = null;
    report.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
    });
    let pair = pairId ? report.get(pairId) : null;
    // Firefox has no transport stats; it marks its selected pair `selected`.
    if (!pair) {
      report.forEach((s) => {
        if (s.type === "candidate-pair" && s.selected) pair = s;
      });
    }
    if (!pair) {
      report.forEach((s) => {
        if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
      });
    }
    const media = { videoBytesReceived: 0, audioBytesReceived: 0, framesDecoded: 0 };
    report.forEach((s) => {
      if (s.type !== "inbound-rtp") return;
      if (s.kind === "video") {
        media.videoBytesReceived += s.bytesReceived || 0;
        media.framesDecoded += s.framesDecoded || 0;
      } else if (s.kind === "audio") {
        media.audioBytesReceived += s.bytesReceived || 0;
      }
    });
    state.media = media;
    if (pair) {
      const local = candidate(report.get(pair.localCandidateId));
      const remote = candidate(report.get(pair.remoteCandidateId));
      state.pair = {
        id: pair.id,
        state: pair.state,
        nominated: !!pair.nominated,
        local,
        remote,
        localCandidateType: local && local.candidateType,
        remoteCandidateType: remote && remote.candidateType,
        relayProtocol: local && local.relayProtocol,
        relay: !!local && !!remote && local.candidateType === "relay" && remote.candidateType === "relay",
        bytesSent: pair.bytesSent || 0,
        bytesReceived: pair.bytesReceived || 0,
        currentRoundTripTime: pair.currentRoundTripTime != null ? pair.currentRoundTripTime : null,
        totalRoundTripTime: pair.totalRoundTripTime || 0,
        responsesReceived: pair.responsesReceived || 0,
      };
    }
    state.statsSamples++;
    render();
    return { pair: state.pair, media: state.media };
  }

  async function refreshStats() {
    return pc ? readStats(pc) : { pair: state.pair, media: state.media };
  }

  // ------------------------------------------------------------------ wiring

  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    login($("user").value, { expiry: $("expiry").value, token: $("token").value.trim() }).catch(() => {});
  });
  $("logout").addEventListener("click", logout);
  $("call-form").addEventListener("submit", (e) => {
    e.preventDefault();
    try {
      call($("callee").value, $("call-type").value);
    } catch (err) {
      error(err.message);
    }
  });
  $("answer").addEventListener("click", () => answer());
  $("reject").addEventListener("click", () => reject());
  $("hangup").addEventListener("click", () => hangup());
  $("mute").addEventListener("click", toggleMute);
  $("video-toggle").addEventListener("click", toggleVideo);
  setInterval(render, 5000); // the credentials' remaining lifetime

  // Query parameters fill the form: ?user=alice&expiry=..&token=..&callee=bob&relay=0&uri=...
  // (uri repeatable: use exactly those). With user, the page logs in at once.
  const q = new URLSearchParams(location.search);
  if (q.get("callee")) $("callee").value = q.get("callee");
  if (q.get("relay") === "0") setRelayOnly(false);
  if (q.get("synthetic") === "1") $("synthetic").checked = true;
  if (q.get("expiry")) $("expiry").value = q.get("expiry");
  if (q.get("token")) $("token").value = q.get("token");
  if (q.get("user")) {
    $("user").value = q.get("user");
    const uris = q.getAll("uri");
    login(q.get("user"), { expiry: q.get("expiry"), token: q.get("token") })
      .then(() => uris.length && selectUris(uris))
      .catch(() => {});
  }
  render();

  window.vigiDemo = {
    state,
    login,
    logout,
    selectUris,
    setRelayOnly,
    call,
    answer,
    reject,
    hangup,
    toggleMute,
    toggleVideo,
    refreshStats,
    get localStream() {
      return localStream;
    },
  };
})();
