// Events to ClawTrace over POST /v1/events (NDJSON), protocol v1 (docs/protocol.md sections 6-8, 13).
//
// Hooks only call enqueue(): it numbers the event and appends it to a bounded in-memory queue.
// A background loop posts batches in seq order, one request at a time, and retries failures with
// exponential backoff. Nothing here throws into the agent loop.
//
// seq: max(previous + 1, wall clock in microseconds, persisted high-water + 1, gateway ack + 1).
// The clock term makes seq increase across OpenClaw restarts with no state at all (a restarted
// process starts above anything an earlier one can have numbered, unless the clock went back);
// the high-water file in the plugin's state folder covers a clock that went back, and the gateway's
// ack (the highest seq it stored for the agent) covers a lost state folder. Numbers stay below
// 2^53 (exact in JavaScript) until the year 2255.
//
// One counter for the whole process: each event names its agent (field `agent`), and a number that
// increases for the process increases for each of its agents.
//
// Exit: events still queued when the process exits are written to a spool file next to the
// high-water mark and sent first by the next process with the same state folder (their seq are
// lower than anything it numbers, so they are still accepted).
import fs from "node:fs";
import path from "node:path";

const MAX_BODY_BYTES = 512 * 1024; // half the gateway's default max_frame_bytes (1 MiB)
const MAX_BACKOFF_MS = 30000;
const BASE_BACKOFF_MS = 500;

function sleep(ms) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    timer.unref?.();
  });
}

export class Sender {
  /**
   * @param {object} settings resolved settings (config.js)
   * @param {object} logger OpenClaw's api.logger (info/warn/error)
   */
  constructor(settings, logger) {
    this.s = settings;
    this.log = logger;
    this.queue = [];
    this.lastSeq = 0;
    this.dropped = 0;
    this.failures = 0;
    this.backoffUntil = 0;
    this.maxBatch = settings.batchSize;
    this.inflight = null;
    this.timer = null;
    this.closed = false;
    this.lastWarn = new Map();
    this.stats = { posted: 0, accepted: 0, duplicates: 0, rejected: 0, failedPosts: 0 };
    this.seqFile = path.join(settings.stateDir, "events.seq");
    this.spoolFile = path.join(settings.stateDir, "events.spool.ndjson");
    this.query = settings.env ? `?env=${encodeURIComponent(settings.env)}` : "";
    this._restore();
    this._onExit = () => this._spool();
    process.once("exit", this._onExit);
  }

  warn(key, message, everyMs = 60000) {
    const now = Date.now();
    if (now - (this.lastWarn.get(key) ?? 0) < everyMs) return;
    this.lastWarn.set(key, now);
    this.log?.warn?.(`clawtrace: ${message}`);
  }

  /** Number the event, stamp it and queue it for `agent`; returns the event. */
  enqueue(agent, kind, fields, session) {
    const seq = Math.max(this.lastSeq + 1, Date.now() * 1000);
    this.lastSeq = seq;
    const event = { kind, seq, ts: new Date().toISOString(), session, agent, ...fields };
    this.queue.push(event);
    if (this.queue.length > this.s.maxQueue) {
      const over = this.queue.length - this.s.maxQueue;
      this.queue.splice(0, over);
      this.dropped += over;
      this.warn("queue-full", `event queue full (${this.s.maxQueue}): dropping the oldest events; is the gateway reachable?`);
    }
    if (this.queue.length >= this.maxBatch) this.kick(0);
    else this.kick(this.s.flushIntervalMs);
    return event;
  }

  /** Schedule a send in `delay` ms (or sooner if one is already scheduled). */
  kick(delay) {
    if (this.closed) return;
    const at = Math.max(Date.now() + delay, this.backoffUntil);
    if (this.timer && this.timerAt <= at) return;
    if (this.timer) clearTimeout(this.timer);
    this.timerAt = at;
    this.timer = setTimeout(() => {
      this.timer = null;
      this._loop();
    }, Math.max(0, at - Date.now()));
    this.timer.unref?.();
  }

  async _loop() {
    if (this.inflight) return this.inflight;
    this.inflight = (async () => {
      try {
        while (this.queue.length > 0 && !this.closed) {
          const ok = await this._postOnce();
          if (!ok) {
            this.kick(0); // honours backoffUntil
            break;
          }
        }
      } finally {
        this.inflight = null;
      }
    })();
    return this.inflight;
  }

  /**
   * Post everything queued now, waiting at most `timeoutMs` (ignores the backoff once).
   * Resolves true when the queue is empty.
   */
  async flush(timeoutMs) {
    if (this.queue.length === 0 && !this.inflight) return true;
    const deadline = Date.now() + timeoutMs;
    this.backoffUntil = 0;
    while (Date.now() < deadline) {
      if (this.inflight) {
        await Promise.race([this.inflight, sleep(Math.max(0, deadline - Date.now()))]);
        continue;
      }
      if (this.queue.length === 0) return true;
      const before = this.failures;
      await Promise.race([this._loop(), sleep(Math.max(0, deadline - Date.now()))]);
      if (this.failures > before && this.queue.length > 0) return false; // unreachable: do not spin
    }
    return this.queue.length === 0;
  }

  /** One POST of the oldest events. Returns true if the batch was settled (sent or dropped). */
  async _postOnce() {
    const batch = [];
    const lines = [];
    let bytes = 0;
    for (const event of this.queue) {
      if (batch.length >= this.maxBatch) break;
      const line = JSON.stringify(event);
      const size = Buffer.byteLength(line) + 1;
      if (size > MAX_BODY_BYTES) {
        // Texts are capped when events are built, so this is a pathological event: drop it alone.
        if (batch.length === 0) {
          this.queue.shift();
          this.warn("too-big", `dropped a ${event.kind} event of ${size} bytes (over ${MAX_BODY_BYTES})`);
          return true;
        }
        break;
      }
      if (bytes + size > MAX_BODY_BYTES) break;
      bytes += size;
      batch.push(event);
      lines.push(line);
    }
    if (batch.length === 0) return true;
    this._saveHighWater();
    let response;
    try {
      response = await fetch(`${this.s.url}/v1/events${this.query}`, {
        method: "POST",
        headers: {
          authorization: `Bearer ${this.s.token}`,
          "content-type": "application/x-ndjson",
        },
        body: lines.join("\n") + "\n",
        signal: AbortSignal.timeout(this.s.requestTimeoutMs),
      });
    } catch (err) {
      return this._failed(`cannot reach ${this.s.url}: ${err?.cause?.code ?? err?.name ?? err}`);
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (response.status === 200) {
      this._settle(batch.length);
      this.failures = 0;
      this.backoffUntil = 0;
      this.maxBatch = this.s.batchSize;
      this.stats.posted += 1;
      this.stats.accepted += body?.accepted ?? 0;
      this.stats.duplicates += body?.duplicates ?? 0;
      for (const ack of Object.values(body?.acks ?? {})) {
        if (Number.isSafeInteger(ack) && ack > this.lastSeq) this.lastSeq = ack;
      }
      const errors = Array.isArray(body?.errors) ? body.errors : [];
      if (errors.length > 0) {
        this.stats.rejected += errors.length;
        this.warn("rejected", `the gateway rejected ${errors.length} event(s); first: ${errors[0].code}: ${errors[0].message}`);
      }
      if (this.dropped > 0) {
        const dropped = this.dropped;
        this.dropped = 0;
        const agents = new Set(batch.map((e) => e.agent));
        for (const agent of agents) {
          this.enqueue(agent, "log", { stream: "stderr", line: `clawtrace plugin: ${dropped} event(s) were dropped (queue full while the gateway was unreachable)` }, batch[0].session);
        }
      }
      return true;
    }
    const code = body?.error?.code ?? `HTTP ${response.status}`;
    const message = body?.error?.message ?? "";
    if (response.status === 413 && batch.length > 1) {
      this.maxBatch = Math.max(1, Math.floor(batch.length / 2));
      return true; // retry at once with a smaller batch
    }
    if (response.status === 400 || response.status === 413) {
      this._settle(batch.length);
      this.warn("bad-request", `the gateway refused ${batch.length} event(s) (${code}: ${message}); dropped`, 0);
      return true;
    }
    if (response.status === 401 || response.status === 403) {
      return this._failed(`the gateway refused the credential (${code}: ${message}); check token, env and agentId`);
    }
    return this._failed(`the gateway answered ${code} ${message}`.trim());
  }

  _settle(n) {
    this.queue.splice(0, n);
  }

  _failed(why) {
    this.failures += 1;
    this.stats.failedPosts += 1;
    const delay = Math.min(MAX_BACKOFF_MS, BASE_BACKOFF_MS * 2 ** Math.min(this.failures - 1, 10));
    this.backoffUntil = Date.now() + delay * (0.5 + Math.random() / 2);
    this.warn("post-failed", `${why}; ${this.queue.length} event(s) kept, retrying with backoff`);
    return false;
  }

  _saveHighWater() {
    try {
      fs.mkdirSync(this.s.stateDir, { recursive: true });
      fs.writeFileSync(this.seqFile, `${this.lastSeq}\n`);
    } catch (err) {
      this.warn("state", `cannot write ${this.seqFile}: ${err.message}`, 600000);
    }
  }

  _restore() {
    try {
      const high = Number(fs.readFileSync(this.seqFile, "utf8").trim());
      if (Number.isSafeInteger(high) && high > this.lastSeq) this.lastSeq = high;
    } catch {
      // first start, or no state folder: the clock alone orders events
    }
    let text;
    try {
      text = fs.readFileSync(this.spoolFile, "utf8");
      fs.unlinkSync(this.spoolFile);
    } catch {
      return;
    }
    const events = [];
    for (const line of text.split("\n")) {
      if (!line.trim()) continue;
      try {
        const event = JSON.parse(line);
        if (Number.isSafeInteger(event.seq)) events.push(event);
      } catch {
        // a torn last line
      }
    }
    events.sort((a, b) => a.seq - b.seq);
    const kept = events.slice(-this.s.maxQueue);
    this.queue.unshift(...kept);
    for (const event of kept) if (event.seq > this.lastSeq) this.lastSeq = event.seq;
    if (kept.length > 0) this.kick(0);
  }

  /** At exit (synchronous): keep what was not sent for the next start, and the high-water mark. */
  _spool() {
    this.closed = true;
    try {
      fs.mkdirSync(this.s.stateDir, { recursive: true });
      fs.writeFileSync(this.seqFile, `${this.lastSeq}\n`);
      if (this.queue.length > 0) {
        fs.appendFileSync(this.spoolFile, this.queue.map((e) => JSON.stringify(e)).join("\n") + "\n");
      }
    } catch {
      // nothing more can be done while exiting
    }
  }
}
