// The oncesend console: one page, four views, all data through the /v1
// JSON API. Every piece of data reaches the page as textContent or an
// attribute value, never as markup, so a flow's text or a recipient cannot
// inject anything; the server's Content-Security-Policy forbids inline
// script as a second wall.
"use strict";

const TOKEN_KEY = "oncesend.token";
const REFRESH_MS = 5000;
const STATUSES = ["pending", "leased", "waiting", "completed", "failed", "cancelled"];
const OPEN = ["pending", "leased", "waiting"];

// ---- DOM building -------------------------------------------------------

// el("a", {href: "#/x", class: "c"}, "text", child...): strings become
// text nodes; null and false children are skipped.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "onclick") node.addEventListener("click", v);
    else if (k === "onsubmit") node.addEventListener("submit", v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

function when(ms) {
  if (ms === null || ms === undefined) return "—";
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function duration(ms) {
  if (!ms) return "0 s";
  if (ms < 1000) return ms + " ms";
  if (ms < 120000) return Math.round(ms / 1000) + " s";
  if (ms < 7200000) return Math.round(ms / 60000) + " min";
  return Math.round(ms / 3600000) + " h";
}

function badge(status) {
  return el("span", { class: "badge s-" + String(status).replace(/[^a-z_]/g, "") }, status);
}

// ---- API ----------------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || "HTTP " + status);
    this.status = status;
    this.problem = problem;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit",
    cache: "no-store",
  });
  let data = null;
  const text = await res.text();
  if (text) {
    try { data = JSON.parse(text); } catch (_) { data = { detail: text }; }
  }
  if (res.status === 401) {
    showSignIn(token ? "The engine refused that token; sign in again." : null);
    throw new ApiError(401, data || {});
  }
  if (!res.ok) throw new ApiError(res.status, data || {});
  return data;
}

function notice(text, isError) {
  const n = document.getElementById("notice");
  n.textContent = text;
  n.className = isError ? "error" : "ok";
  n.hidden = !text;
}

function report(e) {
  if (e instanceof ApiError && e.status === 401) return;
  const where = e.problem && e.problem.path ? " (at " + e.problem.path + ")" : "";
  notice(e.message + where, true);
}

// ---- sign-in ------------------------------------------------------------

function showSignIn(message) {
  stopRefresh();
  document.getElementById("nav").hidden = true;
  document.getElementById("sign-out").hidden = true;
  clear(document.getElementById("main"));
  document.getElementById("sign-in").hidden = false;
  const err = document.getElementById("sign-in-error");
  err.textContent = message || "";
  err.hidden = !message;
  document.getElementById("token").focus();
}

function signedIn() {
  document.getElementById("sign-in").hidden = true;
  document.getElementById("nav").hidden = false;
  // Without a token the engine is open on loopback: nothing to sign out of.
  document.getElementById("sign-out").hidden = !sessionStorage.getItem(TOKEN_KEY);
  route();
}

async function start() {
  document.getElementById("sign-in-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
    document.getElementById("token").value = "";
    try {
      await api("GET", "/v1/stats");
      signedIn();
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) report(e);
    }
  });
  document.getElementById("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn(null);
  });
  const dlg = document.getElementById("confirm");
  // Enter in the dialog's field confirms; Escape or "Keep" declines.
  document.getElementById("confirm-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    dlg.close("yes");
  });
  document.getElementById("confirm-no").addEventListener("click", () => dlg.close("no"));
  window.addEventListener("hashchange", route);
  try {
    // Answered without a token when the engine has none (loopback only).
    await api("GET", "/v1/stats");
    signedIn();
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) report(e);
  }
}

// ---- confirmation -------------------------------------------------------

// Resolves to null when declined, else to the input's value ("" without one).
function confirmAction(title, text, yes, input) {
  const dlg = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-yes").textContent = yes;
  const label = document.getElementById("confirm-input-label");
  const field = document.getElementById("confirm-input");
  label.hidden = !input;
  field.value = "";
  document.getElementById("confirm-input-name").textContent = input || "";
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => {
      resolve(dlg.returnValue === "yes" ? field.value : null);
    }, { once: true });
    dlg.returnValue = "";
    dlg.showModal();
  });
}

// ---- routing and refresh ------------------------------------------------

let refreshTimer = null;
let view = 0;

function stopRefresh() {
  if (refreshTimer) clearInterval(refreshTimer);
  refreshTimer = null;
}

// Calls draw now and every REFRESH_MS while this view is shown; returns a
// function that draws again at once (after an action).
function every(draw) {
  stopRefresh();
  const mine = view;
  const tick = () => { if (mine === view) draw().catch(report); };
  tick();
  refreshTimer = setInterval(tick, REFRESH_MS);
  return tick;
}

function parseHash() {
  const h = location.hash.replace(/^#\/?/, "");
  const q = h.indexOf("?");
  const path = (q < 0 ? h : h.slice(0, q)).split("/").map(decodeURIComponent);
  const params = new URLSearchParams(q < 0 ? "" : h.slice(q + 1));
  return { path, params };
}

function route() {
  if (!document.getElementById("sign-in").hidden) return;
  view += 1;
  stopRefresh();
  notice("", false);
  const { path, params } = parseHash();
  const page = path[0] || "runs";
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("current", a.dataset.page === page);
  }
  const main = clear(document.getElementById("main"));
  if (page === "runs" && path[1]) runPage(main, path[1]);
  else if (page === "senders") sendersPage(main);
  else if (page === "flows") flowsPage(main);
  else if (page === "health") healthPage(main);
  else runsPage(main, params);
}

// ---- runs ---------------------------------------------------------------

const FILTERS = ["status", "flow", "tenant", "to", "reason", "after", "before", "limit"];
const PAGE_SIZES = ["25", "50", "100", "200"];

function runsQuery(params) {
  const q = new URLSearchParams();
  for (const k of ["status", "flow", "tenant", "to", "reason", "before_seq"]) {
    if (params.get(k)) q.set(k, params.get(k));
  }
  // The form speaks local date and time; the API, ms since the epoch.
  if (params.get("after")) q.set("after_ms", String(Date.parse(params.get("after"))));
  if (params.get("before")) q.set("before_ms", String(Date.parse(params.get("before"))));
  // The select offers a few sizes; a link may carry any from 1 to 200.
  const limit = Number(params.get("limit"));
  q.set("limit", Number.isInteger(limit) && limit >= 1 && limit <= 200 ? String(limit) : "50");
  return q;
}

function runsPage(main, params) {
  const counts = el("div", { class: "counts", id: "counts" });
  const form = el("form", { class: "filters", id: "run-filters" });
  const select = el("select", { name: "status" }, el("option", { value: "" }, "any status"),
    STATUSES.map((s) => el("option", { value: s, selected: params.get("status") === s }, s)));
  form.append(el("label", {}, "Status ", select));
  for (const [name, label, type] of [["flow", "Flow", "text"], ["tenant", "Tenant", "text"],
    ["to", "Recipient", "text"], ["reason", "Reason has", "text"],
    ["after", "From", "datetime-local"], ["before", "Until", "datetime-local"]]) {
    form.append(el("label", {}, label + " ", el("input", { name, type, value: params.get(name) || "" })));
  }
  form.append(el("label", {}, "Per page ", el("select", { name: "limit" },
    PAGE_SIZES.map((n) => el("option", { value: n, selected: (params.get("limit") || "50") === n }, n)))));
  form.append(el("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    for (const k of FILTERS) {
      const v = form.elements[k].value.trim();
      if (v) q.set(k, v);
    }
    location.hash = "#/runs" + (q.toString() ? "?" + q : "");
  });
  const table = el("table", { class: "runs", id: "runs" });
  const pager = el("div", { class: "pager" });
  main.append(el("h1", {}, "Runs"), counts, form, table, pager,
    el("p", { class: "hint" }, "Newest first; refreshes every " + REFRESH_MS / 1000 + " s. Unfinished runs are all counted; finished ones among the latest 10,000 to finish, so the count stays cheap with millions kept."));
  every(async () => {
    const [stats, list] = await Promise.all([api("GET", "/v1/stats"), api("GET", "/v1/runs?" + runsQuery(params))]);
    drawCounts(counts, stats);
    drawRuns(table, list.runs);
    drawPager(pager, params, list.next_before_seq);
  });
}

function drawCounts(node, stats) {
  clear(node);
  const r = stats.runs;
  for (const [label, n, status] of [["pending", r.pending, "pending"], ["due now", r.due, "pending"],
    ["leased", r.leased, "leased"], ["waiting", r.waiting, "waiting"]]) {
    node.append(el("a", { href: "#/runs?status=" + status, class: "count", dataset: { count: label } },
      el("b", {}, String(n)), " " + label));
  }
  node.append(el("span", { class: "count" + (stats.unknown_deliveries ? " warn" : ""), dataset: { count: "unknown" } },
    el("b", {}, String(stats.unknown_deliveries)), " unknown deliveries"));
  const f = stats.finished;
  for (const status of ["completed", "failed", "cancelled"]) {
    node.append(el("a", { href: "#/runs?status=" + status, class: "count finished", dataset: { count: status } },
      el("b", {}, String(f[status])), " " + status));
  }
  node.append(el("span", { class: "count-note", id: "finished-note" },
    f.all ? "(every finished run kept)" : "(of the latest " + f.latest.toLocaleString() + " finished)"));
}

function drawRuns(table, runs) {
  clear(table);
  table.append(el("thead", {}, el("tr", {}, ["Triggered", "Run", "Tenant", "Flow", "To", "Status", "Steps done", "Reason"].map((h) => el("th", {}, h)))));
  const body = el("tbody");
  if (!runs.length) body.append(el("tr", {}, el("td", { colspan: 8, class: "empty" }, "No runs match.")));
  for (const r of runs) {
    body.append(el("tr", { dataset: { run: r.run_id } },
      el("td", {}, when(r.created_at_ms)),
      el("td", {}, el("a", { href: "#/runs/" + encodeURIComponent(r.run_id), class: "mono" }, r.run_id)),
      el("td", {}, r.tenant), el("td", {}, r.flow), el("td", { class: "mono" }, r.to),
      el("td", {}, badge(r.status), r.waiting_for ? " for " + r.waiting_for : null),
      el("td", {}, r.cursor + " / " + r.steps),
      el("td", { class: "reason" }, r.reason || "")));
  }
  table.append(body);
}

function drawPager(node, params, next) {
  clear(node);
  if (params.get("before_seq")) {
    const q = new URLSearchParams(params);
    q.delete("before_seq");
    node.append(el("a", { href: "#/runs?" + q, id: "newest" }, "« Newest"));
  }
  if (next !== null && next !== undefined) {
    const q = new URLSearchParams(params);
    q.set("before_seq", String(next));
    node.append(el("a", { href: "#/runs?" + q, id: "older" }, "Older »"));
  }
}

// ---- one run ------------------------------------------------------------

function runPage(main, id) {
  const head = el("div", { id: "run-head" });
  const actions = el("div", { class: "actions", id: "run-actions" });
  const lanes = el("ol", { class: "timeline", id: "timeline" });
  main.append(el("p", {}, el("a", { href: "#/runs" }, "« Runs")), head, actions, lanes,
    el("p", { class: "hint" }, "Refreshes every " + REFRESH_MS / 1000 + " s. Each step names the worker and the lease epoch its send began under; lease rescues, fenced writes and ledger replays appear on the step where they happened."));
  let shown = "";
  let again = null;
  const changed = () => { shown = ""; again(); };
  again = every(async () => {
    const run = await api("GET", "/v1/runs/" + encodeURIComponent(id));
    const key = JSON.stringify(run);
    if (key === shown) return;
    shown = key;
    drawRunHead(head, run);
    drawRunActions(actions, run, changed);
    drawTimeline(lanes, run, changed);
  });
}

function field(label, value, cls) {
  return [el("dt", {}, label), el("dd", { class: cls || null }, value === null || value === undefined || value === "" ? "—" : value)];
}

function drawRunHead(node, run) {
  clear(node).append(
    el("h1", {}, "Run ", el("span", { class: "mono" }, run.run_id), " ", el("span", { id: "run-status" }, badge(run.status))),
    el("dl", { class: "facts" },
      field("Tenant", run.tenant), field("Flow", run.flow), field("To", run.to, "mono"),
      field("Triggered", when(run.created_at_ms)),
      field(run.status === "waiting" ? "Waits until" : "Due", OPEN.includes(run.status) ? when(run.run_at_ms) : null),
      field("Next step", run.cursor < run.steps.length ? String(run.cursor) : "done"),
      field("Epoch", String(run.epoch)), field("Held by", holder(run)),
      field("Attempts at this step", String(run.attempts)),
      field("Waiting for", run.waiting_for), field("Reason", run.reason, "reason"), field("Note", run.note)));
}

async function act(what, method, path, body, after) {
  try {
    await api(method, path, body);
    notice(what, false);
    after();
  } catch (e) {
    report(e);
  }
}

function drawRunActions(node, run, changed) {
  clear(node);
  const path = "/v1/runs/" + encodeURIComponent(run.run_id);
  if (OPEN.includes(run.status)) {
    node.append(el("button", {
      type: "button", class: "danger", id: "cancel-run",
      onclick: async () => {
        const ok = await confirmAction("Cancel this run?",
          "The run stops where it is: no further step of it is sent to " + run.to + ". A step already handed to the provider may still arrive. This cannot be undone.",
          "Cancel the run");
        if (ok !== null) act("Run cancelled.", "POST", path + "/cancel", undefined, changed);
      },
    }, "Cancel run…"));
  }
  if (run.status === "failed") {
    node.append(el("button", {
      type: "button", id: "retry-run",
      onclick: async () => {
        const ok = await confirmAction("Retry this run?",
          "The run goes on from its failed step (step " + run.cursor + "): that step is sent to " + run.to + " again, then the steps after it.",
          "Retry from step " + run.cursor);
        if (ok !== null) act("Run retried.", "POST", path + "/retry", {}, changed);
      },
    }, "Retry from failed step…"));
  }
}

function drawTimeline(node, run, changed) {
  clear(node);
  for (const s of run.steps) {
    const d = s.status;
    let due;
    if (s.index < run.cursor) due = "went out";
    else if (s.index === run.cursor && OPEN.includes(run.status)) due = "due " + when(run.run_at_ms);
    else if (s.index > run.cursor) due = s.after === "sent" ? duration(s.delay_ms) + " after step " + (s.index - 1) : duration(s.delay_ms) + " after step " + (s.index - 1) + " is " + s.after;
    else due = "—";
    const lane = el("li", { class: "lane d-" + d, dataset: { step: String(s.index) } },
      el("div", { class: "lane-head" }, el("b", {}, "Step " + s.index), " ", s.kind, s.template ? " · template " + s.template : null,
        " ", badge(d)),
      el("div", { class: "lane-body" },
        el("div", { class: "bubble-wrap" }, renderMessage(s.message)),
        el("dl", { class: "facts" },
          field("When", due),
          field("Delivery", deliveryText(s)),
          field("Provider message id", s.provider_message_id, "mono"),
          field("Error code", s.error_code === null ? null : String(s.error_code)),
          field("Details", s.last_error, "reason"),
          field("Attempts", String(s.attempts)),
          field("Claimed by", claimedBy(run, s)),
          field("Resolved by", s.resolved_by ? s.resolved_by + " at " + when(s.resolved_at_ms) : null))));
    const events = (run.events || []).filter((e) => e.step === s.index);
    if (events.length) {
      lane.append(el("ol", { class: "events" }, events.map((e) =>
        el("li", { class: "event ev-" + e.kind, dataset: { kind: e.kind } },
          el("span", { class: "when" }, when(e.at_ms)), " ", el("b", {}, EVENT_TITLES[e.kind] || e.kind), " ", eventText(e)))));
    }
    if (d === "unknown") lane.append(resolveButtons(run, s, changed));
    node.append(lane);
  }
}

function holder(run) {
  if (!run.lease) return null;
  const lapsed = run.lease.until_ms <= Date.now() ? " (lapsed: another worker may take it over)" : "";
  return run.lease.owner + " · epoch " + run.lease.epoch + " · lease until " + when(run.lease.until_ms) + lapsed;
}

// Who claimed the step: the worker whose lease its send began under, or,
// for the step a worker holds now, the holder.
function claimedBy(run, s) {
  if (s.sent_by) return s.sent_by + " · epoch " + s.epoch;
  if (run.lease && s.index === run.cursor) return run.lease.owner + " · epoch " + run.lease.epoch + " (holding it now)";
  return null;
}

const EVENT_TITLES = { rescued: "Lease rescued", fenced: "Fenced write", replayed: "Ledger replay" };

function eventText(e) {
  switch (e.kind) {
    case "rescued":
      return e.by + " took the run over under epoch " + e.epoch + " from " + e.from + " (epoch " + e.from_epoch +
        "), whose lease had lapsed at " + when(e.lease_until_ms) + ".";
    case "fenced":
      return "A write (" + e.op + ") from a holder at epoch " + e.epoch + " was refused: the run was at epoch " +
        e.run_epoch + ". It changed nothing.";
    case "replayed":
      return "A send begun under epoch " + e.epoch + " was answered from the ledger (" + e.ledger +
        "): nothing went to the provider again.";
    default:
      return "";
  }
}

function deliveryText(s) {
  switch (s.status) {
    case "pending": return "not begun";
    case "sending": return "sending: recorded before the provider call";
    case "sent": return "sent";
    case "delivered": return "delivered to the phone";
    case "read": return "read";
    case "failed": return "failed";
    case "unknown": return "unknown: the request left and no answer came";
    default: return s.status;
  }
}

function resolveButtons(run, s, changed) {
  const path = "/v1/runs/" + encodeURIComponent(run.run_id) + "/steps/" + s.index + "/resolve";
  return el("div", { class: "actions" },
    el("button", {
      type: "button", class: "resolve-sent",
      onclick: async () => {
        const ok = await confirmAction("Resolve step " + s.index + " as sent?",
          "You say the recipient got this message. It is not sent again, and the run goes on to its next step.",
          "It was sent");
        if (ok !== null) act("Step resolved as sent.", "POST", path, { as: "sent" }, changed);
      },
    }, "Resolve as sent…"),
    el("button", {
      type: "button", class: "danger resolve-failed",
      onclick: async () => {
        const ok = await confirmAction("Resolve step " + s.index + " as failed?",
          "You say this message did not go out. It is sent to " + run.to + " again — if it did arrive, they get it twice.",
          "It failed: send again");
        if (ok !== null) act("Step resolved as failed.", "POST", path, { as: "failed" }, changed);
      },
    }, "Resolve as failed…"));
}

// ---- messages as the recipient sees them --------------------------------

function renderMessage(m) {
  const type = m.type;
  const o = m[type] || {};
  const b = el("div", { class: "bubble" });
  if (type === "text") {
    b.append(el("p", { class: "text" }, o.body || ""));
  } else if (type === "template") {
    b.append(el("p", { class: "meta" }, "Template ", el("b", {}, o.name || "?"), " (" + ((o.language || {}).code || "?") + ")"));
    for (const c of o.components || []) {
      const params = (c.parameters || []).map((p) => p.type === "text" ? p.text : p.type === "currency" ? (p.currency || {}).fallback_value : p.type === "date_time" ? (p.date_time || {}).fallback_value : p.type === "payload" ? p.payload : p.type);
      b.append(el("p", { class: "param" }, c.type + (c.sub_type ? " " + c.sub_type : "") + (c.index !== undefined ? " " + c.index : "") + ": ",
        params.map((p, i) => el("span", { class: "chip" }, "{{" + (i + 1) + "}} = " + (p === undefined ? "" : p)))));
    }
  } else if (["image", "video", "audio", "document", "sticker"].includes(type)) {
    b.append(el("p", { class: "media" }, "[" + type + "] ", o.link || ("media id " + (o.id || "?"))));
    if (o.filename) b.append(el("p", { class: "meta" }, o.filename));
    if (o.caption) b.append(el("p", { class: "text" }, o.caption));
  } else if (type === "location") {
    b.append(el("p", { class: "media" }, "[location] " + (o.name || "") + " " + (o.address || "") + " (" + o.latitude + ", " + o.longitude + ")"));
  } else if (type === "contacts") {
    for (const c of m.contacts || []) b.append(el("p", { class: "media" }, "[contact] " + ((c.name || {}).formatted_name || "")));
  } else if (type === "interactive") {
    if (o.header && o.header.text) b.append(el("p", { class: "meta" }, o.header.text));
    if (o.body) b.append(el("p", { class: "text" }, o.body.text || ""));
    if (o.footer) b.append(el("p", { class: "meta" }, o.footer.text || ""));
    const a = o.action || {};
    for (const btn of a.buttons || []) b.append(el("span", { class: "button" }, (btn.reply || {}).title || ""));
    if (a.button) b.append(el("span", { class: "button" }, a.button));
    for (const sec of a.sections || []) {
      for (const row of sec.rows || []) b.append(el("p", { class: "param" }, "• " + row.title + (row.description ? " — " + row.description : "")));
    }
    if (a.parameters && a.parameters.display_text) b.append(el("span", { class: "button" }, a.parameters.display_text + " ↗"));
  } else {
    b.append(el("p", { class: "meta" }, "[" + type + "]"));
  }
  return b;
}

// A flow step as put: the text shorthand or a Cloud API message.
function stepMessage(step) {
  return step.message || { type: "text", text: { body: step.text || "" } };
}

// ---- senders ------------------------------------------------------------

function sendersPage(main) {
  const list = el("div", { id: "senders" });
  main.append(el("h1", {}, "Senders"), list, el("p", { class: "hint" }, "Refreshes every " + REFRESH_MS / 1000 + " s."));
  let shown = "";
  const draw = async () => {
    const data = await api("GET", "/v1/tenants");
    const sup = await Promise.all(data.tenants.map((t) => api("GET", "/v1/tenants/" + encodeURIComponent(t.tenant) + "/suppressions?limit=100")));
    const key = JSON.stringify([data, sup]);
    if (key === shown) return;
    shown = key;
    clear(list);
    data.tenants.forEach((t, i) => list.append(senderCard(t, data.pacing, sup[i], changed)));
  };
  const again = every(draw);
  const changed = () => { shown = ""; again(); };
}

function senderCard(t, pacing, sup, changed) {
  const path = "/v1/tenants/" + encodeURIComponent(t.tenant);
  const p = t.paused;
  const card = el("section", { class: "card", dataset: { tenant: t.tenant } },
    el("h2", {}, t.tenant, " ", el("span", { class: "sender-state" }, badge(p ? "paused" : "active"))),
    el("dl", { class: "facts" },
      field("Provider", t.provider),
      field("Pacing", pacing.rate_per_sec + " messages/s, " + duration(pacing.recipient_gap_ms) + " between two to one recipient"),
      p ? field("Paused", p.reason + (p.code !== null ? " (code " + p.code + ")" : "") + " since " + when(p.since_ms), "reason") : null,
      p && p.probe_at_ms ? field("Probe at", when(p.probe_at_ms)) : null));
  const actions = el("div", { class: "actions" });
  if (p) {
    actions.append(el("button", {
      type: "button", class: "resume",
      onclick: async () => {
        const ok = await confirmAction("Resume " + t.tenant + "?",
          "Its waiting runs go on and messages go to its provider again. If the cause of the pause is not fixed, the next send may pause it again.",
          "Resume sending");
        if (ok !== null) act("Sender resumed.", "POST", path + "/resume", undefined, changed);
      },
    }, "Resume…"));
  } else {
    actions.append(el("button", {
      type: "button", class: "danger pause",
      onclick: async () => {
        const reason = await confirmAction("Pause " + t.tenant + "?",
          "Nothing more of this tenant goes to its provider until it is resumed. Its runs wait; none fails for it.",
          "Pause sending", "Why (optional)");
        if (reason !== null) act("Sender paused.", "POST", path + "/pause", reason.trim() ? { reason: reason.trim() } : {}, changed);
      },
    }, "Pause…"));
  }
  card.append(actions);
  const rows = el("tbody");
  for (const s of sup.suppressions) {
    rows.append(el("tr", {}, el("td", { class: "mono" }, s.to), el("td", {}, s.reason), el("td", {}, when(s.since_ms)),
      el("td", {}, el("button", {
        type: "button", class: "lift",
        onclick: async () => {
          const ok = await confirmAction("Lift the opt-out of " + s.to + "?",
            "Triggers to " + s.to + " are accepted again and they may receive " + t.tenant + "'s messages. Do this only if they asked for it.",
            "Lift the opt-out");
          if (ok !== null) act("Opt-out lifted.", "DELETE", path + "/suppressions/" + encodeURIComponent(s.to), undefined, changed);
        },
      }, "Lift…"))));
  }
  if (!sup.suppressions.length) rows.append(el("tr", {}, el("td", { colspan: 4, class: "empty" }, "Nobody has opted out.")));
  const to = el("input", { name: "to", placeholder: "+5511913390707", required: true, pattern: "\\+[0-9]{8,15}" });
  const why = el("input", { name: "reason", placeholder: "why (optional)" });
  const add = el("form", { class: "inline" }, to, why, el("button", { type: "submit" }, "Suppress…"));
  add.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const who = to.value.trim();
    const ok = await confirmAction("Suppress " + who + "?",
      "Nothing more of " + t.tenant + " goes to " + who + ": their unfinished runs are cancelled and new triggers to them are refused until the opt-out is lifted.",
      "Suppress");
    if (ok !== null) act("Recipient suppressed.", "PUT", path + "/suppressions/" + encodeURIComponent(who), why.value.trim() ? { reason: why.value.trim() } : {}, changed);
  });
  card.append(el("h3", {}, "Opted out"),
    el("table", { class: "suppressions" }, el("thead", {}, el("tr", {}, ["Recipient", "Reason", "Since", ""].map((h) => el("th", {}, h)))), rows));
  if (sup.next) card.append(el("p", { class: "hint" }, "Showing the first 100."));
  card.append(add);
  return card;
}

// ---- flows --------------------------------------------------------------

function flowsPage(main) {
  const list = el("div", { id: "flows" });
  main.append(el("h1", {}, "Flows"), list);
  api("GET", "/v1/flows?limit=500").then((data) => {
    if (!data.flows.length) list.append(el("p", { class: "empty" }, "No flows yet: put one with PUT /v1/flows/{flow}."));
    for (const f of data.flows) list.append(flowCard(f));
    if (data.next) list.append(el("p", { class: "hint" }, "Showing the first 500 flows."));
  }).catch(report);
}

function flowCard(f) {
  const steps = el("ol", { class: "steps" });
  f.steps.forEach((s, i) => {
    const wait = (s.delay_ms ? duration(s.delay_ms) + " after " + (i ? "step " + (i - 1) : "the trigger") : i ? "right after step " + (i - 1) : "at once")
      + (s.after && s.after !== "sent" ? ", once step " + (i - 1) + " is " + s.after : "");
    steps.append(el("li", { dataset: { step: String(i) } }, el("p", { class: "meta" }, "Step " + i + " · " + wait), renderMessage(stepMessage(s))));
  });
  const to = el("input", { name: "to", placeholder: "+5511913390707", required: true });
  // The variables the steps use, ready to fill in: a trigger without one
  // of them is refused.
  const names = [...new Set([...JSON.stringify(f.steps).matchAll(/\{\{\s*([A-Za-z0-9_]+)\s*\}\}/g)].map((m) => m[1]))];
  const vars = el("textarea", { name: "vars", rows: 2, placeholder: "{\"name\": \"Ana\"}" });
  if (names.length) vars.value = JSON.stringify(Object.fromEntries(names.map((n) => [n, ""])));
  const result = el("p", { class: "result" });
  const form = el("form", { class: "trigger" },
    el("label", {}, "To ", to), el("label", {}, "Variables (JSON) ", vars),
    el("button", { type: "submit" }, "Trigger a test run…"), result);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clear(result);
    let v = {};
    try {
      v = vars.value.trim() ? JSON.parse(vars.value) : {};
    } catch (e) {
      result.append(el("span", { class: "error" }, "Variables must be a JSON object: " + e.message));
      return;
    }
    const who = to.value.trim();
    const ok = await confirmAction("Send " + f.flow + " to " + who + "?",
      "This starts a real run: each step goes through " + f.tenant + "'s provider to " + who + ".", "Trigger the run");
    if (ok === null) return;
    try {
      const r = await api("POST", "/v1/flows/" + encodeURIComponent(f.flow) + "/runs", { tenant: f.tenant, to: who, vars: v });
      result.append("Run ", el("a", { href: "#/runs/" + encodeURIComponent(r.run_id), class: "mono run-link" }, r.run_id), " started.");
    } catch (e) {
      result.append(el("span", { class: "error" }, e.message));
    }
  });
  return el("section", { class: "card", dataset: { flow: f.flow, tenant: f.tenant } },
    el("h2", {}, f.flow, " ", el("small", {}, "tenant " + f.tenant)), steps, form);
}

// ---- health -------------------------------------------------------------

function healthPage(main) {
  const figures = el("div", { class: "figures", id: "health" });
  const sends = el("table", { class: "sends" });
  main.append(el("h1", {}, "Health"), figures, el("h2", {}, "Sends by outcome since the engine started"), sends,
    el("p", { class: "hint" }, "Refreshes every " + REFRESH_MS / 1000 + " s. The lines show the last hour, as the engine sampled it every few seconds since it started. Send latency: from a worker's send request reaching the engine to its answer (ledger writes, pacing and the provider call), over the requests of each sample's window."));
  every(async () => {
    const [s, h] = await Promise.all([api("GET", "/v1/stats"), api("GET", "/v1/stats/history")]);
    clear(figures);
    for (const [label, key, now, past, fmt] of [
      ["Queue depth", "depth", s.runs.pending, "pending", String],
      ["Due now", "due", s.runs.due, "due", String],
      ["Leased", "leased", s.runs.leased, "leased", String],
      ["Waiting", "waiting", s.runs.waiting, "waiting", String],
      ["Oldest waiting", "oldest", s.oldest_due_age_ms, "oldest_due_age_ms", duration],
      ["Unknown deliveries", "unknown", s.unknown_deliveries, "unknown_deliveries", String],
    ]) {
      figures.append(el("div", { class: "figure", dataset: { figure: key } },
        el("span", { class: "label" }, label), el("b", {}, fmt(now)), sparkline(h.samples.map((x) => x[past]))));
    }
    // Rates and latencies, from the samples: sends per second by outcome
    // between two samples, and how long the send requests answered in
    // each sample's window took (from reaching the engine to its answer).
    const per = (field) => h.samples.slice(1).map((x, i) => {
      const dt = (x.at_ms - h.samples[i].at_ms) / 1000;
      return dt > 0 ? Math.max(0, x[field] - h.samples[i][field]) / dt : 0;
    });
    const lat = (q) => h.samples.map((x) => (x.send_latency ? x.send_latency[q] : 0));
    const last = (xs) => (xs.length ? xs[xs.length - 1] : null);
    const rate = (v) => (v === null ? "—" : v.toFixed(1) + "/s");
    const ms = (v) => (v === null ? "—" : v + " ms");
    const lastLatency = last(h.samples.filter((x) => x.send_latency));
    for (const [label, key, series, shown] of [
      ["Sent per second", "sent-rate", per("sent"), rate(last(per("sent")))],
      ["Failed per second", "failed-rate", per("failed"), rate(last(per("failed")))],
      ["Send latency p50", "latency-p50", lat("p50_ms"), ms(lastLatency ? lastLatency.send_latency.p50_ms : null)],
      ["Send latency p99", "latency-p99", lat("p99_ms"), ms(lastLatency ? lastLatency.send_latency.p99_ms : null)],
    ]) {
      figures.append(el("div", { class: "figure", dataset: { figure: key } },
        el("span", { class: "label" }, label), el("b", {}, shown), sparkline(series)));
    }
    figures.append(el("div", { class: "figure", dataset: { figure: "paused" } },
      el("span", { class: "label" }, "Paused senders"), el("b", {}, String(s.paused_tenants))));
    clear(sends).append(el("tbody", {}, Object.entries(s.sends).map(([k, v]) => el("tr", {}, el("th", {}, k.replace(/_/g, " ")), el("td", {}, String(v))))));
  });
}

function sparkline(values) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 120 24");
  svg.setAttribute("class", "spark");
  if (values.length < 2) return svg;
  const max = Math.max(1, ...values);
  const pts = values.map((v, i) => (i * 120 / (values.length - 1)).toFixed(1) + "," + (23 - v * 22 / max).toFixed(1));
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", pts.join(" "));
  svg.append(line);
  return svg;
}

start();
