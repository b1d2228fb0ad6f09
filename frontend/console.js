// The research SQL console: POST /api/sql, show the result as a table, saved examples from
// GET /api/sql/examples. Every value is inserted with textContent (never as HTML).
"use strict";

const OBJECTS = [
  ["ticks_ist", "every tick + time_ist, date_ist"],
  ["candles_1m_ist", "1-minute bars + time_ist, date_ist"],
  ["candles(15)", "N-minute bars from 09:15 IST"],
  ["tick_candles(30)", "N-second bars from the ticks"],
  ["sessions", "daily profile: POC, VAH, VAL, IB, open/day type"],
  ["signals_ist", "strategy signals"],
  ["signal_outcomes", "simulated outcome of each signal"],
  ["trades", "paper trades: entry, exit, realised PnL"],
  ["order_book", "latest state of each order"],
  ["risk_decisions", "each signal's risk check"],
  ["feed_runs", "ingestor feed runs"],
];

const $ = (id) => document.getElementById(id);
const sqlBox = $("sql");
const runBtn = $("run");
const csvBtn = $("csv");
const statusEl = $("status");
const errorEl = $("error");
const grid = $("grid");
let last = null;

function button(label, title, onClick) {
  const b = document.createElement("button");
  b.textContent = label;
  if (title) b.title = title;
  b.addEventListener("click", onClick);
  return b;
}

function showError(text) {
  errorEl.hidden = !text;
  errorEl.textContent = text || "";
}

function isNumeric(type) {
  return /^(u?int\d*|int|double|float|halffloat|decimal)/i.test(type);
}

function cellText(v) {
  if (v === null || v === undefined) return "NULL";
  if (typeof v === "object") return JSON.stringify(v);
  if (typeof v === "string" && /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}/.test(v)) return v.replace("T", " ");
  return String(v);
}

function render(res) {
  grid.replaceChildren();
  const thead = document.createElement("thead");
  const hr = document.createElement("tr");
  for (const c of res.columns) {
    const th = document.createElement("th");
    th.textContent = c.name;
    const small = document.createElement("small");
    small.textContent = c.type;
    th.appendChild(small);
    hr.appendChild(th);
  }
  thead.appendChild(hr);
  const tbody = document.createElement("tbody");
  const numeric = res.columns.map((c) => isNumeric(c.type));
  const frag = document.createDocumentFragment();
  for (const row of res.rows) {
    const tr = document.createElement("tr");
    row.forEach((v, i) => {
      const td = document.createElement("td");
      td.textContent = cellText(v);
      if (v === null || v === undefined) td.className = "null";
      else if (numeric[i]) td.className = "num";
      tr.appendChild(td);
    });
    frag.appendChild(tr);
  }
  tbody.appendChild(frag);
  grid.append(thead, tbody);
}

async function run() {
  const sql = sqlBox.value.trim();
  if (!sql) return;
  runBtn.disabled = true;
  showError("");
  statusEl.textContent = "running…";
  statusEl.className = "muted";
  const started = performance.now();
  try {
    const r = await fetch("/api/sql", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sql }),
    });
    const body = await r.json();
    if (!r.ok) {
      last = null;
      csvBtn.disabled = true;
      grid.replaceChildren();
      statusEl.textContent = `${body.kind || "error"} (HTTP ${r.status})`;
      showError(body.error || "query failed");
      return;
    }
    last = body;
    render(body);
    csvBtn.disabled = body.rows.length === 0;
    const more = body.truncated ? ` (first ${body.shown.toLocaleString()} shown; the result has more: ` +
      "add a LIMIT, or use python3 run.py sql --format csv --out FILE)" : "";
    statusEl.textContent = `${body.row_count.toLocaleString()} row${body.row_count === 1 ? "" : "s"}` +
      `${more} · ${body.elapsed_ms} ms via ${body.via} · ${Math.round(performance.now() - started)} ms total`;
  } catch (err) {
    statusEl.textContent = "error";
    showError(`the API did not answer: ${err}`);
  } finally {
    runBtn.disabled = false;
  }
}

function csvEscape(v) {
  const s = v === null || v === undefined ? "" : cellText(v);
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function downloadCsv() {
  if (!last) return;
  const lines = [last.columns.map((c) => csvEscape(c.name)).join(",")];
  for (const row of last.rows) lines.push(row.map(csvEscape).join(","));
  const blob = new Blob([lines.join("\n") + "\n"], { type: "text/csv" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "query.csv";
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

async function loadExamples() {
  const box = $("examples");
  try {
    const r = await fetch("/api/sql/examples");
    const { examples } = await r.json();
    box.replaceChildren(...examples.map((e) => button(e.title, e.name, () => {
      sqlBox.value = e.sql;
      run();
    })));
    // Links can carry a query: /console?example=ib_stats or /console?sql=SELECT%201 (run at once).
    const qs = new URLSearchParams(location.search);
    const wanted = qs.get("example") && examples.find((e) => e.name === qs.get("example"));
    if (wanted || qs.get("sql")) {
      sqlBox.value = wanted ? wanted.sql : qs.get("sql");
      run();
    } else if (!sqlBox.value && examples.length) {
      sqlBox.value = examples[0].sql;
    }
  } catch (err) {
    box.textContent = "examples unavailable";
  }
}

function loadObjects() {
  $("objects").replaceChildren(...OBJECTS.map(([name, what]) => {
    const b = button("", what, () => {
      sqlBox.value = `SELECT * FROM ${name} LIMIT 100`;
      run();
    });
    const code = document.createElement("code");
    code.textContent = name;
    const desc = document.createElement("div");
    desc.className = "muted";
    desc.textContent = what;
    b.append(code, desc);
    return b;
  }));
}

runBtn.addEventListener("click", run);
csvBtn.addEventListener("click", downloadCsv);
sqlBox.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    run();
  }
});
loadObjects();
loadExamples();
