"use strict";
// The dashboard: one EventSource on /api/v1/events delivers a snapshot of the store whenever
// it changes; the job page reads /api/v1/dashboard/jobs/ID when shown, and offers the verbs the
// master says apply to the job now (its "actions"), sent to POST /api/v1/jobs/ID/VERB. The
// operator sees everything; a scientist their own jobs only (the master cuts the data down).
(function () {
  const $ = (s) => document.querySelector(s);
  const STATES = ["done", "running", "ready", "suspended", "failed", "cancelled"];
  const PAGE_SIZE = 50;
  let snap = null;
  let plots = {};
  let viewer = null; // who is signed in: {role, name}
  const SESSION_HEADER = { "X-Dockercomp-Session": "1" }; // lets the session cookie authorise a job control

  const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const bytes = (n) => {
    if (n == null) return "–";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(n < 10 ? 1 : 0) : n) + " " + u[i];
  };
  const dur = (s) => {
    if (s == null) return "–";
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  };
  const ago = (t) => (t ? dur(snap.now - t) + " ago" : "–");
  const time = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "–");

  function route() {
    if (!$("#signin").hidden) return;
    const hash = location.hash || "#/";
    const m = hash.match(/^#\/jobs\/(.+)$/);
    const clients = hash === "#/clients" && viewer && viewer.role === "operator";
    const page = m ? "job" : clients ? "clients" : hash === "#/jobs" ? "jobs" : "overview";
    document.querySelectorAll(".page").forEach((el) => (el.hidden = el.id !== "page-" + page));
    document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === (page === "job" ? "jobs" : page)));
    document.body.dataset.page = page;
    if (m) openJob(decodeURIComponent(m[1]));
    render();
  }

  function render() {
    if (!snap) return;
    const page = document.body.dataset.page;
    if (page === "overview") renderOverview();
    if (page === "clients") renderClients();
    if (page === "jobs") renderJobs();
    if (page === "job" && currentJob) loadJob(currentJob);
  }

  function renderOverview() {
    const o = snap.overview;
    const cards = [
      ["clients-online", "clients online", o.clients_online],
      ["clients-offline", "clients offline", o.clients_offline],
      ["slots", "slots donated", o.slots],
      ["busy", "slots busy", o.busy],
      ["containers", "containers running", o.containers],
      ...STATES.map((s) => ["units-" + s, "units " + s, o.units[s] || 0]),
      ["per-minute", "units completed / min", o.completed_per_minute],
      ["integrity", "integrity errors (1h)", o.integrity_errors_hour],
      ["invalid", "invalid results (1h)", o.invalid_results_hour],
      ["errors", "errors (1h)", o.errors_hour],
    ];
    $("#cards").innerHTML = cards.map(([id, k, v]) => `<div class="card" id="card-${id}"><div class="v">${esc(v)}</div><div class="k">${esc(k)}</div></div>`).join("");
    plot("completed", "#plot-completed", "completed", "#1f8f4e");
    plot("clients", "#plot-clients", "active_clients", "#4aa3ff");
  }

  function plot(name, sel, key, color) {
    const data = [snap.series.t, snap.series[key]];
    if (plots[name]) { plots[name].setData(data); return; }
    plots[name] = new uPlot({
      width: 520, height: 220,
      scales: { x: { time: true } },
      axes: [{}, { size: 40 }],
      series: [{}, { label: key.replace("_", " "), stroke: color, fill: color + "33", width: 2 }],
    }, data, $(sel));
  }

  // The clients are the master's to page, sort and filter (10,000 of them would not fit in
  // every update): the view goes into the events URL, and a change reconnects with the new one.
  const DEFAULT_VIEW = { offset: 0, limit: PAGE_SIZE, sort: "name", order: "asc", state: "all", q: "", expand: [] };
  const view = { ...DEFAULT_VIEW, expand: [] };
  const eventsUrl = () => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(view)) {
      const s = Array.isArray(v) ? v.join(",") : String(v);
      if (s !== (Array.isArray(DEFAULT_VIEW[k]) ? DEFAULT_VIEW[k].join(",") : String(DEFAULT_VIEW[k]))) q.set(k, s);
    }
    return "/api/v1/events" + (q.toString() ? "?" + q : "");
  };
  const changeView = (changes) => { Object.assign(view, changes); if (source) { source.close(); connect(); } };

  // A patch (server/dashboard.py's diff): "set" top-level keys, "unset" gone ones, and for the
  // lists of rows with an id, "rows" new or changed and "order" the ids when that changed.
  const KEYED = ["clients", "jobs"];
  function applyPatch(old, patch) {
    const next = {};
    for (const k of Object.keys(old)) if (!(patch.unset || []).includes(k)) next[k] = old[k];
    Object.assign(next, patch.set || {});
    for (const k of KEYED) {
      if (!patch[k]) continue;
      const rows = new Map((old[k] || []).map((r) => [r.id, r]));
      for (const r of patch[k].rows || []) rows.set(r.id, r);
      const order = patch[k].order || (old[k] || []).map((r) => r.id);
      next[k] = order.map((id) => rows.get(id));
    }
    return next;
  }

  const STATE_NAMES = { online: "online", offline: "offline" };
  function containerRows(c) {
    if (!c.containers) return `<tr class="containers-row"><td colspan="9" class="muted">loading its containers…</td></tr>`;
    const rows = c.containers.length
      ? c.containers.map((k) => `<tr class="container" data-container="${esc(k.container)}"><td>${esc(k.container) || "–"}</td><td>job ${esc(k.job)}<br>unit ${esc(k.unit)}</td><td class="image">${esc(k.image)}</td><td class="cstate">${esc(k.state)}</td><td class="limits">${esc(k.cpus)} cpu / ${bytes(k.memory)}</td><td class="use"><span class="cpu">${k.cpu_percent == null ? "–" : k.cpu_percent.toFixed(1) + "%"}</span> / <span class="mem">${bytes(k.memory_usage)}</span></td><td>${k.started_at ? dur(snap.now - k.started_at) : "–"}</td></tr>`).join("")
      : `<tr><td colspan="7" class="muted">no container runs on it</td></tr>`;
    return `<tr class="containers-row" data-client="${esc(c.id)}"><td colspan="9"><table class="containers"><thead><tr><th>Container</th><th>Job / unit</th><th>Image</th><th>State</th><th>Limits</th><th>CPU / memory used</th><th>Running</th></tr></thead><tbody>${rows}</tbody></table></td></tr>`;
  }

  let drawn = false;
  function renderClients() {
    const pages = Math.max(1, Math.ceil(snap.total / view.limit));
    const pageNo = Math.floor(view.offset / view.limit);
    if (snap.total && !snap.clients.length && view.offset) { changeView({ offset: (pages - 1) * view.limit }); return; }
    $("#client-count").textContent = snap.total + " client(s)";
    $("#page-no").textContent = `page ${pageNo + 1} / ${pages}`;
    $("#prev").disabled = pageNo === 0;
    $("#next").disabled = pageNo >= pages - 1;
    document.querySelectorAll("#clients th[data-sort]").forEach((th) => {
      th.classList.toggle("sorted", th.dataset.sort === view.sort);
      th.classList.toggle("desc", th.dataset.sort === view.sort && view.order === "desc");
    });
    $("#clients > tbody").innerHTML = snap.clients.map((c) => {
      const h = c.host || {};
      const open = view.expand.includes(c.id);
      return `<tr class="client${open ? " open" : ""}" data-client="${esc(c.id)}" data-name="${esc(c.name)}" title="click to ${open ? "close" : "show its containers"}">
        <td><b>${esc(c.name)}</b><br><span class="muted">${esc(c.id)}</span></td>
        <td class="state ${c.online ? "online" : "offline"}">${STATE_NAMES[c.online ? "online" : "offline"]}${c.quarantined ? `<br><span class="quarantined" title="${esc(c.quarantined)}">quarantined</span>` : ""}${c.trusted ? `<br><span class="trusted" title="decides units of adaptive jobs alone (spot-checked)">trusted</span>` : ""}</td>
        <td>${esc(h.cores)} cores, ${bytes(h.memory)}<br>${esc(h.os)} ${esc(h.arch)}, Docker ${esc(h.docker)}</td>
        <td>${ago(c.last_seen)}</td><td>${(c.reliability * 100).toFixed(1)}%</td>
        <td>${c.valid}</td><td>${c.errors}${c.invalid ? ` <span class="muted">(${c.invalid} invalid)</span>` : ""}</td>
        <td>${c.busy} / ${c.slots}</td><td class="running"><span class="toggle">${open ? "▾" : "▸"}</span> ${c.running}</td></tr>${open ? containerRows(c) : ""}`;
    }).join("");
    if (!drawn && snap.clients.length) { drawn = true; performance.mark("clients-drawn"); }
  }

  function bar(counts, total) {
    return `<div class="bar">${STATES.map((s) => (counts[s] ? `<span class="s-${s}" title="${s}: ${counts[s]}" style="width:${(100 * counts[s]) / Math.max(total, 1)}%"></span>` : "")).join("")}</div>`;
  }

  function renderJobs() {
    $("#jobs tbody").innerHTML = snap.jobs.map((j) => {
      const total = STATES.reduce((n, s) => n + (j.counts[s] || 0), 0);
      return `<tr class="job" data-job="${esc(j.id)}"><td><a href="#/jobs/${encodeURIComponent(j.id)}">${esc(j.name)}</a><br><span class="muted">${esc(j.id)}</span></td>
        <td>${esc(j.state)}</td><td>${bar(j.counts, total)}</td>
        <td class="counts">${STATES.filter((s) => j.counts[s]).map((s) => `${s} ${j.counts[s]}`).join(", ")}</td>
        <td>${j.per_minute} / min</td><td>${j.eta == null ? "–" : dur(j.eta)}</td></tr>`;
    }).join("");
  }

  let currentJob = null;
  let job = null; // the job page's job, as the master last described it
  let jobLoading = false;
  let jobAgain = false; // asked to load while loading: load once more when done
  let confirming = false; // the cancel button asked "are you sure?"
  let acting = false; // a control request is on its way
  let actionsHtml = "";

  function openJob(id) {
    if (id !== currentJob) {
      job = null;
      confirming = false;
      $("#job-error").textContent = "";
      $("#job-actions").innerHTML = actionsHtml = "";
      $("#job-states").hidden = true;
    }
    loadJob(id);
  }

  async function loadJob(id) {
    currentJob = id;
    if (jobLoading) { jobAgain = true; return; }
    jobLoading = true;
    try {
      const r = await fetch(`/api/v1/dashboard/jobs/${encodeURIComponent(id)}`);
      const d = await r.json();
      if (id !== currentJob) return;
      if (!r.ok) {
        job = null;
        $("#job-title").textContent = d.error || "no such job";
        $("#job-states").hidden = true;
        $("#job-actions").innerHTML = actionsHtml = "";
        $("#job-summary").innerHTML = "";
        $("#units tbody").innerHTML = "";
        return;
      }
      const j = (job = d.job);
      const total = STATES.reduce((n, s) => n + (j.counts[s] || 0), 0);
      $("#job-title").textContent = `${j.name} (${j.id})`;
      $("#job-states").hidden = false;
      $("#job-state").textContent = j.state;
      $("#job-drmaa2").textContent = j.drmaa2;
      $("#job-owner").textContent = j.owner;
      renderActions();
      $("#job-summary").innerHTML = bar(j.counts, total) + `<p>${STATES.filter((s) => j.counts[s]).map((s) => `${s} ${j.counts[s]}`).join(", ")}</p>`;
      $("#units tbody").innerHTML = d.units.map((u) => `<tr class="unit"><td>${u.index}</td><td>${esc(u.kind)}</td><td>${esc(u.state)}</td><td>${u.attempts}</td>
        <td>${u.history.map((a) => `${esc(a.client)} <span class="muted">${esc(a.state)}${a.validity ? " " + esc(a.validity) : ""}</span>`).join("<br>")}</td>
        <td>${time(u.first_leased)}</td><td>${time(u.last_finished)}</td><td>${u.runtime == null ? "–" : u.runtime.toFixed(1) + "s"}</td></tr>`).join("");
    } catch (e) {
      $("#job-error").textContent = `cannot read the job: ${e.message}`;
    } finally {
      jobLoading = false;
      if (jobAgain) { jobAgain = false; loadJob(currentJob); }
    }
  }

  // Exactly the verbs the master lists for the job now (it has the rules, server/lifecycle.py);
  // it shows them only to those who can see the job: the operator and the job's owner.
  const LABELS = { suspend: "Suspend", resume: "Resume", hold: "Hold", release: "Release", cancel: "Cancel" };
  function renderActions() {
    const verbs = job ? job.actions : [];
    if (confirming && !verbs.includes("cancel")) confirming = false;
    const buttons = verbs.map((v) => `<button type="button" class="verb${v === "cancel" ? " danger" : ""}" data-verb="${esc(v)}"${acting || confirming ? " disabled" : ""}>${esc(LABELS[v] || v)}</button>`).join("");
    const confirm = confirming
      ? `<span id="job-confirm" class="confirm">Cancel this job? Its running containers are stopped; what finished stays downloadable.
          <button type="button" class="danger" data-confirm="yes"${acting ? " disabled" : ""}>Yes, cancel it</button>
          <button type="button" data-confirm="no"${acting ? " disabled" : ""}>No, keep it</button></span>`
      : "";
    const html = buttons + confirm;
    if (html !== actionsHtml) $("#job-actions").innerHTML = actionsHtml = html; // a feed update leaves them be
  }

  async function control(verb) {
    const id = currentJob;
    acting = true;
    renderActions();
    $("#job-error").textContent = "";
    try {
      const r = await fetch(`/api/v1/jobs/${encodeURIComponent(id)}/${verb}`, { method: "POST", headers: SESSION_HEADER });
      const d = await r.json().catch(() => ({}));
      if (!r.ok) $("#job-error").textContent = d.error || `${verb} failed (HTTP ${r.status})`;
    } catch (e) {
      $("#job-error").textContent = `${verb} failed: ${e.message}`;
    } finally {
      acting = false;
      confirming = false;
      if (id === currentJob) loadJob(id); // the feed follows within a second too
    }
  }

  $("#job-actions").addEventListener("click", (e) => {
    const button = e.target.closest("button");
    if (!button || button.disabled) return;
    if (button.dataset.verb === "cancel") { confirming = true; renderActions(); return; }
    if (button.dataset.verb) { control(button.dataset.verb); return; }
    if (button.dataset.confirm === "yes") control("cancel");
    if (button.dataset.confirm === "no") { confirming = false; renderActions(); }
  });

  // The operator or a scientist signs in once: the token goes to /api/v1/session as a bearer
  // token and comes back as an HttpOnly cookie, which the event stream and the page's requests
  // then carry (a job control also sends X-Dockercomp-Session, without which the cookie only reads).
  function showSignIn(message) {
    $("#signin").hidden = false;
    $("#signout").hidden = true;
    document.querySelectorAll("main > .page").forEach((p) => (p.hidden = true));
    $("#signin-error").textContent = message || "";
    $("#viewer").textContent = "";
    $("#conn").textContent = "signed out";
    $("#conn").className = "conn off";
  }

  async function signedIn() {
    const r = await fetch("/api/v1/session");
    viewer = r.ok ? await r.json() : null;
    return r.ok;
  }

  function showViewer() {
    $("#viewer").textContent = `${viewer.name} (${viewer.role})`;
    const clients = document.querySelector('nav a[data-page="clients"]');
    clients.hidden = viewer.role !== "operator"; // the clients are the operator's to see
  }

  $("#signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const token = $("#token").value.trim();
    const r = await fetch("/api/v1/session", { method: "POST", headers: { Authorization: `Bearer ${token}` } });
    const d = await r.json().catch(() => ({}));
    if (!r.ok) { showSignIn(d.error || `sign-in failed (HTTP ${r.status})`); return; }
    $("#token").value = "";
    start();
  });

  $("#signout").addEventListener("click", async (e) => {
    e.preventDefault();
    await fetch("/api/v1/session", { method: "DELETE" });
    if (source) source.close();
    showSignIn("signed out");
  });

  let source = null;
  async function start() {
    if (!(await signedIn())) { showSignIn(); return; }
    $("#signin").hidden = true;
    $("#signout").hidden = false;
    showViewer();
    route();
    connect();
  }

  // What the stream brought, for whoever watches the page (the browser tests, the benchmark).
  const feed = { snapshots: 0, patches: 0, bytes: 0, maxBytes: 0, lastBytes: 0 };
  window.dockercomp = { snap: () => snap, view: () => ({ ...view }), apply: applyPatch, feed };
  function received(e, next) {
    const n = new Blob([e.data]).size;
    feed.bytes += n;
    feed.lastBytes = n;
    feed.maxBytes = Math.max(feed.maxBytes, n);
    snap = next;
    $("#conn").textContent = "live";
    $("#conn").className = "conn on";
    render();
  }

  function connect() {
    const me = (source = new EventSource(eventsUrl()));
    let whole = false; // a patch applies to this connection's snapshot only
    me.addEventListener("snapshot", (e) => { whole = true; feed.snapshots++; received(e, JSON.parse(e.data)); });
    me.addEventListener("patch", (e) => {
      if (!whole) return;
      feed.patches++;
      received(e, applyPatch(snap, JSON.parse(e.data)));
    });
    me.onerror = () => {
      if (me !== source) return;
      whole = false; // EventSource reconnects by itself: the master sends a snapshot first again
      $("#conn").textContent = "reconnecting…";
      $("#conn").className = "conn off";
      if (me.readyState === EventSource.CLOSED) {
        me.close();
        setTimeout(async () => ((await signedIn()) ? connect() : showSignIn("the token is no longer valid")), 1000);
      }
    };
  }

  const FIRST_ORDER = { name: "asc", state: "asc" }; // a header's first click: A to Z, online first; numbers highest first
  document.querySelectorAll("#clients th[data-sort]").forEach((th) => th.addEventListener("click", () => {
    const sort = th.dataset.sort;
    const order = sort === view.sort ? (view.order === "asc" ? "desc" : "asc") : FIRST_ORDER[sort] || "desc";
    changeView({ sort, order, offset: 0 });
  }));
  $("#client-state").addEventListener("change", () => changeView({ state: $("#client-state").value, offset: 0 }));
  let typing = null;
  $("#client-filter").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => changeView({ q: $("#client-filter").value.trim().slice(0, 64), offset: 0 }), 250);
  });
  $("#prev").addEventListener("click", () => changeView({ offset: Math.max(0, view.offset - view.limit) }));
  $("#next").addEventListener("click", () => changeView({ offset: view.offset + view.limit }));
  $("#clients > tbody").addEventListener("click", (e) => {
    const row = e.target.closest("tr.client");
    if (!row) return;
    const id = row.dataset.client;
    const open = view.expand.includes(id);
    const expand = open ? view.expand.filter((x) => x !== id) : [...view.expand, id].slice(-20);
    changeView({ expand });
    if (!open) renderClients(); // shows it opening until the master sends its containers
  });
  window.addEventListener("hashchange", route);
  start();
})();
