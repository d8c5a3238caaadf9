"""``clawtrace release``: build, upload, list, show and compare agent releases."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import click
import msgspec

from clawtrace.cli.client import GatewayClient
from clawtrace.cli.options import DEFAULT_GATEWAY, gateway_options
from clawtrace.cli.tables import new_table, plain_console, print_json, when
from clawtrace.envs.release import SHORT_ID, Release, ReleaseError, build_release, parse_ref


@click.group()
def release() -> None:
    """Immutable, content-addressed agent releases (a role's command, prompts, model, hooks, policy).

    \b
      clawtrace release create DIR        build DIR/clawtrace.agent.toml and upload it
      clawtrace release list              releases on the gateway, newest first
      clawtrace release show REF          one release (REF: id, id prefix, or ROLE@VERSION)
      clawtrace release diff A B          what differs between two releases
    """


def _build(directory: Path) -> Release:
    try:
        return build_release(directory)
    except ReleaseError as exc:
        raise click.ClickException("the release does not build:\n  " + "\n  ".join(exc.problems)) from None


def _files_kind(built: Release) -> dict[str, str]:
    manifest = built.manifest
    kinds = {path: "prompt" for path in manifest.prompts}
    kinds.update({path: "tool hook" for path in manifest.tool_hooks})
    return {path: kinds.get(path, "policy") for path in built.files}


def _describe(built: Release) -> None:
    console = plain_console()
    manifest = built.manifest
    model = manifest.model
    settings = ", ".join(
        f"{name} {value}"
        for name, value in (
            ("temperature", model.temperature),
            ("max_tokens", model.max_tokens),
            ("top_p", model.top_p),
        )
        if value is not None
    )
    console.print(f"release {built.short_id}  {built.ref}")
    console.print(f"  id       {built.id}")
    console.print(f"  command  {' '.join(manifest.command)}")
    console.print(f"  model    {model.provider}/{model.name}" + (f" ({settings})" if settings else ""))
    if manifest.policy is not None:
        console.print(f"  policy   {manifest.policy} (validated)")
    if manifest.env:
        console.print(f"  env      {', '.join(sorted(manifest.env))}")
    if manifest.secrets:
        refs = ", ".join(f"{name} <- {ref}" for name, ref in sorted(manifest.secrets.items()))
        console.print(f"  secrets  {refs} (references, resolved on the node)")
    table = new_table("FILE", "KIND", "BYTES")
    kinds = _files_kind(built)
    for path, text in sorted(built.files.items()):
        table.add_row(path, kinds[path], str(len(text.encode())))
    console.print(table)


@release.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Build and check only; upload nothing (no token needed).")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the gateway's answer (or the built release) as JSON."
)
@click.option("--gateway", envvar="CLAWTRACE_GATEWAY", default=DEFAULT_GATEWAY, show_default=True,
              help="Gateway base URL. Env: CLAWTRACE_GATEWAY.")  # fmt: skip
@click.option("--token", envvar="CLAWTRACE_TOKEN", default=None,
              help="API credential (operator role in any environment). Env: CLAWTRACE_TOKEN.")  # fmt: skip
def create(directory: Path, dry_run: bool, as_json: bool, gateway: str, token: str | None) -> None:
    """Build the release in DIRECTORY (its clawtrace.agent.toml) and upload it to the gateway.

    The same content always gives the same id, so uploading it again changes nothing.
    """
    built = _build(directory)
    if dry_run:
        if as_json:
            print_json(msgspec.to_builtins(built))
        else:
            _describe(built)
            click.echo("dry run: built and checked, not uploaded")
        return
    if not token:
        raise click.UsageError(
            "uploading needs a credential: pass --token or set CLAWTRACE_TOKEN"
            " (operator role), or use --dry-run to only build and check"
        )
    answer = GatewayClient(gateway, token).post("/api/v1/releases", msgspec.to_builtins(built))
    if as_json:
        print_json(answer)
        return
    _describe(built)
    if answer["created"]:
        click.echo(f"created {built.ref} ({built.short_id}) on {gateway}")
    else:
        click.echo(f"{built.ref} ({built.short_id}) was already on {gateway}: nothing changed")


@release.command("list")
@gateway_options
@click.option("--role", default=None, help="Only this role's releases.")
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's answer as JSON.")
def list_(gateway: str, token: str, role: str | None, as_json: bool) -> None:
    """Releases on the gateway, newest first."""
    answer = GatewayClient(gateway, token).get("/api/v1/releases", role=role)
    if as_json:
        print_json(answer)
        return
    releases: list[dict[str, Any]] = answer["releases"]
    if not releases:
        click.echo(
            "no releases"
            + (f" of role {role!r}" if role else "")
            + ": create one with `clawtrace release create DIR`"
        )
        return
    table = new_table("ID", "ROLE", "VERSION", "MODEL", "FILES", "CREATED", "BY")
    for item in releases:
        table.add_row(
            item["short_id"],
            item["role"],
            item["version"],
            item["model"],
            str(len(item["files"])),
            when(item["created"]),
            item["created_by"],
        )
    plain_console().print(table)


def _fetch(client: GatewayClient, ref: str) -> tuple[Release, dict[str, Any]]:
    try:
        parse_ref(ref)
    except ReleaseError as exc:
        raise click.BadParameter(str(exc), param_hint="REF") from None
    view: dict[str, Any] = client.get(f"/api/v1/releases/{ref}")
    built = msgspec.convert({k: view[k] for k in ("id", "manifest", "files")}, Release)
    return built, view


@release.command()
@gateway_options
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print the release (manifest and files) as JSON.")
def show(gateway: str, token: str, ref: str, as_json: bool) -> None:
    """One release: REF is its id, at least 6 leading hex digits of it, or ROLE@VERSION."""
    built, view = _fetch(GatewayClient(gateway, token), ref)
    if as_json:
        print_json(view)
        return
    _describe(built)
    click.echo(f"created {when(view['created'])} by {view['created_by']}")


def _load(client: GatewayClient, ref: str) -> Release:
    """A directory builds locally (compare work in progress with what is stored); else a gateway ref."""
    path = Path(ref)
    if "@" not in ref and path.is_dir():
        return _build(path)
    return _fetch(client, ref)[0]


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


@release.command()
@gateway_options
@click.argument("a")
@click.argument("b")
def diff(gateway: str, token: str, a: str, b: str) -> None:
    """What differs from release A to release B: manifest fields, then files (unified diffs).

    A and B are release refs (id, id prefix, ROLE@VERSION) or release directories.
    """
    client = GatewayClient(gateway, token)
    old, new = _load(client, a), _load(client, b)
    console = plain_console()
    console.print(f"--- {old.ref} ({old.short_id})")
    console.print(f"+++ {new.ref} ({new.short_id})")
    if old.id == new.id:
        console.print("identical: same id, same content")
        return
    before = _flat(msgspec.to_builtins(old.manifest))
    after = _flat(msgspec.to_builtins(new.manifest))
    changed = [key for key in sorted(before.keys() | after.keys()) if before.get(key) != after.get(key)]
    if changed:
        table = new_table("MANIFEST FIELD", old.ref, new.ref)
        for key in changed:
            table.add_row(key, _shown(before, key), _shown(after, key))
        console.print(table)
    for path in sorted(old.files.keys() | new.files.keys()):
        if path not in new.files:
            console.print(f"removed  {path}")
        elif path not in old.files:
            console.print(f"added    {path} ({len(new.files[path].encode())} bytes)")
        elif old.files[path] != new.files[path]:
            console.print(f"changed  {path}")
            lines = difflib.unified_diff(
                old.files[path].splitlines(keepends=True),
                new.files[path].splitlines(keepends=True),
                fromfile=f"{old.id[:SHORT_ID]}/{path}",
                tofile=f"{new.id[:SHORT_ID]}/{path}",
            )
            click.echo("".join(line if line.endswith("\n") else line + "\n" for line in lines), nl=False)


def _shown(values: dict[str, Any], key: str) -> str:
    return "(absent)" if key not in values else str(values[key])
