"""The Celery app of the compute plane (``proj/celery.py`` in Celery's layout).

Configured at worker start from the validated node configuration (``configure``), never from the
environment at import time. Queues: ``gpu`` (classify) and ``io`` (render, dispatch).
"""

from __future__ import annotations

from celery import Celery

from node.config import Settings
from node.queue import celery_config
from workers.stages import WorkerContext

app = Celery("alnnode", include=["workers.tasks"])

# Explicit limits (seconds): a stuck decode or a hung destination never blocks a worker for good.
TIME_LIMITS = {
    "classify": (600, 660),
    "render": (300, 330),
    "dispatch": (1800, 1860),
}


def configure(settings: Settings, device: str | None = None) -> Celery:
    """Apply the shared Celery settings and bind the worker context to the app."""
    app.conf.update(celery_config(settings))
    app.conf.worker_max_tasks_per_child = 200
    app.alnnode = WorkerContext(settings, device=device)  # type: ignore[attr-defined]
    return app


def context() -> WorkerContext:
    ctx = getattr(app, "alnnode", None)
    if ctx is None:
        raise RuntimeError("workers.celery_app.configure(settings) was not called in this process")
    return ctx
