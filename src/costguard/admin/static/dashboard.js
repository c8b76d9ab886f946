// costguard dashboard: plain JS, no build step, no third-party code. Every value from the API is
// inserted as text (never as HTML), so label values can't inject markup.
"use strict";

const TOKEN_KEY = "costguard.token";
const REFRESH_MS = 15000;
const SVG = "http://www.w3.org/2000/svg";
let timer = null;

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  return node;
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function show(message, isError) {
  const box = $("message");
  box.textContent = message || "";
  box.hidden = !message;
  box.classList.toggle("error", Boolean(isError));
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error;
  }
}

async function api(path, options) {
  const init = Object.assign({ headers: {} }, options || {});
  init.headers = Object.assign({ Authorization: `Bearer ${token()}` }, init.headers);
  if (init.body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(init.body);
  }
  const response = await fetch(path, init);
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function money(value, unit) {
  if (value === null || value === undefined) return "–";
  if (unit === "usd") return "$" + value.toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: value < 1 ? 4 : 2 });
  return `${Math.round(value).toLocaleString()} ${unit}`;
}

function labelText(labels) {
  const parts = Object.keys(labels || {}).sort().map((k) => `${k}=${labels[k]}`);
  return parts.length ? parts.join(", ") : "everything";
}

function level(ratio) {
  if (ratio >= 1) return "over";
  if (ratio >= 0.8) return "warn";
  return "ok";
}

function renderCeilings(status) {
  const box = $("ceilings");
  box.replaceChildren();
  if (!status.ceilings.length) {
    box.append(el("p", { class: "empty" }, "No ceilings match."));
    return;
  }
  for (const row of status.ceilings) {
    const usd = row.unit === "usd";
    const spent = usd ? row.spent_usd : row.spent;
    const limit = usd ? row.limit_usd : row.limit;
    const lvl = level(row.ratio);
    const fill = el("div", { class: `fill level-${lvl}` });
    fill.style.width = `${Math.min(100, row.ratio * 100).toFixed(1)}%`;
    const item = el(
      "div",
      { class: "ceiling", "data-ceiling": row.ceiling, "data-labels": labelText(row.labels), "data-period": row.period,
        "data-unit": row.unit, "data-ratio": String(row.ratio), "data-level": lvl },
      el("div", { class: "name" }, labelText(row.labels), el("small", {}, `${row.period} · ${row.ceiling}`)),
      el("div", { class: "bar", role: "img", "aria-label": `${(row.ratio * 100).toFixed(1)} % of the limit` }, fill),
      el("div", { class: "amount" }, `${money(spent, row.unit)} of ${money(limit, row.unit)} (${(row.ratio * 100).toFixed(1)} %)`),
    );
    const change = el("button", { type: "button", class: "change" }, "Change…");
    change.addEventListener("click", () => changeLimit(row, limit));
    item.append(change);
    box.append(item);
  }
}

function renderForecast(forecast) {
  const box = $("forecast");
  box.replaceChildren();
  if (!forecast.ceilings.length) {
    box.append(el("p", { class: "empty" }, "No USD ceilings to forecast."));
    return;
  }
  const rowH = 34, labelW = 320, chartW = 520, valueW = 220, width = labelW + chartW + valueW;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${forecast.ceilings.length * rowH + 6}`, role: "img",
    "aria-label": "projected spend against each limit" });
  forecast.ceilings.forEach((row, i) => {
    const y = i * rowH + 6;
    // Like the CLI's chart, the track spans 1.5 times the limit; a projection beyond it is clipped.
    const scale = Math.max(row.limit_usd * 1.5, row.spent_usd * 1.05) || 1;
    const x = (v) => labelW + Math.min(1, Math.max(0, v) / scale) * chartW;
    const g = svg("g", { "data-ceiling": row.ceiling, "data-period": row.period, "data-on-track": String(row.on_track) });
    const name = svg("text", { x: 0, y: y + 15 });
    name.textContent = `${labelText(row.labels)} · ${row.period}`;
    g.append(name, svg("rect", { class: "track", x: labelW, y, width: chartW, height: 20, rx: 3 }));
    if (row.projected_usd !== null) {
      g.append(svg("rect", { class: `projected${row.on_track ? "" : " over"}`, x: labelW, y,
        width: x(row.projected_usd) - labelW, height: 20, rx: 3 }));
    }
    g.append(svg("rect", { class: "spent", x: labelW, y, width: x(row.spent_usd) - labelW, height: 20, rx: 3 }));
    g.append(svg("line", { class: "limit", x1: x(row.limit_usd), x2: x(row.limit_usd), y1: y - 3, y2: y + 23 }));
    const value = svg("text", { x: labelW + chartW + 10, y: y + 15 });
    const projected = row.projected_usd === null ? "–" : money(row.projected_usd, "usd");
    value.textContent = `${projected} / ${money(row.limit_usd, "usd")}${row.on_track ? "" : " ⚠"}`;
    g.append(value);
    chart.append(g);
  });
  box.append(chart);
}

function renderKillSwitch(status) {
  const active = status.switches || [];  // `status.active` is whether the caller's scope is stopped
  const globalOn = active.some((s) => Object.keys(s.scope).length === 0);
  const state = $("killswitch-state");
  $("killswitch").classList.toggle("active", active.length > 0);
  state.classList.toggle("active", active.length > 0);
  state.textContent = active.length ? `ACTIVE (${active.length})` : "Off: guarded calls run normally.";
  state.dataset.active = String(active.length > 0);
  const list = $("killswitch-list");
  list.replaceChildren(...active.map((s) => el("li", {}, `${labelText(s.scope)}: ${s.reason} (by ${s.actor || "?"}, since ${s.since})`)));
  $("killswitch-deactivate").hidden = !globalOn;
}

function renderBlocked(page) {
  const body = $("blocked").querySelector("tbody");
  body.replaceChildren();
  if (!page.records.length) {
    body.append(el("tr", {}, el("td", { colspan: "3", class: "empty" }, "No blocked calls.")));
    return;
  }
  for (const record of page.records) {
    const why = record.reason || "";
    const extra = record.scope ? ` (${labelText(record.scope)})` : "";
    body.append(el("tr", {}, el("td", {}, record.at.replace("T", " ").slice(0, 19)), el("td", {}, labelText(record.labels)),
      el("td", {}, why + extra)));
  }
}

function renderKeys(keys) {
  const body = $("keys").querySelector("tbody");
  body.replaceChildren();
  if (!keys.length) {
    body.append(el("tr", {}, el("td", { colspan: "5", class: "empty" }, "No run keys.")));
    return;
  }
  for (const key of keys.slice().reverse()) {
    const caps = Object.entries(key.caps).map(([name, value]) => `${name} ${value}`).join(", ") || "–";
    const action = el("td", {});
    if (key.status === "active") {
      const button = el("button", { type: "button", class: "revoke" }, "Revoke");
      button.addEventListener("click", () => revoke(key));
      action.append(button);
    }
    body.append(el("tr", { "data-key": key.id, "data-status": key.status }, el("td", {}, key.id),
      el("td", {}, labelText(key.labels)), el("td", {}, caps), el("td", {}, key.status), action));
  }
}

async function revoke(key) {
  if (!window.confirm(`Revoke run key ${key.id} (${labelText(key.labels)})? Every proxy refuses it within its cache.`)) return;
  try {
    await api(`v1/keys/${encodeURIComponent(key.id)}`, { method: "DELETE" });
    show(`Run key ${key.id} revoked.`);
    await refresh();
  } catch (error) {
    show(`Run key not revoked: ${error.message}`, true);
  }
}

async function refresh() {
  if (!token()) return;
  try {
    const [status, forecast, switches, blocked, keys] = await Promise.all([
      api("v1/budget/status"),
      api("v1/budget/forecast"),
      api("v1/killswitch/status?history=5"),
      api("v1/audit?decision=blocked&limit=20"),
      api("v1/keys"),
    ]);
    renderCeilings(status);
    renderForecast(forecast);
    renderKillSwitch(switches);
    renderBlocked(blocked);
    renderKeys(keys);
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.loaded = "true";
  } catch (error) {
    if (error.status === 401) {
      signOut(`Signed out: ${error.message}`);
    } else {
      show(`Could not load: ${error.message}`, true);
    }
  }
}

function signedIn() {
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("refresh").hidden = false;
  $("signout").hidden = false;
  refresh();
  clearInterval(timer);
  timer = setInterval(refresh, REFRESH_MS);
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  clearInterval(timer);
  $("dashboard").hidden = true;
  $("refresh").hidden = true;
  $("signout").hidden = true;
  $("login").hidden = false;
  delete document.body.dataset.loaded;
  show(message || "", Boolean(message));
}

async function activate() {
  const reason = window.prompt("Stop every guarded call now. Reason (kept in the audit log):", "");
  if (reason === null) return;
  if (!reason.trim()) { show("A reason is required to activate the kill switch.", true); return; }
  try {
    await api("v1/killswitch/activate", { method: "POST", body: { reason: reason.trim() } });
    show("Kill switch activated: guarded calls are stopping (every process follows within its cache, 500 ms by default).");
    await refresh();
  } catch (error) {
    show(`Kill switch not activated: ${error.message}`, true);
  }
}

async function changeLimit(row, current) {
  const what = row.unit === "usd" ? "USD" : row.unit;
  const answer = window.prompt(
    `New ${row.period} limit in ${what} for ${labelText(row.labels)} (now ${money(current, row.unit)}). ` +
    "Operators may lower it; raising needs an admin token.", String(current));
  if (answer === null) return;
  const amount = Number(answer.trim());
  if (!answer.trim() || !Number.isFinite(amount) || amount < 0) { show(`Not a valid amount: ${answer}`, true); return; }
  const reason = window.prompt("Reason for the change (kept in the audit log):", "");
  if (reason === null) return;
  if (!reason.trim()) { show("A reason is required to change a limit.", true); return; }
  const body = { scope: row.labels, period: row.period, reason: reason.trim() };
  body[row.unit] = row.unit === "usd" ? answer.trim() : amount;
  try {
    const result = await api("v1/budget/limits", { method: "PUT", body });
    show(`${labelText(row.labels)}: ${row.period} limit ${money(result.old, row.unit)} → ${money(result.new, row.unit)}.`);
    await refresh();
  } catch (error) {
    show(`Limit not changed: ${error.message}`, true);
  }
}

async function deactivate() {
  const reason = window.prompt("Resume guarded calls. Reason (required, kept in the audit log):", "");
  if (reason === null) return;
  if (!reason.trim()) {
    show("Kill switch not deactivated: a reason is required.", true);
    return;
  }
  try {
    await api("v1/killswitch/deactivate", { method: "POST", body: { reason: reason.trim() } });
    show("Kill switch deactivated.");
    await refresh();
  } catch (error) {
    show(`Kill switch not deactivated: ${error.message}`, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    show("");
    signedIn();
  });
  $("signout").addEventListener("click", () => signOut());
  $("refresh").addEventListener("click", () => refresh());
  $("killswitch-activate").addEventListener("click", activate);
  $("killswitch-deactivate").addEventListener("click", deactivate);
  if (token()) signedIn();
});
