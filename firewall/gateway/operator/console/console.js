// mcpwall console: live approvals, decisions, audit search and the kill switch.
// Everything from the server is put in the page with textContent, never as HTML.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (sel) => document.querySelector(sel);

  function cell(text, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text == null ? "" : String(text);
    return td;
  }
  function pre(value) {
    const td = document.createElement("td");
    const p = document.createElement("pre");
    p.textContent = value == null ? "" : (typeof value === "string" ? value : JSON.stringify(value, null, 1));
    td.appendChild(p);
    return td;
  }
  function when(ns) {
    return ns ? new Date(ns / 1e6).toISOString().replace("T", " ").slice(0, 19) : "";
  }

  async function api(method, path, body) {
    const init = { method, headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    let data = {};
    try { data = await res.json(); } catch (e) { data = {}; }
    if (res.status === 401) { window.location.reload(); }
    if (!res.ok) throw new Error(data.error || ("HTTP " + res.status));
    return data;
  }

  function approvalRow(a) {
    const tr = document.createElement("tr");
    tr.dataset.id = a.id;
    tr.append(cell(a.id), cell(when(a.created_ns)), cell(a.principal), cell(a.server),
              cell(a.target || a.method), pre(a.arguments),
              cell((a.rule || "") + (a.reason ? ": " + a.reason : "")));
    const td = document.createElement("td");
    td.className = "decide";
    const note = document.createElement("input");
    note.placeholder = "comment";
    note.setAttribute("aria-label", "comment for " + a.id);
    td.appendChild(note);
    for (const [verb, label] of [["approve", "Approve"], ["reject", "Reject"]]) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = verb;
      b.dataset.action = verb;
      b.dataset.id = a.id;
      b.textContent = label;
      td.appendChild(b);
    }
    tr.appendChild(td);
    return tr;
  }

  async function loadApprovals() {
    try {
      const data = await api("GET", "/api/approvals");
      const body = $("#approvals tbody");
      body.replaceChildren(...data.approvals.map(approvalRow));
      $("#pending-count").textContent = String(data.approvals.length);
      $("#approvals-empty").hidden = data.approvals.length > 0;
      $("#approvals-error").textContent = "";
    } catch (e) {
      $("#approvals-error").textContent = "Could not load approvals: " + e.message;
    }
  }

  $("#approvals").addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-action]");
    if (!b) return;
    const row = b.closest("tr");
    const comment = row.querySelector("input").value || undefined;
    row.querySelectorAll("button").forEach((x) => { x.disabled = true; });
    try {
      await api("POST", "/api/approvals/" + encodeURIComponent(b.dataset.id) + "/" + b.dataset.action,
                { comment });
      row.remove();
      $("#approvals-error").textContent = "";
    } catch (e) {
      $("#approvals-error").textContent = b.dataset.action + " " + b.dataset.id + ": " + e.message;
    }
    loadApprovals();
  });

  $("#kill-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const form = new FormData(ev.target);
    const body = { scope: form.get("scope") };
    if (body.scope !== "global") body.name = form.get("name");
    if (form.get("comment")) body.comment = form.get("comment");
    try {
      const data = await api("POST", "/api/kill-switch", body);
      if (data.warning) window.sessionStorage.setItem("kill-warning", data.warning);
      window.location.reload();
    } catch (e) {
      $("#kill-error").textContent = "Kill switch: " + e.message;
    }
  });

  $("#switch-list").addEventListener("click", async (ev) => {
    const b = ev.target.closest("button.off");
    if (!b) return;
    const li = b.closest("li");
    const params = new URLSearchParams({ scope: li.dataset.scope });
    if (li.dataset.name) params.set("name", li.dataset.name);
    b.disabled = true;
    try {
      await api("DELETE", "/api/kill-switch?" + params.toString());
      window.location.reload();
    } catch (e) {
      b.disabled = false;
      $("#kill-error").textContent = "Kill switch: " + e.message;
    }
  });

  const warning = window.sessionStorage.getItem("kill-warning");
  if (warning) {
    $("#kill-error").textContent = warning;
    window.sessionStorage.removeItem("kill-warning");
  }

  function decisionRow(d) {
    const tr = document.createElement("tr");
    tr.append(cell(d.ts ? d.ts.replace("T", " ").slice(0, 19) : when(d.ts_ns)), cell(d.principal),
              cell(d.server), cell(d.method), cell(d.tool || d.uri || d.prompt),
              cell(d.decision, "d-" + d.decision), cell(d.rule), cell(d.reason));
    return tr;
  }

  function addDecision(d) {
    const body = $("#decisions tbody");
    body.insertBefore(decisionRow(d), body.firstChild);
    while (body.children.length > 100) body.removeChild(body.lastChild);
  }

  function connect() {
    const source = new EventSource("/api/events");
    const live = $("#live");
    source.addEventListener("hello", () => { live.textContent = "live"; live.className = "live on"; loadApprovals(); });
    source.addEventListener("decision", (ev) => {
      const d = JSON.parse(ev.data);
      addDecision(d);
      if (d.decision === "pending" || d.decision === "approved" || d.decision === "rejected") loadApprovals();
    });
    for (const name of ["approvals", "approval", "dropped"]) source.addEventListener(name, loadApprovals);
    source.addEventListener("kill_switch", () => window.location.reload());
    source.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
  }

  $("#search").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const params = new URLSearchParams();
    for (const [k, v] of new FormData(ev.target)) if (v) params.set(k, v);
    const status = $("#search-status");
    status.textContent = "searching…";
    try {
      const data = await api("GET", "/api/audit/search?" + params.toString());
      $("#results tbody").replaceChildren(...data.calls.map((c) => {
        const tr = document.createElement("tr");
        tr.append(cell(c.ts), cell(c.principal), cell(c.server), cell(c.tool || c.uri || c.method),
                  pre(c.arguments), cell(c.decision, "d-" + c.decision), cell(c.status));
        return tr;
      }));
      status.textContent = data.calls.length + " call(s)";
    } catch (e) {
      status.textContent = "Search failed: " + e.message;
    }
  });

  // The policy page: every tool of every server, its state, switchable by an admin.
  const STATE_LABELS = { allow: "allow", deny: "deny", hide: "hide",
                         require_approval: "require approval", default: "default (unlisted)",
                         custom: "custom" };
  let policyView = null;

  function stateSelect(server, t, states, editable) {
    const select = document.createElement("select");
    select.setAttribute("aria-label", "state of " + t.tool + " on " + server.name);
    select.dataset.server = server.name;
    select.dataset.tool = t.tool;
    select.dataset.was = t.state;
    const options = t.state === "custom" ? ["custom", ...states] : states;
    for (const s of options) {
      const o = document.createElement("option");
      o.value = s;
      o.textContent = STATE_LABELS[s] || s;
      if (s === "custom") o.disabled = true;
      if (s === t.state) o.selected = true;
      select.appendChild(o);
    }
    select.disabled = !editable;
    return select;
  }

  function policyTable(server, states, mayChange) {
    const wrap = document.createElement("div");
    wrap.className = "policy-server";
    wrap.dataset.server = server.name;
    const h = document.createElement("h3");
    h.textContent = server.name;
    wrap.appendChild(h);
    const note = document.createElement("p");
    note.className = "empty";
    if (server.read_only) note.textContent = "Read-only: " + server.read_only;
    else if (!mayChange) note.textContent = "Read-only: you are a viewer. Edits go to " + server.file + ".";
    else note.textContent = "Edits go to " + server.file + (server.applies_to === "fleet"
      ? " (the fleet-wide file: every server without its own policy reads it)." : ".");
    wrap.appendChild(note);
    const table = document.createElement("table");
    table.className = "policy";
    const head = document.createElement("thead");
    const hr = document.createElement("tr");
    for (const t of ["tool", "state", "a plain call", "rule", "rules and limits", "offered"]) {
      const th = document.createElement("th");
      th.textContent = t;
      hr.appendChild(th);
    }
    head.appendChild(hr);
    const body = document.createElement("tbody");
    const editable = mayChange && !server.read_only;
    for (const t of server.tools) {
      const tr = document.createElement("tr");
      tr.dataset.tool = t.tool;
      tr.className = "state-" + t.state;
      const stateTd = document.createElement("td");
      stateTd.appendChild(stateSelect(server, t, states, editable));
      tr.append(cell(t.tool), stateTd, cell(t.effective, "d-" + t.effective), cell(t.rule),
                pre(t.details.length ? t.details.join("\n") : ""), cell(t.seen ? "yes" : ""));
      body.appendChild(tr);
    }
    table.append(head, body);
    wrap.appendChild(table);
    if (!server.tools.length) {
      const empty = document.createElement("p");
      empty.className = "empty";
      empty.textContent = "No tool known yet: none named by the policy, none offered or called.";
      wrap.appendChild(empty);
    }
    return wrap;
  }

  async function loadPolicy(message) {
    const status = $("#policy-status");
    try {
      policyView = await api("GET", "/api/policy");
      $("#policy-servers").replaceChildren(...policyView.servers.map(
        (s) => policyTable(s, policyView.states, policyView.may_change)));
      status.textContent = policyView.servers.length ? (message || "") : "No server is configured.";
    } catch (e) {
      status.textContent = "Could not load the policy: " + e.message;
    }
  }

  $("#policy-servers").addEventListener("change", async (ev) => {
    const select = ev.target.closest("select[data-tool]");
    if (!select || !policyView) return;
    const server = policyView.servers.find((s) => s.name === select.dataset.server);
    const body = { server: select.dataset.server, tool: select.dataset.tool,
                   state: select.value, sha256: server ? server.sha256 : undefined };
    if (select.dataset.was === "custom") {
      if (!window.confirm("Replace the rules and limits of " + body.tool + " with '" +
                          select.value + "'? A backup of the file is kept.")) {
        select.value = "custom";
        return;
      }
      body.replace_custom = true;
    }
    select.disabled = true;
    let message = "";
    try {
      const change = await api("POST", "/api/policy/tools", body);
      $("#policy-error").textContent = "";
      message = body.tool + " on " + body.server + ": " + change.from + " -> " + change.to +
        " (saved; backup " + change.backup + ")";
    } catch (e) {
      $("#policy-error").textContent = "Policy: " + body.tool + ": " + e.message;
    }
    await loadPolicy(message);
  });

  $("#logout").addEventListener("click", async () => {
    await fetch("/logout", { method: "POST", headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" });
    window.location.href = "/";
  });

  connect();
  loadPolicy();
})();
