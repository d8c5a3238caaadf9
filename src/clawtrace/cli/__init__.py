"""The ``clawtrace`` command line."""

from clawtrace.cli.main import main

__all__ = ["main"]
