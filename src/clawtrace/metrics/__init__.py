"""Operational and reasoning metrics: live per agent and group, minute rollups, Prometheus."""

from clawtrace.metrics.prices import DEFAULT_PRICES_FILE, ModelPrice, PriceTable
from clawtrace.metrics.stage import MetricsSettings, MetricsStage, RollupRow

__all__ = ["DEFAULT_PRICES_FILE", "MetricsSettings", "MetricsStage", "ModelPrice", "PriceTable", "RollupRow"]
