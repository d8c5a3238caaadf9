"""The gateway: receivers, ingest pipeline, read API and live hub."""

from clawtrace.gateway.app import create_app
from clawtrace.gateway.server import serve, uvicorn_config
from clawtrace.gateway.settings import GatewaySettings, SettingsError, load_settings

__all__ = ["GatewaySettings", "SettingsError", "create_app", "load_settings", "serve", "uvicorn_config"]
