"""``clawtrace demo``: a gateway and a simulated fleet in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import click
import httpx
import msgspec
import uvicorn

from clawtrace.access import create_token
from clawtrace.cli.up import check_port_free
from clawtrace.envs.release import MANIFEST_FILE, build_release
from clawtrace.gateway import load_settings, uvicorn_config
from clawtrace.gateway.server import EmbeddedServer
from clawtrace.sim import FleetConfig, Scenario, run_fleet
from clawtrace.store import StoreError, open_store

DEMO_ROLE = "researcher"
DEMO_RELEASE = {
    MANIFEST_FILE: f"""role = "{DEMO_ROLE}"
version = "demo-1"
command = ["python", "-m", "researcher", "--system-prompt", "prompts/system.md"]
prompts = ["prompts/system.md"]

[model]
provider = "openai"
name = "gpt-4.1-mini"
temperature = 0.2
""",
    "prompts/system.md": "You research a question with the tools you have and cite your sources.\n",
}


async def _deploy_demo_release(base: str, token: str, directory: Path) -> None:
    """A release of the simulated fleet's role, deployed to the fleet's environment (idempotent)."""
    for name, text in DEMO_RELEASE.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    release = build_release(directory)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}) as client:
        created = await client.post("/api/v1/releases", content=msgspec.json.encode(release))
        created.raise_for_status()
        deployed = await client.post("/api/v1/deployments", json={"release": release.id, "env": "dev"})
        if deployed.status_code not in (201, 409):
            deployed.raise_for_status()


async def _run_demo(
    server: uvicorn.Server,
    fleet_config: FleetConfig,
    stop: asyncio.Event,
    seed: Callable[[], Awaitable[None]],
) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            await serving
            raise click.ClickException("the gateway could not start (see the messages above)")
        await asyncio.sleep(0.05)
    await seed()
    fleet = asyncio.create_task(run_fleet(fleet_config, stop))
    await stop.wait()
    click.echo("\nstopping: draining the fleet, then the gateway ...")
    with contextlib.suppress(Exception):
        stats = await fleet
        click.echo(f"fleet sent {stats.events_generated} events, {stats.events_acked} acknowledged")
    server.should_exit = True
    await serving


@click.command()
@click.option("--port", type=int, default=7420, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--data-dir",
    default=".clawtrace/demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the demo's SQLite store lives (kept between runs).",
)
@click.option("--agents", type=click.IntRange(min=1), default=50, show_default=True, help="Simulated agents.")
@click.option("--env", default="dev", show_default=True, help="Environment of the simulated fleet.")
@click.option(
    "--faults/--no-faults",
    default=True,
    show_default=True,
    help="Give a few agents a fault (dead node, reasoning loop, cost spike, rm -rf) after a minute.",
)
def demo(port: int, host: str, data_dir: str, agents: int, env: str, faults: bool) -> None:
    """Run a gateway and a simulated fleet together; Ctrl-C stops both cleanly.

    Prints the console URL and a viewer credential ready to paste.
    """
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    settings = load_settings(None, host=host, port=port, data_dir=data_dir, log_level="warning")
    check_port_free(host, port)
    try:
        store = open_store(settings.store, Path(data_dir))
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        agent_token, _ = create_token(store, env=env, role="agent", name="demo fleet")
        viewer_token, _ = create_token(store, env="*", role="viewer", name="demo viewer")
        operator_token, _ = create_token(store, env="*", role="operator", name="demo operator")
    finally:
        store.close()
    base = f"http://{host}:{port}"
    scenarios = (
        {Scenario.DEAD: 1, Scenario.LOOP: 1, Scenario.COST_SPIKE: 1, Scenario.RM_RF: 1}
        if faults and agents >= 8
        else {}
    )
    fleet_config = FleetConfig(
        gateway=f"ws://{host}:{port}",
        token=agent_token,
        agents=agents,
        env=env,
        scenarios=scenarios,
        scenario_after=60.0,
        role=DEMO_ROLE,
    )
    click.echo(f"ClawTrace demo: gateway on {base} with {agents} simulated agents in {env!r}")
    click.echo(f"  console:  {base}/login?token={viewer_token}")
    click.echo(f"  viewer credential: {viewer_token}")
    click.echo(f"  try:      clawtrace tail --env {env} -f --gateway {base} --token {viewer_token}")
    # Some agents die, loop or overspend after a while: the default rules fire and remediate.
    click.echo(f"            clawtrace alerts --gateway {base} --token {viewer_token}")
    click.echo(f"            clawtrace audit --gateway {base} --token {viewer_token}")
    if env == "dev":
        # The fleet follows the researcher role's release in dev: promote it on from there.
        click.echo(f"            clawtrace env --gateway {base} --token {operator_token}")
        click.echo(
            f"            clawtrace promote {DEMO_ROLE}@demo-1 --to staging --check --gateway {base} "
            f"--token {operator_token}"
        )
    click.echo("  Ctrl-C stops everything.")
    server = EmbeddedServer(uvicorn_config(settings))

    async def seed() -> None:
        if env == "dev":
            await _deploy_demo_release(base, operator_token, Path(data_dir) / "release")

    asyncio.run(_run_demo(server, fleet_config, asyncio.Event(), seed))
