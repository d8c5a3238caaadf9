"""Alert rules files: one YAML file per environment, ``<rules_dir>/<env>.yaml``.

The file is walked node by node (``yaml.compose``) rather than loaded into
plain Python values, so that every problem can name the line it is on; all
problems of a file are reported together, so one edit-reload cycle fixes
them all. The format is documented in ``default_rules.yaml``.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, get_args

import msgspec
import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from clawtrace.alerts.model import (
    ACTIONS,
    COMPARISONS,
    METRICS,
    SEVERITIES,
    Comparison,
    Condition,
    NoData,
    Rule,
    Scope,
)
from clawtrace.alerts.templates import check_template

DEFAULT_RULES_FILE = Path(__file__).with_name("default_rules.yaml")
DEFAULTS_SOURCE = "defaults"

_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# The env names agents may announce (protocol/messages.py, Hello.env); also
# keeps "<rules_dir>/<env>.yaml" inside rules_dir.
_ENV_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
# Deliberately loose, so that each part can get its own error message.
_CONDITION_RE = re.compile(r"\s*(?P<metric>[^\s<>=!]*)\s*(?P<op>[<>=!]*)\s*(?P<threshold>.*?)\s*")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d|w)")
_DURATION_UNITS: dict[str, Decimal] = {
    "w": Decimal(604800),
    "d": Decimal(86400),
    "h": Decimal(3600),
    "m": Decimal(60),
    "s": Decimal(1),
    "ms": Decimal("0.001"),
}
_DURATION_HELP = "use seconds or units like 500ms, 45s, 2m, 1h30m, 1d"
_NO_DATA: tuple[NoData, ...] = get_args(NoData)

_RULE_KEYS = (
    "name",
    "condition",
    "for",
    "keep_firing_for",
    "min_samples",
    "no_data",
    "scope",
    "severity",
    "labels",
    "annotations",
    "actions",
    "dry_run",
    "enabled",
)
_CONDITION_KEYS = ("metric", "op", "threshold")
_SCOPE_KEYS = ("envs", "regions", "labels", "agent")
# Names people bring from Prometheus rules or from the Rule struct.
_KEY_ALIASES = {
    "alert": "name",
    "expr": "condition",
    "for_seconds": "for",
    "keep_firing_for_seconds": "keep_firing_for",
}
_OP_ALIASES = {"=": "==", "=>": ">=", "=<": "<=", "<>": "!=", "!": "!="}

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a rules file."""

    line: int | None  # 1-based; None when the problem is the file as a whole
    field: str  # like "rules[1].condition"; "" for the file as a whole
    message: str

    def format(self, source: str) -> str:
        where = source if self.line is None else f"{source}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class RuleError(Exception):
    """A rules file that cannot be used, with every problem found in it (one per line)."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__("\n".join(problem.format(source) for problem in self.problems))


# --- durations ---------------------------------------------------------------


def parse_duration(text: str | int | float) -> float:
    """Seconds in ``text``: "500ms", "45s", "2m", "1h30m", "1d", "1w", or a plain number of seconds.

    Raises ValueError saying what is wrong (negative, not a duration).
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a duration, got {str(text).lower()}; {_DURATION_HELP}")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        compact = "".join(text.split())
        negative = compact.startswith("-")
        seconds = float(_parse_duration_text(compact[1:] if negative else compact, text))
        if negative and seconds:
            seconds = -seconds
    if not math.isfinite(seconds):
        raise ValueError(f"duration {text!r} is not a finite number; {_DURATION_HELP}")
    if seconds < 0:
        raise ValueError(f"duration {text!r} is negative; durations are 0 or more")
    return seconds


def _parse_duration_text(body: str, original: str) -> Decimal:
    invalid = ValueError(f"invalid duration {original!r}; {_DURATION_HELP}")
    if not body:
        raise invalid
    if re.fullmatch(r"\d+(?:\.\d+)?|\.\d+", body):
        return Decimal(body)
    # Decimal keeps "1s100ms" exactly 1.1, so format_duration round-trips.
    total = Decimal(0)
    units = list(_DURATION_UNITS)
    last = -1
    position = 0
    while position < len(body):
        match = _DURATION_PART_RE.match(body, position)
        if match is None:
            raise invalid
        number, unit = match.groups()
        rank = units.index(unit)
        if rank <= last:
            raise ValueError(
                f"invalid duration {original!r}: give each unit once, largest first (like 1h30m)"
            )
        last = rank
        total += Decimal(number) * _DURATION_UNITS[unit]
        position = match.end()
    return total


def format_duration(seconds: float) -> str:
    """``seconds`` as parse_duration reads it back exactly: 45 -> "45s", 5400 -> "1h30m"."""
    if isinstance(seconds, bool) or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds!r} as a duration; durations are finite and 0 or more")
    millis = round(seconds * 1000)
    if float(Decimal(millis).scaleb(-3)) != seconds:
        # Finer than a millisecond: the shortest decimal that reads back the same.
        return f"{Decimal(repr(float(seconds))):f}s"
    if millis == 0:
        return "0s"
    parts: list[str] = []
    for unit in ("d", "h", "m", "s"):
        count, millis = divmod(millis, int(_DURATION_UNITS[unit]) * 1000)
        if count:
            parts.append(f"{count}{unit}")
    if millis:
        parts.append(f"{millis}ms")
    return "".join(parts)


# --- parsing -----------------------------------------------------------------


class _Invalid:
    """A value that could not be read; its problem is already recorded."""


_INVALID = _Invalid()


def _suggest(word: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    if word in _KEY_ALIASES and _KEY_ALIASES[word] in choices:
        return f" (did you mean '{_KEY_ALIASES[word]}'?)"
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _line(node: Node) -> int | None:
    mark = node.start_mark
    return None if mark is None else mark.line + 1


def _yaml_problem(exc: yaml.YAMLError, text: str) -> Problem:
    if isinstance(exc, yaml.MarkedYAMLError):
        message = exc.problem or exc.context or "invalid YAML"
        if exc.problem and exc.context:
            context = exc.context
            marks = exc.context_mark, exc.problem_mark
            if marks[0] is not None and marks[1] is not None and marks[0].line != marks[1].line:
                context += f" on line {marks[0].line + 1}"
            message += f" ({context})"
        mark = exc.problem_mark or exc.context_mark
        return Problem(None if mark is None else mark.line + 1, "", f"YAML syntax error: {message}")
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        code = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
        return Problem(line, "", f"invalid character U+{code:04X} in YAML: {exc.reason}")
    return Problem(None, "", f"YAML error: {exc}")


class _Parser:
    def __init__(self, source: str, env: str | None) -> None:
        self.source = source
        self.env = env
        self.problems: list[Problem] = []
        # Builds scalars with YAML 1.1's safe types only; unknown tags are errors.
        self._constructor = SafeConstructor()
        self._names: dict[str, int | None] = {}
        # The known metric of the rule being read, even if the rest of its
        # condition is wrong, so min_samples can still be checked against it.
        self._metric: str | None = None

    def problem(self, node: Node, path: str, message: str) -> None:
        self.problems.append(Problem(_line(node), path, message))

    # Generic shapes.

    def scalar(self, node: ScalarNode, path: str) -> object:
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            self.problem(node, path, exc.problem or str(exc))
            return _INVALID

    def describe(self, node: Node) -> str:
        if isinstance(node, MappingNode | SequenceNode):
            kind = "a mapping" if isinstance(node, MappingNode) else "a list"
            return kind if node.tag in (_MAP_TAG, _SEQ_TAG) else f"{kind} tagged {node.tag}"
        try:
            value = self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError:
            return f"{node.value!r}"
        if value is None:
            return "an empty value"
        if isinstance(value, bool):
            return f"the boolean {node.value}"
        if isinstance(value, int | float):
            return f"the number {node.value}"
        if isinstance(value, str):
            return f"the string {value!r}"
        return f"the {type(value).__name__} {node.value}"

    def expected(self, node: Node, path: str, what: str, hint: str = "") -> None:
        self.problem(node, path, f"expected {what}, got {self.describe(node)}{hint}")

    def mapping(self, node: Node, path: str, what: str = "a mapping") -> list[tuple[str, Node, Node]] | None:
        """The (key, key node, value node) entries of a mapping, merge keys resolved."""
        if not isinstance(node, MappingNode) or node.tag != _MAP_TAG:
            self.expected(node, path, what)
            return None
        explicit = {id(key) for key, _ in node.value if key.tag != _MERGE_TAG}
        try:
            self._constructor.flatten_mapping(node)
        except yaml.MarkedYAMLError as exc:
            self.problem(node, path, f"bad merge key (<<): {exc.problem}")
            return None
        entries: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node, path) if isinstance(key_node, ScalarNode) else None
            if key is _INVALID:
                continue
            if not isinstance(key, str) or not key:
                self.problem(key_node, path, f"keys must be non-empty strings, got {self.describe(key_node)}")
                continue
            earlier = entries.get(key)
            # Keys from a merge (<<: *anchor) may be overridden; written twice may not.
            if earlier is not None and id(earlier[0]) in explicit and id(key_node) in explicit:
                self.problem(
                    key_node, _join(path, key), f"duplicate key '{key}' (first on line {_line(earlier[0])})"
                )
                continue
            entries[key] = (key_node, value_node)
        return [(key, key_node, value_node) for key, (key_node, value_node) in entries.items()]

    def sequence(self, node: Node, path: str, what: str = "a list") -> list[Node] | None:
        if not isinstance(node, SequenceNode) or node.tag != _SEQ_TAG:
            self.expected(node, path, what)
            return None
        return list(node.value)

    def unknown_keys(
        self, entries: list[tuple[str, Node, Node]], path: str, known: Sequence[str]
    ) -> dict[str, Node]:
        """The known entries by key; every other key is reported."""
        found: dict[str, Node] = {}
        for key, key_node, value_node in entries:
            if key in known:
                found[key] = value_node
                continue
            suggestion = _suggest(key, known)
            listing = "" if suggestion else f"; known keys: {', '.join(known)}"
            self.problem(key_node, _join(path, key), f"unknown key '{key}'{suggestion}{listing}")
        return found

    def string(self, node: Node, path: str, what: str = "a string", hint: str | None = None) -> str | None:
        if isinstance(node, ScalarNode):
            value = self.scalar(node, path)
            if value is _INVALID:
                return None
            if isinstance(value, str):
                return value
            if value is not None and hint is None:
                hint = f' (quote it to make it a string: "{node.value}")'
        self.expected(node, path, what, hint or "")
        return None

    def number(self, node: Node, path: str) -> float | None:
        if isinstance(node, ScalarNode):
            value = self.scalar(node, path)
            if value is _INVALID:
                return None
            if isinstance(value, int | float) and not isinstance(value, bool):
                if not math.isfinite(value):
                    self.problem(node, path, f"expected a finite number, got {node.value}")
                    return None
                return float(value)
        self.expected(node, path, "a number")
        return None

    def integer(self, node: Node, path: str, minimum: int) -> int | None:
        if isinstance(node, ScalarNode):
            value = self.scalar(node, path)
            if value is _INVALID:
                return None
            if isinstance(value, int) and not isinstance(value, bool):
                if value < minimum:
                    self.problem(node, path, f"must be {minimum} or more, got {value}")
                    return None
                return value
        self.expected(node, path, "a whole number")
        return None

    def boolean(self, node: Node, path: str) -> bool | None:
        if isinstance(node, ScalarNode):
            value = self.scalar(node, path)
            if value is _INVALID:
                return None
            if isinstance(value, bool):
                return value
        self.expected(node, path, "true or false")
        return None

    def choice(self, node: Node, path: str, choices: Sequence[str], what: str) -> str | None:
        value = self.string(node, path, f"one of {', '.join(choices)}", hint="")
        if value is None:
            return None
        if value not in choices:
            self.problem(
                node,
                path,
                f"unknown {what} '{value}'{_suggest(value, choices)}; use one of {', '.join(choices)}",
            )
            return None
        return value

    def duration(self, node: Node, path: str) -> float | None:
        if isinstance(node, ScalarNode):
            value = self.scalar(node, path)
            if value is _INVALID:
                return None
            if isinstance(value, str | int | float):
                try:
                    return parse_duration(value)
                except ValueError as exc:
                    self.problem(node, path, str(exc))
                    return None
        self.expected(node, path, f"a duration ({_DURATION_HELP})")
        return None

    def string_list(self, node: Node, path: str) -> list[tuple[str, Node]] | None:
        items = self.sequence(node, path, "a list of strings")
        if items is None:
            return None
        values: list[tuple[str, Node]] = []
        ok = True
        for index, item in enumerate(items):
            value = self.string(item, f"{path}[{index}]")
            if value is None:
                ok = False
            else:
                values.append((value, item))
        return values if ok else None

    def string_map(self, node: Node, path: str) -> dict[str, tuple[str, Node]] | None:
        entries = self.mapping(node, path, "a mapping of names to strings")
        if entries is None:
            return None
        values: dict[str, tuple[str, Node]] = {}
        ok = True
        for key, _, value_node in entries:
            value = self.string(value_node, _join(path, key))
            if value is None:
                ok = False
            else:
                values[key] = (value, value_node)
        return values if ok else None

    # The rules file.

    def document(self, root: Node | None) -> list[Rule]:
        if root is None:
            return []
        entries = self.mapping(root, "", "a mapping with a 'rules:' list at the top level")
        if entries is None:
            return []
        found = self.unknown_keys(entries, "", ("rules",))
        rules_node = found.get("rules")
        if rules_node is None:
            self.problem(root, "", "missing 'rules:'; a rules file is a mapping with a 'rules:' list")
            return []
        if isinstance(rules_node, ScalarNode) and self.scalar(rules_node, "rules") is None:
            return []
        items = self.sequence(rules_node, "rules", "a list of rules")
        if items is None:
            return []
        rules: list[Rule] = []
        for index, item in enumerate(items):
            rule = self.rule(item, f"rules[{index}]")
            if rule is not None:
                rules.append(rule)
        return rules

    def rule(self, node: Node, path: str) -> Rule | None:
        entries = self.mapping(node, path, "a rule (a mapping with at least name and condition)")
        if entries is None:
            return None
        before = len(self.problems)
        self._metric = None
        found = self.unknown_keys(entries, path, _RULE_KEYS)
        for required in ("name", "condition"):
            if required not in found:
                self.problem(node, path, f"missing '{required}'")

        fields: dict[str, Any] = {}
        if "name" in found:
            fields["name"] = self.rule_name(found["name"], _join(path, "name"))
        if "condition" in found:
            fields["condition"] = self.condition(found["condition"], _join(path, "condition"))
        if "for" in found:
            fields["for_seconds"] = self.duration(found["for"], _join(path, "for"))
        if "keep_firing_for" in found:
            fields["keep_firing_for_seconds"] = self.duration(
                found["keep_firing_for"], _join(path, "keep_firing_for")
            )
        if "min_samples" in found:
            fields["min_samples"] = self.min_samples(found["min_samples"], _join(path, "min_samples"))
        if "no_data" in found:
            fields["no_data"] = self.choice(found["no_data"], _join(path, "no_data"), _NO_DATA, "no_data")
        scope_path = _join(path, "scope")
        fields["scope"] = self.scope(found["scope"], scope_path) if "scope" in found else self.scope(None, "")
        if "severity" in found:
            fields["severity"] = self.choice(
                found["severity"], _join(path, "severity"), SEVERITIES, "severity"
            )
        if "labels" in found:
            labels = self.string_map(found["labels"], _join(path, "labels"))
            fields["labels"] = None if labels is None else {key: value for key, (value, _) in labels.items()}
        if "annotations" in found:
            fields["annotations"] = self.annotations(found["annotations"], _join(path, "annotations"))
        if "actions" in found:
            fields["actions"] = self.actions(found["actions"], _join(path, "actions"))
        for flag in ("dry_run", "enabled"):
            if flag in found:
                fields[flag] = self.boolean(found[flag], _join(path, flag))

        if len(self.problems) > before or any(value is None for value in fields.values()):
            return None
        return Rule(**fields, source=self.source)

    def rule_name(self, node: Node, path: str) -> str | None:
        name = self.string(node, path)
        if name is None:
            return None
        if not _NAME_RE.fullmatch(name):
            self.problem(
                node,
                path,
                f"invalid rule name '{name}': use letters, digits and '_', starting with a letter"
                " (like ReasoningLoop)",
            )
            return None
        if name in self._names:
            self.problem(node, path, f"duplicate rule name '{name}' (first on line {self._names[name]})")
            return None
        self._names[name] = _line(node)
        return name

    def condition(self, node: Node, path: str) -> Condition | None:
        if isinstance(node, MappingNode):
            return self.condition_mapping(node, path)
        text = self.string(
            node,
            path,
            "a condition like 'tool_success_rate < 0.5', or a mapping with metric, op and threshold",
            hint="",
        )
        if text is None:
            return None
        match = _CONDITION_RE.fullmatch(text)
        if match is None or not all(match.group("metric", "op", "threshold")):
            self.problem(
                node, path, f"expected '<metric> <op> <number>' like 'tool_success_rate < 0.5', got '{text}'"
            )
            return None
        metric = self.check_metric(node, path, match["metric"])
        op = self.check_op(node, path, match["op"])
        threshold: float | None = None
        try:
            threshold = float(match["threshold"])
        except ValueError:
            self.problem(node, path, f"threshold '{match['threshold']}' is not a number")
        else:
            if not math.isfinite(threshold):
                self.problem(node, path, f"threshold '{match['threshold']}' is not a finite number")
                threshold = None
        if metric is None or op is None or threshold is None:
            return None
        return Condition(metric=metric, op=op, threshold=threshold)

    def condition_mapping(self, node: MappingNode, path: str) -> Condition | None:
        entries = self.mapping(node, path)
        if entries is None:
            return None
        found = self.unknown_keys(entries, path, _CONDITION_KEYS)
        missing = [key for key in _CONDITION_KEYS if key not in found]
        if missing:
            self.problem(node, path, f"missing {', '.join(repr(key) for key in missing)}")
        metric: str | None = None
        op: Comparison | None = None
        threshold: float | None = None
        if "metric" in found:
            name = self.string(found["metric"], _join(path, "metric"))
            if name is not None:
                metric = self.check_metric(found["metric"], _join(path, "metric"), name)
        if "op" in found:
            # A bare > in YAML starts a folded block, hence the quoting hint.
            text = self.string(found["op"], _join(path, "op"), 'a comparison in quotes, like ">"', hint="")
            if text is not None:
                op = self.check_op(found["op"], _join(path, "op"), text.strip())
        if "threshold" in found:
            threshold = self.number(found["threshold"], _join(path, "threshold"))
        if metric is None or op is None or threshold is None:
            return None
        return Condition(metric=metric, op=op, threshold=threshold)

    def check_metric(self, node: Node, path: str, name: str) -> str | None:
        if name in METRICS:
            self._metric = name
            return name
        self.problem(
            node,
            path,
            f"unknown metric '{name}'{_suggest(name, METRICS)}; known metrics: {', '.join(METRICS)}",
        )
        return None

    def check_op(self, node: Node, path: str, op: str) -> Comparison | None:
        for known in COMPARISONS:
            if op == known:
                return known
        alias = _OP_ALIASES.get(op)
        suggestion = f" (did you mean '{alias}'?)" if alias else ""
        self.problem(node, path, f"unknown comparison '{op}'{suggestion}; use one of {' '.join(COMPARISONS)}")
        return None

    def min_samples(self, node: Node, path: str) -> int | None:
        count = self.integer(node, path, minimum=0)
        if count is None or self._metric is None:
            return count
        metric = METRICS[self._metric]
        if metric.samples is None:
            self.problem(
                node,
                path,
                f"{metric.name} has no sample count, so min_samples does not apply to it; remove min_samples",
            )
            return None
        return count

    def scope(self, node: Node | None, path: str) -> Scope | None:
        if node is None:
            return Scope(envs=() if self.env is None else (self.env,))
        entries = self.mapping(node, path, "a mapping with envs, regions, labels or agent")
        if entries is None:
            return None
        found = self.unknown_keys(entries, path, _SCOPE_KEYS)
        ok = True
        envs: tuple[str, ...] = () if self.env is None else (self.env,)
        if "envs" in found:
            listed = self.string_list(found["envs"], _join(path, "envs"))
            ok = ok and listed is not None
            for index, (env, env_node) in enumerate(listed or []):
                if self.env is not None and env != self.env:
                    ok = False
                    self.problem(
                        env_node,
                        f"{_join(path, 'envs')}[{index}]",
                        f"'{env}' is another environment: the rules in this file watch '{self.env}' only;"
                        f" move the rule to {env}.yaml or drop '{env}' from envs",
                    )
            if self.env is None and listed is not None:
                envs = tuple(env for env, _ in listed)
        regions: tuple[str, ...] = ()
        if "regions" in found:
            listed = self.string_list(found["regions"], _join(path, "regions"))
            ok = ok and listed is not None
            regions = tuple(region for region, _ in listed or [])
        labels: dict[str, str] = {}
        if "labels" in found:
            mapped = self.string_map(found["labels"], _join(path, "labels"))
            ok = ok and mapped is not None
            labels = {key: value for key, (value, _) in (mapped or {}).items()}
        agent = "*"
        if "agent" in found:
            glob = self.string(found["agent"], _join(path, "agent"), "an agent id or glob like 'eu-*'")
            if glob is not None and not glob:
                self.problem(
                    found["agent"], _join(path, "agent"), "must not be empty; use '*' for every agent"
                )
                glob = None
            ok = ok and glob is not None
            agent = glob or "*"
        if not ok:
            return None
        return Scope(envs=envs, regions=regions, labels=labels, agent=agent)

    def annotations(self, node: Node, path: str) -> dict[str, str] | None:
        mapped = self.string_map(node, path)
        if mapped is None:
            return None
        ok = True
        for key, (text, value_node) in mapped.items():
            error = check_template(text)
            if error is not None:
                ok = False
                self.problem(value_node, _join(path, key), f"bad template: {error}")
        return {key: text for key, (text, _) in mapped.items()} if ok else None

    def actions(self, node: Node, path: str) -> tuple[str, ...] | None:
        items = self.sequence(node, path, f"a list of actions like [notify, restart] ({', '.join(ACTIONS)})")
        if items is None:
            return None
        actions: list[str] = []
        ok = True
        for index, item in enumerate(items):
            item_path = f"{path}[{index}]"
            action = self.choice(item, item_path, ACTIONS, "action")
            if action is None:
                ok = False
            elif action in actions:
                ok = False
                self.problem(item, item_path, f"'{action}' is listed twice")
            else:
                actions.append(action)
        return tuple(actions) if ok else None


def _check_env(env: str) -> None:
    if not _ENV_RE.fullmatch(env):
        raise ValueError(
            f"invalid environment name {env!r}: use letters, digits, '_' and '-',"
            " starting with a letter or digit"
        )


def parse_rules(text: str, source: str, env: str | None = None) -> list[Rule]:
    """The rules in ``text`` (a rules file's content); ``source`` names it in errors.

    With ``env``, every rule watches that environment only. Raises RuleError
    listing every problem found.
    """
    if env is not None:
        _check_env(env)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise RuleError(source, [_yaml_problem(exc, text)]) from None
    parser = _Parser(source, env)
    rules = parser.document(root)
    if parser.problems:
        # Checks run field by field; a reader wants them top to bottom.
        raise RuleError(source, sorted(parser.problems, key=lambda problem: problem.line or 0))
    return rules


def load_rules_file(path: Path, env: str | None = None) -> list[Rule]:
    """The rules of the file at ``path`` (see parse_rules); RuleError if it cannot be read."""
    source = str(path)

    def fail(message: str) -> RuleError:
        return RuleError(source, [Problem(None, "", message)])

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise fail("no such rules file; check the path (rules files are <rules_dir>/<env>.yaml)") from None
    except IsADirectoryError:
        raise fail("is a directory, not a rules file") from None
    except PermissionError:
        raise fail("permission denied; make the file readable by the user running the gateway") from None
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 text (bad byte at offset {exc.start}); save the file as UTF-8") from None
    except OSError as exc:
        raise fail(f"cannot read the file: {exc.strerror or exc}") from None
    return parse_rules(text, source, env)


def default_rules() -> list[Rule]:
    """The shipped rules (DeadNode, ReasoningLoop, CostSpike), watching every environment."""
    return parse_rules(DEFAULT_RULES_FILE.read_text(encoding="utf-8"), DEFAULTS_SOURCE)


def rules_for_env(rules_dir: Path | None, env: str, include_defaults: bool = True) -> list[Rule]:
    """The rules of one environment: the defaults, then ``<rules_dir>/<env>.yaml``.

    A file rule named like a default replaces it (``enabled: false`` turns a
    default off); disabled rules stay in the list.
    """
    _check_env(env)
    rules: list[Rule] = []
    if include_defaults:
        for rule in default_rules():
            scope = msgspec.structs.replace(rule.scope, envs=(env,))
            rules.append(msgspec.structs.replace(rule, scope=scope))
    if rules_dir is None:
        return rules
    path = rules_dir / f"{env}.yaml"
    if not path.exists():
        misnamed = rules_dir / f"{env}.yml"
        if misnamed.exists():
            raise RuleError(
                str(misnamed), [Problem(None, "", f"rules files end in .yaml; rename it to {path.name}")]
            )
        return rules
    positions = {rule.name: index for index, rule in enumerate(rules)}
    for rule in load_rules_file(path, env):
        if rule.name in positions:
            rules[positions[rule.name]] = rule
        else:
            rules.append(rule)
    return rules


# --- dumping -----------------------------------------------------------------


class _Flow(list[Any]):
    """A list dumped inline: ``actions: [notify, restart]``."""


class _Dumper(yaml.SafeDumper):
    # Rules share default dicts; anchors and aliases would only confuse a reader.
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_flow(dumper: yaml.SafeDumper, data: _Flow) -> yaml.Node:
    return dumper.represent_sequence(_SEQ_TAG, data, flow_style=True)


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(_Flow, _represent_flow)
_Dumper.add_representer(str, _represent_str)

_BARE_RULE = Rule(name="", condition=Condition(metric="", op=">", threshold=0))


def _number_text(value: float) -> str:
    if value == int(value) and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def _rule_to_yaml(rule: Rule) -> dict[str, Any]:
    def changed(field: str) -> bool:
        return bool(getattr(rule, field) != getattr(_BARE_RULE, field))

    condition = rule.condition
    out: dict[str, Any] = {
        "name": rule.name,
        "condition": f"{condition.metric} {condition.op} {_number_text(condition.threshold)}",
    }
    if changed("for_seconds"):
        out["for"] = format_duration(rule.for_seconds)
    if changed("keep_firing_for_seconds"):
        out["keep_firing_for"] = format_duration(rule.keep_firing_for_seconds)
    if changed("min_samples"):
        out["min_samples"] = rule.min_samples
    if changed("no_data"):
        out["no_data"] = rule.no_data
    scope: dict[str, Any] = {}
    if rule.scope.envs:
        scope["envs"] = _Flow(rule.scope.envs)
    if rule.scope.regions:
        scope["regions"] = _Flow(rule.scope.regions)
    if rule.scope.labels:
        scope["labels"] = dict(rule.scope.labels)
    if rule.scope.agent != "*":
        scope["agent"] = rule.scope.agent
    if scope:
        out["scope"] = scope
    if changed("severity"):
        out["severity"] = rule.severity
    if rule.labels:
        out["labels"] = dict(rule.labels)
    if rule.annotations:
        out["annotations"] = dict(rule.annotations)
    if changed("actions"):
        out["actions"] = _Flow(rule.actions)
    if changed("dry_run"):
        out["dry_run"] = rule.dry_run
    if changed("enabled"):
        out["enabled"] = rule.enabled
    return out


def dump_rules(rules: Sequence[Rule]) -> str:
    """``rules`` as a rules file that parse_rules reads back to equal rules (bar ``source``)."""
    document = {"rules": [_rule_to_yaml(rule) for rule in rules]}
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
