"""The rules in force per environment, read from ``<rules_dir>/<env>.yaml``."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from clawtrace.alerts.model import Rule
from clawtrace.alerts.rules_file import parse_rules, rules_for_env

log = logging.getLogger("clawtrace.alerts")


class RuleBook:
    """Loads each environment's rules on first use and when told to reload.

    A file that does not validate is refused as a whole: the environment
    keeps the rules it had (or the defaults), and the error is kept for the
    API and the log, because a half-loaded rule file would silently drop alerts.
    """

    def __init__(self, rules_dir: Path | None, include_defaults: bool = True) -> None:
        self.rules_dir = rules_dir
        self.include_defaults = include_defaults
        self._rules: dict[str, list[Rule]] = {}
        # Each loaded file's modification time (None: no file), to notice edits.
        self._stamps: dict[str, int | None] = {}
        self.errors: dict[str, str] = {}
        # Bumped on every change, so per-agent rule lists know when they are stale.
        self.version = 0

    def path_for(self, env: str) -> Path | None:
        return None if self.rules_dir is None else self.rules_dir / f"{env}.yaml"

    def rules(self, env: str) -> list[Rule]:
        rules = self._rules.get(env)
        if rules is None:
            try:
                rules = self.reload(env)
            except Exception as exc:
                # Monitoring goes on with the defaults; the API shows the error.
                log.error("alert rules for %s not loaded, using the defaults: %s", env, exc)
                rules = self._rules[env]
        return rules

    def _stamp(self, env: str) -> int | None:
        path = self.path_for(env)
        try:
            return None if path is None else path.stat().st_mtime_ns
        except OSError:
            return None

    def refresh(self) -> list[str]:
        """Reload the environments whose file changed on disk; returns their names.

        A file edited into something invalid is refused (the rules in force
        stay, the error is shown by the API and logged)."""
        changed = [env for env, stamp in self._stamps.items() if self._stamp(env) != stamp]
        for env in changed:
            try:
                self.reload(env)
                log.info("alert rules for %s reloaded from %s", env, self.path_for(env))
            except Exception as exc:
                log.error("alert rules for %s changed but were not loaded: %s", env, exc)
        return changed

    def reload(self, env: str) -> list[Rule]:
        """Read the environment's file again; raises RuleError if it is invalid."""
        self._stamps[env] = self._stamp(env)
        try:
            rules = rules_for_env(self.rules_dir, env, self.include_defaults)
        except Exception as exc:
            self.errors[env] = str(exc)
            if env not in self._rules:
                self._rules[env] = rules_for_env(None, env, self.include_defaults)
                self.version += 1
            raise
        self.errors.pop(env, None)
        self._rules[env] = rules
        self.version += 1
        return rules

    def replace(self, env: str, text: str) -> list[Rule]:
        """Validate ``text`` as the environment's rule file, write it, and load it."""
        path = self.path_for(env)
        if path is None:
            raise ValueError("no rules directory is configured; set [gateway.alerts] rules_dir")
        parse_rules(text, str(path), env)  # raises RuleError before anything is written
        path.parent.mkdir(parents=True, exist_ok=True)
        # Atomic: a crash mid-write must not leave a truncated rule file behind.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{env}.", suffix=".yaml")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.reload(env)

    def loaded(self) -> Mapping[str, list[Rule]]:
        return self._rules
