"""Guardrails: PII scrubbing (`pii`) and moderation gates (`moderation`) around a call."""
