// The approvals inbox: pending sessions, live; decide per call or per session; history.
//
// Talks to the gateway's own API with the key kept in this tab's sessionStorage and sent
// only as a bearer header. Everything a model or a requester wrote is put on the page as
// text (textContent, never markup). The live feed is GET /v1/approvals/events, read with
// fetch (EventSource cannot send a header) and resumed with Last-Event-ID.
"use strict";

const KEY_STORAGE = "approval-gateway-key";
const FOLD_AT = 160; // characters of an argument value shown before "show all"
const HISTORY_EVENTS = new Set(["decided", "expired", "executed", "granted", "refused"]);
const GRANTS = {
  none: null,
  same15: { ttl_s: 900, same_arguments: true },
  same60: { ttl_s: 3600, same_arguments: true },
  any60: { ttl_s: 3600, same_arguments: false },
};

const state = {
  key: sessionStorage.getItem(KEY_STORAGE) || "",
  sessions: new Map(), // id -> session JSON (with context and schemas)
  selected: null, // {session, call}
  chosen: false, // the person moved the selection (else it follows the newest call)
  clockSkewMs: 0, // server time - this browser's time
  lastEventId: "",
  feed: null, // AbortController of the live feed
  refreshing: new Map(), // session id -> timer
  history: [], // audit entries, oldest first
  me: null, // GET /v1/me: {name, tenant, roles, open}
  view: "pending",
};

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// ---- API ----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "";
    this.param = error.param || null;
  }
}

function headers(extra = {}) {
  const all = { Accept: "application/json", ...extra };
  if (state.key) all.Authorization = `Bearer ${state.key}`;
  return all;
}

async function api(path, options = {}) {
  const init = { method: options.method || "GET", headers: headers(), cache: "no-store" };
  if (options.body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.body);
  }
  const response = await fetch(path, init);
  noteServerTime(response);
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function noteServerTime(response) {
  const date = Date.parse(response.headers.get("Date") || "");
  if (!Number.isNaN(date)) state.clockSkewMs = date + 500 - Date.now(); // Date has whole seconds
}

const now = () => (Date.now() + state.clockSkewMs) / 1000;

// ---- Signing in ---------------------------------------------------------------------

async function signIn(key) {
  state.key = key;
  $("#signin-error").textContent = "";
  try {
    await api("/v1/audit?limit=1"); // approvers and admins only, like the feed
  } catch (error) {
    state.key = "";
    sessionStorage.removeItem(KEY_STORAGE);
    showSignIn(signInMessage(error));
    return;
  }
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  try {
    state.me = await api("/v1/me");
  } catch {
    state.me = null;
  }
  $("#principal").textContent = !state.me
    ? ""
    : state.me.open
      ? "open gateway (no keys)"
      : `${state.me.name} · ${state.me.tenant}`;
  $("#signin").hidden = true;
  $("#tabs").hidden = false;
  $("#who").hidden = false;
  show(state.view);
  loadPending();
  follow();
  loadHistory();
}

function signInMessage(error) {
  if (error.status === 401) return "This key is not known to the gateway.";
  if (error.status === 403) return "This key may not see approvals: it needs the approver or admin role.";
  return `The gateway did not answer: ${error.message}`;
}

function showSignIn(message = "") {
  if (state.feed) state.feed.abort();
  state.feed = null;
  state.sessions.clear();
  $("#sessions").replaceChildren();
  $("#signin").hidden = false;
  $("#pending").hidden = true;
  $("#history").hidden = true;
  $("#tabs").hidden = true;
  $("#who").hidden = true;
  $("#signin-error").textContent = message;
  $("#key").value = "";
  $("#key").focus();
}

function signOut(message = "") {
  state.key = "";
  state.lastEventId = "";
  sessionStorage.removeItem(KEY_STORAGE);
  showSignIn(message);
}

// ---- The live feed ------------------------------------------------------------------

async function follow() {
  const controller = new AbortController();
  if (state.feed) state.feed.abort();
  state.feed = controller;
  let pause = 500;
  while (state.feed === controller) {
    try {
      const extra = { Accept: "text/event-stream" };
      if (state.lastEventId) extra["Last-Event-ID"] = state.lastEventId;
      const response = await fetch("/v1/approvals/events", {
        headers: headers(extra),
        signal: controller.signal,
        cache: "no-store",
      });
      if (response.status === 401 || response.status === 403) {
        let body = null;
        try { body = await response.json(); } catch { body = null; }
        signOut(signInMessage(new ApiError(response.status, body)));
        return;
      }
      if (!response.ok) throw new Error(`feed answered ${response.status}`);
      pause = 500;
      await readEvents(response.body, onEvent);
    } catch (error) {
      if (controller.signal.aborted) return;
    }
    setLive(false);
    await new Promise((resolve) => setTimeout(resolve, pause));
    pause = Math.min(pause * 2, 10000);
  }
}

async function readEvents(body, handle) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = { id: "", event: "message", data: "" };
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue; // heartbeats are comments
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") event.data += (event.data ? "\n" : "") + text;
        else if (field === "id" || field === "event") event[field] = text;
      }
      if (event.data) handle(event);
    }
  }
}

function onEvent(event) {
  let entry;
  try {
    entry = JSON.parse(event.data);
  } catch {
    return;
  }
  if (event.event === "ready") {
    setLive(true);
    if (event.id) state.lastEventId = event.id;
    loadPending(); // whatever happened while the feed was away
    return;
  }
  if (event.event === "error") return; // the stream ends; follow() re-attaches
  if (event.id) state.lastEventId = event.id;
  if (entry.session) scheduleRefresh(entry.session);
  if (HISTORY_EVENTS.has(entry.event)) addHistory([entry]);
  const mine = state.me && entry.actor === state.me.name;
  if (entry.event === "decided" && entry.actor && entry.actor !== "deadline" && !mine) {
    const verb = decisionVerb((entry.detail && entry.detail.decision) || "");
    toast(`${entry.actor} ${verb} ${entry.tool || "a call"}`);
  }
}

function setLive(on) {
  const live = $("#live");
  live.textContent = on ? "live" : "reconnecting";
  live.classList.toggle("on", on);
}

// ---- Pending sessions ---------------------------------------------------------------

async function loadPending() {
  let listed;
  try {
    listed = await api("/v1/approvals?include=context&limit=200");
  } catch (error) {
    if (error.status === 401 || error.status === 403) signOut(signInMessage(error));
    return;
  }
  const seen = new Set();
  for (const session of listed.data) {
    seen.add(session.id);
    upsert(session);
  }
  for (const id of Array.from(state.sessions.keys())) {
    if (!seen.has(id)) removeSession(id);
  }
  if (!state.chosen) {
    for (const node of $$(".call.selected")) node.classList.remove("selected");
    selectFirst(false);
  }
  renderCount();
}

function scheduleRefresh(sessionId) {
  clearTimeout(state.refreshing.get(sessionId));
  state.refreshing.set(sessionId, setTimeout(() => refresh(sessionId), 40));
}

async function refresh(sessionId) {
  state.refreshing.delete(sessionId);
  let session;
  try {
    session = await api(`/v1/approvals/${encodeURIComponent(sessionId)}`);
  } catch (error) {
    if (error.status === 404) removeSession(sessionId);
    return;
  }
  if (session.status === "pending") upsert(session);
  else removeSession(sessionId, session);
  renderCount();
}

function upsert(session) {
  const had = state.sessions.get(session.id);
  if (!session.context && had) {
    session.context = had.context;
    session.schemas = had.schemas;
  }
  state.sessions.set(session.id, session);
  const existing = $(`.session[data-session="${CSS.escape(session.id)}"]`);
  const card = renderSession(session);
  if (existing) {
    keepOpenForms(existing, card);
    existing.replaceWith(card);
  } else {
    // Newest first.
    const after = $$(".session", $("#sessions")).find(
      (other) => Number(other.dataset.created) < session.created_at,
    );
    $("#sessions").insertBefore(card, after || null);
  }
  restoreSelection();
}

function removeSession(sessionId, after = null) {
  state.sessions.delete(sessionId);
  const card = $(`.session[data-session="${CSS.escape(sessionId)}"]`);
  if (card && after && after.tool_calls.some((call) => call.status === "expired")) {
    // Expired: say so on the card for a moment rather than let it vanish.
    const countdown = $(".countdown", card);
    countdown.dataset.expires = "0";
    updateCountdown(countdown);
    card.classList.add("leaving");
    setTimeout(() => removeSession(sessionId), 3000);
    renderCount();
    return;
  }
  if (card) {
    const wasSelected = state.selected && state.selected.session === sessionId;
    card.remove();
    if (wasSelected) selectFirst();
  }
  renderCount();
}

function renderCount() {
  $("#pending-count").textContent = String(state.sessions.size);
  $("#empty").hidden = state.sessions.size > 0;
}

function renderSession(session) {
  const pending = session.tool_calls.filter((call) => call.status === "pending");
  const card = el(
    "article",
    { class: "session", "data-session": session.id, "data-created": String(session.created_at) },
    el(
      "header",
      { class: "session-head" },
      el("span", { class: "requester", text: session.requester }),
      session.conversation_label || session.conversation
        ? el("span", {
            class: "conversation",
            text: `conversation ${session.conversation_label || short(session.conversation)}`,
            title: session.conversation || session.conversation_label,
          })
        : null,
      el("span", { class: "model", text: session.model }),
      el("span", { class: "age", text: `asked ${ago(session.created_at)}`, title: new Date(session.created_at * 1000).toLocaleString() }),
      session.tainted ? el("span", { class: "badge tainted", text: "untrusted context", title: "Untrusted tool output came before these calls" }) : null,
      el("span", { class: "session-id", text: session.id }),
      el("span", { class: "countdown", "data-expires": String(session.expires_at) }),
    ),
    renderContext(session.context),
    session.tool_calls.map((call) => renderCall(session, call)),
    pending.length > 1
      ? el(
          "footer",
          { class: "session-actions" },
          el("button", { type: "button", class: "approve-all", text: `Approve all ${pending.length}`, onclick: () => decideSession(session, "approve") }),
          el("button", { type: "button", class: "reject-all", text: "Reject all…", onclick: () => openReject(session, null) }),
        )
      : null,
  );
  updateCountdown(card.querySelector(".countdown"));
  return card;
}

function renderContext(context) {
  if (!context) return null;
  const items = [];
  if (context.user_message && context.user_message.text) {
    items.push(contextItem("User asked", context.user_message, "user-message"));
  }
  if (context.assistant_text && context.assistant_text.text) {
    items.push(contextItem("Model said", context.assistant_text, "assistant-text"));
  }
  for (const result of context.tool_results || []) {
    const label = el("span", {}, `Result of ${result.name || "a tool"} `);
    if (result.untrusted) label.append(el("span", { class: "badge untrusted", text: "untrusted" }));
    items.push(
      el(
        "div",
        { class: `context-item tool-result${result.untrusted ? " untrusted" : ""}` },
        el("div", { class: "label" }, label),
        foldedText(result.text, result.truncated),
      ),
    );
  }
  return items.length ? el("section", { class: "context", "aria-label": "What led to these calls" }, items) : null;
}

function contextItem(label, item, kind) {
  return el(
    "div",
    { class: `context-item ${kind}` },
    el("div", { class: "label", text: label }),
    foldedText(item.text, item.truncated),
  );
}

function foldedText(text, truncated = false) {
  const box = el("div", { class: "text" });
  const suffix = truncated ? " … (cut by the gateway)" : "";
  if (text.length <= FOLD_AT * 2) {
    box.textContent = text + suffix;
    return box;
  }
  const short = text.slice(0, FOLD_AT * 2) + "…";
  box.textContent = short;
  const toggle = el("button", { type: "button", class: "link fold", text: `show all (${text.length} characters)` });
  toggle.addEventListener("click", () => {
    const open = toggle.dataset.open === "1";
    box.textContent = open ? short : text + suffix;
    toggle.dataset.open = open ? "0" : "1";
    toggle.textContent = open ? `show all (${text.length} characters)` : "show less";
    box.append(toggle);
  });
  box.append(toggle);
  return box;
}

function renderCall(session, call) {
  const pending = call.status === "pending";
  const node = el(
    "div",
    { class: "call", "data-call": call.id, "data-session": session.id, tabindex: "-1" },
    el(
      "div",
      { class: "call-head" },
      el("span", { class: "tool", text: call.name }),
      call.side === "client" ? el("span", { class: "badge", text: "client tool" }) : null,
      el("span", { class: `status ${call.status}`, text: call.status }),
      el("span", { class: "policy-reason", text: call.policy_reason ? `asks because: ${call.policy_reason}` : "" }),
    ),
    renderArguments(call.arguments),
    call.decision && !pending ? el("div", { class: "notice decided", text: describeDecision(call.decision) }) : null,
  );
  node.addEventListener("click", (event) => {
    if (event.target.closest("button, input, textarea, select, a")) return;
    select(session.id, call.id);
  });
  if (pending) {
    const grant = el(
      "select",
      { class: "grant", "aria-label": "Also allow later calls" },
      el("option", { value: "none", text: "no standing grant" }),
      el("option", { value: "same15", text: "+ allow same call 15 min" }),
      el("option", { value: "same60", text: "+ allow same call 1 h" }),
      el("option", { value: "any60", text: "+ allow this tool 1 h" }),
    );
    node.append(
      el(
        "div",
        { class: "actions" },
        el("button", { type: "button", class: "approve", text: "Approve", title: "a", onclick: () => decideCall(session, call, "approve") }),
        el("button", { type: "button", class: "reject", text: "Reject…", title: "r", onclick: () => openReject(session, call) }),
        el("button", { type: "button", class: "edit", text: "Edit…", title: "e", onclick: () => openEdit(session, call) }),
        el("button", { type: "button", class: "respond", text: "Respond…", title: "o", onclick: () => openRespond(session, call) }),
        grant,
      ),
    );
  }
  return node;
}

function renderArguments(args) {
  const wrapper = el("div", { class: "arguments" });
  const table = el("table", { class: "args" });
  const entries = Object.entries(args || {});
  if (!entries.length) table.append(el("tr", {}, el("td", { class: "empty", text: "(no arguments)" })));
  for (const [name, value] of entries) {
    const text = typeof value === "string" ? value : JSON.stringify(value);
    const cell = el("td", { class: typeof value === "string" ? "value-text" : "value-json" });
    if (text.length > FOLD_AT) {
      const short = text.slice(0, FOLD_AT) + "…";
      const body = el("span", { text: short });
      const toggle = el("button", { type: "button", class: "link fold", text: `show all (${text.length} characters)` });
      toggle.addEventListener("click", () => {
        const open = toggle.dataset.open === "1";
        body.textContent = open ? short : text;
        toggle.dataset.open = open ? "0" : "1";
        toggle.textContent = open ? `show all (${text.length} characters)` : "show less";
      });
      cell.append(body, toggle);
    } else {
      cell.textContent = text;
    }
    table.append(el("tr", { "data-argument": name }, el("th", { text: name }), cell));
  }
  const exact = el("pre", { class: "exact", hidden: true, text: JSON.stringify(args, null, 2) });
  const toggle = el("button", { type: "button", class: "link exact-toggle", text: "exact JSON" });
  toggle.addEventListener("click", () => {
    exact.hidden = !exact.hidden;
    toggle.textContent = exact.hidden ? "exact JSON" : "hide JSON";
  });
  wrapper.append(table, toggle, exact);
  return wrapper;
}

function describeDecision(decision) {
  const verb = decisionVerb(decision.decision);
  const reason = decision.reason ? `: “${decision.reason}”` : "";
  return `${verb} by ${decision.actor}${reason}`;
}

function decisionVerb(kind) {
  return { approve: "approved", reject: "rejected", edit: "edited and approved", respond: "answered" }[kind] || kind || "decided";
}

// ---- Deciding -----------------------------------------------------------------------

function grantOf(session, call) {
  const card = callNode(session.id, call.id);
  const choice = card ? $("select.grant", card) : null;
  return choice ? GRANTS[choice.value] : null;
}

async function decideCall(session, call, decision, extra = {}) {
  const item = { tool_call_id: call.id, decision, ...extra };
  if (decision === "approve" || decision === "edit") {
    if (decision === "approve") item.arguments_sha256 = call.arguments_sha256;
    const grant = grantOf(session, call);
    if (grant) item.grant = grant;
  }
  return post(session, { calls: [item] }, call);
}

async function decideSession(session, decision, reason = "") {
  return post(session, { decision, reason }, null);
}

async function post(session, body, call) {
  const where = call ? callNode(session.id, call.id) : $(`.session[data-session="${CSS.escape(session.id)}"]`);
  setBusy(where, true);
  try {
    const after = await api(`/v1/approvals/${encodeURIComponent(session.id)}/decision`, { method: "POST", body });
    if (after.status === "pending") upsert({ ...after, context: session.context, schemas: session.schemas });
    else removeSession(session.id, after);
    return { ok: true };
  } catch (error) {
    setBusy(where, false);
    return { ok: false, error: await explain(session, call, error) };
  }
}

async function explain(session, call, error) {
  if (error.status === 401) {
    signOut("The gateway no longer accepts this key.");
    return error;
  }
  if (error.status === 409 && error.code !== "hash_mismatch") {
    // Someone decided first: show what they decided, as news rather than a failure.
    let after = null;
    try {
      after = await api(`/v1/approvals/${encodeURIComponent(session.id)}`);
    } catch {
      after = null;
    }
    const decided = after && call ? after.tool_calls.find((c) => c.id === call.id) : null;
    const who = decided && decided.decision ? describeDecision(decided.decision) : "decided by someone else";
    toast(`Already ${who.replace(/^./, (c) => c.toLowerCase())}: your decision was not needed.`);
    if (after && after.status === "pending") upsert(after);
    else removeSession(session.id, after);
    return error;
  }
  const messages = {
    403: error.code === "self_approval" ? "You asked for this call, so someone else must decide it." : `Not allowed: ${error.message}`,
    404: "This session no longer exists.",
    409: "The arguments changed since you looked: reload and look again.",
    410: "This session expired before the decision.",
  };
  const text = messages[error.status] || error.message;
  if (error.status === 404 || error.status === 410) {
    toast(text);
    scheduleRefresh(session.id);
  } else if (!(error.status === 400 && error.param && error.param.startsWith("arguments"))) {
    notify(session, call, text);
  }
  return error;
}

function notify(session, call, text) {
  const where = call ? callNode(session.id, call.id) : $(`.session[data-session="${CSS.escape(session.id)}"]`);
  if (!where) return toast(text);
  const old = $(":scope > .notice.error", where);
  if (old) old.remove();
  where.append(el("div", { class: "notice error", role: "alert", text }));
}

function setBusy(node, busy) {
  if (!node) return;
  for (const button of $$("button", node)) button.disabled = busy;
}

function closeForms(node) {
  for (const form of $$(".form", node)) form.remove();
}

function openReject(session, call) {
  const where = call ? callNode(session.id, call.id) : $(`.session[data-session="${CSS.escape(session.id)}"] .session-actions`);
  if (!where) return;
  closeForms(where);
  const reason = el("textarea", { class: "reason", rows: 2, placeholder: "Why not? The model is told this reason.", "aria-label": "Reason" });
  const error = el("div", { class: "form-error", role: "alert" });
  const submit = async () => {
    const outcome = call
      ? await decideCall(session, call, "reject", { reason: reason.value.trim() })
      : await decideSession(session, "reject", reason.value.trim());
    if (!outcome.ok) error.textContent = outcome.error.message;
  };
  reason.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      submit();
    }
  });
  const form = el(
    "div",
    { class: "form reject-form" },
    reason,
    error,
    el(
      "div",
      { class: "row" },
      el("button", { type: "button", class: "confirm-reject", text: call ? "Reject" : "Reject all", onclick: submit }),
      el("button", { type: "button", class: "cancel", text: "Cancel", onclick: () => form.remove() }),
    ),
  );
  where.append(form);
  reason.focus();
}

function openRespond(session, call) {
  const where = callNode(session.id, call.id);
  closeForms(where);
  const result = el("textarea", { class: "result", rows: 3, placeholder: "The result the model gets instead of running the tool", "aria-label": "Result" });
  const error = el("div", { class: "form-error", role: "alert" });
  const submit = async () => {
    if (!result.value.trim()) {
      error.textContent = "Write the result the model should get.";
      return;
    }
    const outcome = await decideCall(session, call, "respond", { result: result.value });
    if (!outcome.ok) error.textContent = outcome.error.message;
  };
  result.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) submit();
  });
  const form = el(
    "div",
    { class: "form respond-form" },
    result,
    error,
    el(
      "div",
      { class: "row" },
      el("button", { type: "button", class: "confirm-respond", text: "Send as the result", onclick: submit }),
      el("button", { type: "button", class: "cancel", text: "Cancel", onclick: () => form.remove() }),
    ),
  );
  where.append(form);
  result.focus();
}

// The editor: one field per argument the tool's schema names (or the call has); a string
// property is edited as text, anything else as JSON. "Exact JSON" edits the whole object.
function openEdit(session, call) {
  const where = callNode(session.id, call.id);
  closeForms(where);
  const schema = (session.schemas && session.schemas[call.name]) || {};
  const properties = schema.properties || {};
  const names = Array.from(new Set([...Object.keys(properties), ...Object.keys(call.arguments || {})]));
  const required = new Set(schema.required || []);
  const args = call.arguments || {};
  // Own keys only: a model may name an argument `constructor` or `__proto__`.
  const fields = names.map((name) =>
    editorField(
      name,
      Object.hasOwn(properties, name) ? properties[name] : {},
      Object.hasOwn(args, name) ? args[name] : undefined,
      required.has(name),
    ),
  );
  const raw = el("textarea", { class: "raw", rows: 8, hidden: true, "aria-label": "Arguments as JSON", spellcheck: "false" });
  raw.value = JSON.stringify(call.arguments, null, 2);
  const rawError = el("div", { class: "field-error raw-error", role: "alert" });
  const formError = el("div", { class: "form-error", role: "alert" });
  const fieldsBox = el("div", { class: "fields" }, fields.map((f) => f.node));
  const asFields = el("input", { type: "radio", name: `mode-${call.id}`, value: "fields", checked: true });
  const asJson = el("input", { type: "radio", name: `mode-${call.id}`, value: "json" });
  const switchMode = () => {
    if (asJson.checked) {
      try {
        raw.value = JSON.stringify(collect(fields), null, 2);
      } catch {
        // keep what the raw editor had
      }
    }
    fieldsBox.hidden = asJson.checked;
    raw.hidden = !asJson.checked;
  };
  asFields.addEventListener("change", switchMode);
  asJson.addEventListener("change", switchMode);

  const submit = async () => {
    formError.textContent = "";
    rawError.textContent = "";
    raw.classList.remove("invalid");
    for (const field of fields) field.setError("");
    let args;
    try {
      args = asJson.checked ? parseRaw(raw.value) : collect(fields);
    } catch (problem) {
      if (problem.field) problem.field.setError(problem.message);
      else {
        rawError.textContent = problem.message;
        raw.classList.add("invalid");
      }
      return;
    }
    const outcome = await decideCall(session, call, "edit", { arguments: args });
    if (outcome.ok) return;
    const error = outcome.error;
    if (error.status === 400 && error.param && error.param.startsWith("arguments")) {
      const top = error.param.split(".")[1];
      const field = fields.find((f) => f.name === top);
      if (field && !asJson.checked) field.setError(error.message);
      else if (asJson.checked) {
        rawError.textContent = error.message;
        raw.classList.add("invalid");
      } else formError.textContent = error.message;
    } else if (error.status !== 409) {
      formError.textContent = error.message;
    }
  };
  const form = el(
    "div",
    { class: "form editor" },
    el("div", { class: "mode" }, el("label", {}, asFields, " fields"), el("label", {}, asJson, " exact JSON")),
    fieldsBox,
    raw,
    rawError,
    formError,
    el(
      "div",
      { class: "row" },
      el("button", { type: "button", class: "confirm-edit", text: "Approve with these arguments", onclick: submit }),
      el("button", { type: "button", class: "cancel", text: "Cancel", onclick: () => form.remove() }),
    ),
  );
  form.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      submit();
    }
  });
  where.append(form);
  const first = $("input:not([type=radio]), textarea:not([hidden])", fieldsBox);
  if (first) first.focus();
}

function editorField(name, property, value, required) {
  const isText = property.type === "string" || (property.type === undefined && typeof value === "string");
  const id = `edit-${Math.random().toString(36).slice(2)}`;
  const input = isText
    ? el("input", { id, type: "text", spellcheck: "false", autocomplete: "off" })
    : el("textarea", { id, rows: 2, spellcheck: "false" });
  if (value !== undefined) input.value = isText ? String(value) : JSON.stringify(value, null, 2);
  const present = value !== undefined;
  const error = el("div", { class: "field-error", role: "alert" });
  const kind = property.type ? String(property.type) : isText ? "string" : "JSON";
  const node = el(
    "div",
    { class: "field", "data-name": name },
    el("label", { for: id }, name, el("span", { class: "type", text: ` ${kind}${required ? ", required" : ""}${isText ? "" : " (JSON)"}` })),
    property.description ? el("div", { class: "hint", text: property.description }) : null,
    input,
    error,
  );
  return {
    name,
    node,
    setError(message) {
      error.textContent = message;
      node.classList.toggle("invalid", Boolean(message));
    },
    read() {
      const text = input.value;
      if (!present && text === "") return undefined; // left out, as it was
      if (isText) return text;
      try {
        return JSON.parse(text);
      } catch {
        const problem = new Error(`${name}: not valid JSON`);
        problem.field = this;
        throw problem;
      }
    },
  };
}

function collect(fields) {
  // fromEntries makes real keys, `__proto__` included (an assignment would set the prototype).
  const entries = fields.map((field) => [field.name, field.read()]);
  return Object.fromEntries(entries.filter(([, value]) => value !== undefined));
}

function parseRaw(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new Error(`not valid JSON: ${error.message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new Error("the arguments must be a JSON object");
  }
  return value;
}

// Forms someone is typing in survive a re-render of their card (a colleague decided
// another call of the same session).
function keepOpenForms(oldCard, newCard) {
  for (const form of $$(".call .form", oldCard)) {
    const call = form.closest(".call").dataset.call;
    const target = $(`.call[data-call="${CSS.escape(call)}"]`, newCard);
    if (target && $(".actions", target)) target.append(form);
  }
}

function callNode(sessionId, callId) {
  return $(`.call[data-session="${CSS.escape(sessionId)}"][data-call="${CSS.escape(callId)}"]`);
}

// ---- Countdown ----------------------------------------------------------------------

function updateCountdown(node) {
  const left = Number(node.dataset.expires) - now();
  if (left <= 0) {
    node.textContent = "expired";
    node.classList.add("expired");
    const card = node.closest(".session");
    if (card) for (const button of $$(".actions button, .session-actions button", card)) button.disabled = true;
    return;
  }
  const whole = Math.round(left); // the clock is known to about half a second
  const minutes = Math.floor(whole / 60);
  const seconds = whole % 60;
  node.textContent = `expires in ${minutes}:${String(seconds).padStart(2, "0")}`;
  node.classList.toggle("soon", left < 60);
}

function tick() {
  for (const node of $$(".countdown")) updateCountdown(node);
}

function short(id) {
  return id.length > 18 ? `${id.slice(0, 14)}…` : id;
}

function ago(at) {
  const seconds = Math.max(0, Math.round(now() - at));
  if (seconds < 60) return `${seconds}s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  return new Date(at * 1000).toLocaleTimeString();
}

// ---- Selection and keyboard ---------------------------------------------------------

function pendingCalls() {
  return $$(".session .call").filter((node) => $(".actions", node));
}

function select(sessionId, callId) {
  state.chosen = true;
  state.selected = { session: sessionId, call: callId };
  for (const node of $$(".call.selected")) node.classList.remove("selected");
  const node = callNode(sessionId, callId);
  if (node) {
    node.classList.add("selected");
    node.scrollIntoView({ block: "nearest" });
    if (!node.contains(document.activeElement)) node.focus({ preventScroll: true });
  }
}

function restoreSelection() {
  if (state.selected && callNode(state.selected.session, state.selected.call)) {
    callNode(state.selected.session, state.selected.call).classList.add("selected");
  } else if (!state.selected) {
    selectFirst(false);
  }
}

function selectFirst(focus = true) {
  const first = pendingCalls()[0];
  state.selected = null;
  if (first) {
    if (focus) select(first.dataset.session, first.dataset.call);
    else {
      state.selected = { session: first.dataset.session, call: first.dataset.call };
      first.classList.add("selected");
    }
  }
}

function move(step) {
  const calls = pendingCalls();
  if (!calls.length) return;
  const current = calls.findIndex((node) => node.classList.contains("selected"));
  const next = calls[Math.max(0, Math.min(calls.length - 1, current < 0 ? 0 : current + step))];
  select(next.dataset.session, next.dataset.call);
}

function selectedCall() {
  if (!state.selected) return null;
  const session = state.sessions.get(state.selected.session);
  const call = session && session.tool_calls.find((c) => c.id === state.selected.call);
  return call && call.status === "pending" ? { session, call } : null;
}

function onKey(event) {
  if (event.key === "Escape") {
    const open = document.activeElement && document.activeElement.closest(".form");
    if (open) {
      const call = open.closest(".call");
      open.remove();
      if (call) call.focus();
    }
    $("#help").hidden = true;
    return;
  }
  const typing = event.target.closest("input, textarea, select");
  if (typing || event.ctrlKey || event.metaKey || event.altKey || !$("#signin").hidden) return;
  const chosen = selectedCall();
  const actions = {
    j: () => move(1),
    ArrowDown: () => move(1),
    k: () => move(-1),
    ArrowUp: () => move(-1),
    a: () => chosen && decideCall(chosen.session, chosen.call, "approve"),
    r: () => chosen && openReject(chosen.session, chosen.call),
    e: () => chosen && openEdit(chosen.session, chosen.call),
    o: () => chosen && openRespond(chosen.session, chosen.call),
    h: () => show(state.view === "pending" ? "history" : "pending"),
    "?": () => { $("#help").hidden = !$("#help").hidden; },
  };
  const action = actions[event.key];
  if (action) {
    event.preventDefault();
    action();
  }
}

// ---- History ------------------------------------------------------------------------

async function loadHistory() {
  const since = Math.floor(now() - 24 * 3600);
  const entries = [];
  let after = "";
  for (let page = 0; page < 10; page++) {
    const query = new URLSearchParams({ since: String(since), limit: "1000" });
    if (after) query.set("after", after);
    let found;
    try {
      found = await api(`/v1/audit?${query}`);
    } catch {
      return;
    }
    entries.push(...found.data.filter((entry) => HISTORY_EVENTS.has(entry.event)));
    if (found.data.length < 1000 || !found.last_id) break;
    after = found.last_id;
  }
  state.history = [];
  addHistory(entries);
}

function addHistory(entries) {
  const known = new Set(state.history.map((entry) => entry.id));
  for (const entry of entries) if (!known.has(entry.id)) state.history.push(entry);
  state.history.sort((a, b) => a.at - b.at);
  if (state.history.length > 5000) state.history.splice(0, state.history.length - 5000);
  if (state.view === "history") renderHistory();
}

function renderHistory() {
  const bySession = new Map();
  for (const entry of state.history) {
    if (!entry.session) continue;
    if (!bySession.has(entry.session)) bySession.set(entry.session, []);
    bySession.get(entry.session).push(entry);
  }
  const newest = Array.from(bySession.entries()).sort((a, b) => b[1].at(-1).at - a[1].at(-1).at).slice(0, 200);
  const list = $("#history-list");
  list.replaceChildren(
    ...newest.map(([sessionId, entries]) =>
      el(
        "article",
        { class: "history-item", "data-session": sessionId },
        el("div", { class: "session-id", text: sessionId }),
        el("ul", {}, entries.map(historyLine)),
      ),
    ),
  );
  if (!newest.length) list.append(el("p", { class: "empty", text: "No decisions in the last 24 hours." }));
}

function historyLine(entry) {
  const detail = entry.detail || {};
  const when = el("span", { class: "when", text: new Date(entry.at * 1000).toLocaleTimeString() + " · " });
  let text;
  if (entry.event === "decided") {
    text = `${entry.tool}: ${decisionVerb(detail.decision)} by ${entry.actor}${detail.reason ? ` — “${detail.reason}”` : ""}`;
  } else if (entry.event === "expired") {
    text = "expired undecided";
  } else if (entry.event === "executed") {
    text = `${entry.tool}: ran, ${detail.outcome || "done"}${detail.duration_ms !== undefined ? ` in ${Math.round(detail.duration_ms)} ms` : ""}`;
  } else if (entry.event === "granted") {
    text = `${entry.tool}: standing grant by ${entry.actor} for ${detail.ttl_s} s`;
  } else {
    text = `${entry.actor} was refused: ${detail.message || detail.code || ""}`;
  }
  return el("li", { class: `history-${entry.event}` }, when, text);
}

// ---- Views, toasts, start-up ---------------------------------------------------------

function show(view) {
  state.view = view;
  $("#pending").hidden = view !== "pending";
  $("#history").hidden = view !== "history";
  $("#tab-pending").setAttribute("aria-pressed", String(view === "pending"));
  $("#tab-history").setAttribute("aria-pressed", String(view === "history"));
  if (view === "history") renderHistory();
}

function toast(text) {
  const node = el("div", { class: "toast", text });
  $("#toasts").append(node);
  setTimeout(() => node.remove(), 4000);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#signin").addEventListener("submit", (event) => {
    event.preventDefault(); // nothing is posted anywhere: the key stays in this tab
    signIn($("#key").value.trim());
  });
  $("#signout").addEventListener("click", () => signOut());
  $("#tab-pending").addEventListener("click", () => show("pending"));
  $("#tab-history").addEventListener("click", () => show("history"));
  document.addEventListener("keydown", onKey);
  setInterval(tick, 1000);
  if (state.key) signIn(state.key);
  else {
    // An open gateway (no keys) lets anyone in; otherwise ask for a key.
    fetch("/v1/audit?limit=1", { headers: headers(), cache: "no-store" }).then(
      (response) => (response.ok ? signIn("") : showSignIn()),
      () => showSignIn("The gateway did not answer."),
    );
  }
});
