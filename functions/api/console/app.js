// Tether console: plain JavaScript against the control plane's own API (same
// origin). The credential lives in sessionStorage only; nothing is sent anywhere
// but this control plane. Pages refresh themselves every few seconds.
"use strict";

const TOKEN_KEY = "tether.token";
const pages = ["fleet", "services", "actions", "incidents", "audit", "health"];
let selectedRun = null;
let timer = null;

const $ = (id) => document.getElementById(id);
const token = () => sessionStorage.getItem(TOKEN_KEY);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
}

function badge(text) {
  return el("span", { class: "badge " + String(text).replace(/\s+/g, "-") }, text);
}

function ago(ms) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 120) return s + "s ago";
  if (s < 7200) return Math.round(s / 60) + "m ago";
  return Math.round(s / 3600) + "h ago";
}

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(method, path, body) {
  const resp = await fetch(path, {
    method,
    headers: { "Authorization": "Bearer " + token(), "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  const json = text ? JSON.parse(text) : null;
  if (!resp.ok) {
    const err = (json && json.error) || { code: "http_" + resp.status, message: text };
    throw new ApiError(resp.status, err.code, err.message);
  }
  return json;
}

function status(text) { $("status").textContent = text; }

function show(page) {
  for (const p of ["signin", ...pages]) $(p).hidden = p !== page;
  $("nav").hidden = page === "signin";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === page);
  clearInterval(timer);
  if (page === "signin") return;
  const refresh = { fleet: loadFleet, services: loadServices, actions: loadActions, incidents: loadIncidents, audit: loadAudit, health: loadHealth }[page];
  const run = () => refresh().then(() => status("updated " + new Date().toLocaleTimeString()), onError);
  run();
  timer = setInterval(run, 2000);
}

function onError(e) {
  if (e instanceof ApiError && e.status === 401) { signOut("Your credential was refused (" + e.code + "). Sign in again."); return; }
  status("error: " + e.message);
}

// Host and GPU health at a glance, from the agent's last written heartbeat.
function vitalsText(v) {
  const pct = (k, label) => (k in v ? `${label} ${Math.round(v[k])}%` : null);
  return [pct("cpu.busy_pct", "CPU"), pct("mem.used_pct", "mem"), pct("fs.max_used_pct", "disk"),
    "gpu.count" in v ? `${v["gpu.count"]} GPU` + ("gpu.max_temp_c" in v ? ` ${Math.round(v["gpu.max_temp_c"])}°C` : "") : null]
    .filter(Boolean).join(" · ");
}

function collectorsCell(cs) {
  const down = cs.filter((c) => c.state !== "ok");
  const td = el("td", { title: down.map((c) => `${c.name}: ${c.reason}`).join("\n") },
    down.length ? el("span", { class: "badge unavailable" }, `${down.length} unavailable: ${down.map((c) => c.name).join(", ")}`)
      : (cs.length ? badge("all ok") : ""));
  td.dataset.unavailable = down.map((c) => c.name).join(",");
  return td;
}

// The agent's applied desired revision against the tenant's, and why it lags
// (the server's judgement: every action of a revision must have succeeded).
function driftCell(a) {
  const lag = (a.applied_revision || 0) < (a.desired_revision || 0);
  const td = el("td", { class: "drift", "data-lag": lag ? "1" : "0" },
    badge(lag ? "lags" : "in sync"), " " + (a.applied_revision || 0) + "/" + (a.desired_revision || 0));
  const reasons = (a.drift || []).map((d) =>
    [d.workload_key, d.kind].filter(Boolean).join(" ") + (d.workload_key || d.kind ? ": " : "") + d.reason);
  if (reasons.length) td.append(el("ul", {}, ...reasons.map((r) => el("li", {}, r))));
  return td;
}

async function loadFleet() {
  const { agents } = await api("GET", "/v1/agents");
  $("fleet-count").textContent = "(" + agents.length + ")";
  $("fleet-rows").replaceChildren(...agents.map((a) => el("tr", { "data-agent": a.agent_id },
    el("td", { class: "mono" }, a.agent_id), el("td", {}, a.hostname), el("td", {}, badge(a.liveness)),
    el("td", {}, ago(a.last_seen_ms)), el("td", {}, a.agent_version), el("td", { class: "vitals" }, vitalsText(a.vitals || {})),
    collectorsCell(a.collectors || []), driftCell(a),
    el("td", {}, String(a.spool_depth)), el("td", {}, a.last_error || ""))));
}

function latestActions(actions) {
  const latest = new Map();
  for (const a of actions) {
    const k = a.agent_id + "|" + a.target;
    const prev = latest.get(k);
    if (!prev || a.created_at_ms >= prev.created_at_ms) latest.set(k, a);
  }
  return latest;
}

async function applyWorkload(svc, change) {
  const desired = svc.desired || { workload_key: svc.workload_key, instrumentation: "none", python_sdk: "disabled" };
  const next = Object.assign({}, desired, change, { workload_key: svc.workload_key });
  $("services-error").textContent = "";
  try {
    await api("POST", "/v1/apply", { workloads: [next] });
    await loadServices();
  } catch (e) {
    $("services-error").textContent = e instanceof ApiError && e.status === 403
      ? "Your role cannot change desired state (" + e.code + ")." : "Apply failed: " + e.message;
  }
}

async function loadServices() {
  const [{ services }, { actions }] = await Promise.all([api("GET", "/v1/services"), api("GET", "/v1/actions")]);
  const latest = latestActions(actions);
  $("service-rows").replaceChildren(...services.map((s) => {
    const wantInst = s.desired ? s.desired.instrumentation === "instrumented" : s.observed_instrumented;
    const wantSdk = s.desired ? s.desired.python_sdk === "enabled" : s.observed_python_sdk;
    const inst = el("input", { type: "checkbox", checked: wantInst, title: "instrument" });
    inst.dataset.toggle = "instrument";
    inst.addEventListener("change", () => applyWorkload(s, { instrumentation: inst.checked ? "instrumented" : "none" }));
    const sdk = el("input", { type: "checkbox", checked: wantSdk, title: "python sdk" });
    sdk.dataset.toggle = "python_sdk";
    sdk.addEventListener("change", () => applyWorkload(s, { python_sdk: sdk.checked ? "enabled" : "disabled" }));
    const act = latest.get(s.agent_id + "|" + s.workload_key);
    const actCell = act ? el("span", {}, act.kind + " ", badge(act.state)) : "";
    const row = el("tr", { "data-workload": s.workload_key },
      el("td", { class: "mono" }, s.workload_key), el("td", { class: "mono" }, s.agent_id), el("td", {}, String(s.pid)),
      el("td", {}, s.runtime), el("td", {}, s.llm_providers.join(", ")), el("td", {}, inst), el("td", {}, sdk),
      el("td", {}, badge(s.in_sync ? "in sync" : "reconciling")), el("td", { class: "latest-action" }, actCell));
    row.dataset.actionState = act ? act.state : "";
    return row;
  }));
}

async function loadActions() {
  const { actions } = await api("GET", "/v1/actions");
  $("action-rows").replaceChildren(...actions.slice().reverse().map((a) => el("tr", {},
    el("td", { class: "mono" }, a.action_id), el("td", { class: "mono" }, a.agent_id), el("td", {}, a.kind),
    el("td", { class: "mono" }, a.target), el("td", {}, badge(a.state)), el("td", {}, String(a.attempt)),
    el("td", {}, ago(a.updated_at_ms)), el("td", {}, a.result ? (a.result.message || a.result.stdout_tail || "") : ""))));
}

// ---- incidents -------------------------------------------------------------

function summary(a) {
  const b = a.body || {};
  switch (b.kind) {
    case "observation_summary": return b.signals.map((s) => `${s.family}: ${s.metric} = ${s.value} (threshold ${s.threshold})`).join("; ");
    case "anomaly_finding": return b.anomalies.map((x) => `${x.family} (${x.severity})`).join(", ");
    case "root_cause_hypothesis": { const h = b.hypotheses[0] || {}; return `${h.title} — score ${h.score}: ${h.explanation}`; }
    case "remediation_proposal": return b.proposals.map((p) => `${p.step}. ${p.action} [${p.safety}]`).join(", ");
    case "execution_plan": return b.decisions.map((d) => `${d.action} → ${d.verdict} (${d.mode}): ${d.reasons[0] || ""}`).join("; ");
    case "execution_result": return b.steps.map((s) => `${s.action} ${s.state}`).join(", ") + (b.approved_by ? ` — approved by ${b.approved_by}` : "");
    case "verification_result": return `${b.verdict}: ${b.why}`;
    case "incident_report": return `outcome ${b.outcome} (fingerprint ${b.fingerprint})`;
    default: return "";
  }
}

// Evidence points as an SVG line, with a marker where the actions finished.
function chart(points, metric, actionAt) {
  const ns = "http://www.w3.org/2000/svg";
  const W = 640, H = 160, P = 28;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H);
  svg.setAttribute("data-points", String(points.length));
  const vals = points.map((p) => p.metrics[metric]).filter((v) => typeof v === "number");
  if (!vals.length) { const t = el("p", { class: "hint" }, "no evidence recorded yet"); return t; }
  const t0 = points[0].end_ms, t1 = Math.max(points[points.length - 1].end_ms, actionAt || 0, t0 + 1);
  const lo = Math.min(0, ...vals), hi = Math.max(...vals, 1);
  const x = (t) => P + (W - 2 * P) * (t - t0) / (t1 - t0);
  const y = (v) => H - P - (H - 2 * P) * (v - lo) / (hi - lo);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("fill", "none"); line.setAttribute("stroke", "#0969da"); line.setAttribute("stroke-width", "2");
  line.setAttribute("points", points.filter((p) => typeof p.metrics[metric] === "number").map((p) => `${x(p.end_ms)},${y(p.metrics[metric])}`).join(" "));
  svg.append(line);
  for (const p of points) {
    const v = p.metrics[metric]; if (typeof v !== "number") continue;
    const c = document.createElementNS(ns, "circle");
    c.setAttribute("cx", x(p.end_ms)); c.setAttribute("cy", y(v)); c.setAttribute("r", 3); c.setAttribute("fill", "#0969da");
    const tip = document.createElementNS(ns, "title"); tip.textContent = `${metric} = ${v} at ${new Date(p.end_ms).toLocaleTimeString()}`;
    c.append(tip); svg.append(c);
  }
  if (actionAt) {
    const m = document.createElementNS(ns, "line");
    m.setAttribute("x1", x(actionAt)); m.setAttribute("x2", x(actionAt)); m.setAttribute("y1", P / 2); m.setAttribute("y2", H - P / 2);
    m.setAttribute("stroke", "#cf222e"); m.setAttribute("stroke-dasharray", "4 3"); m.setAttribute("class", "action-marker");
    svg.append(m);
  }
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", P); label.setAttribute("y", 14); label.setAttribute("font-size", "11"); label.textContent = `${metric} (before / after the action)`;
  svg.append(label);
  return svg;
}

const artifactCache = new Map();
async function artifact(id) {
  if (!artifactCache.has(id)) artifactCache.set(id, await api("GET", "/v1/artifacts/" + id));
  return artifactCache.get(id);
}

async function loadRun(id) {
  const [run, ev] = await Promise.all([api("GET", "/v1/runs/" + id), api("GET", "/v1/runs/" + id + "/evidence")]);
  const arts = await Promise.all(run.chain.map((l) => artifact(l.id)));
  $("run-detail").hidden = false;
  $("run-detail").dataset.run = id;
  $("run-detail").dataset.status = run.status;
  $("run-title").replaceChildren(run.title + " ", badge(run.status), " ", run.outcome ? badge(run.outcome) : "");
  $("run-meta").textContent = `${run.run_id} on ${run.agent_id} — opened ${ago(run.created_at_ms)}` +
    (run.approval ? ` — ${run.approval.decision} by ${run.approval.by} ${ago(run.approval.at_ms)}` : "") +
    (run.failure ? ` — failed in the ${run.failure.stage}: ${run.failure.reason}` : "");
  $("run-decision").hidden = run.status !== "awaiting_approval";
  const obs = arts.find((a) => a.body.kind === "observation_summary");
  const metric = obs && obs.body.signals[0] ? obs.body.signals[0].metric : "";
  const res = arts.find((a) => a.body.kind === "execution_result");
  $("run-chart").replaceChildren(chart(ev.points, metric, res ? res.created_at_ms : 0));
  $("run-chain").replaceChildren(...run.chain.map((l, i) => {
    const li = el("li", { "data-kind": l.kind }, el("span", { class: "kind" }, l.kind.replaceAll("_", " ")), " ", badge(l.status),
      el("span", { class: "when" }, `${l.stage} · ${ago(l.at_ms)}`), el("div", { class: "summary" }, summary(arts[i])));
    const refs = (arts[i].evidence || []).flatMap((e) => e.excerpts.map((x) => `${e.id}: ${x}`));
    if (refs.length) li.append(el("div", { class: "hint mono" }, refs.join(" | ")));
    return li;
  }));
}

async function loadIncidents() {
  const { runs } = await api("GET", "/v1/runs");
  $("run-rows").replaceChildren(...runs.map((r) => {
    const tr = el("tr", { "data-run": r.run_id, class: r.run_id === selectedRun ? "selected" : "" },
      el("td", { class: "mono" }, r.run_id), el("td", {}, r.title), el("td", { class: "mono" }, r.agent_id),
      el("td", {}, badge(r.status)), el("td", {}, r.outcome ? badge(r.outcome) : ""), el("td", {}, String(r.chain.length)),
      el("td", {}, ago(r.created_at_ms)));
    tr.addEventListener("click", () => { selectedRun = r.run_id; loadIncidents().catch(onError); });
    return tr;
  }));
  if (selectedRun) await loadRun(selectedRun);
}

async function decide(verb) {
  $("run-error").textContent = "";
  try {
    await api("POST", `/v1/runs/${selectedRun}/${verb}`, { comment: $("run-comment").value });
    $("run-comment").value = "";
    await loadIncidents();
  } catch (e) {
    $("run-error").textContent = e instanceof ApiError && e.status === 403
      ? "Your role cannot approve or reject plans (" + e.code + ")." : `${verb} failed: ${e.message}`;
  }
}

async function loadAudit() {
  const { entries } = await api("GET", "/v1/audit");
  $("audit-rows").replaceChildren(...entries.map((e) => el("tr", { "data-action": e.action },
    el("td", {}, new Date(e.at_ms).toLocaleString()), el("td", { class: "mono" }, e.actor), el("td", {}, e.action),
    el("td", { class: "mono" }, e.run_id), el("td", {}, e.detail || ""))));
}

// The control plane's own health (GET /v1/status, admin only).
async function loadHealth() {
  let r;
  try {
    r = await api("GET", "/v1/status");
  } catch (e) {
    if (e instanceof ApiError && e.status === 403) {
      $("health-error").textContent = "The status report needs the admin role (" + e.code + ").";
      return;
    }
    throw e;
  }
  $("health-error").textContent = "";
  $("health-overall").replaceChildren(badge(r.status));
  $("health-deps").replaceChildren(...r.dependencies.map((d) => el("tr", { "data-dependency": d.name },
    el("td", {}, d.name), el("td", {}, badge(d.ok ? "ok" : "failed")), el("td", {}, d.latency_ms + " ms"),
    el("td", { class: "mono" }, d.error || ""))));
  $("health-queues").replaceChildren(...r.queues.map((q) => el("tr", { "data-queue": q.name },
    el("td", {}, q.name), el("td", {}, String(q.visible)), el("td", {}, String(q.in_flight)),
    el("td", {}, String(q.delayed)), el("td", {}, q.dlq_visible ? badge(q.dlq_visible + " in DLQ") : "0"),
    el("td", { class: "oldest" }, q.oldest_age_s == null ? "unknown" : q.oldest_age_s + " s"))));
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  $("signin-error").textContent = message || "";
  location.hash = "";
  show("signin");
}

async function signIn(ev) {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  try {
    await api("GET", "/v1/agents");
    $("token").value = "";
    location.hash = "#fleet";
    show("fleet");
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("signin-error").textContent = e instanceof ApiError ? "Sign-in refused: " + e.code : "Cannot reach the control plane: " + e.message;
  }
}

function route() {
  if (!token()) { show("signin"); return; }
  const page = location.hash.replace("#", "");
  show(pages.includes(page) ? page : "fleet");
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => signOut());
  $("run-approve").addEventListener("click", () => decide("approve"));
  $("run-reject").addEventListener("click", () => decide("reject"));
  window.addEventListener("hashchange", route);
  route();
});
