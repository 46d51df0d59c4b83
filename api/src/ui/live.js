// The live grid: every camera at once from its sub-stream, in the layout a user picks (1, 2x2,
// 3x3, 4x4, cameras with activity first); a click on a tile shows that camera's main stream.
// Each tile reads /api/channels/<id>/live.ws (a WebSocket of fragmented MP4, a fragment per
// frame, as api/src/live/mod.rs says) into Media Source Extensions, stays at the live edge, shows its
// codec, the viewers of its stream and its latency (from the server receiving a frame to this
// page showing it), and reconnects by itself when the stream ends (relay or nginx restarted).
// An ES module (/ui/live.js): no build step.

import { $, esc, getJson } from "./common.js";

const LAYOUTS = { "1": 1, "2x2": 4, "3x3": 9, "4x4": 16, "activity": 9 };
// Further behind the newest frame than this, the tile jumps to the live edge.
const MAX_BEHIND_S = 0.5;
// No frame for this long on an open connection: it is dead, open a new one.
const STALL_MS = 6000;

class LiveTile {
  constructor(channel, name, stream) {
    Object.assign(this, { channel, name, stream, stopped: false, retry: 1000 });
    this.el = document.createElement("figure");
    this.el.className = "live-tile";
    this.el.dataset.channel = channel;
    this.el.dataset.stream = stream;
    this.el.innerHTML = `<video muted autoplay playsinline></video><canvas width="32" height="18" hidden></canvas>` +
      `<figcaption><b>ch${channel}</b> ${esc(name)} <span class="live-info muted">connecting…</span></figcaption>`;
    this.video = this.el.querySelector("video");
    this.info = this.el.querySelector(".live-info");
    this.marks = [];
    this.timer = setInterval(() => this.measure(), 500);
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearInterval(this.timer);
    clearInterval(this.watchdog);
    if (this.ws) this.ws.close();
    this.video.removeAttribute("src");
    this.video.load();
  }

  say(text, problem) {
    this.info.textContent = text;
    this.info.classList.toggle("camera-problem", !!problem);
  }

  connect() {
    if (this.stopped) return;
    this.marks = [];
    this.lastFrame = Date.now();
    const source = new MediaSource();
    this.video.src = URL.createObjectURL(source);
    const queue = [], early = [];
    let buffer = null, ready = false;
    const pump = () => {
      if (!buffer || buffer.updating || queue.length === 0 || source.readyState !== "open") return;
      const size = queue.reduce((n, q) => n + q.length, 0), all = new Uint8Array(size);
      let at = 0;
      for (const q of queue.splice(0)) { all.set(q, at); at += q.length; }
      try { buffer.appendBuffer(all); } catch (e) { ws.close(); }
    };
    const handle = (data) => {
      const bytes = new Uint8Array(data), kind = bytes[0], payload = bytes.subarray(1);
      if (kind === 1) {
        const head = JSON.parse(new TextDecoder().decode(payload));
        const mime = `video/mp4; codecs="${head.codec}"`;
        Object.assign(this.el.dataset, { codec: head.codec, viewers: String(head.viewers) });
        this.offset = Date.now() - head.server_ms;
        if (!MediaSource.isTypeSupported(mime)) {
          this.say(`this browser cannot play ${head.codec} live`, true);
          return ws.close();
        }
        buffer = source.addSourceBuffer(mime);
        buffer.addEventListener("updateend", () => { this.keepLive(buffer); pump(); });
      } else if (kind === 2) {
        queue.push(payload);
      } else if (kind === 3) {
        const v = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
        this.marks.push([v.getFloat64(8), Number(v.getBigInt64(0))]);
        if (this.marks.length > 400) this.marks.splice(0, 200);
        queue.push(payload.subarray(16));
        this.retry = 1000;
      }
      pump();
    };
    source.addEventListener("sourceopen", () => { ready = true; early.splice(0).forEach(handle); }, { once: true });
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/api/channels/${this.channel}/live.ws?stream=${this.stream}`);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onmessage = (ev) => {
      this.lastFrame = Date.now();
      if (typeof ev.data === "string") return this.say(ev.data, true);
      if (ready) handle(ev.data); else early.push(ev.data);
    };
    ws.onclose = () => {
      clearInterval(this.watchdog);
      if (this.stopped) return;
      if (!this.info.classList.contains("camera-problem")) this.say("stream ended; reconnecting…", true);
      this.el.dataset.reconnects = String(Number(this.el.dataset.reconnects || 0) + 1);
      setTimeout(() => this.connect(), this.retry);
      this.retry = Math.min(this.retry * 2, 5000);
    };
    clearInterval(this.watchdog);
    this.watchdog = setInterval(() => { if (Date.now() - this.lastFrame > STALL_MS) ws.close(); }, 1000);
  }

  // Stays at the newest frame: a tile that fell behind (a tab in the background, a slow
  // decoder) jumps forward; old video is let go.
  keepLive(buffer) {
    const v = this.video, b = v.buffered;
    if (b.length === 0) return;
    const end = b.end(b.length - 1);
    if (v.currentTime < b.start(0) || end - v.currentTime > MAX_BEHIND_S) v.currentTime = Math.max(b.start(b.length - 1), end - 0.1);
    if (v.paused) v.play().catch(() => {});
    if (!buffer.updating && v.currentTime - b.start(0) > 30) buffer.remove(0, v.currentTime - 10);
  }

  // Latency: now (on the server's clock) minus when the server received the frame on screen.
  measure() {
    const v = this.video, t = v.currentTime;
    let mark = null;
    for (const m of this.marks) if (m[0] <= t + 0.001) mark = m;
    if (!mark || v.readyState < 2) return;
    const ms = Date.now() - this.offset - (mark[1] + (t - mark[0]) * 1000);
    this.el.dataset.latencyMs = String(Math.round(ms));
    const c = this.el.querySelector("canvas").getContext("2d");
    c.drawImage(v, 0, 0, 32, 18);
    if ([...c.getImageData(0, 0, 32, 18).data].some((x, i) => i % 4 !== 3 && x > 0)) this.el.dataset.playing = "yes";
    this.say(`${this.el.dataset.codec} · ${this.el.dataset.viewers} watching · ${(ms / 1000).toFixed(2)} s after the server`);
  }
}

const grid = { tiles: [], page: 0 };

function stopAll() {
  for (const t of grid.tiles) t.stop();
  grid.tiles = [];
  $("grid-tiles").innerHTML = "";
}

async function showGrid() {
  stopAll();
  const layout = $("grid-layout").value;
  localStorage.setItem("cctv.grid", layout);
  const n = LAYOUTS[layout] || 4;
  let channels = (await getJson("/api/channels")).items;
  // Activity first: the cameras that moved most recently lead.
  if (layout === "activity") channels = channels.slice().sort((a, b) => (b.last_motion_ms || 0) - (a.last_motion_ms || 0));
  const pages = Math.max(1, Math.ceil(channels.length / n));
  if (grid.page >= pages) grid.page = 0;
  $("grid-page").textContent = pages > 1 ? `page ${grid.page + 1} of ${pages}` : "";
  const box = $("grid-tiles");
  box.style.setProperty("--cols", String(Math.ceil(Math.sqrt(n))));
  box.dataset.layout = layout;
  for (const c of channels.slice(grid.page * n, grid.page * n + n)) {
    const tile = new LiveTile(c.id, c.name, "sub");
    tile.el.onclick = () => showOne(c);
    box.appendChild(tile.el);
    grid.tiles.push(tile);
  }
}

// One camera, its main stream.
function showOne(c) {
  stopAll();
  const box = $("grid-tiles");
  box.style.setProperty("--cols", "1");
  box.dataset.layout = "one";
  const tile = new LiveTile(c.id, c.name, "main");
  tile.el.onclick = () => showGrid();
  box.appendChild(tile.el);
  grid.tiles.push(tile);
}

async function refreshViewers() {
  if (grid.tiles.length === 0) return;
  const feeds = await getJson("/api/live").catch(() => []);
  for (const t of grid.tiles) {
    const f = feeds.find((f) => f.channel === t.channel && f.stream === t.stream);
    if (f) t.el.dataset.viewers = String(f.viewers);
  }
}

$("grid-open").onclick = () => { $("grid").hidden = false; showGrid(); };
$("grid-close").onclick = () => { stopAll(); $("grid").hidden = true; localStorage.removeItem("cctv.grid"); };
$("grid-layout").onchange = () => { grid.page = 0; showGrid(); };
$("grid-next").onclick = () => { grid.page += 1; showGrid(); };
setInterval(() => refreshViewers(), 5000);
const asked = new URLSearchParams(location.search).get("grid") || localStorage.getItem("cctv.grid");
if (asked && LAYOUTS[asked]) {
  $("grid-layout").value = asked;
  $("grid").hidden = false;
  showGrid();
}
