// Live tail of one agent: the gateway's /api/v1/live WebSocket (it accepts the console cookie).
// Rows are added once per animation frame, whatever the rate; the table keeps the newest MAX_ROWS.
// While paused, events are held (not dropped) and shown on resume. After every (re)connect the
// events stored since the last one shown are fetched first, so a reconnect leaves no gap.
"use strict";

(() => {
  const section = document.getElementById("tail");
  if (!section) return;
  const agent = section.dataset.agent;
  const tbody = document.querySelector("#tail-table tbody");
  const scroller = document.getElementById("tail-scroll");
  const pauseButton = document.getElementById("tail-pause");
  const search = document.getElementById("tail-search");
  const stateLabel = document.getElementById("tail-state");
  const kindBoxes = Array.from(section.querySelectorAll(".kinds input[type=checkbox]"));
  const MAX_ROWS = 2000;
  const MAX_HELD = 50000;
  const MAX_LAG_SAMPLES = 200000;

  // Counters a person sees in the toolbar, and a benchmark reads (bench/console.py); while
  // "recording" is set, the seq of every event drawn is kept in "recorded" too.
  const stats = {
    received: 0, shown: 0, held: 0, dropped: 0, skipped: 0, lags: [], connected: false, recording: false, recorded: [],
  };
  window.clawtraceTail = stats;

  let lastSeq = 0;
  tbody.querySelectorAll("tr[data-seq]").forEach((tr) => { lastSeq = Math.max(lastSeq, Number(tr.dataset.seq)); });
  let paused = false;
  let held = [];
  let queue = [];
  let frameRequested = false;
  let hiddenKinds = new Set();
  let term = "";
  let socket = null;
  let retryDelay = 500;
  let stopped = false;
  let stateNote = "connecting…";

  function describe(e) {
    switch (e.kind) {
      case "log": return e.line;
      case "thought": return e.text;
      case "llm_call": return `${e.model} · in ${e.input_tokens} · out ${e.output_tokens} · ${Math.round(e.duration_ms)} ms`
        + (e.cost_usd != null ? ` · $${e.cost_usd.toFixed(4)}` : "");
      case "tool_call": return `${e.tool} ${JSON.stringify(e.args || {})}`;
      case "tool_result": return `${e.ok ? "ok" : "FAILED"} · ${Math.round(e.duration_ms)} ms${e.error ? " · " + e.error : ""}`;
      case "heartbeat": return `cpu ${e.cpu_percent ?? "–"}% · rss ${e.rss_bytes ? (e.rss_bytes / 1048576).toFixed(1) : "–"} MiB`;
      case "lifecycle": return `${e.state}${e.exit_code != null ? " · exit " + e.exit_code : ""}${e.reason ? " · " + e.reason : ""}`;
      case "policy": return `${e.decision} · ${e.tool}${e.command ? " `" + e.command + "`" : ""}${e.rule ? " · " + e.rule : ""}${e.reason ? " · " + e.reason : ""}`;
      default: return JSON.stringify(e);
    }
  }

  function filterRow(tr) {
    const kind = tr.className.match(/\bk-(\w+)/);
    tr.classList.toggle("hidden-kind", kind !== null && hiddenKinds.has(kind[1]));
    tr.classList.toggle("no-match", term !== "" && !tr.textContent.toLowerCase().includes(term));
  }

  function rowFor(e) {
    const tr = document.createElement("tr");
    tr.className = "k-" + e.kind;
    tr.dataset.seq = e.seq;
    for (const text of [String(e.seq), (e.ts || "").slice(11, 23), e.kind, describe(e)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    tr.cells[0].className = "num";
    if (e.kind === "log" && e.stream === "stderr") tr.cells[3].className = "stderr";
    filterRow(tr);
    return tr;
  }

  function updateState() {
    let text = paused ? `paused · ${held.length.toLocaleString()} new held` : stateNote;
    text += ` · ${stats.shown.toLocaleString()} shown`;
    if (stats.dropped) text += ` · ${stats.dropped.toLocaleString()} dropped by the gateway (this view fell behind)`;
    if (stats.skipped) text += ` · ${stats.skipped.toLocaleString()} not drawn (too many at once)`;
    stateLabel.textContent = text;
  }

  function render() {
    frameRequested = false;
    if (!queue.length) return;
    let batch = queue;
    queue = [];
    if (batch.length > MAX_ROWS) {
      stats.skipped += batch.length - MAX_ROWS;
      batch = batch.slice(-MAX_ROWS);
    }
    const following = scroller.scrollTop + scroller.clientHeight >= scroller.scrollHeight - 40;
    const fragment = document.createDocumentFragment();
    const now = Date.now();
    for (const e of batch) {
      fragment.appendChild(rowFor(e));
      stats.shown += 1;
      if (stats.recording) stats.recorded.push(e.seq);
      if (e.received && stats.lags.length < MAX_LAG_SAMPLES) stats.lags.push(now - Date.parse(e.received));
    }
    tbody.appendChild(fragment);
    let excess = tbody.rows.length - MAX_ROWS;
    while (excess-- > 0) tbody.deleteRow(0);
    if (following) scroller.scrollTop = scroller.scrollHeight;
    updateState();
  }

  function accept(events) {
    for (const e of events) {
      if (e.seq <= lastSeq) continue; // a backfilled event that also came live, or a resend
      lastSeq = e.seq;
      stats.received += 1;
      if (paused) {
        held.push(e);
        if (held.length > MAX_HELD) stats.skipped += held.splice(0, held.length - MAX_HELD).length;
      } else {
        queue.push(e);
      }
    }
    stats.held = held.length;
    if (paused) updateState();
    else if (!frameRequested && queue.length) {
      frameRequested = true;
      requestAnimationFrame(render);
    }
  }

  async function backfill() {
    // What was stored between the page (or the last event shown) and this connection.
    let after = lastSeq;
    for (let page = 0; page < 10; page++) {
      const url = `/console/api/v1/agents/${encodeURIComponent(agent)}/events?after_seq=${after}&limit=5000`;
      const result = await window.ClawTrace.callApi(url, "GET");
      if (!result.ok) return;
      accept(result.data.events);
      if (result.data.next_after_seq == null) return;
      after = result.data.next_after_seq;
    }
  }

  function connect() {
    if (stopped) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/api/v1/live?agent=${encodeURIComponent(agent)}`);
    socket = ws;
    let early = [];
    let backfilling = true;
    ws.onopen = async () => {
      retryDelay = 500;
      stats.connected = true;
      stateNote = "live";
      await backfill();
      backfilling = false;
      accept(early);
      early = [];
      updateState();
    };
    ws.onmessage = (message) => {
      const data = JSON.parse(message.data);
      if (data.type === "events") {
        if (backfilling) early.push(...data.events);
        else accept(data.events);
      } else if (data.type === "error") {
        const count = /^(\d+) events were dropped/.exec(data.message || "");
        if (count) stats.dropped += Number(count[1]);
        else stateNote = data.message;
        updateState();
      }
    };
    ws.onclose = (event) => {
      stats.connected = false;
      if (event.code === 4001 || event.code === 4003) {
        // Credentials do not get better by retrying.
        stopped = true;
        stateNote = `stopped: ${event.reason || "not allowed"} (log in again)`;
      } else {
        stateNote = `reconnecting in ${Math.round(retryDelay / 1000)} s…`;
        setTimeout(connect, retryDelay);
        retryDelay = Math.min(retryDelay * 2, 15000);
      }
      updateState();
    };
  }

  function setPaused(value) {
    paused = value;
    pauseButton.setAttribute("aria-pressed", String(paused));
    pauseButton.textContent = paused ? "Resume" : "Pause";
    if (!paused && held.length) {
      const release = held;
      held = [];
      stats.held = 0;
      queue.push(...release);
      if (!frameRequested) {
        frameRequested = true;
        requestAnimationFrame(render);
      }
    }
    updateState();
  }

  function readKinds() {
    hiddenKinds = new Set(kindBoxes.filter((box) => !box.checked).map((box) => box.value));
    Array.from(tbody.rows).forEach(filterRow);
  }

  pauseButton.addEventListener("click", () => setPaused(!paused));
  kindBoxes.forEach((box) => box.addEventListener("change", readKinds));
  search.addEventListener("input", () => {
    term = search.value.trim().toLowerCase();
    Array.from(tbody.rows).forEach(filterRow);
  });
  document.addEventListener("keydown", (event) => {
    if (event.key !== "p" || event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target.closest("input, textarea, select")) return;
    event.preventDefault();
    setPaused(!paused);
  });
  window.addEventListener("beforeunload", () => { stopped = true; if (socket) socket.close(); });

  readKinds();
  scroller.scrollTop = scroller.scrollHeight;
  connect();
})();
