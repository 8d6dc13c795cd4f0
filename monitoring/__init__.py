"""Monitoring: drift statistics, Prometheus metrics and exporters, dashboards and alert rules."""
