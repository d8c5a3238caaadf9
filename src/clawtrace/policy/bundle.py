"""A policy bundle: an environment's Cedar policies plus a few settings, validated whole.

On disk a bundle is a ``.cedar`` file, or a directory of ``*.cedar`` files
with an optional ``bundle.toml`` (docs/policies.md). Every load validates the
policies against the ClawTrace schema and refuses the bundle if any policy
does not parse or does not type-check: Cedar skips a policy that errors at
run time, so a misspelt attribute in a ``forbid`` would silently allow.

Policies carry annotations: ``@id("...")`` names a policy in decisions and
the audit log, ``@reason("...")`` is what the agent is told, and
``@approval`` on a ``permit`` turns "allow" into "require_approval".
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cedarpy
import msgspec

SCHEMA_FILE = Path(__file__).with_name("schema.cedarschema")
BUNDLE_SETTINGS_FILE = "bundle.toml"
DEFAULT_SHELL_TOOLS = {
    "exec": "command",
    "shell": "command",
    "bash": "command",
    "run_command": "command",
    "terminal": "command",
}


class PolicyError(Exception):
    """A bundle that cannot be used; ``problems`` are "file:line: message" lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class BundleSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    # Tools whose calls run a shell command, and the argument that holds it.
    shell_tools: dict[str, str] = msgspec.field(default_factory=lambda: dict(DEFAULT_SHELL_TOOLS))
    # How long a require_approval decision waits for a person before it is a deny.
    approval_timeout_seconds: float = 600.0
    description: str = ""


class PolicyBundle(msgspec.Struct, frozen=True, kw_only=True):
    """What the gateway stores per environment and pushes to node agents."""

    env: str
    # File name -> Cedar text, in the order they are evaluated together.
    files: dict[str, str]
    settings: BundleSettings = BundleSettings()
    version: str = ""

    def with_version(self) -> PolicyBundle:
        return msgspec.structs.replace(self, version=content_version(self.files, self.settings))


def content_version(files: dict[str, str], settings: BundleSettings) -> str:
    """The hash of the normalised content: the same policies give the same version."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].replace("\r\n", "\n").strip().encode() + b"\0")
    digest.update(msgspec.json.encode(settings, order="sorted"))
    return digest.hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """One policy statement: where it is and what its annotations say."""

    cedar_id: str  # "policy0", ... in the concatenated set
    index: int  # its position in the bundle (files in order, then lines)
    name: str  # @id, or "<file>:<line>" without one
    file: str
    line: int
    effect: str
    reason: str
    approval: bool
    # The actions its scope names (None: every action, `action` unconstrained).
    actions: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class CompiledBundle:
    bundle: PolicyBundle
    policy_set: cedarpy.PolicySet
    policies: dict[str, PolicyInfo]  # by cedar_id
    # The context attributes the policies read (None: the context as a whole is used).
    # Requests carry only these: Cedar's cost grows with the context it parses.
    context_attrs: frozenset[str] | None = None


@cache
def schema() -> cedarpy.Schema:
    return cedarpy.Schema.from_str(SCHEMA_FILE.read_text())


def schema_text() -> str:
    return SCHEMA_FILE.read_text()


def load_bundle(path: Path, env: str) -> PolicyBundle:
    """Read a ``.cedar`` file or a bundle directory (not yet validated: see ``compile_bundle``)."""
    if path.is_dir():
        files = {p.name: _read(p) for p in sorted(path.glob("*.cedar"))}
        if not files:
            raise PolicyError([f"{path}: no .cedar files in this directory"])
        settings_path = path / BUNDLE_SETTINGS_FILE
        settings = _settings(settings_path) if settings_path.exists() else BundleSettings()
    elif path.exists():
        files = {path.name: _read(path)}
        settings = BundleSettings()
    else:
        raise PolicyError([f"{path}: no such file or directory (a .cedar file or a bundle directory)"])
    return PolicyBundle(env=env, files=files, settings=settings).with_version()


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([f"{path}: cannot read it: {exc}"]) from None


def _settings(path: Path) -> BundleSettings:
    try:
        return msgspec.convert(tomllib.loads(_read(path)), BundleSettings)
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise PolicyError([f"{path}: {exc}"]) from None


def compile_bundle(bundle: PolicyBundle) -> CompiledBundle:
    """Parse and validate every policy; raises PolicyError naming file, line and policy."""
    problems: list[str] = []
    statements: list[tuple[str, int, str]] = []  # (file, line, text)
    for name, text in bundle.files.items():
        for line, statement in split_statements(text):
            try:
                cedarpy.PolicySet.from_str(statement)
            except ValueError as exc:
                problems.append(f"{name}:{line}: does not parse: {exc}")
                continue
            statements.append((name, line, statement))
    if problems:
        raise PolicyError(problems)
    if not statements:
        raise PolicyError(
            [f"{', '.join(bundle.files) or 'bundle'}: no policies (everything would be denied)"]
        )
    text = "\n".join(statement for _, _, statement in statements)
    policies: dict[str, PolicyInfo] = {}
    parsed = json.loads(cedarpy.policies_to_json_str(text))["staticPolicies"]
    for index, (name, line, _) in enumerate(statements):
        cedar_id = f"policy{index}"
        policy = parsed[cedar_id]
        annotations: dict[str, str] = policy.get("annotations") or {}
        policies[cedar_id] = PolicyInfo(
            cedar_id=cedar_id,
            index=index,
            name=annotations.get("id") or f"{name}:{line}",
            file=name,
            line=line,
            effect=policy["effect"],
            reason=annotations.get("reason", ""),
            approval="approval" in annotations,
            actions=_scoped_actions(policy["action"]),
        )
    result = cedarpy.validate_policies(text, schema())
    if not result.validation_passed:
        for error in result.errors:
            info = policies.get(error.policy_id)
            where = f"{info.file}:{info.line}: policy {info.name!r}" if info else error.policy_id
            message = error.error.replace(f"for policy `{error.policy_id}`, ", "")
            problems.append(f"{where}: {message}")
        raise PolicyError(problems)
    for info in policies.values():
        if info.approval and info.effect != "permit":
            problems.append(
                f"{info.file}:{info.line}: policy {info.name!r}: @approval only makes sense on permit"
            )
    if problems:
        raise PolicyError(problems)
    attrs: set[str] | None = set()
    for policy in parsed.values():
        attrs = _context_attrs(policy.get("conditions"), attrs)
    return CompiledBundle(
        bundle,
        cedarpy.PolicySet.from_str(text),
        policies,
        None if attrs is None else frozenset(attrs),
    )


def _context_attrs(node: object, found: set[str] | None) -> set[str] | None:
    """Add the ``context.x`` / ``context has x`` attributes read in a policy's JSON AST;
    None once the context is used any other way (then every request carries all of it)."""
    if found is None:
        return None
    if isinstance(node, list):
        for item in node:
            found = _context_attrs(item, found)
        return found
    if not isinstance(node, dict):
        return found
    for op in (".", "has"):
        inner = node.get(op)
        if isinstance(inner, dict) and inner.get("left") == {"Var": "context"} and "attr" in inner:
            found.add(str(inner["attr"]))
            return found
    if node.get("Var") == "context":
        return None
    for value in node.values():
        found = _context_attrs(value, found)
    return found


def _scoped_actions(scope: dict[str, object]) -> frozenset[str] | None:
    entity = scope.get("entity")
    if scope.get("op") == "==" and isinstance(entity, dict):
        return frozenset({str(entity["id"])})
    if scope.get("op") == "in":
        listed = scope.get("entities")
        entities = listed if isinstance(listed, list) else [entity]
        return frozenset(str(e["id"]) for e in entities if isinstance(e, dict))
    return None


_TOKEN = re.compile(r'//[^\n]*|"(?:\\.|[^"\\])*"|[;{}()\[\]]|\n|[^";{}()\[\]/\n]+|/')


def split_statements(text: str) -> list[tuple[int, str]]:
    """The policy statements of a Cedar file with the line each starts on.

    Cedar's parser reports no positions, so each statement is parsed on its
    own to say where an error is; comments and strings are skipped so that a
    ``;`` inside them does not end a statement.
    """
    out: list[tuple[int, str]] = []
    line = 1
    depth = 0
    start_line: int | None = None
    current: list[str] = []
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token == "\n":
            line += 1
            if current:
                current.append(token)
            continue
        if token.startswith("//"):
            continue
        if start_line is None:
            if token.isspace():
                continue
            start_line = line
        current.append(token)
        line += token.count("\n") if token.startswith('"') else 0
        if token in "({[":
            depth += 1
        elif token in ")}]":
            depth -= 1
        elif token == ";" and depth == 0:
            out.append((start_line, "".join(current).strip()))
            current, start_line = [], None
    if current and "".join(current).strip():
        out.append((start_line or line, "".join(current).strip()))
    return out
