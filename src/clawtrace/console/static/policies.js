// "Try a command": the gateway's /v1/authorize what-if for an agent, through the console's copy of it.
// Shows the decision, the rule and reason, and the normalised facts the policies saw.
"use strict";

(() => {
  const form = document.getElementById("try-form");
  if (!form) return;
  const result = document.getElementById("try-result");
  const shellTools = JSON.parse(form.dataset.shellTools || "{}");

  function element(tag, text, className) {
    const el = document.createElement(tag);
    if (text !== undefined) el.textContent = text;
    if (className) el.className = className;
    return el;
  }

  function factsTable(facts) {
    const commands = (facts && facts.commands) || [];
    if (!commands.length) return element("p", facts && facts.error ? `Not parsed: ${facts.error}` : "No shell facts (not a shell tool).", "muted");
    const table = element("table", undefined, "dense facts");
    const head = table.createTHead().insertRow();
    for (const title of ["program", "args", "flags", "paths", "hosts", "privileged", "via", "dynamic"]) head.appendChild(element("th", title));
    const body = table.createTBody();
    for (const c of commands) {
      const row = body.insertRow();
      const cells = [c.program, (c.args || []).join(" "), (c.flags || []).join(", "), (c.paths || []).join(", "),
        (c.hosts || []).join(", "), c.privileged ? "yes" : "no", (c.via || []).join(" → "), c.dynamic ? "yes" : "no"];
      for (const value of cells) row.appendChild(element("td", value == null ? "" : String(value)));
    }
    return table;
  }

  function show(data) {
    result.replaceChildren();
    const box = element("div", undefined, `decision-box verdict-${data.decision}`);
    const title = element("h3");
    title.appendChild(element("span", data.decision.replace("_", " "), `pill d-${data.decision}`));
    title.appendChild(document.createTextNode(` ${data.rule || "default deny (no policy permits it)"}`));
    box.appendChild(title);
    if (data.reason) box.appendChild(element("p", data.reason));
    box.appendChild(element("p", `agent ${data.agent} · env ${data.env} · role ${data.role} · bundle ${data.policy_version || "none"} · workspace ${data.workspace || "none"}`, "muted"));
    if (data.command) box.appendChild(element("p", `command: ${data.command}`));
    box.appendChild(factsTable(data.facts));
    if (data.facts && data.facts.error) box.appendChild(element("p", `Parse problem: ${data.facts.error}`, "error"));
    const raw = element("details");
    raw.appendChild(element("summary", "facts as JSON"));
    raw.appendChild(element("pre", JSON.stringify(data.facts, null, 2)));
    box.appendChild(raw);
    result.appendChild(box);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = (name) => form.elements[name].value.trim();
    const body = { agent: value("agent"), tool: value("tool") };
    let args = {};
    if (value("args")) {
      try {
        args = JSON.parse(value("args"));
      } catch (err) {
        window.ClawTrace.toast(`the arguments are not JSON (${err.message}); write them like {"path": "/tmp/x"}`, true, "Not sent");
        return;
      }
    }
    if (value("command")) args[shellTools[body.tool] || "command"] = value("command");
    body.args = args;
    for (const name of ["workspace", "cwd"]) if (value(name)) body[name] = value(name);
    const answer = await window.ClawTrace.callApi("/console/api/v1/authorize", "POST", body);
    if (answer.ok) show(answer.data);
    else {
      result.replaceChildren(element("p", answer.message, "error"));
      window.ClawTrace.toast(answer.message, true, window.ClawTrace.errorTitle(answer));
    }
  });
})();
