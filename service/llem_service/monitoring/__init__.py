"""Prometheus metrics and live GPU telemetry of the service (`/metrics`)."""
