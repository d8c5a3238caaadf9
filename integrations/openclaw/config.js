// Plugin settings: plugins.entries.clawtrace.config in openclaw.json, then CLAWTRACE_* variables, then defaults.
import os from "node:os";
import path from "node:path";

const AGENT_ID = /^[A-Za-z0-9][A-Za-z0-9_:@-]*$/;

export const DEFAULTS = Object.freeze({
  enforcePolicy: true,
  batchSize: 200,
  flushIntervalMs: 1000,
  maxQueue: 10000,
  requestTimeoutMs: 10000,
  authorizeTimeoutMs: 5000,
  endFlushTimeoutMs: 5000,
  heartbeatIntervalMs: 10000,
  approvalTimeoutMs: 120000,
  maxTextChars: 8000,
  sendToolOutput: true,
  sendAssistantText: true,
});

/** A ClawTrace agent id from free text: letters, digits, '_', ':', '@', '-'; 128 at most. */
export function sanitizeAgentId(text) {
  let id = String(text).replace(/[^A-Za-z0-9_:@-]+/g, "-").replace(/^[^A-Za-z0-9]+/, "");
  id = id.slice(0, 128).replace(/-+$/, "");
  return id || "openclaw";
}

/** The default agent id: the OpenClaw agent id and the short host name, "main@build-7". */
export function defaultAgentId(openclawAgentId) {
  const host = os.hostname().split(".")[0] || "localhost";
  return sanitizeAgentId(`${openclawAgentId || "main"}@${host}`);
}

function pick(value, envName, env) {
  if (value !== undefined && value !== null && value !== "") return value;
  const fromEnv = env[envName];
  return fromEnv === undefined || fromEnv === "" ? undefined : fromEnv;
}

function bool(value, fallback) {
  if (value === undefined) return fallback;
  if (typeof value === "boolean") return value;
  return !/^(0|false|no|off)$/i.test(String(value));
}

function int(value, fallback) {
  if (value === undefined || value === null || value === "") return fallback;
  const n = Number(value);
  return Number.isFinite(n) && n >= 0 ? Math.floor(n) : fallback;
}

/**
 * Resolve the settings. Returns { settings, problems }: problems are strings that make the
 * plugin stay inactive (no URL, no token); it never throws.
 */
export function resolveSettings(pluginConfig = {}, env = process.env) {
  const c = pluginConfig && typeof pluginConfig === "object" ? pluginConfig : {};
  const problems = [];
  let url = pick(c.url, "CLAWTRACE_URL", env);
  const token = pick(c.token, "CLAWTRACE_TOKEN", env);
  const envName = pick(c.env, "CLAWTRACE_ENV", env);
  const agentId = pick(c.agentId, "CLAWTRACE_AGENT", env);
  let failMode = pick(c.failMode, "CLAWTRACE_FAIL_MODE", env);
  if (!url) problems.push("no gateway URL: set plugins.entries.clawtrace.config.url or CLAWTRACE_URL");
  else {
    url = String(url).replace(/\/+$/, "");
    if (!/^https?:\/\/[^/]+/.test(url)) problems.push(`url must be http(s)://host[:port], not ${JSON.stringify(url)}`);
  }
  if (!token) problems.push("no token: set plugins.entries.clawtrace.config.token or CLAWTRACE_TOKEN (clawtrace token create --env ENV --role agent)");
  if (agentId !== undefined && !AGENT_ID.test(String(agentId))) {
    problems.push(`agentId ${JSON.stringify(agentId)} is not a ClawTrace agent id (letters, digits, '_', ':', '@', '-')`);
  }
  const isProd = envName !== undefined && /^(prod|production)$/i.test(String(envName));
  if (failMode === undefined) failMode = isProd ? "closed" : "open";
  failMode = String(failMode).toLowerCase();
  if (failMode !== "open" && failMode !== "closed") {
    problems.push(`failMode must be "open" or "closed", not ${JSON.stringify(failMode)}; using "closed"`);
    failMode = "closed";
  }
  const stateRoot = env.OPENCLAW_STATE_DIR || path.join(os.homedir(), ".openclaw");
  const settings = {
    url,
    token: token === undefined ? undefined : String(token),
    env: envName === undefined ? undefined : String(envName),
    agentId: agentId === undefined ? undefined : String(agentId),
    failMode,
    enforcePolicy: bool(pick(c.enforcePolicy, "CLAWTRACE_ENFORCE_POLICY", env), DEFAULTS.enforcePolicy),
    workspace: c.workspace && path.isAbsolute(c.workspace) ? c.workspace : undefined,
    stateDir: c.stateDir ? String(c.stateDir) : path.join(stateRoot, "clawtrace"),
  };
  for (const key of [
    "batchSize", "flushIntervalMs", "maxQueue", "requestTimeoutMs", "authorizeTimeoutMs",
    "endFlushTimeoutMs", "heartbeatIntervalMs", "approvalTimeoutMs", "maxTextChars",
  ]) {
    settings[key] = int(c[key], DEFAULTS[key]);
  }
  settings.batchSize = Math.max(1, Math.min(settings.batchSize, 1000));
  settings.maxQueue = Math.max(settings.batchSize, settings.maxQueue);
  settings.sendToolOutput = bool(c.sendToolOutput, DEFAULTS.sendToolOutput);
  settings.sendAssistantText = bool(c.sendAssistantText, DEFAULTS.sendAssistantText);
  const fatal = problems.filter((p) => !p.includes('using "closed"'));
  return { settings, problems, active: fatal.length === 0 };
}
