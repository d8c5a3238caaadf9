"""Commands to agents (restart, stop, quarantine, release) and the quarantine list, on a gateway.

One path for a person's command through the API and an alert's remediation:
both land here, so a quarantine is recorded the same way whoever asks.
Callers write the audit entry (they know who asked and why). The sending
itself is ``AgentCommands`` (shared with scale-mode workers): first down a
connection this gateway holds, then, in scale mode, over NATS (``remote``,
gateway/scale.py) to whichever gateway holds it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from clawtrace.alerts.drivers.node import AgentCommands, delivery
from clawtrace.gateway.pipeline import Pipeline
from clawtrace.gateway.writer import StoreWriter

__all__ = ["CommandService", "delivery"]


class CommandService(AgentCommands):
    def __init__(
        self, pipeline: Pipeline, writer: StoreWriter, clock: Callable[[], float] = time.time
    ) -> None:
        # The quarantine list is the pipeline's: every welcome tells the node agent where it stands.
        super().__init__(writer, local=pipeline.send_command, quarantined=pipeline.quarantined, clock=clock)
        self.pipeline = pipeline

    def load(self) -> None:
        self.quarantined.update({q.agent: q for q in self.pipeline.store.list_quarantines()})
