"""Faults a simulated agent can be given, and which agents get them.

Each scenario starts ``after`` seconds into the agent's run so the fleet
first looks healthy, which is what alert rules and the demo need.

- ``dead``: the agent stops sending anything, heartbeats included. In
  ``silent`` mode its connection stays open (a hung process: the harder case
  for detection); in ``drop`` mode it flushes what it had and disconnects.
- ``loop``: a reasoning loop, the same failing tool call over and over
  (``loop_length`` failures, or until restarted).
- ``cost_spike``: LLM calls switch to a premium model with huge prompts,
  well over $5/h for that one agent.
- ``rm_rf``: the agent tries ``exec`` with ``rm -rf /``, then rephrasings of
  it every ``rm_rf_interval`` seconds.

A ``restart`` command from the gateway ends the fault, as restarting a real
agent would.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal


class Scenario(enum.StrEnum):
    DEAD = "dead"
    LOOP = "loop"
    COST_SPIKE = "cost_spike"
    RM_RF = "rm_rf"


DeadMode = Literal["silent", "drop"]


@dataclass(frozen=True, slots=True)
class ScenarioSpec:
    kind: Scenario
    after: float = 30.0
    dead_mode: DeadMode = "silent"
    # None: loop until restarted.
    loop_length: int | None = None
    rm_rf_interval: float = 60.0


def assign_scenarios(agent_ids: list[str], counts: Mapping[Scenario, int], seed: int) -> dict[str, Scenario]:
    """Pick disjoint agents for each scenario, reproducibly for a seed.

    Agents are drawn from a seeded shuffle so that faulty agents are spread
    over regions and teams rather than bunched at the start of the list.
    """
    wanted = sum(counts.values())
    if any(n < 0 for n in counts.values()):
        raise ValueError("scenario counts must not be negative")
    if wanted > len(agent_ids):
        raise ValueError(f"{wanted} agents with scenarios requested but the fleet has only {len(agent_ids)}")
    order = list(agent_ids)
    random.Random(f"scenarios:{seed}").shuffle(order)
    plan: dict[str, Scenario] = {}
    position = 0
    for scenario in Scenario:
        for agent in order[position : position + counts.get(scenario, 0)]:
            plan[agent] = scenario
        position += counts.get(scenario, 0)
    return plan
