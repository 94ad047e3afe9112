// The operator's page: refreshes the table from ui/v1/clusters every 5 seconds while the page is
// visible. `row` renders what ui.rs `row` renders, from the same JSON.
"use strict";

const REFRESH_MS = 5000;

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;", "'": "&#39;",
  })[c]);
}

function phaseClass(phase) {
  if (phase === "Running") return "phase-ok";
  if (phase === "Bootstrapping" || phase === "Scaling" || phase === "Paused") return "phase-warn";
  if (phase) return "phase-bad";
  return "phase-none";
}

function conditionGood(c) {
  return (c.status === "True") !== (c.type === "Degraded");
}

function row(c) {
  const key = c.namespace + "/" + c.name;
  const phase = c.phase || "Unknown";
  const paused = c.paused && c.phase !== "Paused" ? " (paused)" : "";
  const members = c.members.length === 0
    ? "<span class=\"none\">none reported</span>"
    : "<ul class=\"members\">" + c.members.map((m) => {
      const health = m.healthy ? "healthy" : "unhealthy";
      return "<li><span class=\"member\">" + escapeHtml(m.name) + "</span> <span class=\"role role-" +
        escapeHtml(m.role) + "\">" + escapeHtml(m.role) + "</span> <span class=\"" + health + "\">" + health +
        "</span> <span class=\"index\">applied " + m.appliedIndex + " lag " + m.lag + "</span></li>";
    }).join("") + "</ul>";
  const conditions = c.conditions.length === 0
    ? "<span class=\"none\">none yet</span>"
    : "<ul class=\"conditions\">" + c.conditions.map((k) =>
      "<li class=\"" + (conditionGood(k) ? "good" : "bad") + "\"><span class=\"cond\">" + escapeHtml(k.type) + ": " +
      escapeHtml(k.status) + "</span> <span class=\"reason\">" + escapeHtml(k.reason) + "</span><span class=\"message\">" +
      escapeHtml(k.message) + "</span></li>").join("") + "</ul>";
  const events = c.events.length === 0
    ? "<span class=\"none\">none since the operator started</span>"
    : "<details data-key=\"" + escapeHtml(key) + "\"><summary>" + c.events.length + " event" +
      (c.events.length === 1 ? "" : "s") + ", newest first</summary><ol class=\"events\">" + c.events.map((e) =>
      "<li class=\"event-" + escapeHtml(e.type.toLowerCase()) + "\"><time datetime=\"" + escapeHtml(e.time) + "\">" +
      escapeHtml(e.time) + "</time> <span class=\"reason\">" + escapeHtml(e.reason) + "</span> <span class=\"message\">" +
      escapeHtml(e.note) + "</span></li>").join("") + "</ol></details>";
  const view = c.memberView;
  const note = view.note ? "<span class=\"message\">" + escapeHtml(view.note) + "</span>" : "";
  const member = "<code>" + escapeHtml(view.portForward) + "</code> <button type=\"button\" class=\"copy\" data-copy=\"" +
    escapeHtml(view.portForward) + "\">Copy command</button> then open <a href=\"" + escapeHtml(view.url) + "\">" +
    escapeHtml(view.url) + "</a>" + note;
  const term = c.term === null || c.term === undefined ? "-" : String(c.term);
  const ready = c.readyReplicas === null || c.readyReplicas === undefined ? "-" : String(c.readyReplicas);
  return "<tr data-key=\"" + escapeHtml(key) + "\">" +
    "<th scope=\"row\" data-label=\"Cluster\"><span class=\"ns\">" + escapeHtml(c.namespace) + "/</span>" +
    escapeHtml(c.name) + "<span class=\"replicas\">" + ready + "/" + c.replicas + " ready</span></th>" +
    "<td data-label=\"Phase\"><span class=\"phase " + phaseClass(c.phase) + "\">" + escapeHtml(phase) + "</span>" +
    paused + "</td>" +
    "<td data-label=\"Leader\">" + escapeHtml(c.leader || "-") + "</td>" +
    "<td data-label=\"Term\">" + term + "</td>" +
    "<td data-label=\"Members\">" + members + "</td>" +
    "<td data-label=\"Conditions\">" + conditions + "</td>" +
    "<td data-label=\"Recent events\">" + events + "</td>" +
    "<td data-label=\"Member view\">" + member + "</td>" +
    "</tr>";
}

let paused = false;
let timer = null;

function render(overview) {
  const rows = document.getElementById("rows");
  // Keep open what the reader opened, and the focus where it was.
  const open = new Set(Array.from(rows.querySelectorAll("details[open]")).map((d) => d.dataset.key));
  const focused = document.activeElement;
  const focusKey = focused && rows.contains(focused) ? focused.closest("tr")?.dataset.key : null;
  const focusTag = focused ? focused.tagName : null;
  rows.innerHTML = overview.clusters.map(row).join("");
  rows.querySelectorAll("details").forEach((d) => { if (open.has(d.dataset.key)) d.open = true; });
  if (focusKey) {
    const tr = Array.from(rows.querySelectorAll("tr")).find((r) => r.dataset.key === focusKey);
    const again = tr && Array.from(tr.querySelectorAll(focusTag)).find((el) => el.tabIndex >= 0);
    if (again) again.focus();
  }
  document.getElementById("empty").hidden = overview.clusters.length !== 0;
  document.getElementById("standby").hidden = overview.leading;
  const n = overview.clusters.length;
  const updated = document.getElementById("updated");
  updated.innerHTML = n + " cluster" + (n === 1 ? "" : "s") + ", as of <time datetime=\"" +
    escapeHtml(overview.generatedAt) + "\">" + escapeHtml(overview.generatedAt) + "</time>.";
}

async function refresh() {
  try {
    const answer = await fetch("ui/v1/clusters", { cache: "no-store", headers: { "Accept": "application/json" } });
    if (!answer.ok) throw new Error("HTTP " + answer.status);
    render(await answer.json());
  } catch (err) {
    document.getElementById("updated").textContent = "Cannot update (" + err.message + "); trying again.";
  }
}

function schedule() {
  clearTimeout(timer);
  if (!paused && !document.hidden) timer = setTimeout(async () => { await refresh(); schedule(); }, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  const toggle = document.getElementById("refresh-toggle");
  toggle.hidden = false;
  toggle.addEventListener("click", () => {
    paused = !paused;
    toggle.setAttribute("aria-pressed", String(paused));
    if (!paused) refresh();
    schedule();
  });
  document.addEventListener("visibilitychange", () => { if (!document.hidden && !paused) refresh(); schedule(); });
  document.getElementById("rows").addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-copy]");
    if (!button) return;
    try {
      await navigator.clipboard.writeText(button.dataset.copy);
      button.textContent = "Copied";
    } catch (_) {
      button.textContent = "Select the command to copy it";
    }
    setTimeout(() => { button.textContent = "Copy command"; }, 2000);
  });
  schedule();
});
