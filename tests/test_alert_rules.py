"""Alert rules files as an operator meets them: the shipped defaults, a per-env
file that overrides and adds rules, and error messages that point at the
exact file, line and field of every mistake."""

from __future__ import annotations

import textwrap
from pathlib import Path

import msgspec
import pytest

from clawtrace.alerts.model import Condition, Rule, Scope
from clawtrace.alerts.rules_file import (
    RuleError,
    default_rules,
    dump_rules,
    format_duration,
    load_rules_file,
    parse_duration,
    parse_rules,
    rules_for_env,
)
from clawtrace.alerts.templates import check_template, humanize, render_annotations


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems(path: Path, env: str | None = None) -> list[str]:
    """The lines of the RuleError that loading ``path`` raises."""
    with pytest.raises(RuleError) as caught:
        load_rules_file(path, env)
    return str(caught.value).splitlines()


def only_problem(path: Path, env: str | None = None) -> str:
    lines = problems(path, env)
    assert len(lines) == 1, lines
    return lines[0]


# --- defaults ----------------------------------------------------------------


def test_defaults_are_the_three_shipped_rules() -> None:
    rules = {rule.name: rule for rule in default_rules()}
    assert list(rules) == ["DeadNode", "ReasoningLoop", "CostSpike"]

    dead = rules["DeadNode"]
    assert dead.condition == Condition(metric="heartbeat_age_s", op=">", threshold=45)
    assert dead.actions == ("notify", "restart")
    assert dead.severity == "critical"
    assert dead.for_seconds == 0

    loop = rules["ReasoningLoop"]
    assert loop.condition == Condition(metric="consecutive_failed_tool_calls", op=">", threshold=10)
    assert loop.actions == ("notify", "restart")
    assert loop.severity == "critical"

    cost = rules["CostSpike"]
    assert cost.condition == Condition(metric="cost_usd_per_hour", op=">", threshold=5)
    assert cost.actions == ("notify",)
    assert cost.severity == "warning"

    for rule in rules.values():
        assert rule.enabled and not rule.dry_run
        assert rule.source == "defaults"
        assert rule.scope == Scope()
        assert {"summary", "description"} <= set(rule.annotations)


def test_default_annotations_render_for_an_alert() -> None:
    dead = next(rule for rule in default_rules() if rule.name == "DeadNode")
    text = render_annotations(
        dead.annotations,
        rule="DeadNode",
        agent="eu-7",
        env="prod",
        region="eu-west-1",
        value=61.4,
        threshold=45,
        labels={},
    )
    assert text["summary"] == "eu-7 stopped sending heartbeats"
    assert "eu-7 (prod, eu-west-1)" in text["description"]
    assert "for 61 s (threshold 45 s)" in text["description"]
    assert "template error" not in text["description"]


# --- per-environment files ---------------------------------------------------


def test_env_file_overrides_a_default_by_name_and_adds_rules(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "prod.yaml",
        """
        rules:
          - name: CostSpike
            condition: cost_usd_per_hour > 20
            severity: critical
            actions: [notify, quarantine]
          - name: SlowReasoning
            condition: reasoning_latency_p95_ms >= 30000
            for: 5m
            keep_firing_for: 1m
            min_samples: 20
            no_data: keep_state
            scope: {regions: [eu-west-1], labels: {team: search}, agent: "eu-*"}
            labels: {team: search}
            annotations: {summary: "{{ agent }} is slow"}
            dry_run: true
          - name: ReasoningLoop
            condition: consecutive_failed_tool_calls > 10
            enabled: false
        """,
    )
    rules = rules_for_env(tmp_path, "prod")
    by_name = {rule.name: rule for rule in rules}
    assert [rule.name for rule in rules] == ["DeadNode", "ReasoningLoop", "CostSpike", "SlowReasoning"]

    assert by_name["DeadNode"].source == "defaults"
    assert by_name["DeadNode"].scope.envs == ("prod",)

    cost = by_name["CostSpike"]
    assert cost.condition.threshold == 20
    assert cost.actions == ("notify", "quarantine")
    assert cost.source == str(path)
    # The file rule replaces the default whole; nothing is inherited from it.
    assert cost.annotations == {}

    # Disabled rules stay listed; the engine skips them.
    assert by_name["ReasoningLoop"].enabled is False

    assert by_name["SlowReasoning"] == Rule(
        name="SlowReasoning",
        condition=Condition(metric="reasoning_latency_p95_ms", op=">=", threshold=30000),
        for_seconds=300,
        keep_firing_for_seconds=60,
        min_samples=20,
        no_data="keep_state",
        scope=Scope(envs=("prod",), regions=("eu-west-1",), labels={"team": "search"}, agent="eu-*"),
        labels={"team": "search"},
        annotations={"summary": "{{ agent }} is slow"},
        dry_run=True,
        source=str(path),
    )


def test_env_without_a_file_gets_the_defaults(tmp_path: Path) -> None:
    write(tmp_path, "prod.yaml", "rules: []\n")
    rules = rules_for_env(tmp_path, "staging")
    assert [rule.name for rule in rules] == ["DeadNode", "ReasoningLoop", "CostSpike"]
    assert all(rule.scope.envs == ("staging",) for rule in rules)
    assert [rule.name for rule in rules_for_env(None, "dev")] == ["DeadNode", "ReasoningLoop", "CostSpike"]


def test_defaults_can_be_left_out(tmp_path: Path) -> None:
    write(tmp_path, "prod.yaml", "rules:\n  - name: Busy\n    condition: cpu_percent > 90\n")
    assert [rule.name for rule in rules_for_env(tmp_path, "prod", include_defaults=False)] == ["Busy"]
    assert rules_for_env(None, "prod", include_defaults=False) == []


def test_rule_in_env_file_may_name_its_own_env(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "prod.yaml",
        "rules:\n  - name: Busy\n    condition: cpu_percent > 90\n    scope: {envs: [prod]}\n",
    )
    [rule] = load_rules_file(path, "prod")
    assert rule.scope.envs == ("prod",)


def test_rules_file_without_env_keeps_the_scoped_envs() -> None:
    [rule] = parse_rules(
        "rules:\n  - name: Busy\n    condition: cpu_percent > 90\n    scope: {envs: [a, b]}\n", "shared"
    )
    assert rule.scope.envs == ("a", "b")
    assert rule.source == "shared"


def test_condition_as_a_mapping() -> None:
    [rule] = parse_rules(
        'rules:\n  - name: Flaky\n    condition: {metric: tool_success_rate, op: "<", threshold: 0.5}\n', "x"
    )
    assert rule.condition == Condition(metric="tool_success_rate", op="<", threshold=0.5)


def test_empty_files_have_no_rules(tmp_path: Path) -> None:
    assert load_rules_file(write(tmp_path, "a.yaml", "")) == []
    assert load_rules_file(write(tmp_path, "b.yaml", "# nothing yet\n")) == []
    assert load_rules_file(write(tmp_path, "c.yaml", "rules:\n")) == []
    assert load_rules_file(write(tmp_path, "d.yaml", "rules: []\n")) == []


def test_merge_keys_share_settings_between_rules() -> None:
    text = """
    rules:
      - &paging
        name: DeadNode
        condition: heartbeat_age_s > 60
        severity: critical
        actions: [notify, restart]
      - <<: *paging
        name: Stuck
        condition: consecutive_failed_tool_calls > 20
    """
    dead, stuck = parse_rules(textwrap.dedent(text), "x")
    assert dead.name == "DeadNode"
    assert stuck.severity == "critical"
    assert stuck.actions == ("notify", "restart")
    assert stuck.condition.metric == "consecutive_failed_tool_calls"


# --- durations ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("45s", 45),
        ("2m", 120),
        ("1h30m", 5400),
        ("1d", 86400),
        ("1w", 604800),
        ("1m30s", 90),
        ("1s100ms", 1.1),
        ("1.5h", 5400),
        (" 1h 30m ", 5400),
        ("30", 30),
        ("0", 0),
        (30, 30),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("-5s", "negative"),
        (-1, "negative"),
        ("5 minutes", "invalid duration"),
        ("", "invalid duration"),
        ("1H", "invalid duration"),
        ("30m1h", "largest first"),
        ("1m1m", "largest first"),
        (float("inf"), "finite"),
        (True, "expected a duration"),
    ],
)
def test_parse_duration_rejects(text: str | float, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.5, "500ms"),
        (45, "45s"),
        (120, "2m"),
        (90, "1m30s"),
        (5400, "1h30m"),
        (86400, "1d"),
        (90061.5, "1d1h1m1s500ms"),
        (0.0001, "0.0001s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


def test_format_duration_round_trips_awkward_values() -> None:
    for seconds in (1.1, 2.3, 0.1 + 0.2, 1e-7, 123456.789, 1 / 3):
        assert parse_duration(format_duration(seconds)) == seconds


# --- errors: file, line, field -----------------------------------------------


def test_unknown_metric_suggests_the_closest(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "prod.yaml",
        """
        rules:
          - name: Ok
            condition: cpu_percent > 90
          - name: Flaky
            condition: tool_sucess_rate < 0.5
        """,
    )
    line = only_problem(path)
    assert line.startswith(f"{path}:5: rules[1].condition: unknown metric 'tool_sucess_rate'")
    assert "did you mean 'tool_success_rate'?" in line
    assert "known metrics: heartbeat_age_s, consecutive_failed_tool_calls" in line


def test_bad_operator(tmp_path: Path) -> None:
    path = write(tmp_path, "prod.yaml", "rules:\n  - name: A\n    condition: cpu_percent => 90\n")
    line = only_problem(path)
    assert line.startswith(f"{path}:3: rules[0].condition: unknown comparison '=>'")
    assert "did you mean '>='?" in line


def test_condition_without_operator(tmp_path: Path) -> None:
    path = write(tmp_path, "prod.yaml", "rules:\n  - name: A\n    condition: cpu_percent 90\n")
    assert only_problem(path).startswith(f"{path}:3: rules[0].condition: expected '<metric> <op> <number>'")


def test_non_numeric_threshold(tmp_path: Path) -> None:
    path = write(tmp_path, "prod.yaml", "rules:\n  - name: A\n    condition: cpu_percent > ninety\n")
    assert only_problem(path) == f"{path}:3: rules[0].condition: threshold 'ninety' is not a number"


def test_non_numeric_threshold_in_a_mapping(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "prod.yaml",
        """
        rules:
          - name: A
            condition:
              metric: cpu_percent
              op: ">"
              threshold: high
        """,
    )
    assert only_problem(path) == (
        f"{path}:6: rules[0].condition.threshold: expected a number, got the string 'high'"
    )


def test_negative_for(tmp_path: Path) -> None:
    path = write(
        tmp_path, "prod.yaml", "rules:\n  - name: A\n    condition: cpu_percent > 90\n    for: -30s\n"
    )
    assert (
        only_problem(path) == f"{path}:4: rules[0].for: duration '-30s' is negative; durations are 0 or more"
    )


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "prod.yaml",
        """
        rules:
          - name: A
            condition: cpu_percent > 90
            severty: critical
            expr: x
        """,
    )
    assert problems(path) == [
        f"{path}:4: rules[0].severty: unknown key 'severty' (did you mean 'severity'?)",
        f"{path}:5: rules[0].expr: unknown key 'expr' (did you mean 'condition'?)",
    ]


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, "prod.yaml", "rule:\n  - name: A\n")
    assert problems(path) == [
        f"{path}:1: rule: unknown key 'rule' (did you mean 'rules'?)",
        f"{path}:1: missing 'rules:'; a rules file is a mapping with a 'rules:' list",
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("for: [1, 2]", "rules[0].for: expected a duration"),
        ("min_samples: many", "rules[0].min_samples: expected a whole number, got the string 'many'"),
        ("min_samples: -1", "rules[0].min_samples: must be 0 or more, got -1"),
        ("dry_run: maybe", "rules[0].dry_run: expected true or false, got the string 'maybe'"),
        ("labels: [team]", "rules[0].labels: expected a mapping of names to strings, got a list"),
        ("labels: {priority: 1}", "rules[0].labels.priority: expected a string, got the number 1 (quote it"),
        ("actions: notify", "rules[0].actions: expected a list of actions"),
        ("scope: {regions: eu-west-1}", "rules[0].scope.regions: expected a list of strings, got the string"),
        ("severity: critcal", "rules[0].severity: unknown severity 'critcal' (did you mean 'critical'?)"),
        (
            "no_data: firing",
            "rules[0].no_data: unknown no_data 'firing'; use one of ok, keep_state, alerting",
        ),
        ("name: 7up", "rules[0].name: invalid rule name '7up'"),
    ],
)
def test_wrong_types_and_values(tmp_path: Path, line: str, expected: str) -> None:
    # The tested key is always on line 4.
    if line.startswith("name:"):
        text = f"rules:\n  - condition: cpu_percent > 90\n    enabled: true\n    {line}\n"
    else:
        text = f"rules:\n  - name: A\n    condition: cpu_percent > 90\n    {line}\n"
    path = write(tmp_path, "prod.yaml", text)
    assert only_problem(path).startswith(f"{path}:4: {expected}")


def test_duplicate_rule_names(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "prod.yaml",
        """
        rules:
          - name: A
            condition: cpu_percent > 90
          - name: B
            condition: cpu_percent > 95
          - name: A
            condition: cpu_percent > 99
        """,
    )
    assert only_problem(path) == f"{path}:6: rules[2].name: duplicate rule name 'A' (first on line 2)"


def test_duplicate_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "prod.yaml",
        "rules:\n  - name: A\n    condition: cpu_percent > 90\n    for: 1m\n    for: 2m\n",
    )
    assert only_problem(path) == f"{path}:5: rules[0].for: duplicate key 'for' (first on line 4)"


def test_bad_and_repeated_actions(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "prod.yaml",
        """
        rules:
          - name: A
            condition: cpu_percent > 90
            actions:
              - notify
              - reboot
              - notify
        """,
    )
    assert problems(path) == [
        f"{path}:6: rules[0].actions[1]: unknown action 'reboot'; use one of notify, restart, stop,"
        " quarantine",
        f"{path}:7: rules[0].actions[2]: 'notify' is listed twice",
    ]


def test_min_samples_needs_a_metric_with_samples(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "prod.yaml",
        """
        rules:
          - name: Counted
            condition: tool_success_rate < 0.5
            min_samples: 20
          - name: Uncounted
            condition: heartbeat_age_s > 60
            min_samples: 20
        """,
    )
    line = only_problem(path)
    assert line.startswith(f"{path}:7: rules[1].min_samples: heartbeat_age_s has no sample count")


def test_bad_template(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "prod.yaml",
        """
        rules:
          - name: A
            condition: cpu_percent > 90
            annotations:
              summary: "{{ agent }} is busy"
              description: "{{ agent } at {{ value }}%"
              runbook: "{{ value | humanise }}"
        """,
    )
    assert problems(path) == [
        f"{path}:6: rules[0].annotations.description: bad template: unexpected '}}'",
        f"{path}:7: rules[0].annotations.runbook: bad template: No filter named 'humanise'.",
    ]


def test_rule_scoped_to_another_env(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "prod.yaml",
        """
        rules:
          - name: A
            condition: cpu_percent > 90
            scope:
              envs: [prod, staging]
        """,
    )
    line = only_problem(path, env="prod")
    assert line.startswith(f"{path}:5: rules[0].scope.envs[1]: 'staging' is another environment")
    assert "move the rule to staging.yaml" in line
    # The same file outside an env is fine.
    [rule] = load_rules_file(path)
    assert rule.scope.envs == ("prod", "staging")


def test_rules_for_env_reports_the_env_file(tmp_path: Path) -> None:
    path = write(
        tmp_path, "prod.yaml", "rules:\n  - name: A\n    condition: cpu_percent > 90\n    for: soon\n"
    )
    with pytest.raises(RuleError) as caught:
        rules_for_env(tmp_path, "prod")
    assert str(caught.value).startswith(f"{path}:4: rules[0].for: invalid duration 'soon'")
    assert caught.value.source == str(path)
    assert [(p.line, p.field) for p in caught.value.problems] == [(4, "rules[0].for")]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("rules:\n  - name: A\n   condition: x\n", 3, "YAML syntax error: expected <block end>"),
        ("rules:\n  - name: A\n    condition: [cpu_percent > 90\n", 4, "YAML syntax error:"),
        ("rules:\n  - name: A\n\tcondition: x\n", 3, "YAML syntax error:"),
    ],
)
def test_yaml_syntax_error(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = tmp_path / "prod.yaml"
    path.write_text(text, encoding="utf-8")
    assert only_problem(path).startswith(f"{path}:{line}: {message}")


def test_unsafe_tags_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "prod.yaml",
        "rules:\n  - name: A\n    condition: !!python/object/apply:os.system [echo hi]\n",
    )
    line = only_problem(path)
    assert line.startswith(f"{path}:3: rules[0].condition:")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "prod.yaml", "- name: A\n")
    assert only_problem(path) == (
        f"{path}:1: expected a mapping with a 'rules:' list at the top level, got a list"
    )


def test_every_problem_is_reported_in_line_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "prod.yaml",
        """
        rules:
          - name: A
            condition: tool_sucess_rate < 0.5
            for: -5s
            severity: critcal
          - name: A
            condition: cpu_percent >> 5
            forr: 2m
          - just a string
          - name: B
        """,
    )
    lines = problems(path)
    assert [line.split(": ", 2)[:2] for line in lines] == [
        [f"{path}:3", "rules[0].condition"],
        [f"{path}:4", "rules[0].for"],
        [f"{path}:5", "rules[0].severity"],
        [f"{path}:6", "rules[1].name"],
        [f"{path}:7", "rules[1].condition"],
        [f"{path}:8", "rules[1].forr"],
        [f"{path}:9", "rules[2]"],
        [f"{path}:10", "rules[3]"],
    ]
    assert lines[-1] == f"{path}:10: rules[3]: missing 'condition'"


def test_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert only_problem(missing).startswith(f"{missing}: no such rules file")
    assert only_problem(tmp_path).startswith(f"{tmp_path}: is a directory")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"rules: \xff\xfe\n")
    assert "save the file as UTF-8" in only_problem(binary)


def test_misnamed_yml_file_is_not_silently_ignored(tmp_path: Path) -> None:
    write(tmp_path, "prod.yml", "rules: []\n")
    with pytest.raises(RuleError, match=r"rename it to prod\.yaml"):
        rules_for_env(tmp_path, "prod")


def test_env_names_cannot_leave_the_rules_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid environment name"):
        rules_for_env(tmp_path, "../etc")


# --- dump --------------------------------------------------------------------


def test_dump_then_parse_gives_the_same_rules(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "prod.yaml",
        """
        rules:
          - name: SlowReasoning
            condition: reasoning_latency_p95_ms >= 30000.5
            for: 1h30m
            keep_firing_for: 1s250ms
            min_samples: 20
            no_data: alerting
            scope: {regions: [eu-west-1, us-east-1], labels: {team: search}, agent: "eu-*"}
            severity: info
            labels: {team: search, "app.kubernetes.io/name": "7"}
            annotations:
              summary: "{{ agent }}: {{ value | humanize }} ms"
              description: |
                Line one for {{ agent }}.
                Line two: {{ labels.team }}.
            actions: []
            dry_run: true
            enabled: false
          - name: Tiny
            condition: tool_success_rate < 0.1
        """,
    )
    rules = rules_for_env(tmp_path, "prod")
    text = dump_rules(rules)
    again = parse_rules(text, str(path))
    assert [msgspec.structs.replace(rule, source="") for rule in again] == [
        msgspec.structs.replace(rule, source="") for rule in rules
    ]
    # Written the way a person would, defaults left out.
    assert "for: 1h30m" in text
    assert "keep_firing_for: 1s250ms" in text
    assert "actions: [notify, restart]" in text
    assert "condition: tool_success_rate < 0.1" in text
    tiny = text[text.index("name: Tiny") :]
    assert [line.strip() for line in tiny.strip().splitlines()[1:]] == [
        "condition: tool_success_rate < 0.1",
        "scope:",
        "envs: [prod]",
    ]


def test_dump_of_a_file_reads_back_under_its_env(tmp_path: Path) -> None:
    rules = rules_for_env(None, "prod")
    path = tmp_path / "prod.yaml"
    path.write_text(dump_rules(rules), encoding="utf-8")
    assert [
        msgspec.structs.replace(rule, source="defaults") for rule in load_rules_file(path, "prod")
    ] == rules


# --- templates ---------------------------------------------------------------


def render(template: str, value: float | None = 12.3456) -> str:
    return render_annotations(
        {"t": template},
        rule="ReasoningLoop",
        agent="eu-7",
        env="prod",
        region="eu-west-1",
        value=value,
        threshold=10.0,
        labels={"team": "search"},
    )["t"]


def test_render_annotations_variables() -> None:
    assert render("{{ rule }} {{ agent }} {{ env }} {{ region }} {{ labels.team }}") == (
        "ReasoningLoop eu-7 prod eu-west-1 search"
    )
    assert render("{{ value }} > {{ threshold }}") == "12.3456 > 10"
    assert render("{{ value }}", value=11.0) == "11"
    assert render("{{ value | round(2) }}") == "12.35"
    assert render("{{ value | round }}") == "12"
    assert render("{{ value | humanize }}") == "12.35"
    assert render("{{ value | humanize }}", value=1234567) == "1.23M"


def test_missing_values_render_empty() -> None:
    assert render("[{{ nothing }}][{{ labels.owner }}]") == "[][]"
    assert render("[{{ value }}][{{ value | humanize }}][{{ value | round(1) }}]", value=None) == "[][][]"


def test_render_errors_keep_the_template() -> None:
    assert render("{{ 1 / 0 }}") == "{{ 1 / 0 }} (template error: division by zero)"
    assert render("{{ agent }").startswith("{{ agent } (template error: unexpected '}'")
    assert "template error" in render('{{ "x" * 10000000 }}')


def test_templates_are_sandboxed() -> None:
    assert "template error" in render("{{ ''.__class__.__mro__[1].__subclasses__() }}")


def test_check_template() -> None:
    assert check_template("{{ agent }} at {{ value | humanize }}") is None
    error = check_template("{% if value %}")
    assert error is not None and error.startswith("Unexpected end of template.")
    assert check_template("{{ value | humanise }}") == "No filter named 'humanise'."


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (12.3456, "12.35"),
        (12, "12"),
        (0.5, "0.5"),
        (1500, "1.5k"),
        (999999, "1M"),
        (1234567, "1.23M"),
        (-2500, "-2.5k"),
        (0.001234, "0.00123"),
        (3.2e9, "3.2G"),
    ],
)
def test_humanize(value: float, text: str) -> None:
    assert humanize(value) == text
