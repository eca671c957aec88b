"""The dashboard's single web page: tables of workloads, agents and recent
events, kept live over the WebSocket `/api/v1/stream` (a snapshot on
connect, then one message per change; it reconnects by itself).

With a token, open it as `http://HOST:PORT/#token=TOKEN`: the fragment
never leaves the browser; the page keeps it in sessionStorage and sends it
as `Authorization: Bearer` (HTTP) or `access_token` (WebSocket, which
browsers cannot give headers). Text from the bus is only ever set with
textContent, never parsed as HTML."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ank-zenoh dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
:root{--bg:#0f141a;--panel:#161d26;--line:#263241;--text:#e6edf3;--dim:#8b98a5}
body{margin:0;font:14px/1.4 system-ui,sans-serif;background:var(--bg);color:var(--text)}
header{display:flex;gap:1em;align-items:baseline;padding:.8em 1.2em;border-bottom:1px solid var(--line)}
h1{font-size:18px;margin:0}h2{font-size:15px;margin:1.2em 0 .4em}
main{padding:0 1.2em 1.2em}#status{color:var(--dim)}
table{border-collapse:collapse;width:100%;background:var(--panel)}
th,td{text-align:left;padding:.35em .6em;border-bottom:1px solid var(--line);vertical-align:top}
th{color:var(--dim);font-weight:600}
.state-Running,.sev-info{color:#56d364}.state-Pending,.state-Stopping,.sev-warning{color:#e3b341}
.state-Failed,.state-AgentDisconnected,.sev-error{color:#f85149}.state-Succeeded{color:#58a6ff}
.state-NotScheduled{color:var(--dim)}.alive-true{color:#56d364}.alive-false{color:#f85149}
.bar{display:inline-block;height:8px;background:#56d364;vertical-align:middle;margin-right:.4em}
.dim{color:var(--dim)}
</style></head><body>
<header><h1>ank-zenoh</h1><span id="status">connecting…</span></header>
<main>
<h2>Workloads</h2>
<table><thead><tr><th>name</th><th>agent</th><th>state</th><th>info</th><th>restarts</th>
<th>policy</th><th>runtime</th><th>health</th><th>since</th></tr></thead><tbody id="workloads"></tbody></table>
<h2>Agents</h2>
<table><thead><tr><th>name</th><th>live</th><th>arch / os</th><th>tags</th><th>cpu</th><th>free memory</th>
<th>energy</th><th>pose</th></tr></thead><tbody id="agents"></tbody></table>
<h2>Recent events</h2>
<table><thead><tr><th>time</th><th>severity</th><th>kind</th><th>subject</th><th>message</th></tr></thead>
<tbody id="events"></tbody></table>
</main>
<script>
"use strict";
const fragmentToken = new URLSearchParams(location.hash.slice(1)).get("token");
if (fragmentToken) {
  sessionStorage.setItem("ankToken", fragmentToken);
  history.replaceState(null, "", location.pathname);
}
const token = sessionStorage.getItem("ankToken");
const workloads = new Map(), agents = new Map();
let events = [];
const MAX_EVENTS = 100;

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  return td;
}
function time(ms) { return ms ? new Date(ms).toLocaleTimeString() : ""; }
function bytes(n) { return n === null || n === undefined ? "" : (n / 1048576).toFixed(0) + " MiB"; }

function renderWorkloads() {
  const rows = [...workloads.values()].sort((a, b) => a.name.localeCompare(b.name) || a.agent.localeCompare(b.agent));
  document.getElementById("workloads").replaceChildren(...rows.map(w => {
    const tr = document.createElement("tr");
    tr.dataset.key = w.agent + "/" + w.name;
    const state = w.substate ? w.state + "(" + w.substate + ")" : w.state;
    tr.append(cell(w.name), cell(w.agent || "—"), cell(state, "state state-" + w.state),
      cell([w.additionalInfo, w.lastError].filter(Boolean).join(" · "), "dim"),
      cell(w.restartCount, "restarts"), cell(w.restartPolicy || ""), cell(w.runtime), cell(w.health),
      cell(time(w.timeMs), "dim"));
    return tr;
  }));
}
function renderAgents() {
  const rows = [...agents.values()].sort((a, b) => a.name.localeCompare(b.name));
  document.getElementById("agents").replaceChildren(...rows.map(a => {
    const tr = document.createElement("tr");
    tr.dataset.key = a.name;
    const live = a.alive === null ? "?" : a.alive ? "● live" : "○ lost";
    const tags = Object.entries(a.tags || {}).map(([k, v]) => k + "=" + v).join(", ");
    const energy = document.createElement("td");
    energy.className = "energy";
    if (a.energyWh !== null && a.energyWh !== undefined) {
      if (a.capacityWh) {
        const bar = document.createElement("span");
        const percent = Math.max(0, Math.min(100, 100 * a.energyWh / a.capacityWh));
        bar.className = "bar"; bar.style.width = percent * 0.6 + "px";
        energy.append(bar);
      }
      energy.append(a.energyWh.toFixed(1) + " Wh" + (a.capacityWh ? " / " + a.capacityWh.toFixed(0) : ""));
    }
    const pose = a.pose ? "(" + a.pose.map(v => v === null ? "?" : v.toFixed(2)).join(", ") + ")" : "";
    const cpu = a.cpuPercent === null ? "" : a.cpuPercent.toFixed(0) + " %";
    tr.append(cell(a.name), cell(live, "alive alive-" + a.alive), cell([a.arch, a.os].filter(Boolean).join(" / ")),
      cell(tags), cell(cpu), cell(a.totalMemoryBytes ? bytes(a.freeMemoryBytes) : ""), energy, cell(pose));
    return tr;
  }));
}
function renderEvents() {
  document.getElementById("events").replaceChildren(...events.map(e => {
    const tr = document.createElement("tr");
    tr.append(cell(time(e.timeMs), "dim"), cell(e.severity, "sev-" + e.severity), cell(e.kind), cell(e.subject),
      cell(e.message));
    return tr;
  }));
}
function apply(m) {
  if (m.type === "snapshot") {
    workloads.clear(); agents.clear();
    m.data.workloads.forEach(w => workloads.set(w.agent + "/" + w.name, w));
    m.data.agents.forEach(a => agents.set(a.name, a));
    events = m.data.events.slice(0, MAX_EVENTS);
    renderWorkloads(); renderAgents(); renderEvents();
  } else if (m.type === "workload") {
    workloads.delete("/" + m.data.name);  // a desired-only placeholder, now reported
    workloads.set(m.data.agent + "/" + m.data.name, m.data); renderWorkloads();
  } else if (m.type === "workloadRemoved") {
    workloads.delete(m.data.agent + "/" + m.data.name); renderWorkloads();
  } else if (m.type === "agent") {
    agents.set(m.data.name, m.data); renderAgents();
  } else if (m.type === "event") {
    events.unshift(m.data); events = events.slice(0, MAX_EVENTS); renderEvents();
  }
}
let delay = 500;
function connect() {
  const query = token ? "?access_token=" + encodeURIComponent(token) : "";
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(scheme + location.host + "/api/v1/stream" + query);
  const status = document.getElementById("status");
  ws.onopen = () => { status.textContent = "live"; delay = 500; };
  ws.onmessage = (e) => apply(JSON.parse(e.data));
  ws.onclose = (e) => {
    status.textContent = e.code === 1008 ? "unauthorized: open this page as /#token=YOUR_TOKEN" : "reconnecting…";
    setTimeout(connect, delay); delay = Math.min(delay * 2, 10000);
  };
}
connect();
</script></body></html>
"""
