// Masks and zones drawn on the camera's picture. A click adds a corner to the shape being
// drawn, "finish" closes it (3 corners at least); masks are areas motion never looks at, zones
// are named areas events report. "What motion ignores" paints the masks black, as the detector
// sees the picture. Save sends the drawing with the admin token to PUT /api/channels/<id>/zones,
// which refuses a bad one with every reason; once saved, motion uses it within a scheduler round
// (no restart). `?zones=1&channel=<id>` opens it. An ES module (/ui/zones.js): no build step.

import { $, esc, getJson } from "./common.js";

const ed = { channel: null, shapes: [], current: [], image: new Image() };

function canvas() { return $("zn-canvas"); }

function draw() {
  const c = canvas(), g = c.getContext("2d"), ignore = $("zn-preview").checked;
  g.clearRect(0, 0, c.width, c.height);
  if (ed.image.complete && ed.image.naturalWidth) g.drawImage(ed.image, 0, 0, c.width, c.height);
  const path = (points) => {
    g.beginPath();
    points.forEach(([x, y], i) => (i ? g.lineTo(x * c.width, y * c.height) : g.moveTo(x * c.width, y * c.height)));
  };
  for (const s of ed.shapes) {
    path(s.points);
    g.closePath();
    if (s.kind === "mask") {
      g.fillStyle = ignore ? "#000" : "rgba(220, 40, 40, 0.35)";
      g.fill();
    } else {
      g.strokeStyle = "#5af";
      g.lineWidth = 2;
      g.stroke();
      g.fillStyle = "#5af";
      g.font = "14px sans-serif";
      g.fillText(s.name, s.points[0][0] * c.width + 4, s.points[0][1] * c.height + 16);
    }
  }
  if (ed.current.length) {
    path(ed.current);
    g.strokeStyle = "#fb3";
    g.lineWidth = 2;
    g.stroke();
    for (const [x, y] of ed.current) g.fillRect(x * c.width - 3, y * c.height - 3, 6, 6);
  }
  $("zn-list").innerHTML = ed.shapes.map((s, i) =>
    `<li>${s.kind === "mask" ? "mask" : "zone <b>" + esc(s.name) + "</b>"} (${s.points.length} corners) ` +
    `<button data-remove="${i}">remove</button></li>`).join("") || "<li class=muted>nothing drawn</li>";
  for (const b of document.querySelectorAll("#zn-list [data-remove]")) {
    b.onclick = () => { ed.shapes.splice(Number(b.dataset.remove), 1); draw(); };
  }
}

async function open(channel) {
  ed.channel = channel;
  ed.current = [];
  $("zn-result").textContent = "";
  const d = await getJson(`/api/channels/${channel}/zones`);
  ed.shapes = d.mask.map((m) => ({ kind: "mask", points: m.points }))
    .concat(d.zone.map((z) => ({ kind: "zone", name: z.name, points: z.points })));
  ed.image = new Image();
  ed.image.onload = () => {
    const c = canvas();
    c.width = Math.min(960, ed.image.naturalWidth);
    c.height = Math.round(c.width * ed.image.naturalHeight / ed.image.naturalWidth);
    draw();
  };
  ed.image.onerror = () => { $("zn-result").textContent = "no picture of this camera yet: drawing on a blank frame"; draw(); };
  ed.image.src = `/api/channels/${channel}/preview.jpg?t=${Date.now()}`;
  draw();
}

function finish() {
  if (ed.current.length < 3) return say("a shape needs at least 3 corners", true);
  const kind = $("zn-kind").value, name = $("zn-name").value.trim();
  if (kind === "zone" && !name) return say("a zone needs a name", true);
  ed.shapes.push({ kind, name, points: ed.current });
  ed.current = [];
  draw();
}

function say(text, problem) {
  const r = $("zn-result");
  r.textContent = text;
  r.className = problem ? "camera-problem" : "";
}

async function save() {
  const token = $("zn-token").value.trim();
  sessionStorage.setItem("cctv.admin", token);
  const round = (p) => p.map(([x, y]) => [Math.round(x * 1e4) / 1e4, Math.round(y * 1e4) / 1e4]);
  const body = {
    mask: ed.shapes.filter((s) => s.kind === "mask").map((s) => ({ points: round(s.points) })),
    zone: ed.shapes.filter((s) => s.kind === "zone").map((s) => ({ name: s.name, points: round(s.points) })),
  };
  const r = await fetch(`/api/channels/${ed.channel}/zones`, {
    method: "PUT", credentials: "same-origin", body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", Authorization: "Bearer " + token },
  });
  const answer = await r.json().catch(() => ({}));
  $("zones").dataset.saved = r.ok ? "yes" : "no";
  if (!r.ok) return say(answer.error || `HTTP ${r.status}`, true);
  say(`saved; motion uses it within ${answer.applies_within_secs} s`);
}

canvas().onclick = (ev) => {
  const r = canvas().getBoundingClientRect();
  const clamp = (v) => Math.max(0, Math.min(1, v));
  ed.current.push([clamp((ev.clientX - r.left) / r.width), clamp((ev.clientY - r.top) / r.height)]);
  draw();
};
$("zn-finish").onclick = finish;
$("zn-undo").onclick = () => { ed.current.pop(); draw(); };
$("zn-preview").onchange = draw;
$("zn-save").onclick = () => save().catch((e) => say(e.message, true));
$("zn-channel").onchange = () => open(Number($("zn-channel").value));
$("zn-close").onclick = () => { $("zones").hidden = true; };
$("zn-token").value = sessionStorage.getItem("cctv.admin") || "";

async function start(channel) {
  const list = (await getJson("/api/channels")).items;
  $("zn-channel").innerHTML = list.map((c) => `<option value="${c.id}">ch${c.id} ${esc(c.name)}</option>`).join("");
  const id = channel || (list[0] && list[0].id);
  if (id == null) return;
  $("zn-channel").value = String(id);
  $("zones").hidden = false;
  await open(Number(id));
}
$("zones-open").onclick = () => start(null).catch((e) => say(e.message, true));
const asked = new URLSearchParams(location.search);
if (asked.get("zones")) start(Number(asked.get("channel")) || null).catch((e) => say(e.message, true));
