"""Inference tasks: creation, queries, execution by the workers, and the sweeper."""
