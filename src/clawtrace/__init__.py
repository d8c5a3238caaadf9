"""ClawTrace: a self-hosted control plane for fleets of autonomous LLM agents."""

__version__ = "0.1.0"
