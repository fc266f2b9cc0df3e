"use strict";
// The live view of one run. State comes as a snapshot, then deltas over Server-Sent Events; every delta
// carries a whole object for one key, so a replayed delta changes nothing. Text from the server is only
// ever set as textContent (it can carry what a client sent).
(() => {
  const state = { run: {}, rounds: new Map(), clients: new Map(), notices: [], matrix: null };
  const $ = (id) => document.getElementById(id);
  let lastId = null, reconnects = 0, snapshots = 0, source = null, retryTimer = null, charts = null, clockOffset = 0;
  document.body.dataset.reconnects = "0"; // counters a test (or a curious operator) can read
  document.body.dataset.snapshots = "0";

  const pct = (x) => (x == null ? "–" : (100 * x).toFixed(2) + "%");
  const num = (x, d = 4) => (x == null ? "–" : Number(x).toFixed(d));
  const mb = (x) => (x == null ? "–" : (x / 1e6).toFixed(2));
  const dur = (s) => {
    if (s == null || !isFinite(s)) return "–";
    s = Math.max(0, Math.round(s));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return h ? `${h}h ${m}m` : m ? `${m}m ${r}s` : `${r}s`;
  };
  const cell = (tr, text, cls) => { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; tr.appendChild(td); return td; };

  // ------------------------------------------------------------------ applying what the server sends
  function apply(kind, data) {
    if (kind === "snapshot") {
      snapshots += 1; document.body.dataset.snapshots = String(snapshots);
      if (data.server_time) clockOffset = Date.now() / 1000 - data.server_time;
      state.run = data.run; state.rounds = new Map(data.rounds.map((r) => [r.round, r]));
      state.clients = new Map(data.clients.map((c) => [c.name, c])); state.notices = data.notices; state.matrix = data.matrix || null;
      renderAll();
    } else if (kind === "run") { state.run = data; renderRun(); }
    else if (kind === "round") {
      state.rounds.set(data.round, data); renderRound(data);
      const previous = state.rounds.get(data.round - 1); if (previous) renderRound(previous); // its model's federated evaluation came now
      renderRun(); renderCharts();
    }
    else if (kind === "client") { state.clients.set(data.name, data); renderClient(data); }
    else if (kind === "notice") { state.notices.push(data); if (state.notices.length > 50) state.notices.shift(); renderNotices(); }
    else if (kind === "matrix") { state.matrix = data; renderMatrix(); }
  }

  function connect() {
    clearTimeout(retryTimer);
    // A new EventSource (after an error closed the last one) cannot set Last-Event-ID itself: the query carries it.
    source = new EventSource(lastId == null ? "/events" : `/events?last=${lastId}`);
    for (const kind of ["snapshot", "run", "round", "client", "notice", "matrix"]) {
      source.addEventListener(kind, (e) => { lastId = e.lastEventId || lastId; apply(kind, JSON.parse(e.data)); });
    }
    source.onopen = () => setConn("live", "live");
    source.onerror = () => {
      reconnects += 1; document.body.dataset.reconnects = String(reconnects);
      if (source.readyState === EventSource.CLOSED) { // refused (401, 503) or the server is gone: try again later
        const over = ["completed", "stopped", "failed"].includes(state.run.status);
        setConn("down", over ? "server gone (the run is over)" : "disconnected, retrying");
        retryTimer = setTimeout(connect, over ? 15000 : 3000);
      } else setConn("down", "reconnecting");
    };
  }
  function setConn(cls, text) { const c = $("conn"); c.className = "conn " + cls; c.textContent = text; }

  // ------------------------------------------------------------------ rendering
  function renderAll() {
    renderRun();
    $("rounds").tBodies[0].replaceChildren(); for (const r of [...state.rounds.values()].sort((a, b) => a.round - b.round)) renderRound(r);
    $("clients").tBodies[0].replaceChildren(); for (const c of state.clients.values()) renderClient(c);
    renderNotices(); renderCharts(); renderMatrix();
  }

  // A cross-site evaluation: a row per model, a column per site, each cell that model's accuracy on that site's data.
  function renderMatrix() {
    const m = state.matrix;
    $("matrix-section").classList.toggle("hidden", !m);
    if (!m) return;
    $("matrix-job").textContent = m.job;
    const head = document.createElement("tr"); cell(head, "model"); for (const s of m.sites) cell(head, s, "num");
    $("matrix").tHead.replaceChildren(head);
    $("matrix").tBodies[0].replaceChildren(...m.models.map((model) => {
      const tr = document.createElement("tr"); tr.dataset.model = model; cell(tr, model);
      for (const s of m.sites) cell(tr, pct((m.accuracy[model] || {})[s]), "num");
      return tr;
    }));
  }

  function renderRun() {
    const run = state.run, status = run.status || "starting";
    document.title = `fedtl ${run.run_id || ""} · ${status}`;
    $("run-id").textContent = run.run_id ? `run ${run.run_id}` : "";
    const badge = $("status"); badge.textContent = status; badge.className = "badge " + status; badge.id = "status";
    $("message").textContent = run.message || (run.current ? `round ${run.current.round} open: ${run.current.selected} selected` : "");
    $("round").textContent = run.rounds ? `${run.completed || 0} / ${run.rounds}` : "–";
    $("round-sub").textContent = run.current ? roundProgress(run.current) : (run.resumed ? "resumed run" : "");
    $("connected").textContent = String(run.connected || 0);
    $("strategy").textContent = run.strategy || "";
    const rounds = [...state.rounds.values()].sort((a, b) => a.round - b.round), last = rounds[rounds.length - 1];
    const best = rounds.reduce((m, r) => (r.test_accuracy != null && (m == null || r.test_accuracy > m) ? r.test_accuracy : m), null);
    $("acc").textContent = last ? pct(last.test_accuracy) : "–";
    $("acc-sub").textContent = best != null ? `best ${pct(best)}` : "";
    $("elapsed").textContent = live(run) != null ? dur(live(run)) : last ? dur(last.elapsed) : "–";
    const up = rounds.reduce((s, r) => s + (r.bytes_up || 0), 0), down = rounds.reduce((s, r) => s + (r.bytes_down || 0), 0);
    $("bytes-total").textContent = rounds.length ? `${mb(down)} MB down, ${mb(up)} MB up` : "";
    const eps = last && (last.epsilon != null ? last.epsilon : last.record_epsilon);
    $("privacy-card").classList.toggle("hidden", eps == null);
    if (eps != null) { $("epsilon").textContent = num(eps, 3); $("epsilon-sub").textContent = last.epsilon != null ? "client-level" : "record-level (largest)"; }
    const files = $("files"); files.replaceChildren();
    const add = (k, v) => { if (!v) return; const dt = document.createElement("dt"), dd = document.createElement("dd"); dt.textContent = k; dd.textContent = v; files.append(dt, dd); };
    add("run folder", run.run_dir); add("round log", run.round_log);
    add("checkpoint", run.checkpoint ? `${run.checkpoint.path} (round ${run.checkpoint.round}, ${mb(run.checkpoint.bytes)} MB)` : "");
    add(status === "completed" ? "final model" : "final model (when done)", run.final_model); add("coordinator", run.address);
  }

  // Seconds since the run started, moving while it goes on (the round records only say it once a round ends: a first
  // round of client setup showed "0s" for a minute). The server's clock, shifted by the offset seen in its snapshot.
  const live = (run) => (run.started && (run.status === "running" || run.status === "waiting") ? Date.now() / 1000 - clockOffset - run.started : null);
  function roundProgress(cur) {
    const answered = [...state.clients.values()].filter((c) => c.selected === cur.round && c.status === "answered").length;
    const open = cur.opened ? ` for ${dur(Date.now() / 1000 - clockOffset - cur.opened)}` : "";
    return `round ${cur.round} in progress${open}: ${answered}/${cur.selected} answered` + (cur.attempt > 1 ? ` (attempt ${cur.attempt})` : "");
  }
  setInterval(() => { if (state.run && live(state.run) != null) renderRun(); }, 1000);

  function renderRound(r) {
    const body = $("rounds").tBodies[0];
    let tr = body.querySelector(`tr[data-round="${r.round}"]`);
    const fresh = !tr;
    if (fresh) { tr = document.createElement("tr"); tr.dataset.round = String(r.round); }
    tr.replaceChildren();
    cell(tr, r.round === 0 ? "0 (initial)" : String(r.round), "num");
    cell(tr, r.round === 0 ? "" : `${r.answered}/${r.selected}`, "num");
    cell(tr, num(r.train_loss), "num"); cell(tr, num(r.test_loss), "num"); cell(tr, pct(r.test_accuracy), "num");
    cell(tr, pct(fedEval(r.round)), "num"); cell(tr, mb(r.bytes_down), "num"); cell(tr, mb(r.bytes_up), "num");
    cell(tr, num(r.round === 0 ? r.eval_seconds : r.seconds, 2), "num"); cell(tr, r.epsilon != null ? num(r.epsilon, 3) : r.record_epsilon != null ? "≤ " + num(r.record_epsilon, 3) : "", "num");
    const notes = [];
    if (r.rejected && Object.keys(r.rejected).length) notes.push("refused " + Object.entries(r.rejected).map(([k, v]) => `${k}=${v}`).join(", "));
    if (r.secure) notes.push("secure aggregation");
    if (r.attempt > 1) notes.push(`attempt ${r.attempt}`);
    if (r.applied === false) notes.push("not applied");
    cell(tr, notes.join("; "), "reason");
    if (fresh) {
      const after = [...body.rows].find((row) => Number(row.dataset.round) > r.round);
      body.insertBefore(tr, after || null);
    }
  }

  // Clients evaluate the model they receive before training on it: round N+1's record measured round N's model.
  const fedEval = (n) => { const next = state.rounds.get(n + 1); return next ? next.client_eval_accuracy : null; };

  function renderClient(c) {
    const body = $("clients").tBodies[0];
    let tr = [...body.rows].find((row) => row.dataset.client === c.name);
    const fresh = !tr;
    if (fresh) { tr = document.createElement("tr"); tr.dataset.client = c.name; }
    tr.dataset.status = c.status || "";
    tr.replaceChildren();
    cell(tr, c.name); cell(tr, c.status || "", "st-" + (c.status || "none"));
    cell(tr, [c.hostname, c.device].filter(Boolean).join(" / ")); cell(tr, c.partition == null ? "" : String(c.partition));
    cell(tr, c.selected == null ? "" : String(c.selected)); cell(tr, c.round == null ? "" : String(c.round));
    cell(tr, c.reason ? `${c.result}: ${c.reason}` : c.result || "", "reason");
    cell(tr, c.examples == null ? "" : String(c.examples), "num"); cell(tr, c.bytes == null ? "" : mb(c.bytes), "num");
    cell(tr, c.train_loss == null ? "" : num(c.train_loss), "num"); cell(tr, c.train_seconds == null ? "" : num(c.train_seconds, 2), "num");
    if (fresh) {
      const after = [...body.rows].find((row) => row.dataset.client > c.name);
      body.insertBefore(tr, after || null);
    }
  }

  function renderNotices() {
    const ul = $("notices"); ul.replaceChildren();
    if (!state.notices.length) { const li = document.createElement("li"); li.className = "muted"; li.textContent = "none"; ul.appendChild(li); return; }
    for (const n of state.notices.slice().reverse()) {
      const li = document.createElement("li"); li.className = n.level;
      li.textContent = `${new Date(n.ts * 1000).toLocaleTimeString()} ${n.text}`; ul.appendChild(li);
    }
  }

  // ------------------------------------------------------------------ charts (uPlot, vendored)
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  const fromZero = (u, min, max) => [0, max > 0 ? max * 1.1 : 1];
  function chart(el, series, yRange) {
    const axis = { stroke: css("--muted"), grid: { stroke: css("--grid"), width: 1 }, ticks: { stroke: css("--grid") } };
    return new uPlot({
      width: el.clientWidth || 400, height: 200, legend: { live: false },
      // x spans the rounds the run is configured for (uPlot's own guess for one point was 0-100)
      scales: { x: { time: false, range: (u, min, max) => [0, Math.max(state.run.rounds || 0, max || 0, 1)] }, y: yRange ? { range: yRange } : {} },
      axes: [{ ...axis, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000] }, { ...axis, size: 56 }],
      series: [{ label: "round" }, ...series.map((s, i) => ({ label: s, stroke: css(`--s${i + 1}`), width: 2, points: { size: 5 }, spanGaps: true }))],
    }, [[], ...series.map(() => [])], el);
  }
  function chartData() {
    const rounds = [...state.rounds.values()].sort((a, b) => a.round - b.round), x = rounds.map((r) => r.round);
    const col = (f) => rounds.map((r) => { const v = f(r); return v == null ? null : v; });
    const worked = rounds.filter((r) => r.round > 0), wx = worked.map((r) => r.round);
    const phases = [...new Set(worked.flatMap((r) => Object.keys(r.phases || {})))].slice(0, 4);
    return {
      acc: [x, col((r) => r.test_accuracy == null ? null : 100 * r.test_accuracy), col((r) => fedEval(r.round) == null ? null : 100 * fedEval(r.round))],
      loss: [x, col((r) => r.test_loss), col((r) => r.train_loss)],
      bytes: [wx, worked.map((r) => r.bytes_down / 1e6), worked.map((r) => r.bytes_up / 1e6)],
      time: [wx, worked.map((r) => r.seconds), ...phases.map((p) => worked.map((r) => (r.phases || {})[p] ?? null))],
      phases,
    };
  }
  function renderCharts() {
    if (typeof uPlot === "undefined") return;
    const d = chartData();
    const key = d.phases.join(",");
    if (!charts || charts.key !== key) {
      for (const id of ["chart-acc", "chart-loss", "chart-bytes", "chart-time"]) $(id).replaceChildren();
      charts = {
        key,
        acc: chart($("chart-acc"), ["server test %", "federated eval %"], [0, 100]), loss: chart($("chart-loss"), ["test", "train"], fromZero),
        bytes: chart($("chart-bytes"), ["down", "up"], fromZero), time: chart($("chart-time"), ["round", ...d.phases], fromZero),
      };
    }
    charts.acc.setData(d.acc); charts.loss.setData(d.loss); charts.bytes.setData(d.bytes); charts.time.setData(d.time);
  }
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { if (!charts) return; for (const k of ["acc", "loss", "bytes", "time"]) charts[k].setSize({ width: charts[k].root.parentElement.clientWidth, height: 200 }); }, 150);
  });
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => { charts = null; renderCharts(); });

  connect();
})();
