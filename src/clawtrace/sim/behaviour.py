"""What a simulated agent does, one reasoning step at a time.

A step is the usual agent cycle: think, call a model, call a tool, read its
result, with log lines around it. Each event comes as a ``Spec``: its kind,
its fields, and how long after the previous event it happens in real time
(used when the fleet runs at realistic pace; ignored at a fixed rate).
"""

from __future__ import annotations

import math
import random
import string
from typing import Any, NamedTuple

from clawtrace.protocol.messages import (
    Envelope,
    LlmCall,
    Log,
    PolicyDecision,
    Thought,
    ToolCall,
    ToolResult,
)
from clawtrace.sim import catalog


class Spec(NamedTuple):
    delay: float
    kind: type[Envelope]
    fields: dict[str, Any]


def _lognormal(rng: random.Random, median: float, sigma: float, low: float, high: float) -> float:
    return min(high, max(low, median * math.exp(rng.gauss(0.0, sigma))))


class Behaviour:
    """Generates steps for one agent from its own seeded RNG.

    The same seed and the same sequence of calls give the same events, which
    is what makes a simulated fleet reproducible.
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        model: str,
        call_prefix: str,
        tool_failure_rate: float = 0.05,
        secret_rate: float = 0.002,
        report_cost: bool = True,
        pool: list[list[Spec]] | None = None,
    ) -> None:
        self.rng = rng
        self.model = model
        self.call_prefix = call_prefix
        self.tool_failure_rate = tool_failure_rate
        self.secret_rate = secret_rate
        self.report_cost = report_cost
        self.steps = 0
        self.calls = 0
        # Fault modes, switched on by scenarios and off by a restart.
        self.looping = False
        self.loop_left: int | None = None
        self.spiking = False
        self.quarantined = False
        self.pool = pool
        self._pool_pos = rng.randrange(len(pool)) if pool else 0

    def next_step(self) -> list[Spec]:
        self.steps += 1
        if self.looping:
            return self._loop_step()
        if self.pool and not (self.spiking or self.quarantined):
            return self._pooled_step(self.pool)
        return self._normal_step()

    def start_loop(self, length: int | None) -> None:
        self.looping = True
        self.loop_left = length

    def reset(self) -> None:
        """A restart clears every fault the agent was in."""
        self.looping = False
        self.loop_left = None
        self.spiking = False

    # --- steps ---------------------------------------------------------------

    def _pooled_step(self, pool: list[list[Spec]]) -> list[Spec]:
        step = pool[self._pool_pos]
        self._pool_pos = (self._pool_pos + 1) % len(pool)
        self.calls += 1
        call_id = f"{self.call_prefix}-{self.calls}"
        return [
            Spec(s.delay, s.kind, {**s.fields, "call_id": call_id}) if "call_id" in s.fields else s
            for s in step
        ]

    def _normal_step(self) -> list[Spec]:
        rng = self.rng
        out = [Spec(_lognormal(rng, 3.0, 0.6, 0.3, 20.0), Thought, {"text": self._thought()})]
        out.append(self._llm_call())
        if self.spiking:
            out.append(self._llm_call())
        if rng.random() < 0.3:
            out.append(Spec(0.05, Log, {"stream": "stdout", "line": self._stdout_line()}))
        if rng.random() < self.secret_rate:
            out.append(Spec(0.01, Log, {"stream": "stdout", "line": self._leaked_secret_line()}))
        tool = rng.choice(catalog.TOOL_NAMES)
        args = rng.choice(catalog.TOOLS[tool])
        ok = rng.random() >= self.tool_failure_rate
        duration = _lognormal(rng, 400.0, 1.0, 5.0, 30_000.0)
        result: dict[str, Any] = (
            {"ok": True, "output": rng.choice(catalog.TOOL_OUTPUTS[tool])}
            if ok
            else {"ok": False, "error": rng.choice(catalog.TOOL_ERRORS[tool])}
        )
        out.extend(self._tool(tool, args, duration, result, mid_line=rng.random() < 0.5))
        if not ok and rng.random() < 0.5:
            out.append(Spec(0.01, Log, {"stream": "stderr", "line": f"ERROR {tool}: {result['error']}"}))
        if rng.random() < 0.1:
            out.append(Spec(0.02, Log, {"stream": "stderr", "line": self._stderr_line()}))
        return out

    def _loop_step(self) -> list[Spec]:
        rng = self.rng
        out = [
            Spec(_lognormal(rng, 0.5, 0.3, 0.1, 3.0), Thought, {"text": rng.choice(catalog.LOOP_THOUGHTS)}),
            # Retries resend little more than the error, so a loop alone stays under a cost alert.
            self._llm_call(short=True),
        ]
        duration = _lognormal(rng, 800.0, 0.3, 50.0, 5_000.0)
        out.extend(
            self._tool(
                catalog.LOOP_TOOL, catalog.LOOP_ARGS, duration, {"ok": False, "error": catalog.LOOP_ERROR}
            )
        )
        out.append(Spec(0.01, Log, {"stream": "stderr", "line": f"Traceback: {catalog.LOOP_ERROR}"}))
        if self.loop_left is not None:
            self.loop_left -= 1
            if self.loop_left <= 0:
                self.looping = False
                self.loop_left = None
        return out

    def rm_rf_step(self, command: str) -> list[Spec]:
        out = [Spec(0.5, Thought, {"text": catalog.RM_RF_THOUGHT}), self._llm_call()]
        out.extend(
            self._tool("exec", {"command": command}, 12.0, {"ok": False, "error": catalog.RM_RF_ERROR})
        )
        return out

    # --- pieces --------------------------------------------------------------

    def _tool(
        self,
        tool: str,
        args: dict[str, Any],
        duration_ms: float,
        result: dict[str, Any],
        *,
        mid_line: bool = False,
    ) -> list[Spec]:
        self.calls += 1
        call_id = f"{self.call_prefix}-{self.calls}"
        out = [Spec(0.05, ToolCall, {"call_id": call_id, "tool": tool, "args": dict(args)})]
        remaining = duration_ms / 1000
        if self.quarantined:
            # The node agent refuses before the tool runs and tells the agent why.
            reason = "agent is quarantined"
            out.append(
                Spec(
                    0.0,
                    PolicyDecision,
                    {"decision": "deny", "tool": tool, "rule": "quarantine", "reason": reason},
                )
            )
            out.append(
                Spec(
                    0.0,
                    ToolResult,
                    {
                        "call_id": call_id,
                        "ok": False,
                        "duration_ms": 0.0,
                        "error": f"denied by policy: {reason}",
                    },
                )
            )
            return out
        if mid_line:
            out.append(Spec(remaining / 2, Log, {"stream": "stdout", "line": self._stdout_line()}))
            remaining /= 2
        out.append(
            Spec(remaining, ToolResult, {"call_id": call_id, "duration_ms": round(duration_ms, 1), **result})
        )
        return out

    def _llm_call(self, *, short: bool = False) -> Spec:
        rng = self.rng
        if self.spiking:
            model = catalog.MODELS[catalog.SPIKE_MODEL]
            input_tokens = rng.randint(150_000, 200_000)
            output_tokens = rng.randint(8_000, 30_000)
            cached = 0
        else:
            name = self.model if rng.random() < 0.8 else rng.choice(catalog.HELPER_MODELS)
            model = catalog.MODELS[name]
            scale = 0.4 if short else 1.0
            input_tokens = int(_lognormal(rng, 1_200 * scale, 0.6, 200, 12_000))
            output_tokens = int(_lognormal(rng, 180 * scale, 0.7, 20, 2_000))
            cached = int(input_tokens * rng.uniform(0.3, 0.9)) if rng.random() < 0.6 else 0
        duration = _lognormal(rng, model.median_ms * math.sqrt(output_tokens / 250), 0.4, 150.0, 120_000.0)
        fields: dict[str, Any] = {
            "model": model.name,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "duration_ms": round(duration, 1),
        }
        if cached:
            fields["cached_input_tokens"] = cached
        if self.report_cost:
            fields["cost_usd"] = round(model.cost(input_tokens, cached, output_tokens), 6)
        return Spec(duration / 1000, LlmCall, fields)

    def _thought(self) -> str:
        rng = self.rng
        return " ".join(
            (
                rng.choice(catalog.THOUGHT_OPENERS),
                rng.choice(catalog.THOUGHT_ACTIONS),
                rng.choice(catalog.THOUGHT_REASONS),
            )
        )

    def _fill(self, template: str) -> str:
        rng = self.rng
        return template.format(
            step=self.steps, n=rng.randint(1, 5_000), ms=rng.randint(5, 9_000), pct=rng.randint(1, 99)
        )

    def _stdout_line(self) -> str:
        return self._fill(self.rng.choice(catalog.STDOUT_LINES))

    def _stderr_line(self) -> str:
        return self._fill(self.rng.choice(catalog.STDERR_LINES))

    def _leaked_secret_line(self) -> str:
        # Agents do print credentials; the gateway's redaction must catch it.
        key = "".join(self.rng.choices(string.ascii_letters + string.digits, k=40))
        return f"DEBUG calling provider with OPENAI_API_KEY=sk-proj-{key}"


class StepPool:
    """Normal steps made once per model and shared by a fleet's agents.

    At benchmark rates, drawing every step from an RNG costs the load
    generator more CPU than sending it. Agents replaying pre-made steps,
    each from its own offset and with its own call ids, keep the mix and
    free the generator. Fault scenarios still generate their own steps.
    """

    def __init__(self, seed: int, size: int = 256) -> None:
        self.seed = seed
        self.size = size
        self._steps: dict[str, list[list[Spec]]] = {}

    def steps_for(self, model: str) -> list[list[Spec]]:
        steps = self._steps.get(model)
        if steps is None:
            maker = Behaviour(random.Random(f"pool:{self.seed}:{model}"), model=model, call_prefix="pool")
            steps = self._steps[model] = [maker.next_step() for _ in range(self.size)]
        return steps
