"""The Celery app, its queues, and the task entry points."""
