// Switchyard console: streams the live log page's new lines (server-sent events). Everything
// else works without this script. Text is inserted as text, never as HTML.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("log");
  if (!table || !window.EventSource) return;
  const body = table.querySelector("tbody");
  const status = document.getElementById("log-status");
  const source = new EventSource(table.dataset.events);
  const cell = (row, text, cls) => {
    const td = row.insertCell();
    td.textContent = text || "";
    if (cls) td.className = cls;
    return td;
  };
  source.onopen = () => { if (status) status.textContent = "following: new lines appear below as they are written"; };
  source.onerror = () => { if (status) status.textContent = "disconnected; trying again…"; };
  source.onmessage = (m) => {
    let e;
    try { e = JSON.parse(m.data); } catch (_) { return; }
    const row = body.insertRow(-1);
    row.className = "fresh";
    cell(row, (e.timestamp || "").replace("T", " ").slice(0, 23), "mono");
    cell(row, e.level);
    cell(row, e.route);
    const id = cell(row, "", "mono");
    if (e.message_id) {
      const a = document.createElement("a");
      a.href = "/ui/messages/" + encodeURIComponent(e.message_id);
      a.textContent = e.message_id.slice(-8);
      id.appendChild(a);
    }
    cell(row, e.event);
    cell(row, e.outcome, ["failed", "dead", "error", "rejected"].includes(e.outcome) ? "error" : "");
    cell(row, e.text, "mono");
    while (body.rows.length > 500) body.deleteRow(0);
  };
});
