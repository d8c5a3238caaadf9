"""Secrets never reach the store: known credential formats are masked on ingest."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from clawtrace.gateway.settings import RedactionPattern


def _p(name: str, pattern: str, *hints: str) -> RedactionPattern:
    return RedactionPattern(name=name, pattern=pattern, hints=list(hints))


_ASSIGNMENT_KEYS = ("password", "passwd", "api_key", "apikey", "secret", "token")
_ASSIGNMENT_HINTS = tuple(
    key + sep for k in _ASSIGNMENT_KEYS for key in (k, k.upper()) for sep in ("=", ": ")
)
_ASSIGNMENT_LOOKBEHINDS = "|".join(
    f"(?<={re.escape(key + sep)})" for k in _ASSIGNMENT_KEYS for key in (k, k.upper()) for sep in ("=", ": ")
)

DEFAULT_PATTERNS: tuple[RedactionPattern, ...] = (
    _p("anthropic_key", r"sk-ant-[A-Za-z0-9_\-]{20,}", "sk-ant-"),
    _p("openai_key", r"sk-(?:proj-)?[A-Za-z0-9_\-]{20,}", "sk-"),
    _p("aws_access_key", r"(?:AKIA|ASIA)[0-9A-Z]{16}", "AKIA", "ASIA"),
    _p(
        "github_token",
        r"(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{60,})",
        "ghp_",
        "gho_",
        "ghu_",
        "ghs_",
        "ghr_",
        "github_pat_",
    ),
    _p("slack_token", r"xox[abposr]-[A-Za-z0-9-]{10,}", "xox"),
    _p("google_api_key", r"AIza[0-9A-Za-z_\-]{35}", "AIza"),
    _p("stripe_key", r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}", "_live_", "_test_"),
    _p("jwt", r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}", "eyJ"),
    _p("clawtrace_token", r"ct_[0-9a-f]{12}_[A-Za-z0-9_\-]{20,}", "ct_"),
    _p(
        "private_key",
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
        "PRIVATE KEY-----",
    ),
    _p("bearer", r"(?:(?<=Bearer )|(?<=bearer )|(?<=BEARER ))[A-Za-z0-9._~+/\-]{16,}=*", "earer ", "EARER "),
    _p("secret_assignment", f"(?:{_ASSIGNMENT_LOOKBEHINDS})[^\\s'\"&]{{6,}}", *_ASSIGNMENT_HINTS),
)


# Tool arguments usually carry secrets by name: {"password": "..."}.
SECRET_KEY = re.compile(
    r"(?i)(?:^|[_.-])(?:password|passwd|secret|token|api_?key|access_?key|private_?key|authorization|credentials?)$"
)
_SECRET_KEY_HINTS = tuple(
    f'{name}"'.encode()
    for name in (
        "password",
        "passwd",
        "secret",
        "token",
        "apikey",
        "api_key",
        "accesskey",
        "access_key",
        "privatekey",
        "private_key",
        "authorization",
        "credential",
        "credentials",
    )
)
SECRET_FIELD = "[REDACTED:secret_field]"


class Redactor:
    """Masks every match of the configured patterns in strings.

    A pattern with hints only runs when one of its hints occurs in the text.
    ``plan(frame)`` does that check once per frame on the raw bytes, so a
    frame without any credential-looking text skips redaction altogether.
    """

    def __init__(self, patterns: Iterable[RedactionPattern]) -> None:
        self.patterns = list(patterns)
        self._always: list[tuple[re.Pattern[str], str]] = []
        self._hinted: list[tuple[re.Pattern[str], str]] = []
        self._hints: list[tuple[str, int]] = []
        for p in self.patterns:
            try:
                regex = re.compile(p.pattern)
            except re.error as exc:
                raise ValueError(f"redaction pattern {p.name!r} is not a valid regex: {exc}") from None
            compiled = (regex, f"[REDACTED:{p.name}]")
            if p.hints:
                self._hints.extend((hint, len(self._hinted)) for hint in p.hints)
                self._hinted.append(compiled)
            else:
                self._always.append(compiled)
        self._hint_bytes = [(hint.encode(), index) for hint, index in self._hints]
        self._everything = RedactionPlan(self._always + self._hinted, mask_keys=True)

    def plan(self, frame: bytes | str | None = None) -> RedactionPlan:
        """The patterns that can match anything inside ``frame``."""
        # JSON escapes (\u0073k-...) could hide a hint from a raw scan.
        if frame is None or (b"\\u" in frame if isinstance(frame, bytes) else "\\u" in frame):
            return self._everything
        raw = frame if isinstance(frame, bytes) else frame.encode()
        matched = {index for hint, index in self._hint_bytes if hint in raw}
        lowered = raw.lower()
        mask_keys = any(hint in lowered for hint in _SECRET_KEY_HINTS)
        return RedactionPlan(self._always + [self._hinted[i] for i in sorted(matched)], mask_keys=mask_keys)

    def text(self, value: str) -> str:
        return self._everything.text(value)

    def value(self, value: Any) -> Any:
        return self._everything.value(value)


class RedactionPlan:
    """The redaction that one frame needs (see ``Redactor.plan``)."""

    def __init__(self, compiled: list[tuple[re.Pattern[str], str]], *, mask_keys: bool) -> None:
        self.compiled = compiled
        self.mask_keys = mask_keys
        self.active = bool(compiled) or mask_keys

    def text(self, value: str) -> str:
        for regex, replacement in self.compiled:
            value = regex.sub(replacement, value)
        return value

    def value(self, value: Any) -> Any:
        """Redact every string inside a JSON-like value."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {key: self._field(key, item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.value(item) for item in value]
        return value

    def _field(self, key: Any, item: Any) -> Any:
        if (
            self.mask_keys
            and isinstance(item, str | int | float)
            and not isinstance(item, bool)
            and item != ""
            and isinstance(key, str)
            and SECRET_KEY.search(key)
        ):
            return SECRET_FIELD
        return self.value(item)
