"""The event log: rows written with each state change, numbered after commit by the relay, and fanned out."""
