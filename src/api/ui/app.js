// The live view of a kuberaft member (DESIGN.md §4.9). One stream from the member that served
// the page (/ui/v1/stream) carries every member's view; the key browser uses the JSON API.
"use strict";

const state = {
  members: new Map(), // id -> { id, name, clientUrl, view, error, timeline: [], samples: [] }
  servedBy: "",
  connected: false,
  watch: null, // AbortController of the prefix watch
};
const TIMELINE_SHOWN = 150;
const HISTORY_VERSIONS = 20;

const $ = (id) => document.getElementById(id);
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "width") node.style.width = v; // CSSOM: the page's CSP forbids style attributes
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}
const time = (ms) => new Date(ms).toLocaleTimeString([], { hour12: false });
const memberName = (id) => (state.members.get(id) || {}).name || id;

// ----- the stream -----

function connect() {
  const source = new EventSource("/ui/v1/stream");
  source.addEventListener("cluster", (e) => {
    setConnected(true);
    merge(JSON.parse(e.data));
    render();
  });
  source.onerror = () => setConnected(false);
}

function setConnected(up) {
  state.connected = up;
  const badge = $("connection");
  badge.textContent = up ? "live" : "down";
  badge.className = "badge " + (up ? "is-live" : "is-down");
  $("down").hidden = up;
  // What is shown is as of the last event, and greyed out until the stream is back.
  document.querySelector("main").classList.toggle("stale", !up);
  if (!up) {
    const me = state.members.get(state.servedBy);
    $("down-name").textContent = me ? me.name : location.host;
    const list = $("down-others");
    list.replaceChildren();
    for (const m of state.members.values()) {
      if (m.id === state.servedBy || !m.clientUrl) continue;
      list.append(el("li", {}, el("a", { href: m.clientUrl + "/ui", text: m.name + " (" + m.clientUrl + ")" })));
    }
  }
}

function merge(event) {
  state.servedBy = event.servedBy;
  const seen = new Set();
  for (const entry of event.members) {
    seen.add(entry.id);
    let m = state.members.get(entry.id);
    if (!m) {
      m = { id: entry.id, timeline: [], samples: [] };
      state.members.set(entry.id, m);
    }
    m.name = entry.name;
    m.clientUrl = entry.clientUrl;
    m.error = entry.error || null;
    if (entry.view) {
      m.view = entry.view;
      m.timeline.push(...entry.view.timeline);
      m.timeline = m.timeline.slice(-400);
      m.samples.push(...entry.view.samples);
      m.samples = m.samples.slice(-300);
    } else {
      m.view = null;
    }
  }
  for (const id of [...state.members.keys()]) if (!seen.has(id)) state.members.delete(id);
}

// ----- rendering -----

function leaderView() {
  for (const m of state.members.values()) if (m.view && m.view.status.role === "leader") return m;
  return null;
}

function render() {
  const leader = leaderView();
  const any = [...state.members.values()].find((m) => m.view);
  $("cluster-id").textContent = any ? any.view.status.clusterId : "…";
  $("leader-name").textContent = leader ? leader.name : "none";
  $("leader-term").textContent = leader ? leader.view.status.term : "–";
  $("served-by").textContent = memberName(state.servedBy);
  renderMembers();
  renderReplication(leader);
  renderRates(leader);
  renderTimeline();
  renderEndpoints();
}

function renderMembers() {
  const body = $("members").tBodies[0];
  body.replaceChildren();
  for (const m of state.members.values()) {
    const s = m.view && m.view.status;
    const role = s ? s.role : "down";
    const healthy = s && s.errors.length === 0;
    const health = s ? (healthy ? "healthy" : s.errors.join("; ")) : "unreachable: " + m.error;
    body.append(
      el("tr", { "data-id": m.id, "data-role": role },
        el("td", { text: m.name }),
        el("td", { text: m.id }),
        el("td", { class: "role role-" + role, text: role }),
        el("td", { class: "num", text: s ? s.term : "–" }),
        el("td", { class: "num", text: s ? s.commitIndex : "–" }),
        el("td", { class: "num", text: s ? s.appliedIndex : "–" }),
        el("td", { class: healthy ? "" : "unhealthy", text: health })));
  }
}

// How long ago the leader's log first held `index`: its lag in time, from the leader's samples.
function lagSeconds(leader, matched) {
  const samples = leader.samples;
  const last = samples.length ? samples[samples.length - 1] : null;
  if (!last || matched >= last.lastIndex) return 0;
  for (const s of samples) if (s.lastIndex > matched) return Math.max(0, (leader.view.nowMs - s.atMs) / 1000);
  return 0;
}

function renderReplication(leader) {
  const list = $("replication");
  list.replaceChildren();
  if (!leader) {
    list.append(el("li", { class: "hint", text: "No leader: nothing is replicated." }));
    return;
  }
  const last = leader.view.status.lastLogIndex;
  for (const [id, matched] of Object.entries(leader.view.matched)) {
    if (id === leader.id) continue;
    const lag = Math.max(0, last - matched);
    const share = last > 0 ? Math.min(100, (100 * matched) / last) : 100;
    const seconds = lagSeconds(leader, matched);
    const bar = el("div", { class: "bar" + (lag > 0 ? " behind" : ""), role: "meter", "aria-valuemin": "0",
      "aria-valuemax": String(last), "aria-valuenow": String(matched), "aria-label": memberName(id) + " match index" },
      el("span", { width: share.toFixed(1) + "%" }));
    list.append(el("li", { "data-id": id, "data-lag": String(lag) },
      el("span", { text: memberName(id) }), bar,
      el("span", { class: "lag", text: matched + " · " + (lag === 0 ? "up to date" : lag + " behind, " + seconds.toFixed(1) + " s") })));
  }
}

// Rates over the last minutes: counters summed over the members that answer, per second.
const CHARTS = [
  ["proposals", "proposals/s", (s) => s.proposalsCommitted, "sum"],
  ["failed", "failed proposals/s", (s) => s.proposalsFailed, "sum"],
  ["commits", "commits/s", (s) => s.commitIndex, "max"],
  ["fsync", "fsync ms (mean)", null, "fsync"],
  ["watch", "watch events/s", (s) => s.watchEvents, "sum"],
  ["leases", "lease expiries/s", (s) => s.leasesExpired, "sum"],
];

function series(member, value) {
  const out = [];
  const s = member.samples;
  for (let i = 1; i < s.length; i++) {
    const dt = (s[i].atMs - s[i - 1].atMs) / 1000;
    if (dt <= 0) continue;
    const v = value ? (value(s[i]) - value(s[i - 1])) / dt : fsyncMean(s[i - 1], s[i]);
    out.push([Math.floor(s[i].atMs / 1000), Math.max(0, v)]);
  }
  return out;
}
function fsyncMean(a, b) {
  const n = b.fsyncCount - a.fsyncCount;
  return n > 0 ? (b.fsyncMicrosSum - a.fsyncMicrosSum) / n / 1000 : 0;
}

function renderRates(leader) {
  const box = $("rates");
  if (!box.children.length) {
    for (const [key, label] of CHARTS) {
      box.append(el("figure", { class: "chart", id: "chart-" + key },
        el("figcaption", {}, label + ": ", el("span", { class: "value", text: "–" })),
        svg()));
    }
  }
  for (const [key, , value, how] of CHARTS) {
    const bySecond = new Map();
    const members = how === "max" && leader ? [leader] : [...state.members.values()];
    for (const m of members) {
      for (const [t, v] of series(m, value)) {
        const old = bySecond.get(t);
        bySecond.set(t, old === undefined ? v : how === "sum" ? old + v : Math.max(old, v));
      }
    }
    const points = [...bySecond.entries()].sort((a, b) => a[0] - b[0]);
    const figure = $("chart-" + key);
    const current = points.length ? points[points.length - 1][1] : 0;
    figure.querySelector(".value").textContent = current.toFixed(key === "fsync" ? 2 : 0);
    draw(figure.querySelector("svg"), points);
  }
}

function svg() {
  const s = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  s.setAttribute("viewBox", "0 0 300 50");
  s.setAttribute("preserveAspectRatio", "none");
  s.setAttribute("aria-hidden", "true");
  s.append(document.createElementNS(s.namespaceURI, "polyline"));
  return s;
}
function draw(s, points) {
  const line = s.querySelector("polyline");
  if (points.length < 2) return line.setAttribute("points", "");
  const t0 = points[0][0], t1 = points[points.length - 1][0];
  const max = Math.max(...points.map((p) => p[1]), 1e-9);
  line.setAttribute("points", points.map(([t, v]) =>
    ((300 * (t - t0)) / Math.max(1, t1 - t0)).toFixed(1) + "," + (48 - (46 * v) / max).toFixed(1)).join(" "));
}

function describe(e) {
  const who = memberName(e.by);
  switch (e.kind) {
    case "campaign": {
      const cause = { pre_vote: "a pre-vote (election timeout)", election_after_pre_vote: "an election after a won pre-vote",
        election_on_timeout: "an election on its election timeout", transfer: "an election on a leader transfer" }[e.cause] || e.cause;
      return who + " started " + cause + " for term " + e.forTerm;
    }
    case "leader": return who + " follows leader " + memberName(e.leader);
    case "leader_lost": return who + " lost its leader";
    case "membership": return "membership: " + e.change.replace("_", " ") + " " + memberName(e.member) + " (applied on " + who + ")";
    case "transfer": return who + " hands leadership to " + memberName(e.to);
    case "snapshot_sent": return who + " sent a snapshot to " + memberName(e.to);
    case "snapshot_installed": return who + " installed a snapshot at index " + e.index;
    case "error": return who + (e.message ? " reports " + e.condition + ": " + e.message : " recovered from " + e.condition);
    case "peer_unreachable": return who + " cannot reach " + memberName(e.peer) + ": " + e.error;
    case "peer_reachable": return who + " reaches " + memberName(e.peer) + " again";
    default: return who + ": " + e.kind;
  }
}

function renderTimeline() {
  const events = [];
  for (const m of state.members.values()) for (const e of m.timeline) events.push({ ...e, by: m.id });
  events.sort((a, b) => a.atMs - b.atMs || a.term - b.term);
  // Who led each term: a member that learned of a leader says so; the leader says it of itself.
  const leaders = new Map();
  for (const e of events) if (e.kind === "leader") leaders.set(e.term, e.leader);
  const terms = $("terms");
  terms.replaceChildren();
  for (const [term, leader] of [...leaders.entries()].sort((a, b) => a[0] - b[0]).slice(-30)) {
    terms.append(el("li", { "data-term": String(term), "data-leader": leader, text: "term " + term + ": " + memberName(leader) }));
  }
  const list = $("timeline");
  list.replaceChildren();
  // Every member says who leads a term: the first to say it is shown.
  const told = new Set();
  const shown = events.filter((e) => e.kind !== "leader" || (!told.has(e.term) && told.add(e.term)));
  for (const e of shown.slice(-TIMELINE_SHOWN).reverse()) {
    list.append(el("li", { class: "k-" + e.kind, "data-kind": e.kind, "data-term": String(e.term), "data-by": e.by },
      el("time", { datetime: new Date(e.atMs).toISOString(), text: time(e.atMs) }),
      el("span", { class: "num", text: "t" + e.term }),
      el("span", { text: describe(e) })));
  }
}

function renderEndpoints() {
  const box = $("endpoints");
  box.replaceChildren();
  const hashes = new Map();
  for (const m of state.members.values()) if (m.view) {
    const h = m.view.status.membershipHash;
    hashes.set(h, (hashes.get(h) || 0) + 1);
  }
  const common = [...hashes.entries()].sort((a, b) => b[1] - a[1])[0];
  for (const m of state.members.values()) {
    if (!m.view) continue;
    const s = m.view.status;
    const differs = hashes.size > 1 && common && s.membershipHash !== common[0];
    const rows = s.members.map((x) => el("tr", {},
      el("td", { text: x.name }), el("td", { text: x.id }), el("td", { text: x.clientURL }),
      el("td", { text: x.peerURL }), el("td", { text: x.voter ? "voter" : "learner" })));
    box.append(el("div", { class: "endpoints-list" + (differs ? " differs" : ""), "data-id": m.id, "data-hash": s.membershipHash },
      el("h3", { text: m.name + " holds (" + s.membershipHash + ")" }),
      el("div", { class: "scroll" }, el("table", {},
        el("thead", {}, el("tr", {}, ...["Name", "ID", "Client URL", "Peer URL", "Kind"].map((t) => el("th", { scope: "col", text: t })))),
        el("tbody", {}, ...rows)))));
  }
}

// ----- the key browser -----

const enc = new TextEncoder();
const b64 = (bytes) => btoa(String.fromCharCode(...bytes));
function fromB64(text) {
  try { return new TextDecoder("utf-8", { fatal: true }).decode(Uint8Array.from(atob(text), (c) => c.charCodeAt(0))); }
  catch { return "(binary, base64) " + text; }
}
const keyOf = (kv) => (kv.key !== undefined ? kv.key : fromB64(kv.keyBase64 || ""));
const valueOf = (kv) => (kv.value !== undefined ? kv.value : fromB64(kv.valueBase64 || ""));
// The end of the range of keys that start with `prefix` (etcd's GetPrefixRangeEnd), base64.
function prefixEnd(prefix) {
  const bytes = [...enc.encode(prefix)];
  for (let i = bytes.length - 1; i >= 0; i--) {
    if (bytes[i] < 0xff) { bytes[i]++; return b64(bytes.slice(0, i + 1)); }
  }
  return b64([0]);
}
function rangeOf(prefix) {
  return prefix === "" ? { keyBase64: b64([0]), rangeEndBase64: b64([0]) } : { keyBase64: b64(enc.encode(prefix)), rangeEndBase64: prefixEnd(prefix) };
}

async function call(path, body, signal) {
  const response = await fetch(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body), signal });
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { const e = await response.json(); message = e.error.message || message; } catch { /* not JSON */ }
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return response;
}

async function listKeys(event) {
  if (event) event.preventDefault();
  $("key-error").textContent = "";
  const prefix = $("prefix").value;
  try {
    const answer = await (await call("/v1/range", { ...rangeOf(prefix), limit: 500, serializable: true })).json();
    const body = $("keys").tBodies[0];
    body.replaceChildren();
    for (const kv of answer.kvs) {
      const key = keyOf(kv);
      const open = el("button", { type: "button", class: "link", text: key });
      open.addEventListener("click", () => showKey(key));
      body.append(el("tr", { "data-key": key }, el("td", {}, open),
        el("td", { class: "num", text: kv.createRevision }), el("td", { class: "num", text: kv.modRevision }),
        el("td", { class: "num", text: kv.version }), el("td", { class: "num", text: enc.encode(valueOf(kv)).length })));
    }
    $("keys-more").textContent = answer.count + " keys at revision " + answer.header.revision + (answer.more ? ", the first 500 shown" : "");
  } catch (e) {
    $("key-error").textContent = "cannot list keys: " + e.message;
  }
}

// The key's value now and its earlier versions, walking back by mod revision until the key did
// not exist or history was compacted.
async function showKey(key) {
  const detail = $("key-detail");
  detail.replaceChildren(el("p", { class: "hint", text: "loading " + key + " …" }));
  const versions = [];
  let revision = 0, note = "";
  try {
    for (let i = 0; i < HISTORY_VERSIONS; i++) {
      const answer = await (await call("/v1/range", { keyBase64: b64(enc.encode(key)), revision, serializable: true })).json();
      const kv = answer.kvs[0];
      if (!kv) break;
      versions.push(kv);
      if (kv.version <= 1) break;
      revision = kv.modRevision - 1;
    }
    if (versions.length === HISTORY_VERSIONS) note = "the newest " + HISTORY_VERSIONS + " versions";
  } catch (e) {
    note = e.message.includes("compacted") ? "older versions were compacted" : "history: " + e.message;
  }
  detail.replaceChildren(el("h3", { text: key }));
  if (!versions.length) return detail.append(el("p", { text: "no such key" }));
  const now = versions[0];
  detail.append(el("p", { class: "hint", text: "created at revision " + now.createRevision + ", modified at " + now.modRevision + ", version " + now.version + (now.lease ? ", lease " + now.lease.toString(16) : "") }),
    el("pre", { id: "key-value", text: valueOf(now) }));
  const history = el("ol", { class: "timeline", reversed: "" });
  for (const kv of versions) history.append(el("li", {}, el("span", { class: "num", text: "rev " + kv.modRevision }), el("span", { class: "num", text: "v" + kv.version }), el("span", { text: valueOf(kv) })));
  detail.append(el("h3", { text: "Revisions" }), history);
  if (note) detail.append(el("p", { class: "hint", text: note }));
}

async function toggleWatch() {
  const button = $("watch-prefix");
  if (state.watch) {
    state.watch.abort();
    state.watch = null;
    button.setAttribute("aria-pressed", "false");
    button.textContent = "Watch";
    return;
  }
  const prefix = $("prefix").value;
  const controller = new AbortController();
  state.watch = controller;
  button.setAttribute("aria-pressed", "true");
  button.textContent = "Stop watching";
  const log = $("watch-log");
  log.replaceChildren();
  try {
    const response = await call("/v1/watch", { createRequest: { ...rangeOf(prefix), prevKv: false } }, controller.signal);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl).trim();
        buffer = buffer.slice(nl + 1);
        if (!line) continue;
        const answer = JSON.parse(line);
        if (answer.canceled) log.prepend(el("li", {}, el("span", { text: "canceled" }), el("span", {}), el("span", { text: answer.cancelReason || "" })));
        for (const ev of answer.events || []) {
          const key = keyOf(ev.kv);
          log.prepend(el("li", { "data-key": key, "data-type": ev.type },
            el("span", { class: "num", text: "rev " + ev.kv.modRevision }), el("span", { text: ev.type }),
            el("span", { text: key + (ev.type === "PUT" ? " = " + valueOf(ev.kv) : "") })));
          while (log.children.length > 200) log.lastChild.remove();
        }
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") $("key-error").textContent = "watch ended: " + e.message;
  }
  if (state.watch === controller) {
    state.watch = null;
    button.setAttribute("aria-pressed", "false");
    button.textContent = "Watch";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", listKeys);
  $("watch-prefix").addEventListener("click", toggleWatch);
  connect();
});
