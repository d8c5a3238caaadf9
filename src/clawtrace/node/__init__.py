"""The node agent (``clawtrace run``): supervises one agent process on its host.

It captures the process's output and SDK events, spools them to disk, sends
them to the gateway, reports heartbeats and lifecycle changes, restarts the
process on crashes and obeys the gateway's restart/stop commands. Started
with ``--role`` it runs the releases the gateway deploys instead of a command
of its own (``deploy``: fetch, ``release_store``, ``secrets``, ``hooks``).
"""

from clawtrace.node.agent import GatewayRefused, NodeAgent, NodeConfig
from clawtrace.node.local import SOCKET_ENV, LocalServer
from clawtrace.node.spool import Spool, SpoolError
from clawtrace.node.supervisor import Backoff, RestartPolicy, SpawnError, Supervisor

__all__ = [
    "SOCKET_ENV",
    "Backoff",
    "GatewayRefused",
    "LocalServer",
    "NodeAgent",
    "NodeConfig",
    "RestartPolicy",
    "SpawnError",
    "Spool",
    "SpoolError",
    "Supervisor",
]
