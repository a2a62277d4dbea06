// Edgewire dashboard: the device list from /api/v1/devices (polled), live
// values from the SSE stream (EventSource resumes by itself with Last-Event-ID).
"use strict";
const devices = new Map();   // id -> summary from the API
const values = new Map();    // id -> Map(stream -> {value, ts, error})
const tbody = document.querySelector("#devices tbody");
const statusEl = document.getElementById("status");
let received = 0;

function text(tag, content, cls) {
  const el = document.createElement(tag);
  el.textContent = content;
  if (cls) el.className = cls;
  return el;
}

function render() {
  const ids = new Set([...devices.keys(), ...values.keys()]);
  const rows = [];
  for (const id of [...ids].sort()) {
    const d = devices.get(id) || { id, state: "unknown", messages: 0, missing: 0, duplicates: 0 };
    const tr = document.createElement("tr");
    tr.dataset.device = id;
    tr.appendChild(text("td", id));
    tr.appendChild(text("td", d.state, d.state));
    tr.appendChild(text("td", [d.fw, d.hw].filter(Boolean).join(" / ")));
    const vals = document.createElement("td");
    vals.className = "values";
    for (const [stream, v] of [...(values.get(id) || new Map())].sort()) {
      const unit = (d.units || {})[stream];
      const shown = v.error ? "error: " + v.error : String(v.value) + (unit ? " " + unit : "");
      vals.appendChild(text("span", stream + " = " + shown, v.error ? "err" : ""));
    }
    tr.appendChild(vals);
    tr.appendChild(text("td", d.messages));
    tr.appendChild(text("td", d.missing));
    tr.appendChild(text("td", d.duplicates));
    tr.appendChild(text("td", d.last_seen ? new Date(d.last_seen).toLocaleTimeString() : ""));
    rows.push(tr);
  }
  tbody.replaceChildren(...rows);
}

async function refreshDevices() {
  try {
    const r = await fetch("/api/v1/devices");
    const body = await r.json();
    devices.clear();
    for (const d of body.devices) devices.set(d.id, d);
    render();
  } catch (e) {
    statusEl.textContent = "device list unavailable: " + e;
  }
}

const source = new EventSource("/api/v1/stream");
source.addEventListener("open", () => { statusEl.textContent = "live"; });
source.addEventListener("error", () => { statusEl.textContent = "reconnecting…"; });
source.addEventListener("reading", (ev) => {
  const e = JSON.parse(ev.data);
  if (!values.has(e.device)) values.set(e.device, new Map());
  values.get(e.device).set(e.stream, e);
  received += 1;
  statusEl.textContent = "live, " + received + " readings received";
  scheduleRender();
});
source.addEventListener("gap", (ev) => { statusEl.textContent = "resumed with a gap: " + ev.data; });

let pending = false;
function scheduleRender() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => { pending = false; render(); });
}

refreshDevices();
setInterval(refreshDevices, 2000);
