"""The web console: server-rendered pages over the same API and credentials.

One module per page (``fleet``, ``agent``, ``replay``, ``charts``, ``alerts``,
``policies``, ``envs`` and ``env_role``), the login (``login``), the
cookie-authenticated copies of the API routes the pages' buttons and charts
call (``actions``), and what they share (``pages``, ``formatting``). Static files, the vendored htmx and uPlot
among them (``scripts/vendor_assets.py``), are served from ``STATIC_DIR``.
"""

from pathlib import Path

from fastapi import APIRouter

# Defined before the page modules are imported: they import clawtrace.gateway, whose app
# imports these two names from here, so they must exist while this module is half-imported.
STATIC_DIR = Path(__file__).parent / "static"
router = APIRouter(include_in_schema=False)

from clawtrace.console import (  # noqa: E402
    actions,
    agent,
    alerts,
    charts,
    env_role,
    envs,
    fleet,
    login,
    policies,
    replay,
)

for module in (login, fleet, agent, replay, charts, alerts, policies, envs, env_role, actions):
    router.include_router(module.router)

__all__ = ["STATIC_DIR", "router"]
