"""The job ledger: associations, received instances (jobs), their state changes and deliveries.

SQLAlchemy Core over SQLite (WAL, synchronous=FULL) by default; any SQLAlchemy URL works
(PostgreSQL for scale-out). Only UIDs are stored, never patient names or identifiers.

Job states (shared/DESIGN.md)::

    received -> queued -> classified -> rendered -> dispatched
    skipped (not routed to a model, with the reason)     failed (stage, reason)
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

logger = logging.getLogger(__name__)

STATES = ("received", "queued", "classified", "rendered", "dispatched", "skipped", "failed")
FINISHED_STATES = frozenset({"dispatched", "skipped", "failed"})

metadata = MetaData()

associations = Table(
    "associations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("calling_ae", String(16), nullable=False),
    Column("called_ae", String(16), nullable=False),
    Column("peer_host", String(64), nullable=False),
    Column("peer_port", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True)),
    Column("instances", Integer, nullable=False, default=0),
    Column("failures", Integer, nullable=False, default=0),
    Column("bytes", BigInteger, nullable=False, default=0),
    Column("outcome", String(16), nullable=False, default="open"),  # open|released|aborted|rejected
    Column("reason", Text),
)

instances = Table(
    "instances",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),
    Column("sop_class_uid", String(64), nullable=False),
    Column("study_instance_uid", String(64)),
    Column("series_instance_uid", String(64)),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("spool_path", String(200), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("frames", Integer),
    Column("calling_ae", String(16)),
    Column("association_id", Integer, ForeignKey("associations.id")),
    Column("state", String(16), nullable=False, index=True),
    Column("stage", String(16)),  # stage that failed
    Column("reason", Text),  # why skipped/failed
    Column("duplicates", Integer, nullable=False, default=0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("model_uid", String(64)),
    Column("probability", String(32)),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, index=True),
)

state_changes = Table(
    "state_changes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("instance_id", Integer, ForeignKey("instances.id"), nullable=False, index=True),
    Column("state", String(16), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("detail", Text),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("instance_id", Integer, ForeignKey("instances.id"), nullable=False, index=True),
    Column("destination", String(64), nullable=False),
    Column("result_uid", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # pending|sent|failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


def _pk(result: Any) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class NewInstance:
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    transfer_syntax_uid: str
    spool_path: str
    size: int
    frames: int | None
    calling_ae: str | None
    association_id: int | None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets status readers run beside the writer; FULL makes each commit durable before
    # the C-STORE success that depends on it is sent.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Ledger:
    """Thread-safe access to the job ledger (one engine per process)."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- associations ---------------------------------------------------------------------
    def open_association(self, calling_ae: str, called_ae: str, host: str, port: int) -> int:
        with self.engine.begin() as conn:
            res = conn.execute(
                insert(associations).values(
                    calling_ae=calling_ae[:16],
                    called_ae=called_ae[:16],
                    peer_host=host,
                    peer_port=port,
                    started_at=now(),
                    instances=0,
                    failures=0,
                    bytes=0,
                    outcome="open",
                )
            )
            return _pk(res)

    def count_store(self, association_id: int, size: int, ok: bool) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(associations)
                .where(associations.c.id == association_id)
                .values(
                    instances=associations.c.instances + (1 if ok else 0),
                    failures=associations.c.failures + (0 if ok else 1),
                    bytes=associations.c.bytes + size,
                )
            )

    def close_association(self, association_id: int, outcome: str, reason: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(associations)
                .where(associations.c.id == association_id)
                .values(ended_at=now(), outcome=outcome, reason=reason)
            )

    def close_open_associations(self) -> int:
        """Mark associations left open by a crash as ``interrupted``; returns how many."""
        with self.engine.begin() as conn:
            res = conn.execute(
                update(associations)
                .where(associations.c.outcome == "open")
                .values(ended_at=now(), outcome="interrupted", reason="node stopped during the association")
            )
            return int(res.rowcount or 0)

    def record_rejected(self, calling_ae: str, called_ae: str, host: str, port: int, reason: str) -> None:
        with self.engine.begin() as conn:
            t = now()
            conn.execute(
                insert(associations).values(
                    calling_ae=calling_ae[:16],
                    called_ae=called_ae[:16],
                    peer_host=host,
                    peer_port=port,
                    started_at=t,
                    ended_at=t,
                    instances=0,
                    failures=0,
                    bytes=0,
                    outcome="rejected",
                    reason=reason,
                )
            )

    # -- instances ------------------------------------------------------------------------
    def add_instance(self, new: NewInstance, state: str = "received", reason: str | None = None) -> int | None:
        """Record a spooled instance; returns its id, or None if the UID is already recorded."""
        t = now()
        try:
            with self.engine.begin() as conn:
                res = conn.execute(
                    insert(instances).values(
                        **new.__dict__,
                        state=state,
                        reason=reason,
                        duplicates=0,
                        attempts=0,
                        received_at=t,
                        updated_at=t,
                    )
                )
                iid = _pk(res)
                conn.execute(insert(state_changes).values(instance_id=iid, state=state, at=t, detail=reason))
                return iid
        except IntegrityError:
            return None

    def note_duplicate(self, sop_instance_uid: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(instances)
                .where(instances.c.sop_instance_uid == sop_instance_uid)
                .values(duplicates=instances.c.duplicates + 1)
            )

    def find(self, sop_instance_uid: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(instances).where(instances.c.sop_instance_uid == sop_instance_uid)).first()
            return dict(row._mapping) if row else None

    def set_state(
        self,
        sop_instance_uid: str,
        state: str,
        *,
        reason: str | None = None,
        stage: str | None = None,
        **values: Any,
    ) -> None:
        if state not in STATES:
            raise ValueError(f"unknown job state {state!r} (expected one of {', '.join(STATES)})")
        t = now()
        with self.engine.begin() as conn:
            iid = conn.execute(
                select(instances.c.id).where(instances.c.sop_instance_uid == sop_instance_uid)
            ).scalar_one()
            conn.execute(
                update(instances)
                .where(instances.c.id == iid)
                .values(state=state, reason=reason, stage=stage, updated_at=t, **values)
            )
            conn.execute(insert(state_changes).values(instance_id=iid, state=state, at=t, detail=reason))

    def touch(self, sop_instance_uid: str) -> None:
        """Refresh ``updated_at`` (a task was re-sent for this job) without a state change."""
        with self.engine.begin() as conn:
            conn.execute(
                update(instances).where(instances.c.sop_instance_uid == sop_instance_uid).values(updated_at=now())
            )

    def stale(self, older_than_seconds: float) -> list[dict[str, Any]]:
        """Unfinished jobs whose state has not changed for ``older_than_seconds`` (lost messages)."""
        limit = now() - dt.timedelta(seconds=older_than_seconds)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(instances)
                .where(instances.c.state.not_in(list(FINISHED_STATES)))
                .where(instances.c.updated_at < limit)
                .order_by(instances.c.id)
            )
            return [dict(r._mapping) for r in rows]

    def failed(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(instances).where(instances.c.state == "failed").order_by(instances.c.id))
            return [dict(r._mapping) for r in rows]

    def unfinished(self) -> list[dict[str, Any]]:
        """Instances not yet in a final state, oldest first (re-enqueued after a restart)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(instances)
                .where(instances.c.state.not_in(list(FINISHED_STATES)))
                .order_by(instances.c.id)
            )
            return [dict(r._mapping) for r in rows]

    def spool_paths(self) -> set[str]:
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(select(instances.c.spool_path))}

    def history(self, sop_instance_uid: str) -> list[tuple[str, dt.datetime, str | None]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(state_changes.c.state, state_changes.c.at, state_changes.c.detail)
                .join(instances, instances.c.id == state_changes.c.instance_id)
                .where(instances.c.sop_instance_uid == sop_instance_uid)
                .order_by(state_changes.c.id)
            )
            return [(r[0], r[1], r[2]) for r in rows]

    # -- status ---------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(instances.c.state, func.count()).group_by(instances.c.state))
            found = {r[0]: int(r[1]) for r in rows}
        return {s: found.get(s, 0) for s in STATES}

    def last_jobs(self, n: int = 10) -> list[dict[str, Any]]:
        cols: Sequence[Any] = (
            instances.c.sop_instance_uid,
            instances.c.sop_class_uid,
            instances.c.state,
            instances.c.stage,
            instances.c.reason,
            instances.c.frames,
            instances.c.duplicates,
            instances.c.probability,
            instances.c.received_at,
            instances.c.updated_at,
        )
        with self.engine.connect() as conn:
            rows = conn.execute(select(*cols).order_by(instances.c.id.desc()).limit(n))
            return [dict(r._mapping) for r in rows]

    def association_summary(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(associations.c.outcome, func.count()).group_by(associations.c.outcome))
            return {r[0]: int(r[1]) for r in rows}

    def deliveries_of(self, sop_instance_uid: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(deliveries)
                .join(instances, instances.c.id == deliveries.c.instance_id)
                .where(instances.c.sop_instance_uid == sop_instance_uid)
            )
            return [dict(r._mapping) for r in rows]

    # -- deliveries (node/dispatch) ---------------------------------------------------------
    DELIVERY_STATES = ("pending", "sent", "failed")

    def _delivery_row(self, conn: Any, sop_instance_uid: str, destination: str, result_uid: str) -> tuple[int, Any]:
        """(instance id, delivery row or None) for one result of one source instance at one destination."""
        iid = conn.execute(select(instances.c.id).where(instances.c.sop_instance_uid == sop_instance_uid)).scalar()
        if iid is None:
            raise ValueError(f"source instance {sop_instance_uid} is not in the ledger")
        row = conn.execute(
            select(deliveries.c.id, deliveries.c.attempts).where(
                deliveries.c.instance_id == iid,
                deliveries.c.destination == destination,
                deliveries.c.result_uid == result_uid,
            )
        ).first()
        return int(iid), row

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
        Returns the number of attempts recorded so far for this result and destination.
        """
        if state not in self.DELIVERY_STATES:
            raise ValueError(f"unknown delivery state {state!r} (expected one of {', '.join(self.DELIVERY_STATES)})")
        t = now()
        destination = destination[:64]  # the column's width
        with self.engine.begin() as conn:
            iid, row = self._delivery_row(conn, sop_instance_uid, destination, result_uid)
            attempts = (int(row.attempts) if row else 0) + (1 if count else 0)
            values = {"state": state, "attempts": attempts, "last_error": error, "updated_at": t}
            if row is None:
                conn.execute(
                    insert(deliveries).values(
                        instance_id=iid, destination=destination, result_uid=result_uid, **values
                    )
                )
            else:
                conn.execute(update(deliveries).where(deliveries.c.id == row.id).values(**values))
        return attempts

    def deliveries_for_retry(
        self, destination: str | None = None, *, include_failed: bool = False
    ) -> list[dict[str, Any]]:
        """Deliveries not finished (pending; with ``include_failed`` also failed), oldest first.

        Each row carries the source instance's ``sop_instance_uid`` besides the delivery columns,
        so a restarted node (or an operator's retry) can find the result objects to send again.
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
                out.setdefault(dest, {s: 0 for s in self.DELIVERY_STATES})[state] = int(n)
            return out


def as_jsonable(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        out.append({k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in row.items()})
    return out
