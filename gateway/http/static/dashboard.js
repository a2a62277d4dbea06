// Edgewire dashboard: the device list from /api/v1/devices (polled), live
// values from the SSE stream (EventSource resumes by itself with Last-Event-ID).
// When the gateway asks for a token (401), a form exchanges it for a session
// cookie (POST /api/v1/login: HttpOnly, SameSite=Strict), which fetch and
// EventSource then send by themselves; the token is never stored by the page.
"use strict";
const devices = new Map();   // id -> summary from the API
const values = new Map();    // id -> Map(stream -> {value, ts, error})
const tbody = document.querySelector("#devices tbody");
const statusEl = document.getElementById("status");
const loginForm = document.getElementById("login");
const loginError = document.getElementById("login-error");
let received = 0;
let source = null;
let poller = null;

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

function stop() {
  if (source) { source.close(); source = null; }
  if (poller) { clearInterval(poller); poller = null; }
}

function askForToken(message) {
  stop();
  document.getElementById("who").hidden = true;
  loginForm.hidden = false;
  loginError.textContent = message || "";
  statusEl.textContent = "logged out";
}

async function refreshDevices() {
  try {
    const r = await fetch("/api/v1/devices", { credentials: "same-origin" });
    if (r.status === 401) { askForToken("your session ended; log in again"); return; }
    const body = await r.json();
    devices.clear();
    for (const d of body.devices) devices.set(d.id, d);
    render();
  } catch (e) {
    statusEl.textContent = "device list unavailable: " + e;
  }
}

function start(who) {
  loginForm.hidden = true;
  if (who.auth) {
    document.getElementById("who-name").textContent = who.name + " (" + who.scope + ")";
    document.getElementById("who").hidden = false;
  }
  source = new EventSource("/api/v1/stream", { withCredentials: true });
  source.addEventListener("open", () => { statusEl.textContent = "live"; });
  source.addEventListener("error", () => { statusEl.textContent = "reconnecting…"; refreshDevices(); });
  source.addEventListener("reading", (ev) => {
    const e = JSON.parse(ev.data);
    if (!values.has(e.device)) values.set(e.device, new Map());
    values.get(e.device).set(e.stream, e);
    received += 1;
    statusEl.textContent = "live, " + received + " readings received";
    scheduleRender();
  });
  source.addEventListener("gap", (ev) => { statusEl.textContent = "resumed with a gap: " + ev.data; });
  refreshDevices();
  poller = setInterval(refreshDevices, 2000);
}

let pending = false;
function scheduleRender() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => { pending = false; render(); });
}

async function begin() {
  try {
    const r = await fetch("/api/v1/whoami", { credentials: "same-origin" });
    if (r.status === 401) { askForToken(""); return; }
    start(await r.json());
  } catch (e) {
    statusEl.textContent = "gateway unreachable: " + e;
    setTimeout(begin, 2000);
  }
}

loginForm.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = document.getElementById("token");
  loginError.textContent = "";
  const r = await fetch("/api/v1/login", {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token: input.value.trim() }),
  });
  input.value = "";
  let body = {};
  try { body = await r.json(); } catch (e) { /* not JSON */ }
  if (r.ok) begin();
  else loginError.textContent = body.message || ("login failed: HTTP " + r.status);
});

document.getElementById("logout").addEventListener("click", async () => {
  await fetch("/api/v1/logout", { method: "POST", credentials: "same-origin" });
  askForToken("");
});

begin();
