"""``clawtrace alerts`` (what is firing, its history, silences, acknowledgements,
the rules) and ``clawtrace audit`` (who did what to which agent)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
from rich.text import Text

from clawtrace.alerts.model import Rule
from clawtrace.alerts.rules_file import RuleError, format_duration, load_rules_file, parse_duration
from clawtrace.cli.client import GatewayClient, GatewayError, when_missing
from clawtrace.cli.options import admin_gateway_options, gateway_options, operator_gateway_options
from clawtrace.cli.tables import DefaultGroup, new_table, plain_console, print_json, when
from clawtrace.cli.top import fmt_age, fmt_number

STATE_STYLES = {
    "firing": "bold red",
    "pending": "yellow",
    "resolved": "green",
    "inactive": "bright_black",
}
SEVERITY_STYLES = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
RESULT_STYLES = {"ok": "green", "failed": "bold red", "held": "yellow", "dry_run": "cyan"}


class Duration(click.ParamType[float]):
    """A positive duration (30m, 2h, 1d, 1h30m or seconds), in seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            seconds = parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if seconds <= 0:
            self.fail(f"{value!r} is no time at all; give a duration like 30m, 2h or 1d", param, ctx)
        return seconds


DURATION = Duration()


# --- output helpers --------------------------------------------------------------


def _ago(seconds: float | None) -> float | None:
    """``--since 1h`` as the epoch time one hour ago."""
    return None if seconds is None else time.time() - seconds


def _value(value: float | None) -> str:
    if value is None:
        return "no data"
    # Counts (failed calls, restarts) read better without a decimal point.
    number = float(value)
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else fmt_number(number)


def _state(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


def _envs_note(env: str | None) -> str:
    return f" in {env}" if env else ""


def _filters_note(env: str | None, rule: str | None, agent: str | None) -> str:
    """What an empty answer was filtered by: " in prod for rule CostSpike"."""
    filters = " ".join(f"{name} {value}" for name, value in (("rule", rule), ("agent", agent)) if value)
    return _envs_note(env) + (f" for {filters}" if filters else "")


since_option = click.option(
    "--since",
    "since",
    type=DURATION,
    default=None,
    metavar="DURATION",
    help="Only the last DURATION: 30m, 1h, 2d. Default: no limit (up to --limit rows).",
)
limit_option = click.option(
    "--limit",
    type=click.IntRange(1, 5000),
    default=50,
    show_default=True,
    help="At most this many rows, newest first.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the gateway's JSON answer.")


# --- clawtrace alerts -------------------------------------------------------------


@click.group(
    cls=DefaultGroup,
    default="list",
    short_help="What is firing now; history, silences, acks and rules.",
)
def alerts() -> None:
    """Alerts raised by the gateway's rules: an agent stuck in a reasoning loop,
    a node that stopped sending heartbeats, a cost spike.

    Without a command, lists the alerts that are pending or firing (same as
    `clawtrace alerts list`; its options are in `clawtrace alerts list --help`).
    Each alert is one rule for one agent; its key RULE/AGENT is what `ack` takes.

    \b
      clawtrace alerts                                  # pending and firing now
      clawtrace alerts --env prod --all                 # resolved ones too
      clawtrace alerts history --since 1h               # every state change
      clawtrace alerts ack ReasoningLoop/a-0417         # stop repeat notifications
      clawtrace alerts silence 'eu-*' --for 2h --reason "maintenance, ana"
      clawtrace alerts rules --env prod                 # the rules in force
      clawtrace alerts rules check prod.yaml            # validate a rules file locally
      clawtrace alerts rules push prod.yaml --env prod  # replace prod's rules (admin)
    """


@alerts.command("list", short_help="Pending and firing alerts (the default command).")
@click.option(
    "--active/--all",
    "active",
    default=True,
    help="Pending and firing alerts only (the default), or resolved ones too.",
)
@click.option(
    "--state",
    type=click.Choice(["firing", "pending", "resolved"]),
    default=None,
    help="Only alerts in this state.",
)
@click.option("--env", default=None, help="Only this environment.")
@click.option("--rule", default=None, help="Only this rule (exact name).")
@click.option("--agent", default=None, help="Only this agent (exact id).")
@json_option
@gateway_options
def list_alerts(
    active: bool,
    state: str | None,
    env: str | None,
    rule: str | None,
    agent: str | None,
    as_json: bool,
    gateway: str,
    token: str,
) -> None:
    """The alerts that are pending or firing: state, rule and agent (the key
    RULE/AGENT), environment, the metric's value, for how long, severity,
    whether it is silenced or acknowledged, and the last remediation action.

    Firing alerts come first, the newest on top. A resolved alert stays listed
    (with --all) for 15 minutes. Needs a viewer credential.
    """
    if state is not None and not active:
        raise click.UsageError("give --all or --state, not both")
    client = GatewayClient(gateway, token)
    body = client.get(
        "/api/v1/alerts", state=state or ("active" if active else "all"), env=env, rule=rule, agent=agent
    )
    if as_json:
        print_json(body)
        return
    console = plain_console()
    rows: list[dict[str, Any]] = body["alerts"]
    if not rows:
        what = f"{state} alerts" if state else ("active alerts" if active else "alerts")
        console.print(f"no {what}{_filters_note(env, rule, agent)}")
        return
    counts: dict[str, int] = {}
    for alert in rows:
        counts[alert["state"]] = counts.get(alert["state"], 0) + 1
    summary = Text(f"{len(rows)} alert{'s' if len(rows) != 1 else ''}{_envs_note(env)}: ")
    for index, name in enumerate(name for name in STATE_STYLES if name in counts):
        if index:
            summary.append(", ")
        summary.append(f"{counts[name]} {name}", style=STATE_STYLES[name])
    console.print(summary)
    now = time.time()
    table = new_table(
        "STATE", "ALERT (RULE/AGENT)", "ENV", "VALUE", "SINCE", "SEVERITY", "NOTES", "LAST ACTION"
    )
    for alert in rows:
        table.add_row(
            _state(alert["state"]),
            Text(alert["key"], style="bold"),
            alert["env"],
            _value(alert.get("value")),
            _since_text(alert, now),
            Text(alert["severity"], style=SEVERITY_STYLES.get(alert["severity"], "")),
            _notes(alert),
            _last_action(alert),
        )
    console.print(table)


def _since_text(alert: dict[str, Any], now: float) -> str:
    state = alert["state"]
    if state == "resolved" and alert.get("resolved_at"):
        return f"{fmt_age(max(0.0, now - alert['resolved_at']))} ago"
    start = alert.get("fired_at") if state == "firing" else alert.get("active_since")
    return "-" if not start else f"for {fmt_age(max(0.0, now - start))}"


def _notes(alert: dict[str, Any]) -> Text:
    notes = Text()
    if alert.get("silenced_by"):
        notes.append(f"silenced ({alert['silenced_by']})", style="magenta")
    if alert.get("inhibited_by"):
        if notes:
            notes.append("  ")
        notes.append(f"inhibited ({alert['inhibited_by']})", style="magenta")
    if alert.get("acknowledged_by"):
        if notes:
            notes.append("  ")
        notes.append(f"acked by {alert['acknowledged_by']}", style="cyan")
    return notes if notes else Text("-", style="bright_black")


def _last_action(alert: dict[str, Any]) -> str:
    action = alert.get("last_action")
    if not action:
        return "-"
    taken = int(alert.get("actions_taken") or 0)
    return f"{action} (x{taken})" if taken > 1 else str(action)


@alerts.command("history", short_help="Every state change of every alert, newest first.")
@click.option("--env", default=None, help="Only this environment.")
@click.option("--rule", default=None, help="Only this rule (exact name).")
@click.option("--agent", default=None, help="Only this agent (exact id).")
@since_option
@limit_option
@json_option
@gateway_options
def history(
    env: str | None,
    rule: str | None,
    agent: str | None,
    since: float | None,
    limit: int,
    as_json: bool,
    gateway: str,
    token: str,
) -> None:
    """Every state change of every alert, newest first: when, which alert,
    from -> to, the metric's value against the rule's threshold, and why
    (like "no data"). Needs a viewer credential.

    \b
      clawtrace alerts history --since 1h
      clawtrace alerts history --agent a-0417 --limit 200
    """
    client = GatewayClient(gateway, token)
    body = client.get(
        "/api/v1/alerts/history", env=env, rule=rule, agent=agent, since=_ago(since), limit=limit
    )
    if as_json:
        print_json(body)
        return
    console = plain_console()
    rows: list[dict[str, Any]] = body["transitions"]
    if not rows:
        window = f" in the last {format_duration(round(since))}" if since else ""
        console.print(f"no alert state changes{_filters_note(env, rule, agent)}{window}")
        return
    table = new_table("TIME", "ALERT (RULE/AGENT)", "ENV", "CHANGE", "VALUE", "DETAIL")
    for row in rows:
        change = _state(row["from_state"])
        change.append(" -> ")
        change.append_text(_state(row["to_state"]))
        value = _value(row.get("value"))
        if row.get("threshold") is not None:
            value += f" (threshold {_value(row['threshold'])})"
        table.add_row(
            when(row["ts"]),
            Text(f"{row['rule']}/{row['agent']}", style="bold"),
            row["env"],
            change,
            value,
            row.get("detail") or "-",
        )
    console.print(table)
    if len(rows) == limit:
        console.print(Text(f"(the newest {limit}; --limit or --since for more)", style="bright_black"))


@alerts.command("ack", short_help="Acknowledge an alert: no more repeat notifications.")
@click.argument("key")
@operator_gateway_options
def acknowledge(key: str, gateway: str, token: str) -> None:
    """Acknowledge the alert KEY (RULE/AGENT as `clawtrace alerts` shows it, or
    its fingerprint): someone is on it, so no repeat notifications. It stays
    listed until it resolves. Needs an operator credential.
    """
    client = GatewayClient(gateway, token)
    with when_missing(f"no live alert {key!r}; `clawtrace alerts` lists them with their keys (RULE/AGENT)"):
        body = client.post(f"/api/v1/alerts/{quote(key, safe='/')}/ack")
    alert = body["alert"]
    console = plain_console()
    line = Text("acknowledged ")
    line.append(alert["key"], style="bold")
    line.append(" (")
    line.append_text(_state(alert["state"]))
    line.append(f", {alert['env']}): no more repeat notifications; it stays listed until it resolves")
    console.print(line)


@alerts.command("silence", short_help="Mute a rule's or an agent's alerts for a while.")
@click.argument("target")
@click.option(
    "--for",
    "duration",
    type=DURATION,
    required=True,
    metavar="DURATION",
    help="How long: 30m, 2h, 1d, 1h30m (at most 90d).",
)
@click.option("--reason", required=True, help="Who is on it and why; kept with the silence and audited.")
@click.option(
    "--env",
    default=None,
    help="Only alerts of this environment. Default: every environment the credential covers.",
)
@operator_gateway_options
def silence(target: str, duration: float, reason: str, env: str | None, gateway: str, token: str) -> None:
    """Mute the alerts of TARGET for a while: no notifications and no remediation
    (restart, stop, quarantine). TARGET is a rule name or an agent id; globs
    match several ('eu-*', 'Cost*'; quote them for the shell). The alerts
    still show in `clawtrace alerts`, marked silenced. Needs an operator credential.

    \b
      clawtrace alerts silence a-0417 --for 2h --reason "debugging it, ana"
      clawtrace alerts silence CostSpike --for 1d --env staging --reason "load test"
    """
    client = GatewayClient(gateway, token)
    body = client.post(
        "/api/v1/silences", {"target": target, "reason": reason, "duration_seconds": duration, "env": env}
    )
    created = body["silence"]
    matching = int(body["matching_alerts"])
    console = plain_console()
    line = Text("silenced ")
    line.append(created["target"], style="bold")
    line.append(f" in {created['env']}" if created.get("env") else " in every environment")
    line.append(f" until {when(created['ends'])} ({format_duration(round(duration))})")
    console.print(line)
    console.print(f"silence id {created['id']}; matches {matching} alert{'s' if matching != 1 else ''} now")
    console.print(
        Text(f"lift it early with: clawtrace alerts unsilence {created['id']}", style="bright_black")
    )


@alerts.command("silences", short_help="The silences in force (--all: ended ones too).")
@click.option("--all", "show_all", is_flag=True, help="Ended and lifted silences too.")
@json_option
@gateway_options
def silences(show_all: bool, as_json: bool, gateway: str, token: str) -> None:
    """The silences in force (with --all, the ended ones too): id, target,
    environment, until when, who made it and why. Needs a viewer credential."""
    client = GatewayClient(gateway, token)
    body = client.get("/api/v1/silences", active="false" if show_all else "true")
    if as_json:
        print_json(body)
        return
    console = plain_console()
    rows: list[dict[str, Any]] = body["silences"]
    if not rows:
        console.print("no silences" if show_all else "no silences in force (--all for ended ones)")
        return
    now = time.time()
    table = new_table("ID", "TARGET", "ENV", "STATE", "UNTIL", "BY", "REASON")
    for row in rows:
        table.add_row(
            row["id"],
            Text(row["target"], style="bold"),
            row.get("env") or "all",
            _silence_state(row, now),
            when(row["ends"]),
            row["created_by"],
            row["reason"],
        )
    console.print(table)


def _silence_state(row: dict[str, Any], now: float) -> Text:
    if row.get("expired_by"):
        return Text(f"lifted by {row['expired_by']}", style="bright_black")
    if row["ends"] <= now:
        return Text("ended", style="bright_black")
    if row["starts"] > now:
        return Text("scheduled", style="cyan")
    return Text(f"active, {fmt_age(row['ends'] - now)} left", style="magenta")


@alerts.command("unsilence", short_help="End a silence now.")
@click.argument("silence_id", metavar="ID")
@operator_gateway_options
def unsilence(silence_id: str, gateway: str, token: str) -> None:
    """End the silence ID now (`clawtrace alerts silences` lists the ids); its
    alerts notify and remediate again. Needs an operator credential."""
    client = GatewayClient(gateway, token)
    with when_missing(
        f"no silence {silence_id!r}; `clawtrace alerts silences --all` lists them with their ids"
    ):
        body = client.delete(f"/api/v1/silences/{quote(silence_id, safe='')}")
    ended = body["silence"]
    by = f" (lifted by {ended['expired_by']})" if ended.get("expired_by") else ""
    click.echo(f"silence {ended['id']} of {ended['target']} ended at {when(ended['ends'])}{by}")


# --- clawtrace alerts rules -----------------------------------------------------------


@alerts.group(
    "rules", cls=DefaultGroup, default="list", short_help="The rules in force; check or push a rules file."
)
def rules() -> None:
    """The alert rules: list those in force, check a rules file, push one.

    Without a command, lists the rules in force per environment (same as
    `clawtrace alerts rules list`, see its --help). Each environment has the shipped rules
    (DeadNode, ReasoningLoop, CostSpike) and those of its file
    <rules_dir>/<env>.yaml; the file format is in docs/alerts.md.

    \b
      clawtrace alerts rules --env prod
      clawtrace alerts rules check prod.yaml --env prod     # no gateway needed
      clawtrace alerts rules push prod.yaml --env prod      # admin credential
    """


@rules.command("list", short_help="The rules in force per environment (the default command).")
@click.option("--env", default=None, help="Only this environment.")
@json_option
@gateway_options
def list_rules(env: str | None, as_json: bool, gateway: str, token: str) -> None:
    """The rules in force per environment: condition, for, severity, actions,
    dry-run, where each comes from, and how many alerts each has pending and
    firing. A rules file that failed to load is shown in red with its errors
    (the environment keeps its previous rules). Needs a viewer credential."""
    client = GatewayClient(gateway, token)
    body = client.get("/api/v1/alerts/rules", env=env)
    if as_json:
        print_json(body)
        return
    console = plain_console()
    environments: list[dict[str, Any]] = body["environments"]
    if not environments:
        console.print(
            "no environment has rules loaded yet: an environment's rules load when its first agent"
            " shows up; name one with --env ENV to see its rules anyway"
        )
        return
    for index, environment in enumerate(environments):
        if index:
            console.print()
        title = Text(environment["env"], style="bold")
        if environment.get("file"):
            title.append(f"  rules file {environment['file']}", style="bright_black")
        console.print(title)
        if environment.get("error"):
            console.print(
                Text(f"rules file not loaded, previous rules kept:\n{environment['error']}", style="bold red")
            )
        table = new_table(
            "RULE", "CONDITION", "FOR", "SEVERITY", "ACTIONS", "DRY-RUN", "SOURCE", "PENDING", "FIRING"
        )
        for rule in environment["rules"]:
            counts = rule.get("alerts") or {}
            pending, firing = int(counts.get("pending", 0)), int(counts.get("firing", 0))
            name = Text(rule["name"], style="bold" if rule.get("enabled", True) else "bright_black")
            if not rule.get("enabled", True):
                name.append(" (disabled)")
            table.add_row(
                name,
                rule["condition"],
                rule["for"],
                Text(rule["severity"], style=SEVERITY_STYLES.get(rule["severity"], "")),
                ", ".join(rule["actions"]),
                Text("yes", style="cyan") if rule.get("dry_run") else "no",
                _source(rule.get("source") or "", environment.get("file") or ""),
                Text(str(pending), style="yellow" if pending else ""),
                Text(str(firing), style="bold red" if firing else ""),
            )
        console.print(table)


def _source(source: str, env_file: str) -> str:
    # The environment's file is named once above its table; a path per row would crowd it.
    return "file" if source and source == env_file else (source or "-")


def _scope_text(rule: Rule) -> str:
    scope = rule.scope
    parts = []
    if scope.envs:
        parts.append("envs " + ",".join(scope.envs))
    if scope.regions:
        parts.append("regions " + ",".join(scope.regions))
    parts.extend(f"{key}={value}" for key, value in sorted(scope.labels.items()))
    if scope.agent != "*":
        parts.append(f"agent {scope.agent}")
    return "; ".join(parts) or "every agent"


def _print_problems(error: RuleError) -> None:
    # Unwrapped, one per line: FILE:LINE: prefixes are for editors and grep.
    for problem in error.problems:
        click.secho(problem.format(error.source), fg="red", err=True)
    count = len(error.problems)
    click.echo(f"{count} problem{'s' if count != 1 else ''} in {error.source}", err=True)


def _load_local(path: str, env: str | None) -> list[Rule]:
    """The rules of the file at ``path``; on problems, prints them and exits with 1."""
    try:
        return load_rules_file(Path(path), env)
    except RuleError as exc:
        _print_problems(exc)
        raise click.exceptions.Exit(1) from None
    except ValueError as exc:  # an environment name that cannot be one
        raise click.BadParameter(str(exc), param_hint="--env") from None


@rules.command("check", short_help="Validate a rules file locally; no gateway needed.")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--env",
    default=None,
    help="Check it as ENV's file (<rules_dir>/ENV.yaml): scope.envs may then name ENV only.",
)
def check(file: str, env: str | None) -> None:
    """Validate the rules file FILE here, without a gateway: print its rules, or
    every problem as FILE:LINE: FIELD: PROBLEM and exit with status 1.

    \b
      clawtrace alerts rules check rules/prod.yaml --env prod
    """
    loaded = _load_local(file, env)
    console = plain_console()
    count = len(loaded)
    console.print(Text(f"{file}: {count} rule{'s' if count != 1 else ''}, no problems", style="green"))
    if not loaded:
        return
    table = new_table("RULE", "CONDITION", "FOR", "SEVERITY", "ACTIONS", "SCOPE", "NOTES")
    for rule in loaded:
        notes = [note for flag, note in ((rule.dry_run, "dry-run"), (not rule.enabled, "disabled")) if flag]
        table.add_row(
            Text(rule.name, style="bold"),
            str(rule.condition),
            format_duration(rule.for_seconds),
            Text(rule.severity, style=SEVERITY_STYLES.get(rule.severity, "")),
            ", ".join(rule.actions),
            _scope_text(rule),
            ", ".join(notes) or "-",
        )
    console.print(table)


@rules.command("push", short_help="Replace an environment's rules on the gateway (admin).")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--env", required=True, help="The environment whose rules FILE replaces.")
@admin_gateway_options
def push(file: str, env: str, gateway: str, token: str) -> None:
    """Replace ENV's rules file on the gateway with FILE and load it at once.
    FILE is checked here first, then again by the gateway; a file with any
    problem is refused whole and the current rules stay. Needs an admin
    credential for ENV.

    \b
      clawtrace alerts rules push rules/prod.yaml --env prod
    """
    _load_local(file, env)
    content = Path(file).read_bytes()
    client = GatewayClient(gateway, token)
    try:
        body = client.put(f"/api/v1/alerts/rules/{quote(env, safe='')}", content, "application/yaml")
    except GatewayError as exc:
        if exc.code != "invalid_rules":
            raise
        click.echo(f"the gateway refused {file} (the rules of {env} are unchanged):", err=True)
        for line in exc.detail.splitlines():
            click.secho(line, fg="red", err=True)
        raise click.exceptions.Exit(1) from None
    names: list[str] = body["rules"]
    console = plain_console()
    console.print(Text(f"pushed {file} as the rules of {body['env']}", style="green"))
    console.print(f"in force now ({len(names)}): {', '.join(names) or 'none'}")


# --- clawtrace audit ---------------------------------------------------------------


@click.command(short_help="Who restarted, quarantined or silenced what, and why.")
@click.option("--env", default=None, help="Only this environment.")
@click.option("--target", default=None, metavar="AGENT", help="Only actions on this agent (exact id).")
@click.option(
    "--action",
    default=None,
    help="Only this action (restart, quarantine, silence, policy, refused, apply_policy, ...).",
)
@click.option(
    "--decision",
    type=click.Choice(["allow", "deny", "require_approval"]),
    default=None,
    help="Only tool-policy decisions with this outcome (implies --action policy).",
)
@since_option
@limit_option
@json_option
@gateway_options
def audit(
    env: str | None,
    target: str | None,
    action: str | None,
    decision: str | None,
    since: float | None,
    limit: int,
    as_json: bool,
    gateway: str,
    token: str,
) -> None:
    """The audit log, newest first: every restart, stop, quarantine and release
    (by a person or by an alert's remediation), silence, acknowledgement and
    rules change, with who did it, the reason and how it went. Needs a viewer
    credential.

    \b
      clawtrace audit --since 1h
      clawtrace audit --target a-0417
      clawtrace audit --decision deny --env prod     # tool calls the policy refused
    """
    client = GatewayClient(gateway, token)
    body = client.get(
        "/api/v1/audit",
        env=env,
        target=target,
        action=action,
        decision=decision,
        since=_ago(since),
        limit=limit,
    )
    if as_json:
        print_json(body)
        return
    console = plain_console()
    rows: list[dict[str, Any]] = body["entries"]
    if not rows:
        on = f" on {target}" if target else ""
        console.print(f"no audit entries{on}{_envs_note(env)}")
        return
    table = new_table("TIME", "ACTOR", "ACTION", "TARGET", "ENV", "RESULT", "REASON", "DETAIL")
    for row in rows:
        table.add_row(
            when(row["ts"]),
            row["actor"],
            Text(row["action"], style="bold"),
            row["target"],
            row["env"],
            Text(row["result"], style=RESULT_STYLES.get(row["result"], "")),
            row["reason"],
            _detail_text(row.get("detail") or {}),
        )
    console.print(table)
    if len(rows) == limit:
        console.print(Text(f"(the newest {limit}; --limit or --since for more)", style="bright_black"))


def _detail_text(detail: dict[str, Any]) -> str:
    # The driver's own words first; the rest are ids for cross-reference.
    parts = [str(detail["detail"])] if "detail" in detail else []
    for key, value in detail.items():
        if key == "detail":
            continue
        if key == "until" and isinstance(value, int | float):
            value = when(value)
        elif not isinstance(value, str):
            value = json.dumps(value, separators=(",", ":"))
        parts.append(f"{key}={value}")
    return "  ".join(parts) or "-"
