"""Enforcing limits and budgets: admission (counted and reserved in one Redis script), settlement when a
task ends, and what `GET /v1/budget` shows. See `service.py` for the design."""
