"""Workflow DAGs: the spec, its validation and templating, runs and their durable execution."""
