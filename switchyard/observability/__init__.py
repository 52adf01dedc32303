"""Metrics, tracing and logging setup: what operators watch Switchyard through."""
