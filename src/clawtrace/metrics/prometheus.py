"""``/metrics``: the Prometheus exposition, built when scraped.

Low cardinality by default: series per environment and region. Per-agent
series only with ``per_agent=True``. Names follow the OpenTelemetry GenAI
semantic conventions where one exists (``gen_ai_client_token_usage``,
``gen_ai_client_operation_duration_seconds``), ``clawtrace_*`` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from clawtrace.metrics.fleet import STATUSES, FleetRow
from clawtrace.metrics.stage import MetricsStage

ENV_REGION = ["env", "region"]


@dataclass(slots=True)
class IngestCounters:
    accepted: int
    duplicates: int
    rejected: int
    rows_written: int
    connected_agents: int


class FleetCollector(Collector):
    """Set ``rows`` (the current fleet rows) and ``envs`` (None: all) before each scrape."""

    def __init__(
        self, stage: MetricsStage, ingest: Callable[[], IngestCounters], per_agent: bool = False
    ) -> None:
        self.stage = stage
        self.ingest = ingest
        self.per_agent = per_agent
        self.rows: Sequence[FleetRow] = ()
        self.envs: frozenset[str] | None = None

    def collect(self) -> Iterator[Metric]:
        yield from self._counters()
        yield from self._gauges(self.rows)
        yield from self._ingest()

    def _counters(self) -> Iterator[Metric]:
        tokens = HistogramMetricFamily(
            "gen_ai_client_token_usage",
            "Tokens used per LLM call (OpenTelemetry gen_ai.client.token.usage).",
            labels=[*ENV_REGION, "gen_ai_token_type"],
        )
        duration = HistogramMetricFamily(
            "gen_ai_client_operation_duration_seconds",
            "Duration of LLM calls (OpenTelemetry gen_ai.client.operation.duration).",
            labels=[*ENV_REGION, "gen_ai_operation_name"],
        )
        events = CounterMetricFamily(
            "clawtrace_events", "Events accepted, by kind.", labels=[*ENV_REGION, "kind"]
        )
        tools = CounterMetricFamily(
            "clawtrace_tool_results",
            "Tool call outcomes: ok, error (ok=false) or timeout (no result in time).",
            labels=[*ENV_REGION, "result"],
        )
        cost = CounterMetricFamily("clawtrace_cost_usd", "LLM cost in USD.", labels=ENV_REGION)
        stderr = CounterMetricFamily(
            "clawtrace_stderr_lines", "Lines agents wrote to stderr.", labels=ENV_REGION
        )
        restarts = CounterMetricFamily(
            "clawtrace_agent_restarts", "Agent process restarts.", labels=ENV_REGION
        )
        for (env, region), group in sorted(self.stage.prometheus.groups.items()):
            if self.envs is not None and env not in self.envs:
                continue
            labels = [env, region]
            for token_type, histogram in (("input", group.input_tokens), ("output", group.output_tokens)):
                tokens.add_metric([*labels, token_type], histogram.cumulative(), histogram.total)
            duration.add_metric([*labels, "chat"], group.llm_duration.cumulative(), group.llm_duration.total)
            for kind, count in sorted(group.events.items()):
                events.add_metric([*labels, kind], count)
            for result, count in group.tool_results.items():
                tools.add_metric([*labels, result], count)
            cost.add_metric(labels, group.cost_usd)
            stderr.add_metric(labels, group.stderr_lines)
            restarts.add_metric(labels, group.restarts)
        yield from (tokens, duration, events, tools, cost, stderr, restarts)

    def _gauges(self, rows: Sequence[FleetRow]) -> Iterator[Metric]:
        agents = GaugeMetricFamily("clawtrace_agents", "Agents by status.", labels=[*ENV_REGION, "status"])
        cost_hour = GaugeMetricFamily(
            "clawtrace_cost_usd_last_hour", "LLM cost over the last 60 minutes, USD.", labels=ENV_REGION
        )
        heartbeat = GaugeMetricFamily(
            "clawtrace_heartbeat_age_max_seconds", "Oldest heartbeat age among the agents.", labels=ENV_REGION
        )
        failures = GaugeMetricFamily(
            "clawtrace_consecutive_tool_failures_max",
            "Longest current run of failed tool calls among the agents.",
            labels=ENV_REGION,
        )
        groups: dict[tuple[str, str], list[FleetRow]] = {}
        for row in rows:
            groups.setdefault((row.env, row.region), []).append(row)
        for (env, region), members in sorted(groups.items()):
            labels = [env, region]
            for status in STATUSES:
                agents.add_metric([*labels, status], sum(1 for r in members if r.status == status))
            cost_hour.add_metric(labels, sum(r.cost_usd_last_hour for r in members))
            ages = [r.heartbeat_age_s for r in members if r.heartbeat_age_s is not None]
            if ages:
                heartbeat.add_metric(labels, max(ages))
            failures.add_metric(labels, max(r.consecutive_failures for r in members))
        yield from (agents, cost_hour, heartbeat, failures)
        if self.per_agent:
            yield from self._per_agent(rows)

    def _per_agent(self, rows: Sequence[FleetRow]) -> Iterator[Metric]:
        names = ["agent", *ENV_REGION]
        families = {
            "heartbeat_age_s": GaugeMetricFamily(
                "clawtrace_agent_heartbeat_age_seconds", "Heartbeat age.", labels=names
            ),
            "cost_usd_last_hour": GaugeMetricFamily(
                "clawtrace_agent_cost_usd_last_hour", "Cost over the last 60 minutes.", labels=names
            ),
            "consecutive_failures": GaugeMetricFamily(
                "clawtrace_agent_consecutive_tool_failures", "Current run of failed tool calls.", labels=names
            ),
            "tool_success_rate": GaugeMetricFamily(
                "clawtrace_agent_tool_success_ratio", "Tool success rate over the window.", labels=names
            ),
            "cpu_percent": GaugeMetricFamily(
                "clawtrace_agent_cpu_percent", "CPU of the agent process.", labels=names
            ),
            "rss_bytes": GaugeMetricFamily(
                "clawtrace_agent_rss_bytes", "Memory of the agent process.", labels=names
            ),
        }
        for row in rows:
            labels = [row.agent, row.env, row.region]
            for field, family in families.items():
                value = getattr(row, field)
                if value is not None:
                    family.add_metric(labels, float(value))
        yield from families.values()

    def _ingest(self) -> Iterator[Metric]:
        counters = self.ingest()
        accepted = CounterMetricFamily(
            "clawtrace_gateway_events", "Events received by this gateway, by outcome.", labels=["outcome"]
        )
        accepted.add_metric(["accepted"], counters.accepted)
        accepted.add_metric(["duplicate"], counters.duplicates)
        accepted.add_metric(["rejected"], counters.rejected)
        written = CounterMetricFamily("clawtrace_store_rows_written", "Event rows committed to the store.")
        written.add_metric([], counters.rows_written)
        connected = GaugeMetricFamily(
            "clawtrace_gateway_connected_agents", "Agents connected to this gateway."
        )
        connected.add_metric([], counters.connected_agents)
        yield from (accepted, written, connected)


def registry_for(collector: FleetCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
