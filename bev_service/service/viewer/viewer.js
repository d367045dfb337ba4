// bev-service viewer: plays the service's synthetic demo drive through the WebSocket stream and shows
// the coloured BEV grid, the camera frames and the stage timings of every reply. Plain browser
// JavaScript without a build step or any fetched library, so the page works offline in the container;
// msgpack is therefore coded by hand below, for the subset the stream uses.
"use strict";

// ---------------------------------------------------------------------------------------------------
// msgpack (https://github.com/msgpack/msgpack/blob/master/spec.md): nil, bool, int, float64, str, bin,
// array, map. JavaScript numbers do not say whether they are integers, so a value that must travel as a
// float (the frame stamp) is wrapped in Float64.

class Float64 {
  constructor(value) {
    this.value = value;
  }
}

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true });

class MsgpackWriter {
  constructor(size = 4096) {
    this.bytes = new Uint8Array(size);
    this.view = new DataView(this.bytes.buffer);
    this.length = 0;
  }

  reserve(n) {
    if (this.length + n <= this.bytes.length) return;
    let size = this.bytes.length * 2;
    while (size < this.length + n) size *= 2;
    const bytes = new Uint8Array(size);
    bytes.set(this.bytes.subarray(0, this.length));
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer);
  }

  head(n, codes) {
    // codes: the type bytes of the 8-, 16- and 32-bit length forms (null where the form does not exist)
    if (n < 0x100 && codes[0] !== null) return this.put(codes[0], 1, n);
    if (n < 0x10000) return this.put(codes[1], 2, n);
    if (n < 0x100000000) return this.put(codes[2], 4, n);
    throw new RangeError(`msgpack: ${n} entries are too many`);
  }

  put(code, width, n) {
    // DataView's unsigned setters store a negative n as its two's complement, so they serve signed ints too
    this.reserve(1 + width);
    const at = this.length + 1;
    this.view.setUint8(this.length, code);
    if (width === 1) this.view.setUint8(at, n);
    else if (width === 2) this.view.setUint16(at, n);
    else if (width === 4) this.view.setUint32(at, n);
    else this.view.setBigInt64(at, BigInt(n));
    this.length += 1 + width;
  }

  byte(code) {
    this.reserve(1);
    this.bytes[this.length++] = code;
  }

  raw(bytes) {
    this.reserve(bytes.length);
    this.bytes.set(bytes, this.length);
    this.length += bytes.length;
  }

  float64(value) {
    this.reserve(9);
    this.view.setUint8(this.length, 0xcb);
    this.view.setFloat64(this.length + 1, value);
    this.length += 9;
  }

  int(n) {
    if (n >= 0 && n < 0x80) return this.byte(n);
    if (n < 0 && n >= -32) return this.byte(n & 0xff);
    if (n >= 0) {
      if (n < 0x100) return this.put(0xcc, 1, n);
      if (n < 0x10000) return this.put(0xcd, 2, n);
      if (n < 0x100000000) return this.put(0xce, 4, n);
      return this.put(0xcf, 8, n);
    }
    if (n >= -0x80) return this.put(0xd0, 1, n);
    if (n >= -0x8000) return this.put(0xd1, 2, n);
    if (n >= -0x80000000) return this.put(0xd2, 4, n);
    return this.put(0xd3, 8, n);
  }

  value(v) {
    if (v === null || v === undefined) return this.byte(0xc0);
    if (v === false) return this.byte(0xc2);
    if (v === true) return this.byte(0xc3);
    if (v instanceof Float64) return this.float64(v.value);
    if (typeof v === "number") return Number.isSafeInteger(v) ? this.int(v) : this.float64(v);
    if (typeof v === "string") {
      const bytes = utf8Encoder.encode(v);
      if (bytes.length < 32) this.byte(0xa0 | bytes.length);
      else this.head(bytes.length, [0xd9, 0xda, 0xdb]);
      return this.raw(bytes);
    }
    if (v instanceof ArrayBuffer) v = new Uint8Array(v);
    if (v instanceof Uint8Array) {
      this.head(v.length, [0xc4, 0xc5, 0xc6]);
      return this.raw(v);
    }
    if (Array.isArray(v)) {
      if (v.length < 16) this.byte(0x90 | v.length);
      else this.head(v.length, [null, 0xdc, 0xdd]);
      for (const item of v) this.value(item);
      return;
    }
    if (typeof v === "object") {
      const entries = v instanceof Map ? [...v.entries()] : Object.entries(v);
      if (entries.length < 16) this.byte(0x80 | entries.length);
      else this.head(entries.length, [null, 0xde, 0xdf]);
      for (const [key, item] of entries) {
        this.value(key);
        this.value(item);
      }
      return;
    }
    throw new TypeError(`msgpack: cannot encode a ${typeof v}`);
  }
}

function msgpackEncode(value) {
  const writer = new MsgpackWriter();
  writer.value(value);
  return writer.bytes.slice(0, writer.length);
}

class MsgpackReader {
  constructor(bytes) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.at = 0;
  }

  take(n) {
    if (this.at + n > this.bytes.length) throw new Error("msgpack: message is truncated");
    const at = this.at;
    this.at += n;
    return at;
  }

  u8() { return this.view.getUint8(this.take(1)); }
  u16() { return this.view.getUint16(this.take(2)); }
  u32() { return this.view.getUint32(this.take(4)); }

  str(n) { return utf8Decoder.decode(this.bytes.subarray(this.take(n), this.at)); }
  bin(n) { return this.bytes.slice(this.take(n), this.at); } // a copy: it outlives the message buffer

  array(n) {
    const items = new Array(n);
    for (let i = 0; i < n; i++) items[i] = this.value();
    return items;
  }

  map(n) {
    const out = {};
    for (let i = 0; i < n; i++) {
      const key = this.value();
      out[String(key)] = this.value();
    }
    return out;
  }

  value() {
    const b = this.u8();
    if (b <= 0x7f) return b;
    if (b >= 0xe0) return b - 0x100;
    if (b <= 0x8f) return this.map(b & 0x0f);
    if (b <= 0x9f) return this.array(b & 0x0f);
    if (b <= 0xbf) return this.str(b & 0x1f);
    const v = this.view;
    switch (b) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return this.bin(this.u8());
      case 0xc5: return this.bin(this.u16());
      case 0xc6: return this.bin(this.u32());
      case 0xca: return v.getFloat32(this.take(4));
      case 0xcb: return v.getFloat64(this.take(8));
      case 0xcc: return this.u8();
      case 0xcd: return this.u16();
      case 0xce: return this.u32();
      case 0xcf: return Number(v.getBigUint64(this.take(8)));
      case 0xd0: return v.getInt8(this.take(1));
      case 0xd1: return v.getInt16(this.take(2));
      case 0xd2: return v.getInt32(this.take(4));
      case 0xd3: return Number(v.getBigInt64(this.take(8)));
      case 0xd9: return this.str(this.u8());
      case 0xda: return this.str(this.u16());
      case 0xdb: return this.str(this.u32());
      case 0xdc: return this.array(this.u16());
      case 0xdd: return this.array(this.u32());
      case 0xde: return this.map(this.u16());
      case 0xdf: return this.map(this.u32());
      default: throw new Error(`msgpack: unsupported type byte 0x${b.toString(16)}`);
    }
  }
}

function msgpackDecode(bytes) {
  const reader = new MsgpackReader(bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes));
  const value = reader.value();
  if (reader.at !== reader.bytes.length) throw new Error(`msgpack: ${reader.bytes.length - reader.at} bytes after the value`);
  return value;
}

// ---------------------------------------------------------------------------------------------------
// Page state and elements.

const MAX_IN_FLIGHT = 2; // frame sets sent but not answered: one computing, one waiting (the service keeps the latest)
const FPS_WINDOW_MS = 2000;
const REPLY_TIMEOUT_MS = 20000;
const MAX_ERRORS_IN_A_ROW = 10; // a drive the service refuses frame after frame stops instead of flooding it

const $ = (id) => document.getElementById(id);

const state = {
  token: "",
  playing: false,
  socket: null,
  pumping: false,
  paceTimer: null,
  demoCount: null,
  demoCache: new Map(), // index -> Promise<{images, urls}>
  nextIndex: 0,
  seq: 0,
  pending: new Map(), // seq -> {frame, sentAt}; Map keeps the sending order
  lastSentAt: 0,
  sent: 0,
  received: 0,
  errors: 0,
  errorsInARow: 0,
  dropped: 0,
  drawnSeq: -1,
  replyTimes: [],
};

function setStatus(kind, text) {
  const el = $("status");
  el.dataset.state = kind;
  el.textContent = text;
  el.title = text;
}

function setText(id, value) {
  $(id).textContent = String(value);
}

function element(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  Object.assign(el, props);
  for (const child of children) el.append(child);
  return el;
}

// ---------------------------------------------------------------------------------------------------
// REST: class table, model and rig metadata, demo frames.

class HttpError extends Error {
  constructor(status, detail) {
    super(`HTTP ${status}: ${detail}`);
    this.status = status;
  }
}

function authHeaders() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

async function request(path, accept) {
  const response = await fetch(path, { headers: { Accept: accept, ...authHeaders() }, cache: "no-store" });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = body.detail || body.error || detail;
    } catch {
      // not a JSON error body: keep the status text
    }
    throw new HttpError(response.status, detail);
  }
  return response;
}

async function getJson(path) {
  return (await request(path, "application/json")).json();
}

function classColour(c) {
  const rgb = c.color_rgb || c.colour || c.color || c.rgb;
  if (Array.isArray(rgb)) return `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
  return typeof rgb === "string" ? rgb : "transparent";
}

function renderLegend(body) {
  const classes = Array.isArray(body) ? body : body.classes || [];
  const legend = $("legend");
  legend.replaceChildren();
  for (const c of classes) {
    const swatch = element("span", { className: "swatch", title: `id ${c.id}` });
    swatch.style.background = classColour(c);
    legend.append(element("li", { title: c.description || "" }, swatch, c.name.replaceAll("_", " ")));
  }
}

function describe(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") return Number.isInteger(value) ? value.toLocaleString("en") : String(Number(value.toPrecision(4)));
  if (typeof value === "string" && /^[0-9a-f]{32,}$/i.test(value)) return `${value.slice(0, 12)}…`; // a digest: its head is enough
  if (Array.isArray(value)) return value.map((v) => (v && typeof v === "object" ? v.name || v.id || "…" : describe(v))).join(", ");
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function renderKv(target, entries, raw) {
  const list = $(target);
  list.replaceChildren();
  for (const [key, value] of entries) {
    const text = describe(value);
    list.append(element("dt", { textContent: key }), element("dd", { textContent: text, title: typeof value === "string" ? value : text }));
  }
  if (!entries.length) list.append(element("dt", { className: "muted", textContent: "none" }));
  if (raw !== undefined) {
    const details = element("details", {}, element("summary", { textContent: "full reply" }), element("pre", { textContent: JSON.stringify(raw, null, 2) }));
    list.append(details);
  }
}

// What fits one line of the panel: plain values and short lists; nested tables stay in the full reply.
function brief(object, prefix = "") {
  const out = [];
  for (const [key, value] of Object.entries(object)) {
    if (key === "classes" || key === "class_names" || key === "path") continue; // the legend shows classes; file names the path
    if (value && typeof value === "object" && !Array.isArray(value)) {
      if (!prefix) out.push(...brief(value, `${key}.`));
    } else if (describe(value).length <= 48) {
      out.push([prefix + key, value]);
    }
  }
  return out;
}

function gridSummary(grid) {
  if (!grid || typeof grid !== "object") return grid;
  const span = (range) => (Array.isArray(range) ? `${describe(range[0])} to ${describe(range[1])} m` : "?");
  return `${grid.rows} × ${grid.cols} cells of ${grid.cell_size_m} m; x ${span(grid.x_range_m)}, y ${span(grid.y_range_m)}`;
}

function cameraSummary(cameras) {
  if (!Array.isArray(cameras)) return cameras;
  return cameras
    .map((c) => {
      if (!c || typeof c !== "object") return String(c);
      const size = Array.isArray(c.image_size_wh) ? ` ${c.image_size_wh[0]}×${c.image_size_wh[1]}` : "";
      return `${c.name}${size}`;
    })
    .join(", ");
}

function renderRigs(body) {
  const rigs = Array.isArray(body) ? body : body.rigs || [];
  const defaultId = Array.isArray(body) ? null : body.default ?? null;
  const entries = [];
  for (const rig of rigs) {
    if (!rig || typeof rig !== "object") {
      entries.push([String(rig), rig === defaultId ? "default" : ""]);
      continue;
    }
    const id = rig.id ?? rig.rig_id ?? "?";
    const tags = [rig.default === true || id === defaultId ? "default" : null, rig.version ? `version ${rig.version}` : null];
    entries.push([id, tags.filter(Boolean).join(" · ") || "–"]);
    if (rig.cameras) entries.push(["cameras", cameraSummary(rig.cameras)]);
    if (rig.grid) entries.push(["grid", gridSummary(rig.grid)]);
    if (rig.fingerprint) entries.push(["fingerprint", rig.fingerprint]);
  }
  renderKv("rig-info", entries, body);
}

async function loadInfo() {
  setStatus("loading", "loading…");
  const [classes, model, rigs] = await Promise.allSettled([getJson("v1/classes"), getJson("v1/model"), getJson("v1/rigs")]);
  if (classes.status === "fulfilled") renderLegend(classes.value);
  if (model.status === "fulfilled") renderKv("model-info", brief(model.value), model.value);
  if (rigs.status === "fulfilled") renderRigs(rigs.value);
  const failed = [classes, model, rigs].find((r) => r.status === "rejected");
  if (!failed) {
    if (!state.playing) setStatus("ready", "ready");
    return;
  }
  const err = failed.reason;
  setStatus("error", err.status === 401 ? "token required or wrong (401)" : `metadata: ${err.message}`);
}

function imageType(bytes) {
  return bytes[0] === 0x89 && bytes[1] === 0x50 ? "image/png" : "image/jpeg";
}

function demoFrame(index) {
  let frame = state.demoCache.get(index);
  if (!frame) {
    frame = (async () => {
      const response = await request(`v1/demo/frames/${index}`, "application/msgpack");
      const body = msgpackDecode(new Uint8Array(await response.arrayBuffer()));
      if (!body || typeof body.images !== "object" || typeof body.count !== "number") throw new Error(`demo frame ${index}: unexpected reply`);
      state.demoCount = body.count;
      // One object URL per cached picture: frames repeat as the drive loops, so they are made once.
      const urls = {};
      for (const [camera, bytes] of Object.entries(body.images)) urls[camera] = URL.createObjectURL(new Blob([bytes], { type: imageType(bytes) }));
      return { index, images: body.images, urls };
    })();
    state.demoCache.set(index, frame);
    frame.catch(() => state.demoCache.delete(index));
  }
  return frame;
}

// ---------------------------------------------------------------------------------------------------
// Streaming: at most MAX_IN_FLIGHT frame sets unanswered; the service answers the latest and counts
// the ones it dropped, so a reply for seq s also settles every earlier pending seq.

function streamUrl() {
  const url = new URL("v1/stream", document.baseURI);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  if (state.token) url.searchParams.set("token", state.token);
  return url.href;
}

function openSocket() {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(streamUrl());
    socket.binaryType = "arraybuffer";
    socket.onopen = () => resolve(socket);
    socket.onerror = () => reject(new Error("the stream could not be opened"));
    socket.onmessage = (event) => onMessage(socket, event);
    socket.onclose = (event) => onClose(socket, event);
    state.socket = socket;
  });
}

function onClose(socket, event) {
  if (socket !== state.socket) return;
  state.socket = null;
  if (!state.playing) return;
  stopPlaying();
  const reason = event.reason ? `: ${event.reason}` : "";
  setStatus("error", `stream closed (${event.code}${reason})`);
}

function settle(seq) {
  for (const key of state.pending.keys()) if (key <= seq) state.pending.delete(key);
}

function onMessage(socket, event) {
  if (socket !== state.socket) return;
  let reply;
  try {
    if (typeof event.data === "string") throw new Error("text message");
    reply = msgpackDecode(new Uint8Array(event.data));
    if (!reply || typeof reply !== "object" || typeof reply.seq !== "number") throw new Error("not a reply map");
  } catch (err) {
    state.errors++;
    setText("errors", state.errors);
    setStatus("error", `bad reply: ${err.message}`);
    return;
  }
  const sent = state.pending.get(reply.seq);
  settle(reply.seq);
  if (reply.error !== undefined) {
    state.errors++;
    state.errorsInARow++;
    setText("errors", state.errors);
    if (state.errorsInARow >= MAX_ERRORS_IN_A_ROW) {
      stopPlaying();
      setStatus("error", `stopped after ${state.errorsInARow} refused frames: ${reply.error}`);
      return;
    }
    setStatus("error", `frame ${reply.seq}: ${reply.error}`);
  } else {
    state.errorsInARow = 0;
    showReply(reply, sent);
  }
  pump();
}

function showReply(reply, sent) {
  const now = performance.now();
  state.received++;
  state.replyTimes.push(now);
  if (typeof reply.dropped === "number") state.dropped = reply.dropped;
  setText("frame-count", state.received);
  setText("dropped", state.dropped);
  if (sent) {
    setText("rtt", (now - sent.sentAt).toFixed(0));
    showCameras(sent.frame, reply.seq);
  }
  updateFps(now);
  renderTimings(reply.timing_ms || {});
  if (reply.grid instanceof Uint8Array) drawGrid(reply).catch((err) => setStatus("error", `grid: ${err.message}`));
  if (state.playing && $("status").dataset.state !== "playing") setStatus("playing", "playing");
}

async function drawGrid(reply) {
  const bitmap = await createImageBitmap(new Blob([reply.grid], { type: "image/png" }));
  if (reply.seq < state.drawnSeq) {
    bitmap.close();
    return; // a newer grid decoded first
  }
  state.drawnSeq = reply.seq;
  const canvas = $("bev-canvas");
  if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    canvas.style.aspectRatio = `${bitmap.width} / ${bitmap.height}`;
  }
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rows = reply.rows ?? bitmap.height;
  const cols = reply.cols ?? bitmap.width;
  setText("grid-info", `rig ${reply.rig ?? "?"} · ${rows} × ${cols} cells · frame ${reply.seq}`);
}

function showCameras(frame, seq) {
  const grid = $("camera-grid");
  for (const [camera, url] of Object.entries(frame.urls)) {
    let img = grid.querySelector(`img[data-camera="${CSS.escape(camera)}"]`);
    if (!img) {
      grid.querySelector("p")?.remove();
      img = element("img", { alt: `${camera} camera` });
      img.dataset.camera = camera;
      grid.append(element("figure", {}, img, element("figcaption", { textContent: camera })));
    }
    if (img.src !== url) img.src = url;
  }
  setText("frame-seq", `demo frame ${frame.index + 1}/${state.demoCount ?? "?"} · seq ${seq}`);
}

function renderTimings(timings) {
  const rows = Object.entries(timings).filter(([, ms]) => typeof ms === "number");
  const longest = Math.max(...rows.map(([, ms]) => ms), 1e-9);
  const body = element("tbody");
  for (const [stage, ms] of rows) {
    const fill = element("div", { className: "fill" });
    fill.style.width = `${Math.max(1, (100 * ms) / longest).toFixed(1)}%`;
    body.append(
      element("tr", {}, element("td", { textContent: stage.replaceAll("_", " ") }), element("td", { className: "bar" }, fill), element("td", { className: "ms", textContent: ms.toFixed(1) })),
    );
  }
  if (!rows.length) body.append(element("tr", {}, element("td", { className: "muted", textContent: "no timings in the reply" })));
  $("timings").replaceChildren(body);
}

function updateFps(now) {
  const times = state.replyTimes;
  while (times.length && now - times[0] > FPS_WINDOW_MS) times.shift();
  const fps = times.length >= 2 ? ((times.length - 1) * 1000) / (times[times.length - 1] - times[0]) : 0;
  setText("fps", fps.toFixed(1));
}

async function pump() {
  if (state.pumping) return;
  state.pumping = true;
  try {
    while (state.playing && state.pending.size < MAX_IN_FLIGHT) {
      const rate = Number($("rate").value);
      if (rate > 0) {
        const wait = state.lastSentAt + 1000 / rate - performance.now();
        if (wait > 0) {
          clearTimeout(state.paceTimer);
          state.paceTimer = setTimeout(pump, wait);
          break;
        }
      }
      const frame = await demoFrame(state.nextIndex);
      const socket = state.socket;
      if (!state.playing || !socket || socket.readyState !== WebSocket.OPEN) break;
      const seq = state.seq++;
      socket.send(msgpackEncode({ seq, stamp: new Float64(Date.now() / 1000), images: frame.images }));
      state.pending.set(seq, { frame, sentAt: performance.now() });
      state.lastSentAt = performance.now();
      state.sent++;
      setText("sent", state.sent);
      state.nextIndex = (state.nextIndex + 1) % state.demoCount;
      demoFrame(state.nextIndex).catch(() => {}); // fetch ahead; a failure shows when the frame is needed
    }
  } catch (err) {
    fail(err);
  } finally {
    state.pumping = false;
  }
}

function fail(err) {
  stopPlaying();
  setStatus("error", err.status === 401 ? "token required or wrong (401)" : err.message);
}

function stopPlaying() {
  state.playing = false;
  clearTimeout(state.paceTimer);
  state.pending.clear();
  const socket = state.socket;
  state.socket = null;
  if (socket && socket.readyState <= WebSocket.OPEN) socket.close(1000, "viewer stopped");
  $("play").disabled = false;
  $("stop").disabled = true;
}

async function play() {
  if (state.playing) return;
  state.playing = true;
  $("play").disabled = true;
  $("stop").disabled = false;
  setStatus("connecting", "fetching the demo drive…");
  try {
    await demoFrame(state.nextIndex);
    setStatus("connecting", "connecting…");
    await openSocket();
  } catch (err) {
    fail(err);
    return;
  }
  if (!state.playing) return; // stopped while connecting
  setStatus("playing", "playing");
  pump();
}

function stop() {
  if (!state.playing) return;
  stopPlaying();
  setStatus("stopped", `stopped · ${state.received} frames received`);
}

function tick() {
  updateFps(performance.now());
  const oldest = state.pending.values().next().value;
  if (state.playing && oldest && performance.now() - oldest.sentAt > REPLY_TIMEOUT_MS) {
    setStatus("error", `no reply for ${REPLY_TIMEOUT_MS / 1000} s; sending again`);
    state.pending.clear();
    pump();
  }
}

function init() {
  const token = new URLSearchParams(location.search).get("token");
  if (token) {
    state.token = token;
    $("token").value = token;
  }
  $("token").addEventListener("change", (event) => {
    state.token = event.target.value.trim();
    loadInfo();
  });
  $("controls").addEventListener("submit", (event) => event.preventDefault());
  $("play").addEventListener("click", play);
  $("stop").addEventListener("click", stop);
  setInterval(tick, 500);
  loadInfo();
}

init();
