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
  let sortKey = "name";
  let pageNo = 0;
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

  function clientRows() {
    const state = $("#client-state").value;
    const filter = $("#client-filter").value.trim().toLowerCase();
    let rows = snap.clients.filter((c) => state === "all" || c.online === (state === "online"));
    if (filter) rows = rows.filter((c) => c.name.toLowerCase().includes(filter) || c.id.includes(filter));
    const num = { last_seen: 1, reliability: 1, valid: 1, errors: 1, busy: 1, online: 1 };
    rows.sort((a, b) => (num[sortKey] ? (b[sortKey] > a[sortKey] ? 1 : b[sortKey] < a[sortKey] ? -1 : 0) : a.name.localeCompare(b.name) || a.id.localeCompare(b.id)));
    return rows;
  }

  function renderClients() {
    const rows = clientRows();
    const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
    pageNo = Math.min(pageNo, pages - 1);
    $("#client-count").textContent = rows.length + " client(s)";
    $("#page-no").textContent = `page ${pageNo + 1} / ${pages}`;
    document.querySelectorAll("#clients th").forEach((th) => th.classList.toggle("sorted", th.dataset.sort === sortKey));
    $("#clients tbody").innerHTML = rows.slice(pageNo * PAGE_SIZE, (pageNo + 1) * PAGE_SIZE).map((c) => {
      const h = c.host || {};
      const containers = c.containers.length
        ? `<table class="containers">${c.containers.map((k) => `<tr class="container" data-container="${esc(k.container)}"><td>${esc(k.container)}</td><td>job ${esc(k.job)}</td><td>unit ${esc(k.unit)}</td><td>${esc(k.image)}</td><td class="limits">${esc(k.cpus)} cpu / ${bytes(k.memory)}</td><td class="use">${k.cpu_percent == null ? "–" : k.cpu_percent.toFixed(0) + "%"} / ${bytes(k.memory_usage)}</td><td>${k.started_at ? dur(snap.now - k.started_at) : "–"}</td></tr>`).join("")}</table>`
        : `<span class="muted">none</span>`;
      return `<tr class="client" data-client="${esc(c.id)}" data-name="${esc(c.name)}">
        <td><b>${esc(c.name)}</b><br><span class="muted">${esc(c.id)}</span></td>
        <td class="state ${c.online ? "online" : "offline"}">${c.online ? "online" : "offline"}${c.quarantined ? `<br><span class="quarantined" title="${esc(c.quarantined)}">quarantined</span>` : ""}${c.trusted ? `<br><span class="trusted" title="decides units of adaptive jobs alone (spot-checked)">trusted</span>` : ""}</td>
        <td>${esc(h.cores)} cores, ${bytes(h.memory)}<br>${esc(h.os)} ${esc(h.arch)}, Docker ${esc(h.docker)}</td>
        <td>${ago(c.last_seen)}</td><td>${(c.reliability * 100).toFixed(1)}%</td>
        <td>${c.valid}</td><td>${c.errors}${c.invalid ? ` <span class="muted">(${c.invalid} invalid)</span>` : ""}</td>
        <td>${c.busy} / ${c.slots}</td><td>${containers}</td></tr>`;
    }).join("");
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

  function connect() {
    source = new EventSource("/api/v1/events");
    source.addEventListener("snapshot", (e) => {
      snap = JSON.parse(e.data);
      $("#conn").textContent = "live";
      $("#conn").className = "conn on";
      render();
    });
    source.onerror = () => {
      $("#conn").textContent = "reconnecting…";
      $("#conn").className = "conn off";
      if (source.readyState === EventSource.CLOSED) {
        source.close();
        setTimeout(async () => ((await signedIn()) ? connect() : showSignIn("the token is no longer valid")), 1000);
      }
    };
  }

  document.querySelectorAll("#clients th[data-sort]").forEach((th) => th.addEventListener("click", () => { sortKey = th.dataset.sort; renderClients(); }));
  $("#client-state").addEventListener("change", () => { pageNo = 0; renderClients(); });
  $("#client-filter").addEventListener("input", () => { pageNo = 0; renderClients(); });
  $("#prev").addEventListener("click", () => { pageNo = Math.max(0, pageNo - 1); renderClients(); });
  $("#next").addEventListener("click", () => { pageNo++; renderClients(); });
  window.addEventListener("hashchange", route);
  start();
})();
