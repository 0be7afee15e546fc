// segengine web console: plain JS over the JSON API (/v1/...), no build step.
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("segengine-token") || "";

async function api(method, path, body) {
  const headers = {};
  if (token) headers["Authorization"] = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await response.json().catch(() => ({ error: { code: "UNKNOWN", message: response.statusText, position: null } }));
  return { ok: response.ok, status: response.status, data };
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}

const fmt = (n) => Number(n).toLocaleString("en-US");
const CHART_BARS = 12; // the largest keys get a bar each, the rest one "(other)" bar
let attributeTypes = {}; // attribute name -> type, from the schema

// -- query: count, plan, error at its column, breakdown -------------------------------------
function showError(query, error) {
  const box = $("error");
  box.hidden = false;
  const flat = query.replace(/[\r\n\t]/g, " ");
  $("error-query").textContent = flat;
  $("error-caret").textContent = error.position ? " ".repeat(error.position - 1) + "^" : "";
  $("error-message").textContent = `${error.code}: ${error.message}`;
}

function clearResult() {
  $("error").hidden = true;
  $("count").textContent = "";
  $("elapsed").textContent = "";
  $("plan").querySelector("tbody").replaceChildren();
  $("chart").replaceChildren();
  $("chart-by").textContent = "";
}

function planRows(node, depth, out) {
  const label = node.step + (node.text && node.text !== node.step ? " " + node.text : "");
  const row = el("tr", { class: node.visited ? "step-row" : "step-row skipped" },
    el("td", { class: "step", style: `padding-left:${6 + depth * 16}px` }, label),
    el("td", { class: "num" }, node.visited || node.estimate ? fmt(Math.round(node.estimate)) : ""),
    el("td", { class: "num" }, node.visited ? fmt(node.rows) : "skipped"),
    el("td", { class: "num" }, node.input_rows < 0 ? "all" : fmt(node.input_rows)),
    el("td", { class: "num" }, node.visited ? node.ms.toFixed(3) : ""));
  out.push(row);
  for (const child of node.children) planRows(child, depth + 1, out);
  return out;
}

// The one place the chart's numbers come from (the server's /v1/breakdown).
async function fetchBreakdown(query, by) {
  return api("POST", "/v1/breakdown", { query, by });
}

function drawChart(result) {
  const all = result.counts.map((c) => ({ label: c.key === null ? "(null)" : Array.isArray(c.key) ? c.key.join("–") : String(c.key), count: c.count }));
  const rows = all.slice(0, CHART_BARS);
  const rest = all.slice(CHART_BARS).reduce((sum, r) => sum + r.count, 0) + (result.other || 0);
  if (rest) rows.push({ label: "(other)", count: rest });
  const width = 520, rowHeight = 24, labelWidth = 120, countWidth = 80;
  const max = Math.max(1, ...rows.map((r) => r.count));
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${Math.max(rows.length, 1) * rowHeight + 4}`);
  svg.setAttribute("id", "breakdown-svg");
  rows.forEach((r, i) => {
    const y = i * rowHeight + 2;
    const barWidth = Math.max(1, (width - labelWidth - countWidth) * r.count / max);
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", labelWidth - 6); label.setAttribute("y", y + 16); label.setAttribute("text-anchor", "end");
    label.textContent = r.label;
    const bar = document.createElementNS(ns, "rect");
    bar.setAttribute("class", "bar"); bar.setAttribute("x", labelWidth); bar.setAttribute("y", y + 3);
    bar.setAttribute("width", barWidth); bar.setAttribute("height", rowHeight - 6);
    bar.setAttribute("data-key", r.label); bar.setAttribute("data-count", r.count);
    const count = document.createElementNS(ns, "text");
    count.setAttribute("x", labelWidth + barWidth + 6); count.setAttribute("y", y + 16);
    count.textContent = fmt(r.count);
    svg.append(label, bar, count);
  });
  $("chart").replaceChildren(svg);
}

async function runQuery(event) {
  if (event) event.preventDefault();
  const query = $("query").value.trim();
  clearResult();
  if (!query) return;
  const explained = await api("POST", "/v1/explain", { query });
  if (!explained.ok) { showError(query, explained.data.error); return; }
  const result = explained.data;
  $("count").textContent = fmt(result.count);
  $("elapsed").textContent = `profiles · ${result.ms.toFixed(2)} ms`;
  $("plan").querySelector("tbody").replaceChildren(...planRows(result.plan, 0, []));
  const by = $("by").value;
  if (!by) return;
  const breakdown = await fetchBreakdown(query, by);
  if (!breakdown.ok) { $("chart").textContent = breakdown.data.error.message; return; }
  $("chart-by").textContent = "by " + by;
  drawChart(breakdown.data);
}

// -- schema, stats, segments, profiles ------------------------------------------------------
async function loadSchema() {
  const schema = await api("GET", "/v1/schema");
  if (!schema.ok) return schema;
  attributeTypes = Object.fromEntries(Object.entries(schema.data.attributes).map(([name, spec]) => [name, spec.type || spec]));
  const names = Object.entries(schema.data.attributes)
    .filter(([, spec]) => ["category", "bool"].includes(spec.type || spec))
    .map(([name]) => name).sort();
  $("by").replaceChildren(el("option", { value: "" }, "(none)"), ...names.map((n) => el("option", { value: n }, n)));
  if (names.includes("country")) $("by").value = "country"; else if (names.length) $("by").value = names[0];
  return schema;
}

async function loadStats() {
  const stats = await api("GET", "/v1/stats");
  $("stats").textContent = stats.ok
    ? `${fmt(stats.data.profiles)} profiles · ${fmt(stats.data.events)} events · ${stats.data.shards} shard(s) · v${stats.data.version}`
    : stats.data.error.message;
}

async function loadSegments() {
  const body = $("segments").querySelector("tbody");
  const listed = await api("GET", "/v1/segments");
  if (!listed.ok) { body.replaceChildren(el("tr", {}, el("td", { colspan: 3 }, listed.data.error.message))); return; }
  body.replaceChildren(...listed.data.segments.map((s) => {
    const link = el("a", { href: "#", "data-segment": s.name }, s.name);
    link.addEventListener("click", (e) => { e.preventDefault(); $("query").value = `SEGMENT('${s.name.replace(/'/g, "''")}')`; runQuery(); });
    return el("tr", { class: "segment-row" }, el("td", {}, link), el("td", { class: "num" }, fmt(s.count)), el("td", { class: "query" }, s.query));
  }));
}

async function lookupProfile(event) {
  event.preventDefault();
  const id = $("profile-id").value.trim();
  if (!id) return;
  const path = "/v1/profiles/" + encodeURIComponent(id);
  const [profile, member] = await Promise.all([api("GET", path), api("GET", path + "/segments")]);
  const out = $("profile");
  if (!profile.ok) { out.replaceChildren(el("div", { class: "error", id: "profile-error" }, profile.data.error.message)); return; }
  const items = [];
  for (const [key, value] of Object.entries(profile.data)) {
    const shown = attributeTypes[key] === "timestamp" && typeof value === "number" ? new Date(value).toISOString()
      : typeof value === "object" && value !== null ? JSON.stringify(value) : String(value);
    items.push(el("dt", {}, key), el("dd", { "data-field": key }, shown));
  }
  items.push(el("dt", {}, "segments"), el("dd", { id: "profile-segments" }, member.ok ? member.data.segments.join(", ") || "(none)" : member.data.error.message));
  out.replaceChildren(el("dl", {}, ...items));
}

async function start() {
  $("token").value = token;
  await Promise.all([loadSchema(), loadStats(), loadSegments()]);
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem("segengine-token", token);
  start();
});
$("query-form").addEventListener("submit", runQuery);
$("query").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) runQuery(e); });
$("profile-form").addEventListener("submit", lookupProfile);
$("refresh-segments").addEventListener("click", loadSegments);
start();
