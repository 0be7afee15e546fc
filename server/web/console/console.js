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

// -- breakdown: Engine.breakdown through /v1/breakdown ---------------------------------------
const BINNED = ["int", "float", "timestamp"];
const SVG_NS = "http://www.w3.org/2000/svg";
const DAY_MS = 86400000;

function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

async function fetchBreakdown(query, by, bins) {
  return api("POST", "/v1/breakdown", bins ? { query, by, bins } : { query, by });
}

// Bin edges typed by the user: numbers, or (for a timestamp) ISO dates; null if there are none.
function typedBins(text, type) {
  const parts = text.split(",").map((p) => p.trim()).filter((p) => p);
  if (!parts.length) return null;
  return parts.map((p) => {
    const n = Number(p);
    if (!Number.isNaN(n)) return n;
    const t = type === "timestamp" ? Date.parse(p) : NaN;
    if (Number.isNaN(t)) throw new Error(`bin edge '${p}' is not a number${type === "timestamp" ? " or an ISO date" : ""}`);
    return t;
  });
}

// The non-empty bins' range [lo, hi) of a binned breakdown, or null when every member is null.
function filledRange(counts) {
  const bins = counts.filter((c) => Array.isArray(c.key)).map((c) => c.key);
  return bins.length ? [bins[0][0], bins[bins.length - 1][1]] : null;
}

// A round step of about `raw` (1, 2 or 5 times a power of ten; for timestamps a calendar-like unit).
function niceStep(raw, type) {
  if (type === "timestamp") {
    const units = [1000, 60000, 300000, 900000, 3600000, 6 * 3600000, DAY_MS, 7 * DAY_MS];
    const unit = units.find((u) => u >= raw);
    if (unit) return unit;
  }
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  return type === "float" ? step : Math.max(1, Math.round(step));
}

// Bins chosen from the range of the members' values: decades, then three times 25 even parts of
// the filled range, then about 10 round bins over it (five breakdowns on bitmaps; a breakdown's cost
// grows with its bins, so several rounds of few bins beat one of many).
async function autoBins(query, by, type) {
  const coarse = [-9e18];
  for (let k = 18; k >= 0; k--) coarse.push(-(10 ** k));
  coarse.push(0);
  for (let k = 0; k <= 18; k++) coarse.push(10 ** k);
  coarse.push(9e18);
  let answer = await fetchBreakdown(query, by, coarse);
  if (!answer.ok) return answer;
  let range = filledRange(answer.data.counts);
  if (!range) return { ok: true, bins: null, data: answer.data };
  for (let round = 0; round < 3; round++) {  // each round finds the filled range to 1/25 of the last range
    const [lo, hi] = range, fine = [];
    for (let i = 0; i <= 25; i++) {
      const edge = lo + (hi - lo) * i / 25;
      const value = type === "float" ? edge : Math.round(edge);
      if (!fine.length || value > fine[fine.length - 1]) fine.push(value);
    }
    if (fine.length < 3) break;
    answer = await fetchBreakdown(query, by, fine);
    if (!answer.ok) return answer;
    range = filledRange(answer.data.counts);
  }
  const [a, b] = range;
  const raw = Math.max((b - a) / 10, Number.MIN_VALUE);
  if (type === "timestamp" && raw > 7 * DAY_MS) return { ok: true, bins: monthBins(a, b, raw) };
  const step = niceStep(raw, type);
  const bins = [];
  const start = Math.floor(a / step) * step;
  for (let i = 0; i < 40; i++) {
    const edge = start + i * step;
    if (bins.length && !(edge > bins[bins.length - 1])) break;  // beyond the numbers' precision
    bins.push(edge);
    if (bins.length >= 2 && edge >= b) break;
  }
  return { ok: true, bins };
}

// Timestamp bins of whole months (1, 3, 6, 12... of them, about `raw` ms each) from the month of `a` past `b`.
function monthBins(a, b, raw) {
  const months = [1, 3, 6, 12, 24, 60, 120].find((n) => n * 30.44 * DAY_MS >= raw) || 120;
  const first = new Date(a);
  const year = first.getUTCFullYear(), month = Math.floor(first.getUTCMonth() / months) * months;
  const bins = [];
  for (let i = 0; i < 40; i++) {
    const edge = Date.UTC(year, month + i * months, 1);
    bins.push(edge);
    if (bins.length >= 2 && edge >= b) break;
  }
  return bins;
}

function edgeText(edge, type) {
  if (type !== "timestamp") return fmt(edge);
  const iso = new Date(edge).toISOString();
  return edge % DAY_MS === 0 ? iso.slice(0, 10) : iso.slice(0, 16).replace("T", " ");
}

function keyText(key, type) {
  if (key === null) return "(null)";
  if (Array.isArray(key)) return `[${edgeText(key[0], type)}, ${edgeText(key[1], type)})`;
  return String(key);
}

function drawChart(result, type, bins) {
  let counts = result.counts;
  if (bins) {  // every bin, in edge order, those counted 0 too (the engine leaves them out)
    const found = new Map(counts.filter((c) => Array.isArray(c.key)).map((c) => [c.key.join(","), c.count]));
    counts = bins.slice(1).map((hi, i) => ({ key: [bins[i], hi], count: found.get(`${bins[i]},${hi}`) || 0 }))
      .concat(counts.filter((c) => c.key === null));
  }
  const all = counts.map((c) => ({ label: keyText(c.key, type), count: c.count }));
  const binned = Boolean(bins) || counts.some((c) => Array.isArray(c.key));
  const rows = binned ? all : all.slice(0, CHART_BARS);
  const rest = binned ? 0 : all.slice(CHART_BARS).reduce((sum, r) => sum + r.count, 0);
  if (rest) rows.push({ label: "(other)", count: rest });
  const width = 560, rowHeight = 24, labelWidth = binned ? 220 : 120, countWidth = 70;
  const max = Math.max(1, ...rows.map((r) => r.count));
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${Math.max(rows.length, 1) * rowHeight + 4}`, id: "breakdown-svg" });
  rows.forEach((r, i) => {
    const y = i * rowHeight + 2;
    const barWidth = r.count ? Math.max(1, (width - labelWidth - countWidth) * r.count / max) : 0;
    svg.append(
      svgEl("text", { x: labelWidth - 6, y: y + 16, "text-anchor": "end" }, r.label),
      svgEl("rect", { class: "bar", x: labelWidth, y: y + 3, width: barWidth, height: rowHeight - 6, "data-key": r.label, "data-count": r.count }),
      svgEl("text", { x: labelWidth + barWidth + 6, y: y + 16 }, fmt(r.count)));
  });
  $("chart").replaceChildren(svg);
}

async function showBreakdown(query, by) {
  const type = attributeTypes[by];
  let bins = null;
  if (BINNED.includes(type)) {
    try { bins = typedBins($("bins").value, type); } catch (e) { $("chart").textContent = e.message; return; }
    if (!bins) {
      const chosen = await autoBins(query, by, type);
      if (!chosen.ok) { $("chart").textContent = chosen.data.error.message; return; }
      bins = chosen.bins;
      if (!bins) { $("chart-by").textContent = "by " + by; drawChart(chosen.data, type); return; }
    }
  }
  const breakdown = await fetchBreakdown(query, by, bins);
  if (!breakdown.ok) { $("chart").textContent = breakdown.data.error.message; return; }
  $("chart-by").textContent = "by " + by + (bins ? ` (${bins.length - 1} bins)` : "");
  $("chart").dataset.bins = bins ? JSON.stringify(bins) : "";
  drawChart(breakdown.data, type, bins);
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
  if (by) await showBreakdown(query, by);
}

// -- schema, stats, segments, profiles ------------------------------------------------------
async function loadSchema() {
  const schema = await api("GET", "/v1/schema");
  if (!schema.ok) return schema;
  attributeTypes = Object.fromEntries(Object.entries(schema.data.attributes).map(([name, spec]) => [name, spec.type || spec]));
  const names = Object.keys(schema.data.attributes).sort();
  $("by").replaceChildren(el("option", { value: "" }, "(none)"), ...names.map((n) => el("option", { value: n }, n)));
  if (names.includes("country")) $("by").value = "country"; else if (names.length) $("by").value = names[0];
  $("bins").hidden = !BINNED.includes(attributeTypes[$("by").value]);
  return schema;
}

async function loadStats() {
  const stats = await api("GET", "/v1/stats");
  $("stats").textContent = stats.ok
    ? `${fmt(stats.data.profiles)} profiles · ${fmt(stats.data.events)} events · ${stats.data.shards} shard(s) · v${stats.data.version}`
    : stats.data.error.message;
}

// -- saved segments: sizes, size history sparklines, overlap heat map -------------------------
function sparkline(points, name) {
  const width = 140, height = 26, pad = 3;
  const svg = svgEl("svg", { class: "spark", width, height, viewBox: `0 0 ${width} ${height}`, "data-segment": name,
                             "data-points": points.length });
  if (!points.length) return svg;
  const t0 = points[0].time_ms, t1 = Math.max(points[points.length - 1].time_ms, Date.now());
  const sizes = points.map((p) => p.size);
  const lo = Math.min(...sizes), hi = Math.max(...sizes);
  const x = (t) => pad + (width - 2 * pad) * (t1 > t0 ? (t - t0) / (t1 - t0) : 1);
  const y = (s) => height - pad - (height - 2 * pad) * (hi > lo ? (s - lo) / (hi - lo) : 0.5);
  let path = `M${x(t0).toFixed(1)},${y(sizes[0]).toFixed(1)}`;
  points.forEach((p, i) => {  // a step line: a size holds until the next point
    if (i) path += ` H${x(p.time_ms).toFixed(1)} V${y(p.size).toFixed(1)}`;
  });
  path += ` H${x(t1).toFixed(1)}`;
  const last = points[points.length - 1];
  svg.append(svgEl("path", { d: path, class: "spark-line" }),
    svgEl("circle", { cx: x(t1).toFixed(1), cy: y(last.size).toFixed(1), r: 2.2, class: "spark-dot" }),
    svgEl("title", {}, `${points.length} point(s) since ${new Date(t0).toISOString()}: ${fmt(lo)} to ${fmt(hi)} members`));
  return svg;
}

async function loadHistory(name, cell) {
  const answer = await api("GET", "/v1/segments/" + encodeURIComponent(name) + "/history");
  cell.replaceChildren(answer.ok ? sparkline(answer.data.points, name) : answer.data.error.message);
}

const OVERLAP_MAX = 20; // the heat map shows the first saved segments listed, at most this many

async function loadOverlap(listed) {
  const box = $("overlap");
  const segments = listed.slice(0, OVERLAP_MAX);
  if (segments.length < 2) { box.replaceChildren(el("span", { class: "muted" }, "(two saved segments or more)")); return; }
  const queries = segments.map((s) => `SEGMENT('${s.name.replace(/'/g, "''")}')`);
  const answer = await api("POST", "/v1/overlap", { queries });
  if (!answer.ok) { box.replaceChildren(answer.data.error.message); return; }
  const m = answer.data.matrix;
  const head = el("tr", {}, el("th", {}, ""), ...segments.map((s) => el("th", { class: "num" }, s.name)));
  const body = segments.map((s, i) => el("tr", {}, el("th", {}, s.name), ...segments.map((t, j) => {
    const share = m[i][i] ? m[i][j] / m[i][i] : 0;
    const cell = el("td", { class: "num heat", "data-row": s.name, "data-col": t.name, "data-count": m[i][j],
                            title: `${fmt(m[i][j])} of ${fmt(m[i][i])} members of ${s.name} (${(share * 100).toFixed(1)}%) are in ${t.name}`,
                            style: `background: rgba(47, 111, 223, ${(0.08 + 0.82 * share).toFixed(3)}); color: ${share > 0.55 ? "#fff" : "inherit"}` },
      fmt(m[i][j]));
    return cell;
  })));
  const table = el("table", { id: "overlap-table" }, el("thead", {}, head), el("tbody", {}, ...body));
  box.replaceChildren(table);
  if (listed.length > OVERLAP_MAX) box.append(el("div", { class: "muted" }, `the first ${OVERLAP_MAX} of ${listed.length} saved segments`));
}

async function loadSegments() {
  const body = $("segments").querySelector("tbody");
  const listed = await api("GET", "/v1/segments");
  if (!listed.ok) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 4 }, listed.data.error.message)));
    $("overlap").replaceChildren();
    return;
  }
  const segments = listed.data.segments;
  body.replaceChildren(...segments.map((s) => {
    const link = el("a", { href: "#", "data-segment": s.name }, s.name);
    link.addEventListener("click", (e) => { e.preventDefault(); $("query").value = `SEGMENT('${s.name.replace(/'/g, "''")}')`; runQuery(); });
    const history = el("td", { class: "history" });
    loadHistory(s.name, history);
    return el("tr", { class: "segment-row" }, el("td", {}, link), el("td", { class: "num" }, fmt(s.count)), history,
      el("td", { class: "query" }, s.query));
  }));
  await loadOverlap(segments);
}

// -- why: one profile's explanation of the current query --------------------------------------
function isoMs(ms) { return new Date(ms).toISOString().replace(".000Z", "Z"); }

function describe(node) {
  const f = node.facts, kind = node.kind;
  if (kind === "attribute") {
    if (f.value === null) return `${f.attribute} is null`;
    const value = attributeTypes[f.attribute] === "timestamp" ? isoMs(f.value) : JSON.stringify(f.value);
    return `${f.attribute} = ${value}`;
  }
  if (kind === "consent") return `${f.purpose} consent ${f.consent === true ? "granted" : f.consent === false ? "withdrawn" : "never set"}`;
  if (kind === "bucket" || kind === "sample") return `bucket ${f.bucket} (seed ${f.seed})` + (kind === "sample" ? `, in when below ${f.below}` : "");
  if (kind === "segment") return `${node.value ? "in" : "not in"} saved segment '${f.segment}'`;
  if (kind === "did" && "count" in f) {
    const parts = [`${f.count} ${f.event} event${f.count === 1 ? "" : "s"} counted`];
    if (f.count) parts.push(`first ${isoMs(f.first_ts)}, last ${isoMs(f.last_ts)}`);
    if ("after_ts" in f) parts.push(f.after_ts === null ? "no earlier event to count after" : `after ${isoMs(f.after_ts)}`);
    for (const [name, value] of Object.entries(f)) if (name.includes("(")) parts.push(`${name} = ${value}`);
    return parts.join(", ");
  }
  if (kind === "sequence" && "matched_ts" in f) return f.matched_ts === null ? "no matching chain of events" : "matched " + f.matched_ts.map(isoMs).join(" → ");
  return "";
}

function whyNode(node) {
  const detail = describe(node);
  const item = el("li", { class: node.value ? "why-true" : "why-false", "data-kind": node.kind },
    el("span", { class: "mark" }, node.value ? "✓" : "✗"), " ", el("code", {}, node.text));
  if (detail) item.append(el("span", { class: "facts" }, detail));
  if (node.children.length) item.append(el("ul", {}, ...node.children.map(whyNode)));
  return item;
}

async function explainProfile(event) {
  event.preventDefault();
  const id = $("why-id").value.trim(), query = $("query").value.trim();
  const out = $("why");
  if (!id || !query) { out.replaceChildren(el("span", { class: "muted" }, "type a query above and a profile id")); return; }
  const answer = await api("POST", "/v1/why", { id, query });
  if (!answer.ok) { out.replaceChildren(el("div", { class: "error", id: "why-error" }, answer.data.error.message)); return; }
  const verdict = el("div", { id: "why-verdict", class: answer.data.tree.value ? "why-true" : "why-false" },
    `${answer.data.id} is ${answer.data.tree.value ? "" : "not "}in the segment`,
    el("span", { class: "muted" }, ` at ${isoMs(answer.data.now_ms)}`));
  out.replaceChildren(verdict, el("ul", { class: "why-tree" }, whyNode(answer.data.tree)));
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
$("why-form").addEventListener("submit", explainProfile);
$("by").addEventListener("change", () => { $("bins").hidden = !BINNED.includes(attributeTypes[$("by").value]); $("bins").value = ""; });
start();
