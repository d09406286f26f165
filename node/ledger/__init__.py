"""The job ledger: associations, received instances (jobs), their state changes, deliveries, workers.

SQLAlchemy Core over SQLite (WAL, synchronous=FULL) by default; PostgreSQL (``postgresql+psycopg://``)
for scale-out. The schema is migrated with Alembic at open. Only UIDs are stored, never patient names
or identifiers. States and their allowed transitions: ``node.ledger.states``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from node.ledger.associations import AssociationsMixin
from node.ledger.deliveries import DELIVERY_STATES, DeliveriesMixin
from node.ledger.engine import migrate, open_engine
from node.ledger.jobs import JobsMixin
from node.ledger.schema import (
    NewInstance,
    associations,
    aware,
    deliveries,
    instances,
    metadata,
    now,
    state_changes,
    workers,
)
from node.ledger.states import FINISHED_STATES, STATES, TRANSITIONS
from node.ledger.workers import WorkersMixin

__all__ = [
    "DELIVERY_STATES",
    "FINISHED_STATES",
    "STATES",
    "TRANSITIONS",
    "Ledger",
    "NewInstance",
    "as_jsonable",
    "aware",
    "associations",
    "deliveries",
    "instances",
    "metadata",
    "now",
    "state_changes",
    "workers",
]


class Ledger(AssociationsMixin, JobsMixin, DeliveriesMixin, WorkersMixin):
    """Thread-safe access to the job ledger (one engine per process)."""

    def __init__(self, url: str, *, migrate_schema: bool = True) -> None:
        self.url = url
        self.engine = open_engine(url)
        if migrate_schema:
            migrate(self.engine)

    def close(self) -> None:
        self.engine.dispose()


def as_jsonable(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in row.items()} for row in rows]
