"""Moderation gates: what text of a call is scored, what blocks it, the keyword fallback, and the record kept on
the task. Pure functions and small state machines; the executor (switchyard.tasks.moderation_gate) calls the
moderation model and applies them."""
