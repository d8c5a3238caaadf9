"""OTLP/HTTP receiver: OpenTelemetry traces, logs and metrics in, protocol v1 events out.

``decode``: content types, gzip, protobuf / OTLP JSON; ``resource``: which agent and
environment; ``genai`` and ``openclaw``: what a span becomes; ``mapping``: requests to
events; ``receiver``: the gateway's ``/v1/traces``, ``/v1/logs`` and ``/v1/metrics``.
"""
