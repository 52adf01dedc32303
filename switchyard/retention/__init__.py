"""Retention: what ended long enough ago is deleted by the leading worker, in small batches."""
