"""Webhook delivery: signing (Standard Webhooks) and one safe delivery attempt to a user-supplied URL."""
