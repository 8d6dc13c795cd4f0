"""Monitoring: drift statistics, Prometheus metric definitions and collectors."""
