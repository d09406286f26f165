"""Deliveries: one row per (source instance, destination, result object), attempts counted in SQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.dialects import postgresql, sqlite

from node.ledger.schema import deliveries, instances, now

DELIVERY_STATES = ("pending", "sent", "failed")


class DeliveriesMixin:
    engine: Engine
    DELIVERY_STATES = DELIVERY_STATES

    def record_attempt(
        self,
        sop_instance_uid: str,
        destination: str,
        result_uid: str,
        state: str,
        error: str | None = None,
        *,
        count: bool = True,
    ) -> int:
        """Record one delivery attempt of ``result_uid`` (a result of ``sop_instance_uid``) to ``destination``.

        ``state`` is pending (will be retried), sent or failed; ``error`` the reason of a failed
        attempt (cleared on success). ``count=False`` only sets the state (e.g. pending when queued).
        One row per (instance, destination, result) — an upsert, so concurrent writers cannot make
        two. Returns the number of attempts recorded so far for this result and destination.
        """
        if state not in DELIVERY_STATES:
            raise ValueError(f"unknown delivery state {state!r} (expected one of {', '.join(DELIVERY_STATES)})")
        destination = destination[:64]  # the column's width
        t = now()
        with self.engine.begin() as conn:
            iid = conn.execute(select(instances.c.id).where(instances.c.sop_instance_uid == sop_instance_uid)).scalar()
            if iid is None:
                raise ValueError(f"source instance {sop_instance_uid} is not in the ledger")
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            stmt = dialect.insert(deliveries).values(
                instance_id=iid, destination=destination, result_uid=result_uid, state=state,
                attempts=1 if count else 0, last_error=error, updated_at=t,
            )  # fmt: skip
            stmt = stmt.on_conflict_do_update(
                index_elements=["instance_id", "destination", "result_uid"],
                set_={
                    "state": state,
                    "last_error": error,
                    "updated_at": t,
                    "attempts": deliveries.c.attempts + (1 if count else 0),
                },
            ).returning(deliveries.c.attempts)
            return int(conn.execute(stmt).scalar_one())

    def deliveries_of(self, sop_instance_uid: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(deliveries)
                .join(instances, instances.c.id == deliveries.c.instance_id)
                .where(instances.c.sop_instance_uid == sop_instance_uid)
                .order_by(deliveries.c.id)
            )
            return [dict(r._mapping) for r in rows]

    def deliveries_for_retry(self, destination: str | None = None, *, include_failed: bool = False) -> list[dict[str, Any]]:
        """Deliveries not finished (pending; with ``include_failed`` also failed), oldest first.

        Each row carries the source instance's ``sop_instance_uid`` besides the delivery columns.
        """
        states = ["pending", "failed"] if include_failed else ["pending"]
        query = (
            select(deliveries, instances.c.sop_instance_uid)
            .join(instances, instances.c.id == deliveries.c.instance_id)
            .where(deliveries.c.state.in_(states))
            .order_by(deliveries.c.updated_at, deliveries.c.id)
        )
        if destination is not None:
            query = query.where(deliveries.c.destination == destination)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def delivery_counts(self) -> dict[str, dict[str, int]]:
        """{destination: {state: number of result deliveries}} for ``alnnode status``."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(deliveries.c.destination, deliveries.c.state, func.count()).group_by(
                    deliveries.c.destination, deliveries.c.state
                )
            )
            out: dict[str, dict[str, int]] = {}
            for dest, state, n in rows:
                out.setdefault(dest, {s: 0 for s in DELIVERY_STATES})[state] = int(n)
            return out
