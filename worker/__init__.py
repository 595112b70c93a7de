"""Celery workers: run the core's pipeline on queued jobs, one at a time per GPU."""
