"""A simulated fleet of agents for the demo, benchmarks and tests.

``await run_fleet(FleetConfig(agents=50, token=token), stop_event)`` runs one
until the event is set and returns its ``FleetStats``.
"""

from clawtrace.sim.agent import AgentSpec, Pace, SimAgent
from clawtrace.sim.fleet import (
    DEFAULT_REGIONS,
    AgentStats,
    Fleet,
    FleetConfig,
    FleetStats,
    agent_ids,
    run_fleet,
)
from clawtrace.sim.outbox import LatencyHistogram, TrackingOutbox
from clawtrace.sim.scenarios import Scenario, ScenarioSpec, assign_scenarios

__all__ = [
    "DEFAULT_REGIONS",
    "AgentSpec",
    "AgentStats",
    "Fleet",
    "FleetConfig",
    "FleetStats",
    "LatencyHistogram",
    "Pace",
    "Scenario",
    "ScenarioSpec",
    "SimAgent",
    "TrackingOutbox",
    "agent_ids",
    "assign_scenarios",
    "run_fleet",
]
