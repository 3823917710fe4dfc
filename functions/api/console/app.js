// Tether console: plain JavaScript against the control plane's own API (same
// origin). The credential lives in sessionStorage only; nothing is sent anywhere
// but this control plane. Pages refresh themselves every few seconds.
"use strict";

const TOKEN_KEY = "tether.token";
const pages = ["fleet", "services", "actions"];
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
  const refresh = { fleet: loadFleet, services: loadServices, actions: loadActions }[page];
  const run = () => refresh().then(() => status("updated " + new Date().toLocaleTimeString()), onError);
  run();
  timer = setInterval(run, 2000);
}

function onError(e) {
  if (e instanceof ApiError && e.status === 401) { signOut("Your credential was refused (" + e.code + "). Sign in again."); return; }
  status("error: " + e.message);
}

async function loadFleet() {
  const { agents } = await api("GET", "/v1/agents");
  $("fleet-count").textContent = "(" + agents.length + ")";
  $("fleet-rows").replaceChildren(...agents.map((a) => el("tr", { "data-agent": a.agent_id },
    el("td", { class: "mono" }, a.agent_id), el("td", {}, a.hostname), el("td", {}, badge(a.liveness)),
    el("td", {}, ago(a.last_seen_ms)), el("td", {}, a.agent_version), el("td", {}, a.capabilities.join(", ")),
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
  window.addEventListener("hashchange", route);
  route();
});
