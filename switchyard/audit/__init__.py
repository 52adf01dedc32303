"""The audit log: who changed keys, tenant limits and budgets, webhooks and workflow definitions, and how."""
