// Live tail for the agent page: appends events pushed by /api/v1/live.
(function () {
  const table = document.getElementById("events");
  if (!table || table.dataset.live !== "yes") return;
  const body = table.querySelector("tbody");
  const pause = document.getElementById("pause");
  const agent = table.dataset.agent;
  let lastSeq = 0;
  body.querySelectorAll("tr").forEach((tr) => { lastSeq = Math.max(lastSeq, Number(tr.cells[0].textContent)); });

  function describe(e) {
    switch (e.kind) {
      case "log": return e.line;
      case "thought": return e.text;
      case "llm_call": return `${e.model} · in ${e.input_tokens} · out ${e.output_tokens} · ${Math.round(e.duration_ms)} ms`;
      case "tool_call": return `${e.tool} ${JSON.stringify(e.args || {})}`;
      case "tool_result": return `${e.ok ? "ok" : "FAILED"} · ${Math.round(e.duration_ms)} ms${e.error ? " · " + e.error : ""}`;
      case "heartbeat": return `cpu ${e.cpu_percent ?? "–"}% · rss ${e.rss_bytes ? (e.rss_bytes / 1048576).toFixed(1) : "–"} MiB`;
      case "lifecycle": return `${e.state}${e.exit_code != null ? " · exit " + e.exit_code : ""}${e.reason ? " · " + e.reason : ""}`;
      case "policy": return `${e.decision} · ${e.tool}${e.rule ? " · " + e.rule : ""}${e.reason ? " · " + e.reason : ""}`;
      default: return JSON.stringify(e);
    }
  }

  function append(e) {
    if (e.seq <= lastSeq) return;
    lastSeq = e.seq;
    const tr = document.createElement("tr");
    tr.className = "k-" + e.kind;
    for (const text of [String(e.seq), (e.ts || "").slice(11, 23), e.kind, describe(e)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    if (e.kind === "log" && e.stream === "stderr") tr.cells[3].className = "stderr";
    body.appendChild(tr);
    while (body.rows.length > 1000) body.deleteRow(0);
  }

  let delay = 500;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/api/v1/live?agent=${encodeURIComponent(agent)}`);
    ws.onopen = () => { delay = 500; };
    ws.onmessage = (msg) => {
      if (pause && pause.checked) return;
      const data = JSON.parse(msg.data);
      if (data.type === "events") {
        data.events.forEach(append);
        window.scrollTo(0, document.body.scrollHeight);
      }
    };
    ws.onclose = () => { setTimeout(connect, delay); delay = Math.min(delay * 2, 15000); };
  }
  connect();
})();
