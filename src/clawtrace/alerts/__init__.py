"""Threshold alerts and automated remediation (docs/alerts.md)."""
