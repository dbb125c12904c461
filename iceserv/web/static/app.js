// iceserv web view: renders the scheduler's event stream (/events).  No framework, no build.
"use strict";
(() => {
  const MAX_SPAN = 300;        // timeline seconds at most (it starts at one minute)
  const STALE = 40000;         // ms without any event before reconnecting (heartbeat is 15 s)
  const $ = (id) => document.getElementById(id);
  const root = document.documentElement;
  const params = new URLSearchParams(location.search);
  const state = { hosts: new Map(), order: [], queue: [], queued: 0, running: 0, totals: {},
                  timeline: [], skew: 0, netname: "", uptime: 0, uptimeAt: 0 };
  const seenJobs = new Set();
  let source = null, lastEvent = 0, retry = null, dirty = false;

  // --- theme --------------------------------------------------------------------------
  function applyTheme(theme) {
    root.dataset.theme = theme;
    try { localStorage.setItem("iceserv-theme", theme); } catch (e) { /* private mode */ }
  }
  let theme = params.get("theme");
  if (!theme) { try { theme = localStorage.getItem("iceserv-theme"); } catch (e) { theme = null; } }
  if (!theme) theme = matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  applyTheme(theme);
  $("theme").addEventListener("click", () => { applyTheme(root.dataset.theme === "dark" ? "light" : "dark"); drawTimeline(); });

  // --- helpers ------------------------------------------------------------------------
  const now = () => Date.now() / 1000 + state.skew;     // the scheduler's clock
  const hue = (text) => { let h = 0; for (const c of text) h = (h * 31 + c.charCodeAt(0)) >>> 0; return h % 360; };
  const colour = (text, alpha = 1) => `hsla(${hue(text)}, 62%, ${root.dataset.theme === "dark" ? 62 : 50}%, ${alpha})`;
  function secs(s) {
    if (s < 10) return s.toFixed(1) + " s";
    if (s < 90) return Math.round(s) + " s";
    const m = Math.floor(s / 60); return `${m}m ${String(Math.round(s % 60)).padStart(2, "0")}s`;
  }
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v; else if (k === "style") node.style.cssText = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v); else node[k] = v;
    }
    for (const c of children) node.append(c);
    return node;
  }
  function base(path) { const i = path.lastIndexOf("/"); return i < 0 ? path : path.slice(i + 1); }

  // --- state updates ------------------------------------------------------------------
  function takeSnapshot(data) {
    state.skew = data.now - Date.now() / 1000;
    state.netname = data.netname; state.uptime = data.uptime; state.uptimeAt = Date.now();
    state.hosts = new Map(data.hosts.map((h) => [h.name, h]));
    state.order = data.hosts.map((h) => h.name);
    state.queue = data.queue; state.queued = data.queued; state.running = data.running;
    state.totals = data.totals;
  }
  function jobStarted(job) {
    const host = state.hosts.get(job.server);
    if (!host) return;
    host.jobs = host.jobs.filter((j) => j.id !== job.id);
    host.jobs.push(job);
    host.used = Math.max(host.used, host.jobs.length);
    state.queue = state.queue.filter((j) => j.id !== job.id);
  }
  function jobFinished(job) {
    for (const host of state.hosts.values()) {
      const before = host.jobs.length;
      host.jobs = host.jobs.filter((j) => j.id !== job.id);
      if (host.jobs.length !== before) host.used = Math.max(0, host.used - 1);
    }
    state.queue = state.queue.filter((j) => j.id !== job.id);
    if (job.started_at != null && job.server !== "<unknown>") {
      state.timeline.push({ id: job.id, host: job.server, file: job.file, submitter: job.submitter,
                            start: job.started_at, end: job.now, exitcode: job.exitcode });
    }
  }
  function hostLeft(name) {
    state.hosts.delete(name);
    state.order = state.order.filter((n) => n !== name);
  }

  // --- rendering ----------------------------------------------------------------------
  function renderTotals() {
    const hosts = [...state.hosts.values()];
    const total = hosts.reduce((a, h) => a + h.max_jobs, 0), used = hosts.reduce((a, h) => a + h.used, 0);
    $("netname").textContent = state.netname ? "· " + state.netname : "";
    $("t-hosts").textContent = hosts.length;
    $("t-slots").textContent = `${used} / ${total}`;
    $("t-slots-bar").style.width = total ? `${Math.min(100, (100 * used) / total)}%` : "0";
    $("t-running").textContent = hosts.reduce((a, h) => a + h.jobs.length, 0);
    $("t-queued").textContent = state.queued;
    const t = state.totals;
    $("t-rate").textContent = t.jobs_per_second != null ? t.jobs_per_second.toFixed(1) : "–";
    $("t-local").textContent = t.local_share != null ? `${(100 * t.local_share).toFixed(1)} %` : "–";
    $("t-wait").textContent = t.mean_wait != null ? `${(1000 * t.mean_wait).toFixed(0)} ms` : "–";
  }
  function renderHost(host) {
    const badges = [];
    if (host.blocked) badges.push(el("span", { class: "badge bad" }, "blocked"));
    if (host.draining) badges.push(el("span", { class: "badge warn" }, "draining"));
    if (host.no_remote) badges.push(el("span", { class: "badge" }, "no remote"));
    // Issue 14: what the host proved before LOGIN ("off": nobody is asked, nothing shown).
    if (host.auth === "authenticated") badges.push(el("span", { class: "badge", "data-auth": host.auth, title: "proved the network key" }, "key"));
    if (host.auth === "unauthenticated") badges.push(el("span", { class: "badge warn", "data-auth": host.auth, title: "did not prove the network key (icecream 1.4 or no key): never given another host's job" }, "unauthenticated"));
    const slots = el("div", { class: "slots", title: `${host.used} of ${host.max_jobs} slots busy` });
    const compiling = host.jobs.filter((j) => j.state === "COMP").length;
    for (let i = 0; i < Math.max(host.max_jobs, host.used); i++) {
      slots.append(el("i", { class: i < compiling ? "on" : i < host.used ? "wait" : "" }));
    }
    const loadPct = Math.min(100, host.load / 10);
    const jobs = el("ul", { class: "jobs" });
    if (!host.jobs.length) jobs.append(el("li", { class: "idle" }, host.no_remote ? "takes no remote jobs" : "idle"));
    for (const job of [...host.jobs].sort((a, b) => a.id - b.id)) {
      const fresh = !seenJobs.has(job.id); seenJobs.add(job.id);
      const started = job.started_at ?? job.queued_at ?? now();
      jobs.append(el("li", { class: fresh ? "new" : "", "data-job": String(job.id), "data-started": String(job.started_at ?? ""), title: job.file },
        el("span", { class: "dot", style: `background:${colour(job.submitter)}` }),
        el("span", { class: "file" }, base(job.file)),
        el("span", { class: "who" }, job.submitter),
        el("span", { class: "time", "data-since": String(started) }, secs(Math.max(0, now() - started)))));
    }
    return el("article", { class: "host" + (host.blocked ? " blocked" : ""), "data-host": host.name },
      el("div", { class: "host-head" }, el("span", { class: "host-name" }, host.name), ...badges,
         el("span", { class: "host-sub" }, `${host.ip} · ${host.platform}`)),
      slots,
      el("div", { class: "stats" },
        el("span", {}, el("b", {}, `${host.used}/${host.max_jobs}`), " slots"),
        el("span", {}, "speed ", el("b", {}, host.speed.toFixed(1))),
        el("span", { class: "load" }, "load", el("span", { class: "meter" }, el("i", { style: `width:${loadPct}%` })),
           el("b", {}, `${Math.round(loadPct)}%`))),
      jobs);
  }
  function render() {
    dirty = false;
    renderTotals();
    const hosts = $("hosts");
    const cards = state.order.filter((n) => state.hosts.has(n)).map((n) => renderHost(state.hosts.get(n)));
    if (cards.length) hosts.replaceChildren(...cards);
    else hosts.replaceChildren(el("p", { class: "empty" }, "No daemon connected."));
    const queue = $("queue");
    queue.replaceChildren(...state.queue.map((job) => el("li", { "data-queued": String(job.id), title: job.file },
      el("span", { class: "dot", style: `background:${colour(job.submitter)}` }),
      el("span", { class: "file" }, base(job.file)), el("span", { class: "muted" }, job.submitter))));
    $("queue-count").textContent = state.queued;
    $("queue-empty").hidden = state.queued > 0;
    drawTimeline();
  }
  function schedule() { if (!dirty) { dirty = true; requestAnimationFrame(render); } }

  function drawTimeline() {
    const canvas = $("timeline");
    const style = getComputedStyle(root);
    const names = state.order.filter((n) => state.hosts.has(n));
    for (const job of state.timeline) if (!names.includes(job.host)) names.push(job.host);
    const lane = 26, pad = 6, left = 130;
    const cssWidth = canvas.clientWidth || 800, cssHeight = Math.max(120, names.length * lane + 28);
    const dpr = window.devicePixelRatio || 1;
    canvas.style.height = cssHeight + "px";
    canvas.width = Math.round(cssWidth * dpr); canvas.height = Math.round(cssHeight * dpr);
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, cssWidth, cssHeight);
    const t1 = now();
    const oldest = state.timeline.reduce((a, j) => Math.min(a, j.start), t1);
    const SPAN = Math.min(MAX_SPAN, Math.max(60, Math.ceil((t1 - oldest + 5) / 60) * 60));
    const step = SPAN <= 60 ? 10 : SPAN <= 180 ? 30 : 60;
    $("tl-span").textContent = SPAN === 60 ? "minute" : `${SPAN / 60} minutes`;
    const t0 = t1 - SPAN, width = cssWidth - left - 8;
    const x = (t) => left + ((Math.max(t0, t) - t0) / SPAN) * width;
    g.font = `12px ${style.fontFamily}`;
    g.textBaseline = "middle";
    g.strokeStyle = style.getPropertyValue("--line"); g.fillStyle = style.getPropertyValue("--muted");
    for (let s = 0; s <= SPAN; s += step) {
      const gx = x(t0 + s), ago = SPAN - s;
      g.beginPath(); g.moveTo(gx, 0); g.lineTo(gx, cssHeight - 18); g.stroke();
      const label = ago === 0 ? "now" : ago % 60 === 0 ? `-${ago / 60}m` : `-${ago}s`;
      g.fillText(label, gx - (ago === 0 ? 22 : 12), cssHeight - 8);
    }
    names.forEach((name, i) => {
      const y = i * lane + pad;
      g.fillStyle = style.getPropertyValue("--ink");
      g.fillText(name.length > 16 ? name.slice(0, 15) + "…" : name, 4, y + lane / 2 - 2);
      const bars = state.timeline.filter((j) => j.host === name && j.end >= t0);
      const host = state.hosts.get(name);
      if (host) for (const j of host.jobs) if (j.started_at != null) bars.push({ ...j, start: j.started_at, end: t1, live: true });
      for (const j of bars) {
        const bx = x(j.start), bw = Math.max(2, x(j.end) - bx);
        g.fillStyle = j.exitcode ? style.getPropertyValue("--bad") : colour(j.submitter, j.live ? 1 : 0.55 + 0.15 * (j.id % 3));
        g.fillRect(bx, y + 3, bw, lane - 10);
        if (j.live) { g.fillStyle = style.getPropertyValue("--ink"); g.fillRect(bx + bw - 2, y + 3, 2, lane - 10); }
      }
    });
    state.timeline = state.timeline.filter((j) => j.end >= t0);
    document.body.dataset.timeline = String(state.timeline.length);
  }

  // --- the event stream ---------------------------------------------------------------
  function setConn(kind, text) { $("conn").dataset.state = kind; $("conn-text").textContent = text; }
  function on(name, handler) {
    source.addEventListener(name, (ev) => { lastEvent = Date.now(); handler(JSON.parse(ev.data)); schedule(); });
  }
  function connect() {
    clearTimeout(retry); retry = null;
    if (source) source.close();
    source = new EventSource("/events");
    lastEvent = Date.now();
    source.onopen = () => { lastEvent = Date.now(); setConn("live", "live"); };
    source.onmessage = () => { lastEvent = Date.now(); };
    source.onerror = () => {
      setConn("down", "reconnecting");
      if (source.readyState === EventSource.CLOSED && retry === null) retry = setTimeout(connect, 1000);
    };
    on("hello", (data) => {
      takeSnapshot(data); state.timeline = data.timeline; setConn("live", "live");
      document.body.dataset.hellos = String(Number(document.body.dataset.hellos || 0) + 1);
    });
    on("snapshot", takeSnapshot);
    on("job_started", jobStarted);
    on("job_finished", jobFinished);
    on("host_left", (data) => hostLeft(data.name));
    on("host_joined", () => {});
  }
  setInterval(() => {
    if (Date.now() - lastEvent > STALE) { setConn("down", "reconnecting"); connect(); }
    for (const span of document.querySelectorAll("[data-since]")) {
      span.textContent = secs(Math.max(0, now() - Number(span.dataset.since)));
    }
    const up = state.uptime + (Date.now() - state.uptimeAt) / 1000;
    $("uptime").textContent = state.uptimeAt ? `up ${secs(up)}` : "";
    drawTimeline();
  }, 1000);
  window.addEventListener("resize", drawTimeline);
  connect();
})();
