"""The web console: server-rendered pages over the same API and credentials."""

from pathlib import Path

from clawtrace.console.routes import router

STATIC_DIR = Path(__file__).parent / "static"

__all__ = ["STATIC_DIR", "router"]
