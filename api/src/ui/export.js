// The export view: a channel and a range (site time, as the dashboard shows every time) give
// the plan from /api/export/plan — the files it is cut from and every hole — and the MP4 to
// play or download (/api/export). `?export=1&channel=<id>&from=<ms>&to=<ms>` opens it filled in.
// An ES module served by the API (/ui/export.js): no build step, no inline script.

import { $, esc, getJson, siteTime } from "./common.js";

async function show(channel, from, to, zone) {
  const out = $("ex-result");
  const video = $("ex-video");
  out.textContent = "planning…";
  video.hidden = true;
  let plan;
  try {
    plan = await getJson(`/api/export/plan?channel=${encodeURIComponent(channel)}&from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`);
  } catch (e) {
    out.innerHTML = `<span class="camera-problem">${esc(e.message)}</span>`;
    return;
  }
  const at = (ms) => esc(siteTime(ms, zone).replace("T", " "));
  const holes = plan.holes.map((h) => `<li class="camera-problem">no backup ${at(h.from_ms)} – ${at(h.to_ms)} (${((h.to_ms - h.from_ms) / 1000).toFixed(1)} s)</li>`);
  out.innerHTML =
    `<div>${plan.covered_secs.toFixed(1)} s of video from ${plan.pieces.length} file(s) — ` +
    `<a id="ex-download" href="${esc(plan.download)}" download>download MP4</a></div>` +
    `<ul id="ex-holes" data-holes="${plan.holes.length}">${holes.join("") || "<li>no holes: the range is covered from start to end</li>"}</ul>`;
  video.dataset.duration = "";
  video.onloadedmetadata = () => { video.dataset.duration = video.duration.toFixed(2); };
  video.onerror = () => { video.dataset.error = (video.error && video.error.message) || "cannot play"; };
  video.src = plan.download;
  video.hidden = false;
}

async function init() {
  const form = $("ex-form");
  if (!form) return;
  let zone = "UTC";
  try { zone = (await getJson("/api/health")).timezone || "UTC"; } catch (_) { /* the dashboard shows the error */ }
  try {
    const channels = await getJson("/api/channels");
    $("ex-channel").innerHTML = channels.items.map((c) => `<option value="${c.id}">${c.id} ${esc(c.name)}</option>`).join("");
  } catch (_) { /* idem */ }
  const now = Date.now();
  $("ex-from").value = siteTime(now - 15 * 60000, zone);
  $("ex-to").value = siteTime(now, zone);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    show($("ex-channel").value, $("ex-from").value, $("ex-to").value, zone);
  });
  const q = new URLSearchParams(location.search);
  if (q.get("export")) {
    const [channel, from, to] = [q.get("channel"), Number(q.get("from")), Number(q.get("to"))];
    if (channel) $("ex-channel").value = channel;
    if (from && to) {
      $("ex-from").value = siteTime(from, zone);
      $("ex-to").value = siteTime(to, zone);
      $("export-view").scrollIntoView();
      show(channel, from, to, zone);
    }
  }
}

init();
