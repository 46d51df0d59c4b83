// Several cameras at one moment: every channel with a backup at that instant plays it from
// there, and each follower is pulled back to the first tile's wall-clock time (the files' start
// times plus their play positions) whenever it drifts more than DRIFT_S, so one person walking
// past two cameras is seen at the same instant on both. Opened from the timeline with "all
// cameras" ticked (window.playTogether, for the classic script).

import { $, esc } from "./common.js";

const DRIFT_S = 0.3;
let timer = null;

function stop() {
  clearInterval(timer);
  timer = null;
}

export function playTogether(ms, backups) {
  stop();
  const box = $("together");
  const byChannel = new Map();
  for (const b of backups) {
    if (b.start_ms <= ms && ms <= b.end_ms && !byChannel.has(b.channel)) byChannel.set(b.channel, b);
  }
  const tiles = [...byChannel.values()].sort((a, b) => a.channel - b.channel);
  box.hidden = false;
  box.scrollIntoView({ block: "nearest" });
  box.dataset.moment = String(Math.round(ms));
  box.dataset.tiles = String(tiles.length);
  $("together-tiles").innerHTML = tiles.length === 0 ? "<span class=muted>no camera has a backup at that moment</span>" :
    tiles.map((b) => `<figure data-channel="${b.channel}" data-start="${b.start_ms}">` +
      `<video muted playsinline preload="auto" src="/api/backups/file/${encodeURIComponent(b.file)}"></video>` +
      `<figcaption>ch${b.channel} <span class="muted">${esc(b.file)}</span></figcaption></figure>`).join("");
  const videos = [...box.querySelectorAll("video")];
  const wallMs = (v) => Number(v.parentElement.dataset.start) + v.currentTime * 1000;
  for (const v of videos) {
    v.onloadedmetadata = () => {
      v.currentTime = Math.max(0, (ms - Number(v.parentElement.dataset.start)) / 1000);
      v.play().catch(() => {});
    };
  }
  timer = setInterval(() => {
    const [lead, ...rest] = videos;
    if (!lead || lead.readyState < 2) return;
    let spread = 0;
    for (const v of rest.filter((v) => v.readyState >= 1 && !v.ended && !v.seeking)) {
      // A follower the browser paused (offscreen, stalled) follows the lead again.
      if (v.paused && !lead.paused) v.play().catch(() => {});
      const off = (wallMs(v) - wallMs(lead)) / 1000;
      if (Math.abs(off) > DRIFT_S) v.currentTime = Math.max(0, v.currentTime - off);
      spread = Math.max(spread, Math.abs(off));
    }
    box.dataset.spread = spread.toFixed(2);
  }, 500);
}

window.playTogether = playTogether;
$("together-close").onclick = () => {
  stop();
  $("together").hidden = true;
  $("together-tiles").innerHTML = "";
};
