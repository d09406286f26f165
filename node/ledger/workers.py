"""The workers registry: each worker process says which queues it reads, every few seconds.

The reaper reads it to know whether a live worker reads a queue before it re-sends a task there,
and ``alnnode status`` shows it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from node.ledger.schema import HOST_MAX, now, workers


class WorkersMixin:
    engine: Engine

    def worker_heartbeat(self, worker_id: str, *, host: str, pid: int, queues: str) -> None:
        t = now()
        with self.engine.begin() as conn:
            res = conn.execute(update(workers).where(workers.c.id == worker_id).values(last_seen=t, pid=pid, queues=queues))
            if res.rowcount:
                return
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(workers).values(id=worker_id, host=host[:HOST_MAX], pid=pid, queues=queues, started_at=t, last_seen=t)
                )
        except IntegrityError:  # another beat of the same worker won the race
            pass

    def remove_worker(self, worker_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(workers).where(workers.c.id == worker_id))

    def live_workers(self, within: float) -> list[dict[str, Any]]:
        limit = now() - dt.timedelta(seconds=within)
        with self.engine.connect() as conn:
            rows = conn.execute(select(workers).where(workers.c.last_seen >= limit).order_by(workers.c.id))
            return [dict(r._mapping) for r in rows]

