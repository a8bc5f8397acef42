// firm-inspect status page. It is live at once however many alerts the device holds: the event
// stream, the status and the live frame are asked for first (one request each; HTTP/1.1 gives a
// page six connections per host and the event stream keeps one), then the chart's scores, then
// the alert list in pages of PAGE alerts with their few-KB thumbnails, loaded as they scroll into
// view. No external scripts: everything here is served by the device.
"use strict";

const token = new URLSearchParams(location.hash.slice(1)).get("token");
const auth = token ? { headers: { Authorization: "Bearer " + token } } : {};
const withToken = (url) => (token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url);
const $ = (id) => document.getElementById(id);
const scores = []; // [seq, distance, defect]
let threshold = null;
let events = 0;
let verdictShown = false;

const PAGE = 20;
// List items kept; the oldest beyond it are dropped and come back with "older alerts".
const MAX_LISTED = 500;
let before = null; // journal seq: the next (older) page ends below it; null: no older alerts
let loading = false;
let newest = 0; // newest journal seq listed: what "acknowledge all" covers
const listed = new Set(); // journal seqs in the list

function fmt(x) {
  if (x === null || x === undefined) return "-";
  return Math.abs(x) < 0.01 && x !== 0 ? x.toExponential(3) : x.toFixed(4);
}

function setBadge(el, text, cls) {
  el.textContent = text;
  el.className = "badge " + cls;
}

function drawChart() {
  const c = $("chart");
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const pts = scores.slice(-300);
  if (pts.length === 0) return;
  let max = Math.max(...pts.map((p) => p[1]), threshold || 0) * 1.1 || 1;
  const x = (i) => (pts.length === 1 ? c.width / 2 : (i / (pts.length - 1)) * (c.width - 20) + 10);
  const y = (d) => c.height - 10 - (d / max) * (c.height - 20);
  g.strokeStyle = "#3e4c59";
  g.beginPath();
  pts.forEach((p, i) => (i ? g.lineTo(x(i), y(p[1])) : g.moveTo(x(i), y(p[1]))));
  g.stroke();
  pts.forEach((p, i) => {
    g.fillStyle = p[2] ? "#c62828" : "#2f8132";
    g.beginPath();
    g.arc(x(i), y(p[1]), 2.5, 0, 2 * Math.PI);
    g.fill();
  });
  if (threshold !== null) {
    g.strokeStyle = "#c62828";
    g.setLineDash([6, 4]);
    g.beginPath();
    g.moveTo(0, y(threshold));
    g.lineTo(c.width, y(threshold));
    g.stroke();
    g.setLineDash([]);
  }
}

function showVerdict(v) {
  verdictShown = true;
  setBadge($("verdict"), v.defect ? "DEFECT" : "good", v.defect ? "defect" : "good");
  $("distance").textContent = fmt(v.distance);
  $("threshold").textContent = fmt(v.threshold);
  $("seq").textContent = v.seq;
  $("marked").hidden = v["marked-good"] === undefined || v["marked-good"] === null;
  threshold = v.threshold;
}

function setUnacked(n) {
  if (n === null || n === undefined) return;
  $("alert-open").textContent = n;
  const b = $("unacked");
  b.hidden = false;
  setBadge(b, n + " unacknowledged", n > 0 ? "defect" : "ok");
  $("ack-all").hidden = !token || n === 0;
  $("ack-hint").hidden = !!token || n === 0;
}

function alertItem(a) {
  const li = document.createElement("li");
  li.className = "alert" + (a.acknowledged ? " acked" : "");
  li.dataset.seq = a.seq;
  const js = a["journal-seq"];
  if (js !== null && js !== undefined) li.dataset.journalSeq = js;
  const link = document.createElement("a");
  const frame = document.createElement("img");
  frame.className = "frame";
  frame.alt = "flagged frame";
  frame.loading = "lazy";
  if (a.image) {
    const img = "/api/flagged/" + encodeURIComponent(a.image);
    // Bundles that score patches: the thumbnail is the frame with its heat map drawn over it.
    const heat = a["heat-image"] ? "/api/flagged/" + encodeURIComponent(a["heat-image"]) : null;
    if (heat) frame.classList.add("heat");
    frame.src = withToken((heat || img) + "/thumb.jpg");
    link.href = withToken(img);
    link.target = "_blank";
  }
  link.append(frame);
  const near = document.createElement("img");
  near.alt = "nearest good image";
  near.className = "nearest";
  near.loading = "lazy";
  near.src = withToken("/api/thumbnail/" + a.nearest);
  const meta = document.createElement("div");
  meta.className = "meta";
  const b = document.createElement("b");
  b.textContent = "frame " + a.seq + " - distance " + fmt(a.distance);
  meta.appendChild(b);
  meta.appendChild(document.createElement("br"));
  meta.appendChild(document.createTextNode(a.time + " - " + a.source));
  meta.appendChild(document.createElement("br"));
  meta.appendChild(document.createTextNode("nearest good image: " + (a["nearest-source"] || a.nearest)));
  if (a.heat) {
    // Bundles that score patches: where the defect is, and the frame with its heat map.
    const r = a.heat.region;
    meta.appendChild(document.createElement("br"));
    meta.appendChild(document.createTextNode(
      "hottest region x " + r[0] + "-" + r[2] + ", y " + r[1] + "-" + r[3] +
      " (patch score " + fmt(a.heat.score) + ")"));
  }
  if (a["heat-image"]) {
    const h = document.createElement("a");
    h.className = "heat-link";
    h.href = withToken("/api/flagged/" + encodeURIComponent(a["heat-image"]));
    h.target = "_blank";
    h.textContent = "heat map";
    meta.appendChild(document.createTextNode(" "));
    meta.appendChild(h);
  }
  li.append(link, near, meta);
  if (token && li.dataset.journalSeq) {
    const ack = document.createElement("button");
    ack.type = "button";
    ack.className = "ack";
    ack.textContent = "acknowledge";
    ack.addEventListener("click", () => acknowledge({ alert: js }));
    li.append(ack);
    const good = document.createElement("button");
    good.type = "button";
    good.className = "mark-good";
    good.textContent = "mark good";
    good.title = "This part is good: frames like it pass from now on (the threshold does not move)";
    good.addEventListener("click", () => markGood(li, js));
    li.append(good);
  }
  if (markedAlerts.has(js)) li.classList.add("marked");
  return li;
}

// Newest first: `front` for alerts that just happened, else at the end (older pages).
function addAlert(a, front) {
  const js = a["journal-seq"];
  if (js !== null && js !== undefined) {
    if (listed.has(js)) return;
    listed.add(js);
    newest = Math.max(newest, js);
  }
  const list = $("alerts");
  const li = alertItem(a);
  if (front) list.prepend(li); else list.append(li);
  while (list.children.length > MAX_LISTED) {
    const last = list.lastChild;
    last.remove();
    if (last.dataset.journalSeq) listed.delete(Number(last.dataset.journalSeq));
    const oldest = list.lastChild && list.lastChild.dataset.journalSeq;
    if (oldest) {
      before = Number(oldest);
      $("more").hidden = false;
    }
  }
}

async function loadPage() {
  if (loading) return;
  loading = true;
  try {
    const r = await fetch("/api/alerts?limit=" + PAGE + (before !== null ? "&before=" + before : ""), auth);
    const p = await r.json();
    if (!r.ok) throw new Error(p.error);
    p.alerts.slice().reverse().forEach((a) => addAlert(a, false));
    before = p["next-before"];
    $("more").hidden = before === null;
    $("alert-total").textContent = p["in-journal"];
    setUnacked(p.unacknowledged);
  } catch (e) {
    // A device without the journal's list: the alerts it holds in memory.
    if (before === null && listed.size === 0) {
      const al = await (await fetch("/api/alerts", auth)).json();
      al.alerts.forEach((a) => addAlert(a, true));
      $("alert-total").textContent = al.total;
    }
  } finally {
    loading = false;
  }
}

function applyAck(a) {
  document.querySelectorAll("#alerts li[data-journal-seq]").forEach((li) => {
    const s = Number(li.dataset.journalSeq);
    if (s === a.alert || (a["up-to"] !== undefined && s <= a["up-to"])) li.classList.add("acked");
  });
  setUnacked(a.unacknowledged);
}

async function acknowledge(body) {
  const r = await fetch("/api/alerts/ack", {
    method: "POST",
    headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const a = await r.json();
  if (r.ok) applyAck(a);
  else {
    $("ack-hint").textContent = "Not acknowledged: " + a.error;
    $("ack-hint").hidden = false;
  }
}

// Frames marked good ("this part is good"): the overlay in force for the active bundle.
const markedAlerts = new Set();

function showOverlay(o) {
  const entries = (o && o.entries) || [];
  markedAlerts.clear();
  entries.forEach((e) => markedAlerts.add(e.alert));
  document.querySelectorAll("#alerts li[data-journal-seq]").forEach((li) =>
    li.classList.toggle("marked", markedAlerts.has(Number(li.dataset.journalSeq))));
  $("overlay-count").textContent = entries.length;
  // Why the overlay file was refused or marks are unavailable; else the last action's answer stays.
  const problem = o && (o.refused || o.unavailable);
  if (problem) $("overlay-note").textContent = problem;
  $("overlay-entries").replaceChildren(...entries.slice().reverse().map((e) => {
    const li = document.createElement("li");
    li.dataset.entry = e.id;
    li.textContent = "alert " + e.alert + " (frame " + e.frame + ", " + e.source + ", distance " + fmt(e.distance) +
      "), marked " + e["marked-at"] + (e["carried-from"] ? ", carried over" : "") + " ";
    if (token) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "undo";
      b.textContent = "undo";
      b.addEventListener("click", () => overlayRequest("/api/overlay/undo", { entry: e.id }));
      li.append(b);
    }
    return li;
  }));
}

async function refreshOverlay() {
  try {
    const r = await fetch("/api/overlay", auth);
    if (r.ok) showOverlay(await r.json());
  } catch (e) {
    // The next overlay event or status refresh tries again.
  }
}

async function overlayRequest(url, body) {
  const r = await fetch(url, {
    method: "POST",
    headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const a = await r.json();
  $("overlay-note").textContent = r.ok
    ? (a.action === "mark" ? "Alert " + a.entry.alert + " marked good: its distance " + fmt(a.before) + " is now " + fmt(a.after) +
      " (threshold " + fmt(a.threshold) + ", unchanged)." : "Mark of alert " + a.entry.alert + " undone.")
    : "Not done: " + a.error;
  if (r.ok) refreshOverlay();
  return r.ok;
}

async function markGood(li, js) {
  if (await overlayRequest("/api/overlay/mark", { alert: js })) li.classList.add("marked");
}

function dl(el, rows) {
  el.replaceChildren();
  for (const [k, v] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v === null || v === undefined ? "-" : v;
    el.append(dt, dd);
  }
}

// The state filesystem (`state-fs`): a full disk, and the degraded states a start on one leaves
// (crash-loop protection, an unrecorded rollback, the journal without its checkpoint). Hidden
// while there is nothing to say; frames are scored either way.
function showStorage(fs) {
  const problems = [];
  if (fs && fs.full) {
    problems.push(["full", "The state filesystem is full since " + (fs.since || "?") + ": " + (fs.error || "no space").replace(/\.?$/, ".") +
      " Failing: " + (fs.failing || []).join(", ") + "; " + fs["lost-writes"] + " writes lost so far. Frames are still scored."]);
  } else if (fs && fs["lost-writes"] > 0) {
    problems.push(["recovered", fs["lost-writes"] + " writes were lost while the state filesystem was full; writing again."]);
  }
  for (const [key, what] of [["crash-loop-protection", "Crash-loop protection"], ["rollback-not-recorded", "Rollback not recorded"], ["journal-checkpoint", "Journal checkpoint"]]) {
    if (fs && fs[key]) problems.push([key, what + ": " + fs[key]]);
  }
  const bad = problems.some(([k]) => k !== "recovered");
  $("storage").hidden = problems.length === 0;
  setBadge($("storage-badge"), bad ? (fs.full ? "full" : "degraded") : "recovered", bad ? "bad" : "ok");
  $("storage-problems").replaceChildren(...problems.map(([key, text]) => {
    const li = document.createElement("li");
    li.dataset.problem = key;
    li.textContent = text;
    return li;
  }));
}

// The drift sentinel: the warnings in force with their numbers, and each statistic's window
// median beside its training range (hidden when the bundle carries no drift statistics).
function showDrift(d) {
  const st = d && d.status;
  $("drift").hidden = !st;
  if (!st) return;
  const active = d.active || [];
  setBadge($("drift-badge"), active.length ? active.length + " warning" + (active.length > 1 ? "s" : "") : "in range", active.length ? "bad" : "ok");
  $("drift-warnings").replaceChildren(...active.map((w) => {
    const li = document.createElement("li");
    li.className = "drift-warning";
    li.dataset.kind = w.kind;
    li.textContent = w.message + " (frame " + w.frame + ")";
    return li;
  }));
  const range = (r) => fmt(r[0]) + " .. " + fmt(r[1]);
  $("drift-table").tBodies[0].replaceChildren(...st.statistics.map((x) => {
    const tr = document.createElement("tr");
    if (x.active) tr.className = "out";
    for (const v of [x.statistic, x.median === null ? "(filling)" : fmt(x.median), range(x.training), range(x.allowed)]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.append(td);
    }
    return tr;
  }));
  const ds = st.distance;
  $("drift-distance").textContent = "Passing frames above the calibration's 90th percentile (" + fmt(ds["tail-distance"]) + "): " +
    ds.above + " of the last " + ds.window + " (expected " + ds.expected.toFixed(1) + "; binomial p " +
    (ds["p-value"] === null ? "-" : fmt(ds["p-value"])) + ", warns below " + ds.alpha + ").";
}

async function refreshStatus() {
  try {
    const s = await (await fetch("/api/status", auth)).json();
    $("site").textContent = s.site;
    const [ok, why] = [s.health === "ok" || s.health === "source finished", s.health];
    setBadge($("health"), why, ok ? "ok" : "bad");
    const b = s.bundle || {};
    dl($("bundle"), [
      ["class", b["product-class"]],
      ["version", b["bundle-version"]],
      ["slot", b.slot],
      ["score", b.score],
      ["threshold", fmt(b.threshold) + " (" + (b["operating-point"] || "-") + ")"],
      ["calibration", b.calibration],
      ["backend", b.backend ? b.backend + " on " + b.device : "-"],
      ["quantized AUROC", b.metrics ? fmt(b.metrics["quantized-auroc"]) : "-"],
      ["float AUROC", b.metrics ? fmt(b.metrics["float-auroc"]) : "-"],
    ]);
    const c = s.counters || {};
    const cam = s.camera || {};
    const slots = (s.slots && s.slots.slots) || [];
    dl($("device"), [
      ["FPS", s.fps.toFixed(1)],
      ["latency p50 / p99", fmt(s["latency-ms"].p50) + " / " + fmt(s["latency-ms"].p99) + " ms"],
      ["frames", c["frames-scored"] + " scored, " + c["frames-dropped"] + " dropped, " + c["bad-frames"] + " bad"],
      ["camera", (cam.description || "-") + (cam.connected ? " (connected)" : " (disconnected)") + ", " + cam.reconnects + " reconnects" + (cam.finished ? ", finished" : "")],
      ["slots", slots.map((x) => x.slot + (x.active ? "*" : "") + ": " + (x.bundle ? "v" + x.bundle["bundle-version"] : x.problem)).join(", ")],
      ["uptime", Math.round(s["uptime-s"]) + " s"],
    ]);
    if (s.last && !verdictShown) showVerdict(s.last);
    showDrift(s.drift);
    showStorage(s["state-fs"]);
    if (s.alerts) {
      $("alert-total").textContent = s.alerts["in-journal"];
      setUnacked(s.alerts.unacknowledged);
    }
  } catch (e) {
    setBadge($("health"), "device unreachable", "bad");
  }
}

function refreshFrame() {
  $("frame").src = withToken("/api/frame.jpg?t=" + Date.now());
}

function openEvents() {
  const es = new EventSource(withToken("/api/events"));
  es.addEventListener("verdict", (e) => {
    const v = JSON.parse(e.data);
    events += 1;
    $("sse-count").textContent = events;
    scores.push([v.seq, v.distance, v.defect]);
    if (scores.length > 1000) scores.splice(0, scores.length - 1000);
    showVerdict(v);
    drawChart();
  });
  es.addEventListener("alert", (e) => {
    const a = JSON.parse(e.data);
    addAlert(a, true);
    $("alert-total").textContent = Number($("alert-total").textContent) + 1;
    setUnacked(Number($("alert-open").textContent) + 1);
  });
  es.addEventListener("ack", (e) => applyAck(JSON.parse(e.data)));
  es.addEventListener("bundle", () => { refreshStatus(); refreshOverlay(); });
  es.addEventListener("drift", () => refreshStatus());
  es.addEventListener("overlay", (e) => showOverlay(JSON.parse(e.data)));
}

async function loadScores() {
  const sc = await (await fetch("/api/scores", auth)).json();
  threshold = threshold === null ? sc.threshold : threshold;
  scores.unshift(...sc.scores.filter((p) => !scores.some((q) => q[0] === p[0])));
  drawChart();
}

function start() {
  openEvents();
  // One frame request in flight at a time, at most two a second.
  $("frame").addEventListener("load", () => setTimeout(refreshFrame, 500));
  $("frame").addEventListener("error", () => setTimeout(refreshFrame, 1000));
  refreshFrame();
  refreshStatus().finally(() => {
    setInterval(refreshStatus, 2000);
    loadScores().catch(() => {}).finally(() => { refreshOverlay(); loadPage(); });
  });
  $("more").addEventListener("click", loadPage);
  $("ack-all").addEventListener("click", () => acknowledge({ "up-to": newest }));
  new IntersectionObserver((seen) => {
    if (seen.some((e) => e.isIntersecting)) loadPage();
  }, { root: $("alert-list") }).observe($("more"));
}

start();
