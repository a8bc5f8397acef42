// firm-inspect status page: live verdicts over server-sent events, status polled every 2 s.
// No external scripts: everything here is served by the device.
"use strict";

const token = new URLSearchParams(location.hash.slice(1)).get("token");
const auth = token ? { headers: { Authorization: "Bearer " + token } } : {};
const withToken = (url) => (token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url);
const $ = (id) => document.getElementById(id);
const scores = []; // [seq, distance, defect]
let threshold = null;
let events = 0;

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
  setBadge($("verdict"), v.defect ? "DEFECT" : "good", v.defect ? "defect" : "good");
  $("distance").textContent = fmt(v.distance);
  $("threshold").textContent = fmt(v.threshold);
  $("seq").textContent = v.seq;
  threshold = v.threshold;
}

function addAlert(a, front) {
  const li = document.createElement("li");
  li.className = "alert";
  li.dataset.seq = a.seq;
  const frame = document.createElement("img");
  frame.alt = "flagged frame";
  if (a.image) frame.src = withToken("/api/flagged/" + encodeURIComponent(a.image));
  const near = document.createElement("img");
  near.alt = "nearest good image";
  near.className = "nearest";
  near.src = withToken("/api/thumbnail/" + a.nearest);
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.innerHTML = "";
  const b = document.createElement("b");
  b.textContent = "frame " + a.seq + " - distance " + fmt(a.distance);
  meta.appendChild(b);
  meta.appendChild(document.createElement("br"));
  meta.appendChild(document.createTextNode(a.time + " - " + a.source));
  meta.appendChild(document.createElement("br"));
  meta.appendChild(document.createTextNode("nearest good image: " + (a["nearest-source"] || a.nearest)));
  li.append(frame, near, meta);
  const list = $("alerts");
  if (front) list.prepend(li); else list.append(li);
  while (list.children.length > 100) list.lastChild.remove();
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
  } catch (e) {
    setBadge($("health"), "device unreachable", "bad");
  }
}

async function start() {
  const [sc, al] = await Promise.all([
    fetch("/api/scores", auth).then((r) => r.json()),
    fetch("/api/alerts", auth).then((r) => r.json()),
  ]);
  threshold = sc.threshold;
  scores.push(...sc.scores);
  al.alerts.forEach((a) => addAlert(a, true));
  $("alert-total").textContent = al.total;
  drawChart();
  refreshStatus();
  setInterval(refreshStatus, 2000);
  setInterval(() => ($("frame").src = withToken("/api/frame.jpg?t=" + Date.now())), 500);
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
  });
  es.addEventListener("bundle", () => refreshStatus());
}

start();
