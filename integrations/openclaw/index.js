// ClawTrace plugin for OpenClaw: mind logging and tool policy (docs/integrations.md, "OpenClaw plugin").
//
// Streams every model call (llm_call, with thinking as thought), tool call and result, and run
// start/end (lifecycle) of the OpenClaw agent loop to a ClawTrace gateway as protocol v1 events,
// and asks the gateway's POST /v1/authorize before every tool call: deny blocks the call with the
// rule's reason, require_approval asks a person through OpenClaw's plugin approvals, and a control
// plane that cannot answer applies failMode (closed: block, open: run).
//
// Plain JavaScript for Node 24 (global fetch): no build step, no dependencies.
import os from "node:os";
import path from "node:path";
import { defaultAgentId, resolveSettings } from "./config.js";
import { Sender } from "./sender.js";

const PLUGIN_ID = "clawtrace";
const PROCESS_SESSION = `openclaw-${os.hostname().split(".")[0]}-${process.pid}-${Date.now()}`;

/** Cap a string at `max` characters, saying how much was cut. */
function cap(text, max) {
  if (typeof text !== "string") return text;
  return text.length <= max ? text : `${text.slice(0, max)}… [${text.length - max} more characters]`;
}

/** A JSON-safe copy of tool arguments with long strings capped. */
function capArgs(value, max, depth = 0) {
  if (typeof value === "string") return cap(value, max);
  if (value === null || typeof value !== "object") {
    return typeof value === "number" && !Number.isFinite(value) ? String(value) : value;
  }
  if (depth > 8) return "[nested too deep]";
  if (Array.isArray(value)) return value.slice(0, 200).map((v) => capArgs(v, max, depth + 1));
  const out = {};
  for (const [k, v] of Object.entries(value).slice(0, 200)) {
    if (typeof v === "function" || v === undefined) continue;
    out[k] = capArgs(v, max, depth + 1);
  }
  return out;
}

function contentText(content) {
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return "";
  return content
    .filter((part) => part && part.type === "text" && typeof part.text === "string")
    .map((part) => part.text)
    .join("\n");
}

function nonNegInt(n) {
  return Number.isFinite(n) && n > 0 ? Math.round(n) : 0;
}

/** Keep a Map to its `max` newest entries (runs whose end was never reported, lost tool results). */
function prune(map, max) {
  while (map.size > max) map.delete(map.keys().next().value);
}

/** One plugin instance per process: hooks of every registration share it. */
class ClawTrace {
  constructor(api) {
    this.api = api;
    this.logger = api.logger ?? console;
    const { settings, problems, active } = resolveSettings(api.pluginConfig, process.env);
    this.s = settings;
    this.active = active;
    this.problems = problems;
    for (const problem of problems) this.logger.warn?.(`clawtrace: ${problem}`);
    this.sender = active ? new Sender(settings, this.logger) : null;
    this.agentIds = new Map(); // OpenClaw agent id -> ClawTrace agent id
    this.runs = new Map(); // runId -> {session, started, sessionKey, llmCalls}
    this.finished = new Map(); // runId -> run, the last 100 ended runs
    this.runBySessionKey = new Map(); // sessionKey -> runId of its active run (hooks that only know the session key)
    this.modelCalls = new Map(); // sessionKey -> durationMs of the last ended model call
    this.toolCalls = new Map(); // call_id -> {started, blocked}
    this.workspaces = new Map(); // runId or sessionKey -> workspace dir
    this.heartbeat = null;
    this.cpu = { usage: process.cpuUsage(), at: performance.now() };
    this.seq = 0;
  }

  /** The ClawTrace agent id: the configured one, else one per OpenClaw agent ("main@host"). */
  agentId(openclawAgentId) {
    if (this.s.agentId) return this.s.agentId;
    const key = openclawAgentId || "main";
    let id = this.agentIds.get(key);
    if (!id) {
      id = defaultAgentId(key);
      this.agentIds.set(key, id);
    }
    return id;
  }

  emit(kind, fields, session, openclawAgentId) {
    try {
      this.sender?.enqueue(this.agentId(openclawAgentId), kind, fields, session ?? PROCESS_SESSION);
    } catch (err) {
      this.sender?.warn?.("emit", `could not queue a ${kind} event: ${err?.message ?? err}`);
    }
  }

  // --- runs ---------------------------------------------------------------------------------

  /** The run a hook belongs to; the first hook of a run reports it as started. */
  run(runId, ctx = {}) {
    const key = runId ?? (ctx.sessionKey ? this.runBySessionKey.get(ctx.sessionKey) : undefined);
    if (!key) return null;
    let run = this.runs.get(key);
    if (!run) {
      run = { id: key, session: key, started: Date.now(), sessionKey: ctx.sessionKey, agentId: ctx.agentId, llmCalls: 0, ended: false };
      this.runs.set(key, run);
      const where = [ctx.agentId && `agent ${ctx.agentId}`, ctx.sessionKey && `session ${ctx.sessionKey}`]
        .filter(Boolean).join(", ");
      this.emit("lifecycle", { state: "started", reason: cap(`OpenClaw run ${key}${where ? ` (${where})` : ""}`, 1000) }, run.session, ctx.agentId);
      prune(this.runs, 1000);
      this.startHeartbeat();
    }
    if (ctx.sessionKey) {
      run.sessionKey = ctx.sessionKey;
      this.runBySessionKey.set(ctx.sessionKey, key);
      prune(this.runBySessionKey, 1000);
    }
    if (ctx.agentId) run.agentId = ctx.agentId;
    if (ctx.workspaceDir) {
      this.workspaces.set(key, ctx.workspaceDir);
      prune(this.workspaces, 1000);
    }
    return run;
  }

  endRun(event, ctx) {
    const run = this.run(event.runId ?? ctx.runId, ctx);
    if (!run || run.ended) return;
    run.ended = true;
    const ms = Number.isFinite(event.durationMs) ? event.durationMs : Date.now() - run.started;
    const reason = event.success === false
      ? `OpenClaw run ${run.id} failed after ${Math.round(ms)} ms: ${event.error ?? "unknown error"}`
      : `OpenClaw run ${run.id} finished in ${Math.round(ms)} ms`;
    // "stopped": the run ended on purpose; an agent that only posts over HTTP is not a dead node
    // between runs (docs/alerts.md, "Heartbeat age and stopped on purpose").
    this.emit("lifecycle", { state: "stopped", exit_code: event.success === false ? 1 : 0, reason: cap(reason, 2000) }, run.session, run.agentId);
    this.runs.delete(run.id);
    this.finished.set(run.id, run); // llm_output comes after agent_end
    if (this.finished.size > 100) this.finished.delete(this.finished.keys().next().value);
    if (run.sessionKey && this.runBySessionKey.get(run.sessionKey) === run.id) this.runBySessionKey.delete(run.sessionKey);
    this.workspaces.delete(run.id);
    if (![...this.runs.values()].some((r) => !r.ended)) this.stopHeartbeat();
  }

  /** While runs are active: a heartbeat every heartbeatIntervalMs for each of their agents. */
  startHeartbeat() {
    if (this.heartbeat || !this.active || this.s.heartbeatIntervalMs <= 0) return;
    const beat = () => {
      const now = performance.now();
      const usage = process.cpuUsage(this.cpu.usage);
      const wallUs = Math.max(1, (now - this.cpu.at) * 1000);
      this.cpu = { usage: process.cpuUsage(), at: now };
      const fields = {
        // The OpenClaw process (100 = one core); several agents in one process share it.
        cpu_percent: Math.round(((usage.user + usage.system) / wallUs) * 1000) / 10,
        rss_bytes: process.memoryUsage.rss(),
      };
      const agents = new Set([...this.runs.values()].map((r) => this.agentId(r.agentId)));
      for (const agent of agents) {
        this.sender?.enqueue(agent, "heartbeat", fields, PROCESS_SESSION);
      }
    };
    beat();
    this.heartbeat = setInterval(beat, this.s.heartbeatIntervalMs);
    this.heartbeat.unref?.();
  }

  stopHeartbeat() {
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = null;
  }

  // --- model calls --------------------------------------------------------------------------

  onModelCallStarted(event, ctx) {
    this.run(event.runId ?? ctx.runId, { ...ctx, sessionKey: event.sessionKey ?? ctx.sessionKey });
  }

  onModelCallEnded(event, ctx) {
    const sessionKey = event.sessionKey ?? ctx.sessionKey;
    const run = this.run(event.runId ?? ctx.runId, { ...ctx, sessionKey });
    if (sessionKey && Number.isFinite(event.durationMs)) {
      this.modelCalls.set(sessionKey, event.durationMs);
      prune(this.modelCalls, 1000);
    }
    if (event.outcome === "error") {
      const why = [event.errorCategory, event.failureKind].filter(Boolean).join(", ") || "error";
      this.emit("log", { stream: "stderr", line: `model call ${event.provider}/${event.model} failed after ${Math.round(event.durationMs ?? 0)} ms (${why})` }, run?.session, ctx.agentId);
    }
  }

  /** An assistant message is about to be written to the transcript: one finished model call. */
  onMessageWrite(event, ctx) {
    const message = event?.message;
    if (!message || message.role !== "assistant") return;
    const run = this.run(undefined, ctx);
    const session = run?.session;
    const max = this.s.maxTextChars;
    const content = Array.isArray(message.content) ? message.content : [];
    for (const part of content) {
      if (part?.redacted) continue; // encrypted provider reasoning: nothing readable to send
      const thinking = part?.type === "thinking" ? part.thinking : part?.type === "reasoning" ? part.text : undefined;
      if (typeof thinking === "string" && thinking.trim()) this.emit("thought", { text: cap(thinking, max) }, session, ctx.agentId);
    }
    const usage = message.usage;
    if (usage && typeof usage === "object") {
      const cacheRead = nonNegInt(usage.cacheRead);
      const input = nonNegInt(usage.input) + cacheRead + nonNegInt(usage.cacheWrite);
      let duration = ctx.sessionKey ? this.modelCalls.get(ctx.sessionKey) : undefined;
      if (ctx.sessionKey) this.modelCalls.delete(ctx.sessionKey);
      if (!Number.isFinite(duration) && Number.isFinite(message.timestamp)) duration = Math.max(0, Date.now() - message.timestamp);
      const cost = usage.cost?.total;
      const known = Number.isFinite(cost) && cost >= 0 && (cost > 0 || usage.cost?.totalOrigin === "provider-billed");
      const model = message.provider && message.model ? `${message.provider}/${message.model}` : message.model ?? "unknown";
      this.emit("llm_call", {
        model: cap(String(model), 200),
        input_tokens: input,
        output_tokens: nonNegInt(usage.output),
        cached_input_tokens: cacheRead,
        duration_ms: Number.isFinite(duration) ? Math.max(0, duration) : 0,
        // Only a cost OpenClaw knows; otherwise ClawTrace prices the tokens with its own table.
        ...(known ? { cost_usd: cost } : {}),
      }, session, ctx.agentId);
      if (run) run.llmCalls += 1;
    }
    if (this.s.sendAssistantText) {
      const text = content.filter((p) => p?.type === "text").map((p) => p.text).join("\n").trim();
      if (text) this.emit("log", { stream: "stdout", line: cap(text, max) }, session, ctx.agentId);
    }
    if (message.stopReason === "error" && message.errorMessage) {
      this.emit("log", { stream: "stderr", line: cap(`model error: ${message.errorMessage}`, max) }, session, ctx.agentId);
    }
  }

  /** Fallback for runtimes that write no assistant messages through OpenClaw: the run's totals. */
  onLlmOutput(event, ctx) {
    const id = event.runId ?? ctx.runId;
    const run = this.runs.get(id) ?? this.finished.get(id);
    if (!run || run.llmCalls > 0 || !event.usage) return;
    const u = event.usage;
    const cost = u.cost?.total;
    this.emit("llm_call", {
      model: cap(event.resolvedRef ?? `${event.provider}/${event.model}`, 200),
      input_tokens: nonNegInt(u.input) + nonNegInt(u.cacheRead) + nonNegInt(u.cacheWrite),
      output_tokens: nonNegInt(u.output),
      cached_input_tokens: nonNegInt(u.cacheRead),
      duration_ms: Math.max(0, Date.now() - run.started),
      ...(Number.isFinite(cost) && cost > 0 ? { cost_usd: cost } : {}),
    }, run.session, ctx.agentId);
    run.llmCalls += 1;
  }

  // --- tools --------------------------------------------------------------------------------

  callId(event, ctx) {
    return String(event.toolCallId ?? ctx.toolCallId ?? `${event.runId ?? ctx.runId ?? "call"}:${++this.seq}`).slice(0, 200);
  }

  workspaceFor(runId, ctx) {
    if (this.s.workspace) return this.s.workspace;
    const known = this.workspaces.get(runId) ?? (ctx.sessionKey && this.workspaces.get(ctx.sessionKey));
    if (known) return known;
    const cfg = this.api.config ?? {};
    const agent = ctx.agentId;
    const entry = agent && cfg.agents?.entries?.[agent];
    const list = Array.isArray(cfg.agents?.list) ? cfg.agents.list.find((a) => a?.id === agent) : undefined;
    let dir = entry?.workspace ?? list?.workspace ?? cfg.agents?.defaults?.workspace ?? process.env.OPENCLAW_WORKSPACE_DIR;
    if (!dir) dir = path.join(process.env.OPENCLAW_STATE_DIR || path.join(os.homedir(), ".openclaw"), "workspace");
    if (dir.startsWith("~")) dir = path.join(os.homedir(), dir.slice(1));
    return path.isAbsolute(dir) ? dir : undefined;
  }

  async onBeforeToolCall(event, ctx) {
    const runId = event.runId ?? ctx.runId;
    const run = this.run(runId, ctx);
    const session = run?.session;
    const callId = this.callId(event, ctx);
    // Code Mode's outer `exec` runs JavaScript, not a shell command: give it its own name so that
    // policies can tell it from the shell tool (a bundle that does not name it denies it).
    const kind = event.toolKind ?? ctx.toolKind;
    const name = kind === "code_mode_exec" ? kind : event.toolName ?? ctx.toolName;
    const tool = String(name ?? "unknown").slice(0, 200) || "unknown";
    const params = event.params && typeof event.params === "object" ? event.params : {};
    this.emit("tool_call", { call_id: callId, tool, args: capArgs(params, this.s.maxTextChars) }, session, ctx.agentId);
    this.toolCalls.set(callId, { started: Date.now(), blocked: false });
    prune(this.toolCalls, 5000);
    if (!this.s.enforcePolicy) return undefined;

    const refuse = (reason) => {
      this.toolCalls.set(callId, { started: Date.now(), blocked: true });
      this.emit("tool_result", { call_id: callId, ok: false, duration_ms: 0, error: cap(reason, this.s.maxTextChars) }, session, ctx.agentId);
      return { block: true, blockReason: reason };
    };
    const unreachable = (why) => {
      if (this.s.failMode === "closed") {
        return refuse(`ClawTrace could not decide tool '${tool}' (${why}) and failMode is closed, so it is blocked; try again later or ask an operator`);
      }
      this.emit("log", { stream: "stderr", line: `clawtrace: tool '${tool}' ran without a policy decision (${why}; failMode open)` }, session, ctx.agentId);
      return undefined;
    };
    if (!this.active) return unreachable(`the plugin is not configured: ${this.problems.join("; ")}`);

    const workspace = this.workspaceFor(runId, ctx);
    const body = { agent: this.agentId(ctx.agentId), tool, args: params };
    if (workspace) body.workspace = workspace;
    const workdir = typeof params.workdir === "string" ? params.workdir : typeof params.cwd === "string" ? params.cwd : undefined;
    if (workdir) {
      const cwd = path.isAbsolute(workdir) ? workdir : workspace ? path.resolve(workspace, workdir) : undefined;
      if (cwd) body.cwd = cwd;
    }
    let answer;
    try {
      const signals = [AbortSignal.timeout(this.s.authorizeTimeoutMs)];
      if (ctx.abortSignal instanceof AbortSignal) signals.push(ctx.abortSignal);
      const response = await fetch(`${this.s.url}/v1/authorize`, {
        method: "POST",
        headers: { authorization: `Bearer ${this.s.token}`, "content-type": "application/json" },
        body: JSON.stringify(body),
        signal: AbortSignal.any(signals),
      });
      const text = await response.text();
      let json = null;
      try {
        json = JSON.parse(text);
      } catch {
        json = null;
      }
      if (response.status !== 200 || !json || typeof json.decision !== "string") {
        const err = json?.error ? `${json.error.code}: ${json.error.message}` : `HTTP ${response.status}`;
        this.sender?.warn?.("authorize", `POST /v1/authorize answered ${err}`);
        return unreachable(`the gateway answered ${err}`);
      }
      answer = json;
    } catch (err) {
      const why = err?.name === "TimeoutError" ? `no answer within ${this.s.authorizeTimeoutMs} ms` : `cannot reach ${this.s.url}: ${err?.cause?.code ?? err?.message ?? err}`;
      this.sender?.warn?.("authorize", `POST /v1/authorize failed: ${why}`);
      return unreachable(why);
    }

    const rule = answer.rule ? `rule '${answer.rule}'` : "no rule permits it";
    const reason = answer.reason ?? "";
    if (answer.decision === "allow") return undefined;
    if (answer.decision === "deny") {
      const command = answer.command ? ` [command: ${answer.command}]` : "";
      return refuse(`tool '${tool}' denied by ClawTrace policy (${rule}): ${reason}${command}`);
    }
    if (answer.decision === "require_approval") {
      const title = cap(`ClawTrace: approve ${tool}?`, 80);
      const description = cap(`${reason}${answer.command ? ` Command: ${answer.command}` : ""} (${rule}, environment ${answer.env ?? "?"})`, 500);
      return {
        requireApproval: {
          title,
          description,
          severity: "warning",
          allowedDecisions: ["allow-once", "deny"],
          timeoutMs: this.s.approvalTimeoutMs,
          onResolution: (decision) => {
            const allowed = decision === "allow-once" || decision === "allow-always";
            // The settlement, audited by ClawTrace like a node agent's (docs/policies.md, section 9).
            this.emit("policy", {
              decision: allowed ? "allow" : "deny",
              tool,
              rule: answer.rule ?? null,
              reason: cap(`${allowed ? "approved" : "not approved"} in OpenClaw (${decision}): ${reason}`, 2000),
              call_id: callId,
              command: answer.command ?? null,
              policy_version: answer.policy_version ?? null,
              decided_by: `openclaw:${decision}`,
            }, session, ctx.agentId);
            if (!allowed) {
              this.toolCalls.set(callId, { started: Date.now(), blocked: true });
              this.emit("tool_result", { call_id: callId, ok: false, duration_ms: 0, error: `not approved (${decision}): ${cap(reason, 2000)}` }, session, ctx.agentId);
            }
          },
        },
      };
    }
    return unreachable(`unknown decision ${JSON.stringify(answer.decision)}`);
  }

  onAfterToolCall(event, ctx) {
    const callId = this.callId(event, ctx);
    const known = this.toolCalls.get(callId);
    this.toolCalls.delete(callId);
    if (known?.blocked) return; // its failed tool_result was sent when it was refused
    const run = this.run(event.runId ?? ctx.runId, ctx);
    const result = event.result;
    const details = result && typeof result === "object" ? result.details : undefined;
    const error = typeof event.error === "string" ? event.error : event.error ? String(event.error?.message ?? event.error) : undefined;
    const status = typeof details?.status === "string" ? details.status : undefined;
    const exitCode = Number.isFinite(details?.exitCode) ? details.exitCode : undefined;
    const ok = !error && result?.isError !== true && !["failed", "error", "timeout", "denied"].includes(status ?? "") && (exitCode === undefined || exitCode === 0);
    const duration = Number.isFinite(event.durationMs) ? event.durationMs : known ? Date.now() - known.started : 0;
    const fields = { call_id: callId, ok, duration_ms: Math.max(0, duration) };
    if (error) fields.error = cap(error, this.s.maxTextChars);
    else if (!ok) fields.error = cap(`${status ?? "failed"}${exitCode !== undefined ? ` (exit code ${exitCode})` : ""}`, 1000);
    if (this.s.sendToolOutput && result !== undefined) {
      const text = contentText(result?.content);
      fields.output = cap(text || (typeof result === "string" ? result : ""), this.s.maxTextChars);
    }
    this.emit("tool_result", fields, run?.session, ctx.agentId);
  }

  // --- end of a run -------------------------------------------------------------------------

  async onAgentEnd(event, ctx) {
    this.endRun(event, ctx);
    // `openclaw agent --local` exits soon after: send now (bounded; what is left is spooled at exit).
    if (this.sender && this.s.endFlushTimeoutMs > 0) await this.sender.flush(this.s.endFlushTimeoutMs);
  }
}

let instance = null;

function get(api) {
  if (!instance) instance = new ClawTrace(api);
  return instance;
}

/** Call `fn` and never let an error escape into OpenClaw (except where noted). */
function guarded(api, name, fn) {
  return (event, ctx) => {
    try {
      return fn(get(api), event ?? {}, ctx ?? {});
    } catch (err) {
      api.logger?.warn?.(`clawtrace: ${name} hook failed: ${err?.stack ?? err}`);
      return undefined;
    }
  };
}

export default {
  id: PLUGIN_ID,
  name: "ClawTrace",
  description: "Streams model calls, thoughts, tool calls and runs to ClawTrace and enforces its tool policy.",
  register(api) {
    api.on("model_call_started", guarded(api, "model_call_started", (p, e, c) => p.onModelCallStarted(e, c)));
    api.on("model_call_ended", guarded(api, "model_call_ended", (p, e, c) => p.onModelCallEnded(e, c)));
    // Synchronous hook: observe only, return nothing so the message is written unchanged.
    api.on("before_message_write", guarded(api, "before_message_write", (p, e, c) => {
      p.onMessageWrite(e, c);
      return undefined;
    }));
    api.on("llm_input", guarded(api, "llm_input", (p, e, c) => void p.run(e.runId ?? c.runId, c)));
    api.on("llm_output", guarded(api, "llm_output", (p, e, c) => p.onLlmOutput(e, c)));
    // A gate: an exception here must not let the call through when failMode is closed.
    api.on("before_tool_call", async (event, ctx) => {
      const plugin = get(api);
      try {
        return await plugin.onBeforeToolCall(event ?? {}, ctx ?? {});
      } catch (err) {
        api.logger?.warn?.(`clawtrace: before_tool_call failed: ${err?.stack ?? err}`);
        if (plugin.s.failMode === "closed" && plugin.s.enforcePolicy) {
          return { block: true, blockReason: `ClawTrace policy check failed (${err?.message ?? err}) and failMode is closed` };
        }
        return undefined;
      }
    });
    api.on("after_tool_call", guarded(api, "after_tool_call", (p, e, c) => p.onAfterToolCall(e, c)));
    api.on("agent_end", async (event, ctx) => {
      try {
        await get(api).onAgentEnd(event ?? {}, ctx ?? {});
      } catch (err) {
        api.logger?.warn?.(`clawtrace: agent_end hook failed: ${err?.stack ?? err}`);
      }
    });
    api.on("gateway_stop", async () => {
      if (instance?.sender) await instance.sender.flush(2000);
    });
  },
};
