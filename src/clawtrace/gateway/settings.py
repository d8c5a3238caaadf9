"""Gateway settings: defaults, a TOML file, then command-line overrides."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec

from clawtrace.alerts.receivers import check_receivers
from clawtrace.alerts.settings import AlertSettings
from clawtrace.envs.environments import Environments, check_order
from clawtrace.envs.settings import DEFAULT_ORDER, EnvironmentSettings
from clawtrace.metrics.prices import ModelPrice
from clawtrace.protocol.tls import TLSConfigError, check_server_files


class RedactionPattern(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    pattern: str
    # Literal substrings of which at least one occurs in every match; lets
    # the redactor skip the regex for the vast majority of lines.
    hints: list[str] = []


class GatewaySettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 7420
    data_dir: str = ".clawtrace"
    store: str = "sqlite://"
    bus: str = "memory://"
    max_frame_bytes: int = 1 << 20
    max_events_per_frame: int = 10_000
    # Per connection; a flood beyond it is slowed down (backpressure), then closed.
    rate_limit_events_per_second: float = 20_000.0
    rate_limit_burst: int = 40_000
    rate_limit_max_delay_seconds: float = 5.0
    retention_days: float = 30.0
    retention_interval_seconds: float = 300.0
    # The environments a release is promoted through, in order (docs/releases.md).
    environment_order: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_ORDER))
    # Per environment: retention, promotion gates, rollout.
    environments: dict[str, EnvironmentSettings] = {}
    redact_defaults: bool = True
    redact: list[RedactionPattern] = []
    writer_max_batch_rows: int = 10_000
    # permessage-deflate costs more CPU than it saves bandwidth on a LAN.
    ws_compression: bool = False
    log_level: str = "info"
    # Metrics (docs/metrics.md). Disabling skips the stage entirely (benchmarks).
    metrics_enabled: bool = True
    metrics_window_seconds: float = 300.0
    tool_timeout_seconds: float = 300.0
    prices_file: str | None = None
    prices: dict[str, ModelPrice] = {}
    rollup_retention_days: float = 90.0
    # /metrics: per-agent series multiply cardinality by the fleet size.
    metrics_per_agent: bool = False
    # /metrics wants a viewer credential unless this is false.
    metrics_auth: bool = True
    # The address people reach the gateway at (links in notifications);
    # default http://HOST:PORT.
    public_url: str | None = None
    # Serve https/wss with this certificate (PEM, then intermediates) and key; both or neither.
    tls_cert: str | None = None
    tls_key: str | None = None
    # Alert rules, notifications and remediation (docs/alerts.md).
    alerts: AlertSettings = AlertSettings()

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def external_url(self) -> str:
        scheme = "https" if self.tls_cert else "http"
        return (self.public_url or f"{scheme}://{self.host}:{self.port}").rstrip("/")

    @property
    def rules_path(self) -> Path:
        return Path(self.alerts.rules_dir) if self.alerts.rules_dir else self.data_path / "alerts"

    @property
    def promotion(self) -> Environments:
        return Environments(tuple(self.environment_order), self.environments)

    def retention_for(self, env: str) -> float:
        env_settings = self.environments.get(env)
        if env_settings is not None and env_settings.retention_days is not None:
            return env_settings.retention_days
        return self.retention_days


class SettingsError(Exception):
    pass


def load_settings(path: Path | None = None, **overrides: Any) -> GatewaySettings:
    """Read ``path`` (TOML, optional ``[gateway]`` table) and apply non-None overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            document = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise SettingsError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
        raw = dict(document.get("gateway", document))
    raw.update({key: value for key, value in overrides.items() if value is not None})
    where = f" in {path}" if path else ""
    try:
        settings = msgspec.convert(raw, GatewaySettings)
        check_receivers(settings.alerts.receivers)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"invalid setting{where}: {exc}") from None
    except ValueError as exc:
        raise SettingsError(f"invalid [gateway.alerts] receivers{where}: {exc}") from None
    problems = check_order(settings.environment_order)
    if problems:
        raise SettingsError(f"invalid setting{where}: {'; '.join(problems)}")
    try:
        check_server_files(settings.tls_cert, settings.tls_key)
    except TLSConfigError as exc:
        raise SettingsError(f"cannot serve TLS{where}: {exc}") from None
    return settings
