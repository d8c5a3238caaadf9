"""Annotation templates: the Jinja2 text of a rule's ``summary``/``description``.

Templates see these variables:

``rule``       the rule name
``agent``      the agent id ("" for an environment-wide alert)
``env``        the agent's environment
``region``     the agent's region ("" when it has none)
``value``      the metric value that was tested (empty when there was no data)
``threshold``  the rule's threshold
``labels``     the alert's labels, e.g. ``{{ labels.team }}``

and, besides Jinja2's own filters, ``humanize`` (``1234567 | humanize`` ->
``1.23M``). Floats print compactly (``12.0`` as ``12``), a missing variable
prints as nothing, and a template that fails to render yields its own text
plus ``(template error: ...)``: a typo in an annotation must never stop an
alert from firing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any, Literal

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.filters import do_round
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

# Generous for any annotation, small enough that `"x" * 10**9` or `2 ** 10**9`
# in a rules file cannot stall the evaluation loop.
_MAX_REPEAT = 100_000
_MAX_EXPONENT = 1_000

_SI_PREFIXES = ("", "k", "M", "G", "T", "P", "E")


def format_number(value: float) -> str:
    """``value`` as a person would write it: 12 not 12.0, 0.3 not 0.30000000000000004."""
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e16:
        return str(int(value))
    if abs(value) >= 1e6:
        return f"{value:.0f}"
    return f"{value:.6g}"


def humanize(value: object) -> object:
    """Two decimals and an SI prefix: 12.3456 -> "12.35", 1234567 -> "1.23M"."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        # None and Undefined render as nothing; anything else as it is.
        return "" if value is None or isinstance(value, jinja2.Undefined) else value
    number = float(value)
    if not math.isfinite(number):
        return str(number)
    if number != 0 and abs(number) < 0.01:
        return f"{number:.3g}"
    for index, prefix in enumerate(_SI_PREFIXES):
        scaled = number / 1000**index
        # Round first so 999999 becomes "1M", not "1000k".
        if abs(round(scaled, 2)) < 1000:
            text = f"{scaled:.2f}".rstrip("0").rstrip(".")
            return f"{text}{prefix}"
    return f"{number:.3g}"


def _round(
    value: object, precision: int = 0, method: Literal["common", "ceil", "floor"] = "common"
) -> object:
    # Jinja2's round raises on None; value is None when the metric had no data.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    return do_round(float(value), precision, method)


def _finalize(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, float):
        return format_number(value)
    return value


class _Environment(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > _MAX_EXPONENT:
                raise SecurityError(f"exponent {right} is larger than {_MAX_EXPONENT}")
            return left**right
        for sequence, count in ((left, right), (right, left)):
            if (
                isinstance(sequence, str | list | tuple)
                and isinstance(count, int)
                and len(sequence) * count > _MAX_REPEAT
            ):
                raise SecurityError(f"repetition longer than {_MAX_REPEAT} items")
        return left * right


_ENV = _Environment(autoescape=False, finalize=_finalize)
_ENV.filters["humanize"] = humanize
_ENV.filters["round"] = _round


@functools.lru_cache(maxsize=1024)
def _compile(source: str) -> jinja2.Template | str:
    """The compiled template, or the syntax error message (cached too, so a
    broken annotation is not recompiled at every evaluation)."""
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        where = f" (line {exc.lineno})" if "\n" in source.strip() else ""
        return f"{exc.message}{where}"


def check_template(text: str) -> str | None:
    """None if ``text`` compiles, else Jinja2's syntax error message."""
    compiled = _compile(text)
    return compiled if isinstance(compiled, str) else None


def render_annotations(
    annotations: Mapping[str, str],
    *,
    rule: str,
    agent: str,
    env: str,
    region: str,
    value: float | None,
    threshold: float,
    labels: Mapping[str, str],
) -> dict[str, str]:
    """Every annotation rendered for one alert; never raises."""
    variables = {
        "rule": rule,
        "agent": agent,
        "env": env,
        "region": region,
        "value": value,
        "threshold": threshold,
        "labels": dict(labels),
    }
    rendered: dict[str, str] = {}
    for key, source in annotations.items():
        compiled = _compile(source)
        if isinstance(compiled, str):
            rendered[key] = f"{source} (template error: {compiled})"
            continue
        try:
            rendered[key] = compiled.render(variables)
        # Any exception: templates are user text, and a broken one must still
        # leave the alert (and its other annotations) intact.
        except Exception as exc:
            rendered[key] = f"{source} (template error: {exc})"
    return rendered
