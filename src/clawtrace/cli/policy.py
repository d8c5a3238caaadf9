"""``clawtrace policy`` (check, evaluate and test Cedar policy bundles locally; apply,
show and roll back an environment's bundle on the gateway) and ``clawtrace approvals``
(tool calls waiting for a person).

The local commands decide with the same ``PolicyEngine`` as the node agent and
the gateway, so what `policy eval` and `policy test` say is what an agent gets.
"""

from __future__ import annotations

import difflib
import json
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args
from urllib.parse import quote

import click
import httpx
import msgspec
import yaml
from rich.table import Table
from rich.text import Text

from clawtrace.cli.client import GatewayClient, GatewayError, when_missing
from clawtrace.cli.options import admin_gateway_options, gateway_options, operator_gateway_options
from clawtrace.cli.tables import DefaultGroup, new_table, plain_console, print_json, when
from clawtrace.cli.top import fmt_age
from clawtrace.policy import (
    AgentIdentity,
    BundleSettings,
    CommandFact,
    CompiledBundle,
    Decision,
    PolicyBundle,
    PolicyEngine,
    PolicyError,
    ShellFacts,
    Verdict,
    compile_bundle,
    load_bundle,
    normalise,
)
from clawtrace.policy.engine import within

VERDICTS: tuple[Verdict, ...] = get_args(Verdict)
VERDICT_NAMES: dict[str, Verdict] = {verdict: verdict for verdict in VERDICTS}
DECISION_STYLES: dict[str, str] = {
    "allow": "bold green",
    "require_approval": "bold yellow",
    "deny": "bold red",
}
# `policy eval` exits with these so that scripts can branch on the decision;
# 1 is left for "the command line or the bundle is wrong".
EXIT_CODES: dict[str, int] = {"allow": 0, "require_approval": 2, "deny": 3}
APPROVAL_STYLES = {
    "pending": "bold yellow",
    "approved": "green",
    "rejected": "red",
    "expired": "bright_black",
}

# Fixed defaults rather than this machine's directories: a test table must
# decide the same on a laptop and in CI, and eval the same as test.
DEFAULT_WORKSPACE = "/workspace"
DEFAULT_HOME = "/home/agent"
DEFAULT_AGENT = "local"
DEFAULT_ROLE = "default"


# --- output helpers ------------------------------------------------------------------


def _plural(count: int, word: str, words: str = "") -> str:
    return f"{count} {word if count == 1 else (words or word + 's')}"


def _verdict(decision: str) -> Text:
    return Text(decision, style=DECISION_STYLES.get(decision, ""))


# --- local bundles -------------------------------------------------------------------


def default_env(path: Path) -> str:
    """The environment a local bundle is checked as: its directory's name
    (examples/policies/prod -> prod), the directory of a lone .cedar file."""
    directory = path if path.is_dir() else path.parent
    return directory.resolve().name or "dev"


def print_problems(source: str, problems: list[str]) -> None:
    # Unwrapped, one per line: FILE:LINE: prefixes are for editors and grep.
    for problem in problems:
        click.secho(problem, fg="red", err=True)
    click.echo(f"{_plural(len(problems), 'problem')} in {source}", err=True)


def compile_local(path: str, env: str | None) -> CompiledBundle:
    """The bundle at ``path``, validated; on problems, prints them and exits with 1."""
    location = Path(path)
    try:
        bundle = load_bundle(location, env or default_env(location))
    except PolicyError as exc:
        print_problems(path, exc.problems)
        raise click.exceptions.Exit(1) from None
    try:
        return compile_bundle(bundle)
    except PolicyError as exc:
        print_problems(path, [_as_given(problem, location, bundle) for problem in exc.problems])
        raise click.exceptions.Exit(1) from None


def _as_given(problem: str, location: Path, bundle: PolicyBundle) -> str:
    """A "policy.cedar:12: ..." problem as "examples/policies/prod/policy.cedar:12: ...",
    so that an editor or terminal can jump to it from where the user typed the path."""
    for name in bundle.files:
        if problem.startswith(f"{name}:"):
            given = location / name if location.is_dir() else location
            return f"{given}{problem[len(name) :]}"
    return problem


def policies_table(compiled: CompiledBundle) -> Table:
    table = new_table("POLICY", "EFFECT", "WHERE", "APPROVAL", "REASON")
    for info in compiled.policies.values():
        table.add_row(
            Text(info.name, style="bold"),
            Text(info.effect, style="green" if info.effect == "permit" else "red"),
            f"{info.file}:{info.line}",
            Text("yes", style="yellow") if info.approval else "-",
            info.reason or "-",
        )
    return table


def settings_line(settings: BundleSettings) -> str:
    tools = ", ".join(f"{tool} ({argument})" for tool, argument in settings.shell_tools.items()) or "none"
    timeout = settings.approval_timeout_seconds
    return f"shell tools: {tools}; approvals wait {timeout:g}s, then deny"


# --- deciding one call ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One tool call as an agent would make it, and where it would run."""

    tool: str
    args: dict[str, Any]
    role: str = DEFAULT_ROLE
    region: str = ""
    agent: str = DEFAULT_AGENT
    workspace: str = DEFAULT_WORKSPACE
    home: str = DEFAULT_HOME
    cwd: str | None = None  # relative to the workspace; None: the workspace itself

    @property
    def directory(self) -> str:
        return posixpath.normpath(posixpath.join(self.workspace, self.cwd or "."))

    def describe(self, compiled: CompiledBundle) -> str:
        command = self.command(compiled)
        if command is not None:
            return command
        return f"{self.tool} {json.dumps(self.args, separators=(',', ':'))}" if self.args else self.tool

    def command(self, compiled: CompiledBundle) -> str | None:
        argument = compiled.bundle.settings.shell_tools.get(self.tool)
        value = self.args.get(argument) if argument else None
        return value if isinstance(value, str) else None


def build_args(
    compiled: CompiledBundle, tool: str, command: str | None, args: dict[str, Any]
) -> dict[str, Any]:
    """The call's arguments, with ``command`` put where ``tool`` takes its shell command;
    ValueError (for the user) when ``tool`` takes none."""
    if command is None:
        return args
    shell_tools = compiled.bundle.settings.shell_tools
    argument = shell_tools.get(tool)
    if argument is None:
        known = ", ".join(shell_tools) or "none"
        raise ValueError(
            f"tool {tool!r} does not run shell commands in this bundle (its shell tools: {known});"
            " give its arguments as args instead, or list it under [shell_tools] in bundle.toml"
        )
    return {**args, argument: command}


class Decider:
    """One engine per identity and workspace, as the node agent keeps one per agent."""

    def __init__(self, compiled: CompiledBundle, env: str) -> None:
        self.compiled = compiled
        self.env = env
        self._engines: dict[tuple[str, ...], PolicyEngine] = {}

    def engine(self, call: Call) -> PolicyEngine:
        key = (call.agent, call.role, call.region, call.workspace, call.home)
        if key not in self._engines:
            identity = AgentIdentity(agent=call.agent, env=self.env, role=call.role, region=call.region)
            # No env, as on the gateway: $HOME and $PWD come from home and cwd, every other
            # variable is unknown (dynamic) rather than empty.
            self._engines[key] = PolicyEngine(
                self.compiled, identity, workspace=call.workspace, home=call.home
            )
        return self._engines[key]

    def decide(self, call: Call) -> Decision:
        return self.engine(call).decide(call.tool, call.args, cwd=call.directory)

    def facts(self, call: Call, decision: Decision) -> ShellFacts | None:
        """What a shell command normalises to, even when the engine stopped before
        looking (the tool itself was denied): that is what the user asked to see."""
        if decision.facts is not None:
            return decision.facts
        command = call.command(self.compiled)
        if command is None:
            return None
        return normalise(command, cwd=call.directory, home=call.home)


def facts_json(facts: ShellFacts | None) -> dict[str, Any] | None:
    if facts is None:
        return None
    return {"error": facts.error, "commands": [command_json(fact) for fact in facts.commands]}


def command_json(fact: CommandFact) -> dict[str, Any]:
    return {
        "program": fact.program,
        "args": list(fact.args),
        "flags": sorted(fact.flags),
        "paths": list(fact.paths),
        "hosts": list(fact.hosts),
        "privileged": fact.privileged,
        "dynamic": fact.dynamic,
        "inline_code": fact.inline_code or "",
        "via": list(fact.via),
        "writes": list(fact.writes),
    }


def _words(values: Any) -> str:
    items = [str(value) for value in values]
    return " ".join(items) if items else "-"


def _paths_text(paths: Any, workspace: str) -> Text:
    text = Text()
    for index, path in enumerate(paths):
        if index:
            text.append("  ")
        text.append(str(path))
        if not within(str(path), (workspace,)):
            text.append(" (outside the workspace)", style="yellow")
    return text if text else Text("-")


def _flag_text(value: bool, style: str) -> Text:
    return Text("yes", style=style) if value else Text("no")


def _fact_line(label: str, value: str | Text) -> Text:
    line = Text(f"  {label:<12} ", style="bright_black")
    line.append_text(value if isinstance(value, Text) else Text(value))
    return line


def facts_lines(facts: ShellFacts, workspace: str) -> Iterator[Text]:
    """One block per command the shell would run: what the policies were asked about."""
    if facts.error is not None:
        yield Text(f"the command does not parse: {facts.error}", style="yellow")
        return
    count = len(facts.commands)
    for index, fact in enumerate(facts.commands, 1):
        if index > 1:
            yield Text()
        title = Text(f"command {index} of {count}: " if count > 1 else "command: ")
        title.append(fact.program or "(dynamic: only known at run time)", style="bold")
        yield title
        yield _fact_line("args", _words(fact.args))
        yield _fact_line("flags", ", ".join(sorted(fact.flags)) or "-")
        yield _fact_line("paths", _paths_text(fact.paths, workspace))
        yield _fact_line("writes", _paths_text(fact.writes, workspace))
        yield _fact_line("hosts", ", ".join(fact.hosts) or "-")
        yield _fact_line("privileged", _flag_text(fact.privileged, "bold red"))
        yield _fact_line("dynamic", _flag_text(fact.dynamic, "yellow"))
        yield _fact_line("inline code", Text(fact.inline_code, style="yellow") if fact.inline_code else "-")
        yield _fact_line("via", ", ".join(fact.via) or "-")


# --- test tables -----------------------------------------------------------------------

CASE_KEYS = (
    "name",
    "tool",
    "command",
    "args",
    "role",
    "region",
    "agent",
    "cwd",
    "workspace",
    "home",
    "expect",
    "rule",
)
_STRING_KEYS = ("name", "role", "region", "agent", "cwd", "workspace", "home")
# No expected rule given (any rule will do), as opposed to `rule: null` (the default deny).
_ANY_RULE = object()


@dataclass(frozen=True, slots=True)
class PolicyCase:
    number: int  # 1-based, as people count cases
    line: int
    name: str
    call: Call
    expect: Verdict
    rule: object = field(default=_ANY_RULE)  # str, None or _ANY_RULE

    def label(self) -> str:
        return f"#{self.number} {self.name}" if self.name else f"#{self.number}"


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: PolicyCase
    decision: Decision

    @property
    def passed(self) -> bool:
        if self.decision.decision != self.case.expect:
            return False
        return self.case.rule is _ANY_RULE or self.decision.rule == self.case.rule


class CaseFileError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _did_you_mean(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_cases(path: Path, compiled: CompiledBundle) -> list[PolicyCase]:
    """The cases of a test table; CaseFileError listing every problem, each naming the
    file, the case number and its line."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CaseFileError([f"{source}: no such file; give the path of a YAML list of cases"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CaseFileError([f"{source}: cannot read it: {exc}"]) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise CaseFileError([f"{where}: not valid YAML: {problem}"]) from None
    if not isinstance(data, list) or not isinstance(root, yaml.SequenceNode):
        raise CaseFileError(
            [f"{source}: expected a YAML list of cases, like\n  - command: rm -rf /\n    expect: deny"]
        )
    if not data:
        raise CaseFileError([f"{source}: no cases in the file"])
    problems: list[str] = []
    cases: list[PolicyCase] = []
    for index, (item, node) in enumerate(zip(data, root.value, strict=True), 1):
        line = node.start_mark.line + 1
        where = f"{source}:{line}: case #{index}"
        case = _case(item, index, line, where, compiled, problems)
        if case is not None:
            cases.append(case)
    if problems:
        raise CaseFileError(problems)
    return cases


def _case(
    item: Any, number: int, line: int, where: str, compiled: CompiledBundle, problems: list[str]
) -> PolicyCase | None:
    if not isinstance(item, dict):
        problems.append(f"{where}: expected a mapping (tool:, command:, expect:, ...), got {item!r}")
        return None
    found = len(problems)
    name = item.get("name")
    if isinstance(name, str) and name:
        where += f" ({name})"
    for key in item:
        if key not in CASE_KEYS:
            problems.append(
                f"{where}: unknown key {key!r}{_did_you_mean(str(key), CASE_KEYS)};"
                f" a case may have {', '.join(CASE_KEYS)}"
            )
    for key in _STRING_KEYS:
        if key in item and not isinstance(item[key], str):
            problems.append(f"{where}: {key} must be a string, got {item[key]!r}")
    tool = item.get("tool", "exec")
    if not isinstance(tool, str) or not tool:
        problems.append(f"{where}: tool must be a tool name like exec or read_file, got {tool!r}")
    command = item.get("command")
    if command is not None and not isinstance(command, str):
        problems.append(f"{where}: command must be a string (quote it in YAML), got {command!r}")
    args = item.get("args", {})
    if not isinstance(args, dict):
        problems.append(f"{where}: args must be a mapping of argument name to value, got {args!r}")
    if (
        command is None
        and "args" not in item
        and isinstance(tool, str)
        and tool in compiled.bundle.settings.shell_tools
    ):
        problems.append(f"{where}: give the command {tool} runs (command: ...), or args")
    expect = VERDICT_NAMES.get(item["expect"]) if isinstance(item.get("expect"), str) else None
    if expect is None:
        given = "missing" if "expect" not in item else f"{item['expect']!r}"
        problems.append(f"{where}: expect must be one of {', '.join(VERDICTS)} ({given})")
    rule = item.get("rule", _ANY_RULE)
    if rule is not _ANY_RULE and rule is not None and not isinstance(rule, str):
        problems.append(f"{where}: rule must be a policy @id, or null for the default deny, got {rule!r}")
    for key in ("workspace", "home"):
        value = item.get(key)
        if isinstance(value, str) and not value.startswith("/"):
            problems.append(f"{where}: {key} must be an absolute path, got {value!r}")
    if len(problems) > found or expect is None:
        return None
    try:
        call_args = build_args(compiled, tool, command, args)
    except ValueError as exc:
        problems.append(f"{where}: {exc}")
        return None
    call = Call(
        tool=tool,
        args=call_args,
        role=item.get("role", DEFAULT_ROLE),
        region=item.get("region", ""),
        agent=item.get("agent", DEFAULT_AGENT),
        workspace=item.get("workspace", DEFAULT_WORKSPACE),
        home=item.get("home", DEFAULT_HOME),
        cwd=item.get("cwd"),
    )
    return PolicyCase(number=number, line=line, name=name or "", call=call, expect=expect, rule=rule)


def run_cases(compiled: CompiledBundle, env: str, cases: list[PolicyCase]) -> list[CaseResult]:
    decider = Decider(compiled, env)
    return [CaseResult(case, decider.decide(case.call)) for case in cases]


def _expected_text(case: PolicyCase) -> Text:
    text = _verdict(case.expect)
    if case.rule is not _ANY_RULE:
        text.append(f" by {case.rule}" if case.rule is not None else " (default deny)")
    return text


def _got_text(decision: Decision) -> Text:
    text = _verdict(decision.decision)
    text.append(f" by {decision.rule}" if decision.rule else " (default deny)")
    return text


# --- clawtrace policy -------------------------------------------------------------------

env_option = click.option(
    "--env",
    default=None,
    help="The environment the agent is in (principal.env). Default: the name of the bundle's"
    " directory (examples/policies/prod -> prod).",
)


class _EvalUsageError(click.UsageError):
    exit_code = 1


class _UsageErrorExitsOne(click.Command):
    """Exit 2 means require_approval for `policy eval`; a mistyped option must not look like one."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise _EvalUsageError(exc.format_message(), exc.ctx) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _EvalUsageError(exc.format_message(), exc.ctx) from None


@click.group(short_help="Check, test, evaluate and apply tool policies (Cedar).")
def policy() -> None:
    """Tool policies: which tools and shell commands an agent may run, decided
    outside the agent by Cedar policies (docs/policies.md).

    A bundle is a .cedar file or a directory of them with an optional
    bundle.toml; each environment has one. check, eval and test work locally,
    with no gateway and no credential; apply, show and rollback change or read
    an environment's bundle on the gateway.

    \b
      clawtrace policy check examples/policies/prod
      clawtrace policy eval --policy examples/policies/prod --command 'rm -rf /'
      clawtrace policy test examples/policies/prod examples/policies/prod/tests.yaml
      clawtrace policy apply examples/policies/prod --env prod     # admin credential
      clawtrace policy show --env prod
      clawtrace policy rollback --env prod --version 3f2a9c1b0e4d
    """


@policy.command("check", short_help="Validate a bundle locally; no gateway needed.")
@click.argument("path", type=click.Path(exists=True))
@env_option
def check(path: str, env: str | None) -> None:
    """Validate the bundle at PATH (a .cedar file or a bundle directory) against
    the ClawTrace schema, here and without a gateway. Prints its policies (name,
    effect, FILE:LINE, whether it asks for approval) and the bundle's version,
    or every problem as FILE:LINE: PROBLEM on stderr and exits with status 1.

    A bundle with any problem is refused whole, by this command, by `policy
    apply` and by the gateway: Cedar skips a policy that errors at run time, so
    a misspelt attribute in a forbid would otherwise silently allow.

    \b
      clawtrace policy check examples/policies/prod
      clawtrace policy check my-rule.cedar
    """
    compiled = compile_local(path, env)
    console = plain_console()
    count = _plural(len(compiled.policies), "policy", "policies")
    console.print(Text(f"{path}: {count}, version {compiled.bundle.version}, no problems", style="green"))
    console.print(policies_table(compiled))
    console.print(Text(settings_line(compiled.bundle.settings), style="bright_black"))


def _parse_args_json(value: str | None) -> dict[str, Any]:
    if value is None:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f'not JSON ({exc.msg} at character {exc.pos}); give an object like \'{{"path": "/etc/hosts"}}\'',
            param_hint="--args",
        ) from None
    if not isinstance(parsed, dict):
        raise click.BadParameter(
            'give a JSON object of argument name to value, like \'{"path": "/etc/hosts"}\'',
            param_hint="--args",
        )
    return parsed


def _absolute(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value.startswith("/"):
        raise click.BadParameter(f"{value!r} is not an absolute path (the agent's view, not this machine's)")
    return posixpath.normpath(value)


@policy.command("eval", cls=_UsageErrorExitsOne, short_help="Decide one tool call locally (exit 0/2/3).")
@click.option(
    "--policy",
    "policy_path",
    required=True,
    type=click.Path(exists=True),
    metavar="PATH",
    help="The bundle: a .cedar file or a bundle directory.",
)
@click.option("--tool", default="exec", show_default=True, help="The tool the agent calls.")
@click.option(
    "--command",
    default=None,
    help="The shell command, for a shell tool (exec, shell, bash, ... as bundle.toml lists them).",
)
@click.option(
    "--args", "args_json", default=None, metavar="JSON", help="The tool's arguments as a JSON object."
)
@click.option("--role", default=DEFAULT_ROLE, show_default=True, help="The agent's role (principal.role).")
@env_option
@click.option("--region", default="", help="The agent's region (principal.region).")
@click.option("--agent", default=DEFAULT_AGENT, show_default=True, help="The agent's id.")
@click.option(
    "--workspace",
    default=DEFAULT_WORKSPACE,
    metavar="DIR",
    show_default=True,
    callback=_absolute,
    help="The agent's workspace: paths inside it are 'inside the workspace'.",
)
@click.option(
    "--cwd",
    default=None,
    metavar="DIR",
    help="Where the command runs, absolute or relative to --workspace. Default: the workspace.",
)
@click.option(
    "--home",
    default=DEFAULT_HOME,
    metavar="DIR",
    show_default=True,
    callback=_absolute,
    help="The agent's home directory (what ~ and $HOME expand to).",
)
@click.option(
    "--json", "as_json", is_flag=True, help='Print {"decision", "rule", "reason", "facts"} as JSON.'
)
def evaluate(
    policy_path: str,
    tool: str,
    command: str | None,
    args_json: str | None,
    role: str,
    env: str | None,
    region: str,
    agent: str,
    workspace: str,
    cwd: str | None,
    home: str,
    as_json: bool,
) -> None:
    """Decide one tool call with the bundle at --policy, as the node agent would,
    and print the decision, the policy that decided it and why, and what the
    shell command normalises to: each program it would run, with its flags,
    paths, hosts, and whether it is privileged (sudo), dynamic ($VAR, $(...)),
    runs inline code (python -c) or is reached through another (bash -c, xargs).

    \b
    Exit status, for scripts:
      0  allow
      2  require_approval (a person must approve it)
      3  deny
      1  the command line or the bundle is wrong (nothing was decided)

    \b
      clawtrace policy eval --policy examples/policies/prod --command 'rm -rf /'
      clawtrace policy eval --policy prod/ --command 'git push --force' --role deployer
      clawtrace policy eval --policy prod/ --tool read_file --args '{"path": "/etc/passwd"}'
    """
    compiled = compile_local(policy_path, env)
    bundle_env = compiled.bundle.env
    try:
        call_args = build_args(compiled, tool, command, _parse_args_json(args_json))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--tool / --command") from None
    call = Call(
        tool=tool,
        args=call_args,
        role=role,
        region=region,
        agent=agent,
        workspace=workspace,
        home=home,
        cwd=cwd,
    )
    decider = Decider(compiled, bundle_env)
    decision = decider.decide(call)
    facts = decider.facts(call, decision)
    if as_json:
        print_json(
            {
                "decision": decision.decision,
                "rule": decision.rule,
                "reason": decision.reason,
                "facts": facts_json(facts),
            }
        )
        raise click.exceptions.Exit(EXIT_CODES[decision.decision])
    console = plain_console()
    headline = Text(decision.decision.upper().replace("_", " "), style=DECISION_STYLES[decision.decision])
    headline.append("  ")
    if decision.rule:
        headline.append("by ")
        headline.append(decision.rule, style="bold")
    else:
        headline.append("no policy matched (default deny)")
    console.print(headline)
    if decision.reason:
        console.print(f"  {decision.reason}")
    console.print()
    console.print(
        Text(
            f"{tool}: {call.describe(compiled)}" if call.command(compiled) else call.describe(compiled),
            style="bold",
        )
    )
    console.print(
        Text(
            f"  bundle {policy_path} (version {compiled.bundle.version}); env {bundle_env}, role {role}"
            f"{f', region {region}' if region else ''}, agent {agent}\n"
            f"  workspace {workspace}, cwd {call.directory}",
            style="bright_black",
        )
    )
    if facts is not None:
        console.print()
        if decision.facts is None:
            console.print(
                Text("(decided by the tool alone; the command was not looked at)", style="bright_black")
            )
        for line in facts_lines(facts, workspace):
            console.print(line)
    raise click.exceptions.Exit(EXIT_CODES[decision.decision])


@policy.command("test", short_help="Run a bundle's test table of tool calls and expected decisions.")
@click.argument("path", type=click.Path(exists=True))
@click.argument("cases_file", metavar="CASES.yaml", type=click.Path(dir_okay=False))
@env_option
@click.option("-v", "--verbose", is_flag=True, help="List every case, not only the failures.")
def test(path: str, cases_file: str, env: str | None, verbose: bool) -> None:
    """Decide every case of CASES.yaml with the bundle at PATH and compare with
    what it expects; prints the failures and a summary, and exits with status 1
    if any case fails (or the bundle or the file has a problem).

    CASES.yaml is a list of tool calls, each with the decision it must get:

    \b
      - name: recursive rm of the root        # optional
        command: rm -rf /                     # for a shell tool (tool: exec by default)
        expect: deny                          # allow | deny | require_approval
        rule: no-recursive-rm-outside-workspace   # optional: the deciding @id; null: default deny
      - tool: read_file
        args: {path: /etc/passwd}
        role: reader                          # optional, as are region, agent,
        expect: deny                          # cwd, workspace and home

    Defaults: tool exec, role default, workspace /workspace, home /home/agent,
    cwd the workspace (a relative cwd is inside the workspace).

    \b
      clawtrace policy test examples/policies/prod examples/policies/prod/tests.yaml
    """
    compiled = compile_local(path, env)
    try:
        cases = load_cases(Path(cases_file), compiled)
    except CaseFileError as exc:
        print_problems(cases_file, exc.problems)
        raise click.exceptions.Exit(1) from None
    results = run_cases(compiled, compiled.bundle.env, cases)
    failed = [result for result in results if not result.passed]
    console = plain_console()
    shown = results if verbose else failed
    if shown:
        table = new_table(
            *(["RESULT"] if verbose else []), "CASE", "LINE", "CALL", "EXPECTED", "GOT", "REASON"
        )
        for result in shown:
            case = result.case
            cells: list[str | Text] = [
                Text(case.label(), style="bold"),
                str(case.line),
                case.call.describe(compiled),
                _expected_text(case),
                _got_text(result.decision),
                result.decision.reason or "-",
            ]
            if verbose:
                cells.insert(
                    0, Text("ok", style="green") if result.passed else Text("FAILED", style="bold red")
                )
            table.add_row(*cells)
        console.print(table)
    where = f"{cases_file} against {path} (env {compiled.bundle.env}, version {compiled.bundle.version})"
    if failed:
        console.print(
            Text(f"{len(failed)} of {_plural(len(results), 'case')} failed: {where}", style="bold red")
        )
        raise click.exceptions.Exit(1)
    console.print(Text(f"all {_plural(len(results), 'case')} passed: {where}", style="green"))


class _PolicyClient(GatewayClient):
    """Keeps the error object of the last refused request: a refused bundle's
    problems are a list in it, which GatewayError does not carry."""

    def __init__(self, gateway: str, token: str) -> None:
        super().__init__(gateway, token)
        self.last_error: dict[str, Any] = {}
        self.http.event_hooks["response"] = [self._keep_error]

    def _keep_error(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        response.read()
        try:
            error = response.json().get("error")
        except (ValueError, AttributeError):
            return
        if isinstance(error, dict):
            self.last_error = error


def _env_path(env: str) -> str:
    return f"/api/v1/policies/{quote(env, safe='')}"


def _compile_remote(env: str, active: Mapping[str, Any]) -> CompiledBundle | None:
    """The gateway's active bundle compiled here, to list its policies; None if this
    version of clawtrace cannot (the policies are still in force on the gateway)."""
    try:
        settings = msgspec.convert(active.get("settings") or {}, BundleSettings)
        files = {str(name): str(text) for name, text in (active.get("files") or {}).items()}
        return compile_bundle(PolicyBundle(env=env, files=files, settings=settings).with_version())
    except (PolicyError, msgspec.ValidationError):
        return None


@policy.command("apply", short_help="Make a bundle an environment's policies (admin).")
@click.argument("path", type=click.Path(exists=True))
@click.option("--env", required=True, help="The environment whose policies PATH replaces.")
@admin_gateway_options
def apply(path: str, env: str, gateway: str, token: str) -> None:
    """Make the bundle at PATH the policies of ENV. It is validated here first
    (problems name your files), then again by the gateway, which pushes it to
    every node agent of ENV; a bundle with any problem is refused whole and the
    current policies stay. Applying the same content again changes nothing.
    Needs an admin credential for ENV.

    \b
      clawtrace policy apply examples/policies/prod --env prod
    """
    compiled = compile_local(path, env)
    bundle = compiled.bundle
    client = _PolicyClient(gateway, token)
    payload = {"files": bundle.files, "settings": msgspec.to_builtins(bundle.settings)}
    try:
        body = client.request("PUT", _env_path(env), {}, json=payload)
    except GatewayError as exc:
        if exc.code != "invalid_policy":
            raise
        click.echo(f"the gateway refused {path} (the policies of {env} are unchanged):", err=True)
        problems = [str(p) for p in client.last_error.get("problems") or []] or exc.detail.splitlines()
        for problem in problems:
            click.secho(problem, fg="red", err=True)
        raise click.exceptions.Exit(1) from None
    version = str(body.get("version") or bundle.version)
    console = plain_console()
    line = Text(f"{env}: version {version}", style="bold")
    if body.get("changed") is False:
        line.append(" unchanged (that content is already active)", style="bright_black")
        console.print(line)
        return
    count = _plural(len(compiled.policies), "policy", "policies")
    line.append(f" is active, applied from {path} ({count})")
    line.stylize("green")
    console.print(line)
    console.print(_delivery_text(body))


def _delivery_text(body: Mapping[str, Any]) -> Text:
    previous = body.get("previous")
    text = Text(f"was {previous}; " if previous else "the first bundle of this environment; ")
    delivered, missed = body.get("delivered") or [], body.get("not_delivered") or []
    if not delivered and not missed:
        text.append("no node agent is connected now; each gets it when it connects")
        return text
    text.append(f"pushed to {_plural(len(delivered), 'connected node agent')}")
    if missed:
        text.append(f", not to {', '.join(missed)}", style="yellow")
        text.append(" (they get it when they reconnect)")
    return text


@policy.command("show", short_help="An environment's active policies and their history.")
@click.option("--env", required=True, help="The environment.")
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's JSON answer.")
@gateway_options
def show(env: str, as_json: bool, gateway: str, token: str) -> None:
    """The policies in force in ENV: version, who applied it and when, each
    policy (name, effect, FILE:LINE, approval, reason), the settings, and the
    versions applied before (any of which `policy rollback` can restore).
    Needs a viewer credential.

    \b
      clawtrace policy show --env prod
      clawtrace policy show --env prod --json | jq -r '.active.files["policy.cedar"]'
    """
    body = GatewayClient(gateway, token).get(_env_path(env))
    if as_json:
        print_json(body)
        return
    console = plain_console()
    active = body.get("active")
    if not active:
        console.print(
            f"{env} has no policies applied yet;"
            f" apply a bundle with `clawtrace policy apply PATH --env {env}`"
        )
    else:
        title = Text(f"{env}: version {active.get('version', '?')}", style="bold")
        title.append(f"  applied by {active.get('applied_by') or '?'} at {when(active.get('applied_at'))}")
        console.print(title)
        compiled = _compile_remote(env, active)
        if compiled is None:
            files = ", ".join(active.get("files") or {}) or "none"
            console.print(
                Text(
                    f"(this clawtrace cannot list the policies of this version; files: {files})",
                    style="yellow",
                )
            )
        else:
            console.print(policies_table(compiled))
            console.print(Text(settings_line(compiled.bundle.settings), style="bright_black"))
    history: list[dict[str, Any]] = body.get("history") or []
    if history:
        console.print()
        console.print(Text("history (newest first)", style="bold"))
        table = new_table("VERSION", "ACTION", "APPLIED", "BY", "STATE")
        current = active.get("version") if active else None
        for index, entry in enumerate(history):
            version = str(entry.get("version", "?"))
            # A version rolled back to is listed once per activation; only the newest is in force.
            in_force = bool(entry.get("active", index == 0 and version == current))
            table.add_row(
                Text(version, style="bold" if in_force else ""),
                str(entry.get("action") or "apply"),
                when(entry.get("applied_at")),
                str(entry.get("applied_by") or "-"),
                Text("active", style="green") if in_force else Text("-", style="bright_black"),
            )
        console.print(table)
        console.print(
            Text(
                f"restore one with: clawtrace policy rollback --env {env} --version VERSION",
                style="bright_black",
            )
        )


@policy.command("rollback", short_help="Make an earlier version an environment's policies again (admin).")
@click.option("--env", required=True, help="The environment.")
@click.option(
    "--version", "version", required=True, help="The version to restore (`clawtrace policy show` lists them)."
)
@admin_gateway_options
def rollback(env: str, version: str, gateway: str, token: str) -> None:
    """Make VERSION, applied to ENV before, its active policies again, at once
    and on every node agent of ENV. Needs an admin credential for ENV.

    \b
      clawtrace policy rollback --env prod --version 3f2a9c1b0e4d
    """
    client = GatewayClient(gateway, token)
    with when_missing(
        f"{env} never had policy version {version!r};"
        f" `clawtrace policy show --env {env}` lists the versions that can be restored"
    ):
        body = client.post(f"{_env_path(env)}/rollback", version=version)
    console = plain_console()
    line = Text(f"{env}: version {body.get('version') or version}", style="bold")
    if body.get("changed") is False:
        line.append(" is already active; nothing changed", style="bright_black")
        console.print(line)
        return
    line.append(" is active again")
    line.stylize("green")
    console.print(line)
    console.print(_delivery_text(body))


# --- clawtrace approvals ----------------------------------------------------------------


@click.group(
    cls=DefaultGroup,
    default="list",
    short_help="Tool calls waiting for a person's approval; approve or reject them.",
)
def approvals() -> None:
    """Tool calls that a policy with @approval sent to a person: the agent waits
    until someone approves or rejects it, or the bundle's approval timeout
    passes (then it is denied).

    Without a command, lists the pending ones (same as `clawtrace approvals
    list`; its options are in `clawtrace approvals list --help`).

    \b
      clawtrace approvals --env prod
      clawtrace approvals approve ap-7f3a --reason "one-off migration, ana"
      clawtrace approvals reject ap-7f3a --reason "use the migrate tool"
    """


@approvals.command("list", short_help="Pending approvals (the default command).")
@click.option("--env", default=None, help="Only this environment.")
@click.option("--all", "show_all", is_flag=True, help="Decided and expired ones too, not only pending.")
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's JSON answer.")
@gateway_options
def list_approvals(env: str | None, show_all: bool, as_json: bool, gateway: str, token: str) -> None:
    """The tool calls waiting for a person (with --all, decided and expired ones
    too): id, agent, environment, the command or tool, the policy that asked
    for approval and why, and how long until it expires. Needs a viewer
    credential."""
    body = GatewayClient(gateway, token).get(
        "/api/v1/approvals", env=env, state=None if show_all else "pending"
    )
    if as_json:
        print_json(body)
        return
    console = plain_console()
    rows: list[dict[str, Any]] = body.get("approvals") or []
    where = f" in {env}" if env else ""
    if not rows:
        console.print(f"no approvals{where}" if show_all else f"nothing is waiting for approval{where}")
        return
    table = new_table("ID", "STATE", "AGENT", "ENV", "CALL", "RULE", "REASON", "ASKED", "EXPIRES")
    for row in rows:
        state = str(row.get("state") or "pending")
        table.add_row(
            Text(str(row.get("id")), style="bold"),
            Text(state, style=APPROVAL_STYLES.get(state, "")),
            str(row.get("agent") or "-"),
            str(row.get("env") or "-"),
            _call_text(row),
            str(row.get("rule") or "-"),
            str(row.get("reason") or "-"),
            when(row.get("created")),
            _expires_text(row, state),
        )
    console.print(table)
    pending = sum(1 for row in rows if (row.get("state") or "pending") == "pending")
    if pending:
        console.print(
            Text("decide with: clawtrace approvals approve|reject ID --reason '...'", style="bright_black")
        )


def _call_text(row: Mapping[str, Any]) -> str:
    tool = str(row.get("tool") or "?")
    command = row.get("command")
    if command:
        return f"{tool}: {command}"
    args = row.get("args")
    return f"{tool} {json.dumps(args, separators=(',', ':'))}" if args else tool


def _expires_text(row: Mapping[str, Any], state: str) -> Text:
    if state != "pending":
        decided_by = row.get("decided_by")
        return Text(f"{state} by {decided_by}" if decided_by else "-", style="bright_black")
    # The gateway's own count: immune to skew between its clock and this one.
    left = row.get("expires_in_seconds")
    if not isinstance(left, int | float):
        return Text("-")
    if left <= 0:
        return Text("now", style="red")
    return Text(f"in {fmt_age(left)}", style="yellow" if left < 60 else "")


def _decide(approval_id: str, approve: bool, reason: str, gateway: str, token: str) -> None:
    client = GatewayClient(gateway, token)
    with when_missing(f"no approval {approval_id!r}; `clawtrace approvals --all` lists them with their ids"):
        body = client.post(
            f"/api/v1/approvals/{quote(approval_id, safe='')}", {"approve": approve, "reason": reason}
        )
    row = body.get("approval", body) if isinstance(body, dict) else {}
    verb = "approved" if approve else "rejected"
    line = Text(f"{verb} ", style="green" if approve else "red")
    line.append(str(row.get("id") or approval_id), style="bold")
    details = ", ".join(str(row[key]) for key in ("agent", "env") if row.get(key))
    line.append(f" ({details})" if details else "")
    line.append(f": {_call_text(row)}" if row.get("tool") else "")
    console = plain_console()
    console.print(line)
    if approve:
        console.print("the agent's call runs now")
    else:
        console.print("the agent is told it was refused" + (f": {reason}" if reason else ""))


reason_option = click.option(
    "--reason", default="", help="Why; kept with the decision, audited, and (on reject) told to the agent."
)


@approvals.command("approve", short_help="Let a waiting tool call run (operator).")
@click.argument("approval_id", metavar="ID")
@reason_option
@operator_gateway_options
def approve(approval_id: str, reason: str, gateway: str, token: str) -> None:
    """Approve the waiting tool call ID (`clawtrace approvals` lists them): the
    agent's call runs now. Needs an operator credential for its environment."""
    _decide(approval_id, True, reason, gateway, token)


@approvals.command("reject", short_help="Refuse a waiting tool call (operator).")
@click.argument("approval_id", metavar="ID")
@reason_option
@operator_gateway_options
def reject(approval_id: str, reason: str, gateway: str, token: str) -> None:
    """Reject the waiting tool call ID (`clawtrace approvals` lists them): the
    agent gets a refusal with your reason. Needs an operator credential for its
    environment."""
    _decide(approval_id, False, reason, gateway, token)
