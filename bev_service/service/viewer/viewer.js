// bev-service viewer: plays the service's synthetic demo drive through the WebSocket stream and shows
// the coloured BEV grid, the camera frames and the stage timings of every reply. Plain browser
// JavaScript without a build step; msgpack comes from @msgpack/msgpack, whose browser bundle the service
// ships and serves itself (viewer/vendor/msgpack.min.js, the global MessagePack), so the page works offline.
"use strict";

// ---------------------------------------------------------------------------------------------------
// msgpack: the stream and the demo frames. A JavaScript number travels as an int when it is a safe
// integer and as a float64 otherwise; the service takes either for the frame stamp. bin decodes to a
// Uint8Array, maps to plain objects, and a message with bytes after its value is refused.

function msgpackEncode(value) {
  return MessagePack.encode(value);
}

function msgpackDecode(bytes) {
  return MessagePack.decode(bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes));
}

// ---------------------------------------------------------------------------------------------------
// Page state and elements.

const MAX_IN_FLIGHT = 2; // frame sets sent but not answered: one computing, one waiting (the service keeps the latest)
const FPS_WINDOW_MS = 2000;
const REPLY_TIMEOUT_MS = 20000;
const MAX_ERRORS_IN_A_ROW = 10; // a drive the service refuses frame after frame stops instead of flooding it

const $ = (id) => document.getElementById(id);

// Grid value 255 (seen by no camera) is near-black in the API's palette, next to black background: the
// viewer paints those cells in grey diagonal stripes instead (the PNGs the API serves keep the palette).
const UNKNOWN_ID = 255;
const UNKNOWN_HATCH = [
  [110, 110, 124], // the stripe
  [44, 44, 52], // between the stripes
];
const HATCH_PERIOD = 4; // cells: one stripe cell, three between, along each diagonal
const UNKNOWN_SWATCH = `repeating-linear-gradient(45deg, rgb(${UNKNOWN_HATCH[0]}) 0 2px, rgb(${UNKNOWN_HATCH[1]}) 2px 5px)`;

const state = {
  token: "",
  playing: false,
  socket: null,
  pumping: false,
  paceTimer: null,
  demoCount: null,
  unknownRgb: [20, 20, 20], // the API's colour for value 255; replaced from /v1/classes
  infoTimer: null,
  demoCache: new Map(), // index -> Promise<{images, urls}>
  nextIndex: 0,
  seq: 0,
  progressTimer: null,
  pending: new Map(), // seq -> {frame, sentAt}; Map keeps the sending order
  lastSentAt: 0,
  sent: 0,
  received: 0,
  errors: 0,
  errorsInARow: 0,
  dropped: 0,
  drawnSeq: -1,
  labelsSeq: -1,
  replyTimes: [],
  rigs: new Map(), // id -> rig summary (grid, cameras with positions), from /v1/rigs
  defaultRig: null,
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
    swatch.dataset.id = String(c.id);
    const unknown = c.id === UNKNOWN_ID;
    if (unknown && Array.isArray(c.color_rgb)) state.unknownRgb = c.color_rgb.slice(0, 3);
    swatch.style.background = unknown ? UNKNOWN_SWATCH : classColour(c);
    const item = element("li", { title: c.description || "" }, swatch, c.name.replaceAll("_", " "));
    item.dataset.id = String(c.id);
    legend.append(item);
  }
}

// Repaint the cells of value 255 (found by their palette colour) in UNKNOWN_HATCH stripes.
function hatchUnknown(ctx, width, height) {
  const image = ctx.getImageData(0, 0, width, height);
  const data = image.data;
  const [r, g, b] = state.unknownRgb;
  let found = false;
  for (let y = 0, i = 0; y < height; y++) {
    for (let x = 0; x < width; x++, i += 4) {
      if (data[i] !== r || data[i + 1] !== g || data[i + 2] !== b) continue;
      const colour = UNKNOWN_HATCH[(x + y) % HATCH_PERIOD === 0 ? 0 : 1];
      data[i] = colour[0];
      data[i + 1] = colour[1];
      data[i + 2] = colour[2];
      found = true;
    }
  }
  if (found) ctx.putImageData(image, 0, 0);
}

// A message in place of a panel's content ("loading…" until then): why the page has nothing to show.
function panelMessage(target, text, kind = "error") {
  const el = element(target === "legend" ? "li" : "dt", { className: `panel-message ${kind}`, textContent: text });
  $(target).replaceChildren(el);
}

function infoError(err, token) {
  if (err.status === 401) {
    return token
      ? "The token was refused (401): check it against the service's BEV_API_TOKEN."
      : "This service needs a token (401): enter it in the token field above, or open the page with ?token=….";
  }
  if (err.status === 503) return `The service is not ready yet (${err.message}); trying again…`;
  return `Could not load: ${err.message}`;
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
  state.rigs = new Map(rigs.filter((r) => r && typeof r === "object").map((r) => [r.id ?? r.rig_id, r]));
  state.defaultRig = defaultId;
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
  clearTimeout(state.infoTimer);
  const token = state.token;
  setStatus("loading", "loading…");
  const [classes, model, rigs] = await Promise.allSettled([getJson("v1/classes"), getJson("v1/model"), getJson("v1/rigs")]);
  if (token !== state.token) return; // the token changed meanwhile: a newer load is under way
  const panels = [
    [classes, "legend", renderLegend],
    [model, "model-info", (body) => renderKv("model-info", brief(body), body)],
    [rigs, "rig-info", renderRigs],
  ];
  for (const [result, target, render] of panels) {
    if (result.status === "fulfilled") render(result.value);
    else panelMessage(target, infoError(result.reason, token));
  }
  const failed = [classes, model, rigs].find((r) => r.status === "rejected");
  if (!failed) {
    if (!state.playing) setStatus("ready", "ready");
    return;
  }
  const err = failed.reason;
  if (err.status === 401) setStatus("error", token ? "token refused (401)" : "token required (401)");
  else setStatus("error", `metadata: ${err.message}`);
  if (err.status === 503) state.infoTimer = setTimeout(loadInfo, 2000); // still loading its model
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
  return url.href;
}

// A browser cannot set headers on a WebSocket, so the token goes as a subprotocol beside bev.v1
// (which the service answers), never in the URL, where access logs and proxies would keep it.
function streamProtocols() {
  return state.token ? ["bev.v1", `bev-token.${base64url(state.token)}`] : ["bev.v1"];
}

// base64url of the text's UTF-8 bytes, without padding (RFC 4648 section 5): a valid subprotocol name.
function base64url(text) {
  let binary = "";
  for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function openSocket() {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(streamUrl(), streamProtocols());
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
  if (reply.camera_labels && typeof reply.camera_labels === "object") {
    drawCameraLabels(reply).catch((err) => setStatus("error", `camera labels: ${err.message}`));
  } else if (!$("camera-labels").checked) {
    clearCameraLabels();
  }
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
  hatchUnknown(ctx, canvas.width, canvas.height);
  const rows = reply.rows ?? bitmap.height;
  const cols = reply.cols ?? bitmap.width;
  const rig = state.rigs.get(reply.rig ?? state.defaultRig);
  const extent = rig?.grid ? ` · x ${rig.grid.x_range_m.join(" to ")} m, y ${rig.grid.y_range_m.join(" to ")} m` : "";
  setText("grid-info", `rig ${reply.rig ?? "?"} · ${rows} × ${cols} cells${extent} · frame ${reply.seq}`);
  drawMetres(rig, cols, rows);
}

// The grid in metres, on the overlay canvas: a scale bar, the extent at the corners, the cameras where
// they sit on the vehicle. Row 0 is the largest x (forward up), column 0 the largest y (left on the left).
const OVERLAY_SCALE = 2;
const SCALE_BAR_M = [1, 2, 5, 10, 20, 50, 100];

function outlined(ctx, text, x, y) {
  ctx.save();
  ctx.strokeStyle = "#000";
  ctx.lineWidth = 3;
  ctx.strokeText(text, x, y);
  ctx.fillStyle = "#fff";
  ctx.fillText(text, x, y);
  ctx.restore();
}

function drawMetres(rig, cols, rows) {
  const overlay = $("bev-overlay");
  const width = cols * OVERLAY_SCALE;
  const height = rows * OVERLAY_SCALE;
  if (overlay.width !== width || overlay.height !== height) {
    overlay.width = width;
    overlay.height = height;
  }
  const ctx = overlay.getContext("2d");
  ctx.clearRect(0, 0, width, height);
  const grid = rig?.grid;
  if (!grid || !grid.cell_size_m) return;
  const px = OVERLAY_SCALE / grid.cell_size_m; // overlay pixels per metre
  const [xMin, xMax] = grid.x_range_m;
  const [yMin, yMax] = grid.y_range_m;
  const at = (x, y) => [(yMax - y) * px, (xMax - x) * px];
  ctx.font = `${Math.max(10, Math.round(width / 45))}px sans-serif`;
  ctx.lineWidth = Math.max(2, width / 300);
  // scale bar: the longest round length within a fifth of the width
  const bar = SCALE_BAR_M.filter((m) => m * px <= width / 5).pop() ?? SCALE_BAR_M[0];
  const x0 = width * 0.04;
  const y0 = height * 0.96;
  ctx.strokeStyle = "#fff";
  ctx.fillStyle = "#fff";
  ctx.beginPath();
  ctx.moveTo(x0, y0);
  ctx.lineTo(x0 + bar * px, y0);
  ctx.moveTo(x0, y0 - 6);
  ctx.lineTo(x0, y0 + 6);
  ctx.moveTo(x0 + bar * px, y0 - 6);
  ctx.lineTo(x0 + bar * px, y0 + 6);
  ctx.stroke();
  outlined(ctx, `${bar} m`, x0, y0 - 10);
  // the extent, at the top corners: forward (x) edge and the lateral (y) span
  ctx.textAlign = "left";
  outlined(ctx, `x ${xMax} m`, width * 0.02, height * 0.04);
  ctx.textAlign = "right";
  outlined(ctx, `y ${yMin} … ${yMax} m`, width * 0.98, height * 0.04);
  ctx.textAlign = "left";
  // the cameras
  for (const camera of rig.cameras || []) {
    if (!Array.isArray(camera.position_m)) continue;
    const [u, v] = at(camera.position_m[0], camera.position_m[1]);
    ctx.beginPath();
    ctx.arc(u, v, Math.max(4, width / 120), 0, 2 * Math.PI);
    ctx.fillStyle = "#ffd400";
    ctx.fill();
    ctx.strokeStyle = "#000";
    ctx.stroke();
    outlined(ctx, camera.name, u + 8, v - 8);
  }
}

async function drawCameraLabels(reply) {
  if (reply.seq < state.labelsSeq) return;
  state.labelsSeq = reply.seq;
  for (const [camera, png] of Object.entries(reply.camera_labels)) {
    const frame = $("camera-grid").querySelector(`.camera-frame[data-camera="${CSS.escape(camera)}"]`);
    if (!frame || !(png instanceof Uint8Array)) continue;
    const bitmap = await createImageBitmap(new Blob([png], { type: "image/png" }));
    let canvas = frame.querySelector("canvas");
    if (!canvas) {
      canvas = element("canvas", { ariaLabel: `${camera} labels` });
      frame.append(canvas);
    }
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(bitmap, 0, 0);
    bitmap.close();
  }
}

function clearCameraLabels() {
  for (const canvas of $("camera-grid").querySelectorAll(".camera-frame canvas")) canvas.remove();
}

function showCameras(frame, seq) {
  const grid = $("camera-grid");
  for (const [camera, url] of Object.entries(frame.urls)) {
    let img = grid.querySelector(`img[data-camera="${CSS.escape(camera)}"]`);
    if (!img) {
      grid.querySelector("p")?.remove();
      img = element("img", { alt: `${camera} camera` });
      img.dataset.camera = camera;
      const frameBox = element("div", { className: "camera-frame" }, img);
      frameBox.dataset.camera = camera;
      grid.append(element("figure", {}, frameBox, element("figcaption", { textContent: camera })));
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
      const message = { seq, stamp: Date.now() / 1000, images: frame.images };
      if ($("camera-labels").checked) message.camera_labels = true;
      socket.send(msgpackEncode(message));
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
  clearInterval(state.progressTimer);
  if (err.status === 401) setStatus("error", state.token ? "token refused (401)" : "token required (401)");
  else setStatus("error", err.message);
  cameraMessage(err.status === 401 ? infoError(err, state.token) : `The demo drive could not start: ${err.message}`);
}

// The camera panel's placeholder while no frame is shown (it goes once the first frame arrives).
function cameraMessage(text) {
  const grid = $("camera-grid");
  if (grid.querySelector("img")) return;
  grid.replaceChildren(element("p", { className: "muted small", textContent: text }));
}

function stopPlaying() {
  state.playing = false;
  clearInterval(state.progressTimer);
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
  // The service renders a frame set when first asked for it (seconds for the first one, which also
  // builds the synthetic world): say so at once and count the seconds, so the wait does not look dead.
  const started = performance.now();
  const cached = state.demoCache.has(state.nextIndex);
  const rendering = () => {
    const seconds = Math.floor((performance.now() - started) / 1000);
    const text = `rendering the drive… ${seconds} s`;
    setStatus("connecting", text);
    cameraMessage(`Rendering the demo drive's first frame set on the service (${seconds} s)…`);
  };
  if (!cached) {
    rendering();
    clearInterval(state.progressTimer);
    state.progressTimer = setInterval(() => state.playing && rendering(), 1000);
  }
  try {
    await demoFrame(state.nextIndex);
    clearInterval(state.progressTimer);
    if (!state.playing) return;
    setStatus("connecting", "connecting…");
    cameraMessage("Connecting to the stream…");
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
  $("camera-labels").addEventListener("change", (event) => {
    if (!event.target.checked) clearCameraLabels();
  });
  $("stop").addEventListener("click", stop);
  setInterval(tick, 500);
  loadInfo();
}

init();
