// chipfit dashboard: a little plain JavaScript (no framework, no build step, nothing fetched from elsewhere).
// Sortable tables, the new-job form (upload model, upload data, submit: the REST API with the session's CSRF
// token), live job progress (polling GET /api/jobs/ID; the job page also follows its event stream) and errors
// shown in the page with the API's own message.
"use strict";

const TERMINAL = ["done", "failed", "cancelled", "stopped_by_quota"];
const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

async function api(method, url, body) {
  const opts = { method, headers: { "X-CSRF-Token": csrf(), Accept: "application/json" }, credentials: "same-origin" };
  if (body instanceof FormData) opts.body = body;
  else if (body !== undefined) {
    opts.body = JSON.stringify(body);
    opts.headers["Content-Type"] = "application/json";
  }
  const resp = await fetch(url, opts);
  const data = parseJson(await resp.text());
  if (resp.ok && data === undefined) throw new Error(`The server's answer to ${method} ${url} is not JSON.`);
  if (!resp.ok) {
    const err = new Error(errorText(resp.status, data));
    err.status = resp.status;
    throw err;
  }
  return data;
}

// JSON.parse, also for Python's non-standard Infinity/NaN numbers (a recommendation's "expected_error" of an
// unvalidated predictor), read as null; undefined when the text is not JSON at all.
function parseJson(text) {
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch (e) {
    try {
      return JSON.parse(text.replace(/([:\[,]\s*)-?(Infinity|NaN)(?=\s*[,}\]])/g, "$1null"));
    } catch (e2) {
      return undefined;
    }
  }
}

function errorText(status, data) {
  let detail = data && data.detail !== undefined ? data.detail : null;
  if (Array.isArray(detail)) {  // FastAPI's validation errors: one line per field
    detail = detail.map((d) => (d.loc ? d.loc.filter((x) => x !== "body").join(".") + ": " : "") + d.msg).join("\n");
  } else if (detail && typeof detail === "object") detail = JSON.stringify(detail);
  const what = { 401: "Not logged in", 402: "Over the team's quota", 403: "Refused", 404: "Not found",
    413: "Upload too large", 415: "Unsupported file type", 422: "Cannot use this input" }[status] || `Error ${status}`;
  return detail ? `${what}: ${detail}` : what;
}

// ---- sortable tables: click a header; numbers compare as numbers, empty cells last ----
function sortTable(th) {
  const table = th.closest("table");
  const idx = Array.from(th.parentNode.children).indexOf(th);
  const numeric = th.dataset.sort === "num";
  const dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
  table.querySelectorAll("th[aria-sort]").forEach((h) => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
  const body = table.tBodies[0];
  const key = (tr) => {
    const td = tr.children[idx];
    return td ? (td.dataset.v !== undefined ? td.dataset.v : td.textContent.trim()) : "";
  };
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === "" || y === "") return x === y ? 0 : x === "" ? 1 : -1;
    if (numeric) return dir * (parseFloat(x) - parseFloat(y));
    return dir * x.localeCompare(y, undefined, { numeric: true });
  });
  rows.forEach((r) => body.appendChild(r));
}

// ---- the jobs list: live progress ----
function money(v) {
  v = Number(v || 0);
  return v === 0 ? "0" : v < 0.01 ? v.toPrecision(2) : v.toFixed(2);
}

function jobFields(j) {  // GET /api/jobs/ID: state, progress {done, total}, spend_usd, error
  const p = j.progress || {};
  return { state: j.state, done: p.done || 0, total: p.total || 0, spend: j.spend_usd || 0, error: j.error || "" };
}

function paintRow(tr, j) {
  const f = jobFields(j);
  tr.dataset.state = f.state;
  const badge = tr.querySelector(".badge");
  badge.className = `badge state-${f.state}`;
  badge.textContent = f.state.replace(/_/g, " ");
  const pct = f.total ? (100 * f.done) / f.total : f.state === "done" ? 100 : 0;
  tr.querySelector(".bar > span").style.width = `${pct}%`;
  tr.querySelector(".progress-text").textContent = `${f.done} / ${f.total || "?"}`;
  const spend = tr.querySelector("td.n");
  spend.dataset.v = f.spend;
  spend.textContent = `$${money(f.spend)}`;
  if (f.error) tr.title = f.error;
}

const SPEC_LABELS = {
  max_p50_ms: ["p50 ≤ ", " ms"], max_p99_ms: ["p99 ≤ ", " ms"], max_memory_mb: ["memory ≤ ", " MB"],
  max_accuracy_drop: ["accuracy drop ≤ ", ""], min_fidelity: ["fidelity ≥ ", ""], max_cost_per_1m: ["$/1M ≤ ", ""],
};

function specText(spec) {  // as the server's dashboard_views.spec_text, for a row added before the next reload
  const bounds = Object.entries(SPEC_LABELS).filter(([k]) => spec[k] !== undefined)
    .map(([k, [a, b]]) => `${a}${spec[k]}${b}`);
  return [bounds.join(", ") || "no bounds", spec.objective, spec.time_budget].filter(Boolean).join(" · ");
}

function addJobRow(job, modelName) {
  const table = document.getElementById("jobs-table");
  const empty = document.getElementById("jobs-empty");
  if (empty) empty.hidden = true;
  table.hidden = false;
  const tr = document.createElement("tr");
  tr.dataset.job = job.id;
  tr.innerHTML = `<td><a class="mono"></a></td><td></td><td class="l"><span class="model"></span><span class="sub spec"></span></td><td><span class="badge"></span></td>
    <td class="progress-cell"><span class="bar"><span></span></span><span class="progress-text"></span></td>
    <td class="n"></td><td class="muted">just now</td>`;
  const a = tr.querySelector("a");
  a.href = `/jobs/${job.id}`;
  a.textContent = job.id.slice(0, 10);
  tr.children[1].textContent = job.kind || "";
  tr.querySelector(".model").textContent = modelName || "";
  tr.querySelector(".spec").textContent = specText(job.spec || {});
  table.tBodies[0].prepend(tr);
  paintRow(tr, { state: job.state || "queued" });
  return tr;
}

let polling = false;  // one round of polls at a time: a slow server is not sent a second round meanwhile

function pollJobs() {
  const rows = Array.from(document.querySelectorAll("#jobs-table tr[data-job]")).filter(
    (tr) => !TERMINAL.includes(tr.dataset.state));
  if (!rows.length || polling) return;
  polling = true;
  let ended = false;
  const one = (tr) => api("GET", `/api/jobs/${tr.dataset.job}`).then((j) => {
    paintRow(tr, j);
    ended = ended || TERMINAL.includes(j.state);
  }, () => null);
  Promise.all(rows.map(one)).then(() => {
    polling = false;
    refreshSpend();
    if (ended) refreshFragment("usage");
  });
}

function refreshSpend() {
  const box = document.getElementById("spend");
  if (!box) return;
  api("GET", "/api/usage").then((u) => {
    const spent = u.spent_usd, quota = u.quota_usd;  // GET /api/usage (quota null: none)
    const text = box.querySelector(".spend-text");
    if (quota === null || quota === undefined) text.textContent = `$${money(spent)} spent · no quota`;
    else {
      text.textContent = `$${money(spent)} of $${money(quota)}`;
      const pct = quota > 0 ? Math.min(100, (100 * spent) / quota) : 100;
      const meter = box.querySelector(".meter");
      if (meter) {
        meter.className = `meter${pct >= 100 ? " meter-over" : pct >= 80 ? " meter-warn" : ""}`;
        meter.firstElementChild.style.width = `${pct}%`;
      }
    }
  }, () => null);
}

// ---- the new-job form ----
function numberOrNull(form, name) {
  const el = form.elements[name];
  if (!el || el.value.trim() === "") return null;
  return Number(el.value);
}

function listOrNull(form, name, cast) {
  const el = form.elements[name];
  if (!el || el.value.trim() === "") return null;
  return el.value.split(",").map((s) => s.trim()).filter(Boolean).map(cast || String);
}

function jobRequest(form, modelId, dataId) {
  const spec = {};
  for (const k of ["max_p99_ms", "max_p50_ms", "max_accuracy_drop", "min_fidelity", "max_memory_mb", "max_cost_per_1m"]) {
    const v = numberOrNull(form, k);
    if (v !== null) spec[k] = v;
  }
  spec.objective = form.elements.objective.value;
  if (form.elements.time_budget.value.trim()) spec.time_budget = form.elements.time_budget.value.trim();
  const backends = Array.from(form.querySelectorAll('input[name="backends"]:checked')).map((b) => b.value);
  const targets = Array.from(form.elements.targets.selectedOptions).map((o) => o.value);
  const space = {};
  const bs = listOrNull(form, "batch_sizes", Number);
  if (bs) space.batch_sizes = bs;
  const th = listOrNull(form, "threads", Number);
  if (th) space.threads = th;
  const passes = listOrNull(form, "passes");
  if (passes) space.passes = passes.includes("none") ? [] : passes;
  const ol = listOrNull(form, "opt_levels");
  if (ol) space.opt_levels = ol;
  const measure = {};
  const mt = numberOrNull(form, "measure_time");
  if (mt !== null) measure.measure_time = mt;
  return {
    kind: form.elements.kind.value, model: modelId, data: dataId, spec,
    targets: targets.length ? targets : null, backends: backends.length ? backends : null, space, measure,
  };
}

async function submitJob(ev) {
  ev.preventDefault();
  const form = ev.target;
  const status = document.getElementById("job-form-status");
  const errBox = document.getElementById("job-form-error");
  const button = document.getElementById("submit-job");
  errBox.hidden = true;
  const files = form.elements.model.files;
  const picked = form.elements.model_id ? form.elements.model_id.value : "";
  const data = form.elements.data.files[0];
  const pickedData = picked && !files.length ? form.elements.model_id.selectedOptions[0].dataset.data : "";
  const fail = (msg) => { errBox.textContent = msg; errBox.hidden = false; status.textContent = ""; };
  if (!files.length && !picked) return fail("Choose a model file (.onnx or .pt2), or a model this team uploaded.");
  if (!data && !pickedData) return fail("Choose the evaluation data: an .npz with one array per model input.");
  button.disabled = true;
  try {
    let modelId = picked, modelName = picked ? form.elements.model_id.selectedOptions[0].dataset.name : "";
    if (files.length) {
      status.textContent = "Uploading the model…";
      const fd = new FormData();
      for (const f of files) fd.append("file", f);
      const m = await api("POST", "/api/models", fd);
      modelId = m.id;
      modelName = m.name || files[0].name;
    }
    let dataId = pickedData;
    if (data) {
      status.textContent = "Uploading the data…";
      const dd = new FormData();
      dd.append("file", data);
      dataId = (await api("POST", `/api/models/${modelId}/data`, dd)).id;
    }
    status.textContent = "Submitting…";
    const request = jobRequest(form, modelId, dataId);
    const job = await api("POST", "/api/jobs", request);
    status.textContent = `Job ${job.id.slice(0, 10)} ${job.state}.`;
    addJobRow({ ...job, kind: request.kind, spec: request.spec }, modelName);
    refreshFragment("usage");
  } catch (e) {
    fail(e.message);
  } finally {
    button.disabled = false;
  }
}

// ---- the job page ----
function followJob(section) {
  const id = section.dataset.job;
  const events = document.getElementById("events");
  if (events && window.EventSource) {
    const src = new EventSource(`/api/jobs/${id}/events`);
    const add = (text) => {
      const li = document.createElement("li");
      li.textContent = text;
      events.appendChild(li);
      events.scrollTop = events.scrollHeight;
    };
    src.addEventListener("candidate", (e) => {
      try {
        const c = JSON.parse(e.data);
        const p50 = c.p50_ms !== undefined && c.p50_ms !== null ? ` — p50 ${Number(c.p50_ms).toPrecision(3)} ms` : "";
        add(`${c.label || c.id} ${c.status || ""}${p50}`);
      } catch (err) { add(e.data); }
    });
    src.addEventListener("line", (e) => { try { add(JSON.parse(e.data).text || e.data); } catch (err) { add(e.data); } });
    src.addEventListener("end", () => src.close());
    src.onerror = () => src.close();
  }
  let seen = -1;
  const tick = () => api("GET", `/api/jobs/${id}`).then((j) => {
    const f = jobFields(j);
    if (f.done !== seen && !TERMINAL.includes(f.state)) {
      seen = f.done;
      refreshFragment("live");
    }
    const badge = document.getElementById("job-state");
    badge.className = `badge state-${f.state}`;
    badge.textContent = f.state.replace(/_/g, " ");
    document.getElementById("job-bar").style.width = `${f.total ? (100 * f.done) / f.total : 0}%`;
    document.getElementById("job-progress").textContent = `${f.done} / ${f.total || "?"} candidates`;
    document.getElementById("job-spend").textContent = `$${money(f.spend)}`;
    if (TERMINAL.includes(f.state)) window.location.reload();  // the server renders the tables and plots
    else setTimeout(tick, 1000);
  }, () => setTimeout(tick, 3000));
  setTimeout(tick, 500);
}

// Re-render part of the page from the server (the job page's tables and plots while the job runs, the spend card
// when a job ends): fetch this page again and swap the element with the same id.
function refreshFragment(id) {
  fetch(window.location.href, { credentials: "same-origin" }).then((r) => r.text()).then((html) => {
    const fresh = new DOMParser().parseFromString(html, "text/html").getElementById(id);
    const here = document.getElementById(id);
    if (fresh && here) {
      here.innerHTML = fresh.innerHTML;
      here.querySelectorAll("th[data-sort]").forEach((th) => th.addEventListener("click", () => sortTable(th)));
    }
  }, () => null);
}

function showDataHint(form) {
  const hint = document.getElementById("data-hint");
  const sel = form.elements.model_id;
  if (!hint || !sel) return;
  const opt = sel.selectedOptions[0];
  hint.textContent = opt && opt.dataset.dataName
    ? `(none chosen: ${opt.dataset.dataName}, uploaded with this model)`
    : "(.npz: one array per input, optional 'labels')";
}

function showTargets(form) {
  const box = document.getElementById("targets-box");
  if (!box) return;
  const fit = form.elements.kind.value === "fit";
  box.hidden = fit && !box.dataset.farm;  // a fit without a farm measures on this server's pool only
  const note = document.getElementById("fit-target-note");
  if (note) note.hidden = !fit;
  if (box.hidden) Array.from(form.elements.targets.options).forEach((o) => { o.selected = false; });
}

async function cancelJob(section, button) {
  if (!window.confirm("Cancel this job? What it measured so far is kept.")) return;
  button.disabled = true;
  try {
    await api("DELETE", `/api/jobs/${section.dataset.job}`);
  } catch (e) {
    window.alert(e.message);
  }
  window.location.reload();
}

async function login(ev) {
  ev.preventDefault();
  const form = ev.target;
  const resp = await fetch("/api/session", {
    method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token: form.elements.token.value.trim() }),
  });
  if (resp.ok) {
    window.location.href = "/";
    return;
  }
  const data = parseJson(await resp.text());
  let box = form.parentNode.querySelector(".alert");
  if (!box) {
    box = document.createElement("div");
    box.className = "alert";
    box.setAttribute("role", "alert");
    form.parentNode.insertBefore(box, form);
  }
  box.textContent = errorText(resp.status, data);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("th[data-sort]").forEach((th) => th.addEventListener("click", () => sortTable(th)));
  const form = document.getElementById("job-form");
  if (form) {
    form.addEventListener("submit", submitJob);
    form.querySelectorAll('input[name="kind"]').forEach((r) => r.addEventListener("change", () => showTargets(form)));
    showTargets(form);
    if (form.elements.model_id) form.elements.model_id.addEventListener("change", () => showDataHint(form));
  }
  const loginForm = document.getElementById("login-form");
  if (loginForm) loginForm.addEventListener("submit", login);
  if (document.getElementById("jobs-table")) setInterval(pollJobs, 1000);
  const job = document.getElementById("job");
  if (job && !TERMINAL.includes(job.dataset.state)) followJob(job);
  const cancel = document.getElementById("cancel-job");
  if (cancel) cancel.addEventListener("click", () => cancelJob(job, cancel));
});
