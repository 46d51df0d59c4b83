// The search view: "person on channel 3 yesterday afternoon" — object events of a channel
// (or all), with a label, in a range of site time, each with its annotated picture and a link
// that plays its moment. `?search=1&channel=&label=&from=&to=` (site times or ms) runs it.
// An ES module served by the API (/ui/search.js): no build step, no inline script.

import { $, esc, getJson, siteTime } from "./common.js";

async function search(zone) {
  const q = new URLSearchParams({ category: "objects", limit: "50" });
  const [channel, label, from, to] = ["se-channel", "se-label", "se-from", "se-to"].map((id) => $(id).value.trim());
  if (channel) q.set("channel", channel);
  if (label) q.set("label", label);
  if (from) q.set("since", from);
  if (to) q.set("until", to);
  const out = $("se-results");
  out.textContent = "searching…";
  let page;
  try {
    page = await getJson("/api/events?" + q);
  } catch (e) {
    out.innerHTML = `<span class="camera-problem">${esc(e.message)}</span>`;
    return;
  }
  const found = page.items.map((i) => i.event).filter((e) => e.detections.length > 0);
  out.dataset.found = String(found.length);
  out.innerHTML = found.length === 0 ? "<span class=muted>nothing found</span>" : found.map((e) => {
    const labels = e.detections.map((d) => `${esc(d.label)} ${d.score.toFixed(2)}`).join(", ");
    const name = (e.snapshot || "").split("/").pop();
    const img = name ? `<img class="thumb" alt="" loading="lazy" src="/api/snapshots/${e.channel}/${encodeURIComponent(name)}">` : "";
    return `<a class="found" href="?seek=${e.channel}:${e.frame_ts_ms}" data-event="${esc(e.motion_event)}">` +
      `${img}<span>${esc(siteTime(e.frame_ts_ms, zone).replace("T", " "))} · ch${e.channel} · ${labels}</span></a>`;
  }).join("");
}

async function init() {
  const form = $("se-form");
  if (!form) return;
  let zone = "UTC";
  try { zone = (await getJson("/api/health")).timezone || "UTC"; } catch (_) { /* shown elsewhere */ }
  try {
    const channels = await getJson("/api/channels");
    $("se-channel").innerHTML = `<option value="">all</option>` +
      channels.items.map((c) => `<option value="${c.id}">${c.id} ${esc(c.name)}</option>`).join("");
  } catch (_) { /* idem */ }
  form.addEventListener("submit", (e) => { e.preventDefault(); search(zone); });
  const q = new URLSearchParams(location.search);
  if (q.get("search")) {
    for (const [param, id] of [["channel", "se-channel"], ["label", "se-label"]]) {
      if (q.get(param)) $(id).value = q.get(param);
    }
    for (const [param, id] of [["from", "se-from"], ["to", "se-to"]]) {
      const v = q.get(param);
      if (v) $(id).value = /^\d+$/.test(v) ? siteTime(Number(v), zone) : v;
    }
    $("search-view").scrollIntoView();
    search(zone);
  }
}

init();
