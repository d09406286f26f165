"""Jobs (received instances): guarded state changes, claims with heartbeats, and the queries the
reaper, ``alnnode status`` and ``alnnode retry`` use.

A stage *claims* its job before it works on it (worker id + heartbeat, refreshed while it runs) and
counts an attempt in the same statement; the reaper hands a job whose claimant stopped beating to
another worker. Every write is a compare-and-set (``UPDATE ... WHERE state IN (expected)``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Engine, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from node.ledger.schema import NewInstance, instances, now, state_changes
from node.ledger.states import FINISHED_STATES, STATES, TRANSITIONS, WAITING_STATES, check_transition

_CLEAR_CLAIM = {"claimed_by": None, "heartbeat_at": None}
_NEW_STAGE = {**_CLEAR_CLAIM, "attempts": 0, "retry_at": None, "first_failure_at": None}


def _sources_of(target: str) -> list[str]:
    return sorted(s for s, t in TRANSITIONS if t == target)


class JobsMixin:
    engine: Engine

    # -- recording ------------------------------------------------------------------------
    def add_instance(self, new: NewInstance, state: str = "received", reason: str | None = None) -> int | None:
        """Record a spooled instance; returns its id, or None if the UID is already recorded.

        Raises ``ValueError`` naming a value too long for its column (the receiver validates UIDs
        first; this is the last line, so a hostile value can never break a later start-up).
        """
        if state not in STATES:
            raise ValueError(f"unknown job state {state!r}")
        new.check()
        t = now()
        try:
            with self.engine.begin() as conn:
                res = conn.execute(
                    insert(instances).values(
                        **new.__dict__, state=state, reason=reason, duplicates=0, attempts=0, received_at=t, updated_at=t
                    )
                )
                key = res.inserted_primary_key
                assert key is not None
                iid = int(key[0])
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

    # -- guarded state changes ------------------------------------------------------------
    def transition(
        self,
        sop_instance_uid: str,
        target: str,
        *,
        expected: Iterable[str],
        reason: str | None = None,
        stage: str | None = None,
        claimed_by: str | None = None,
        **values: Any,
    ) -> bool:
        """Move a job to ``target`` if it is in one of the ``expected`` states (compare-and-set).

        With ``claimed_by`` the job must also still be claimed by that worker (a stage whose claim
        was handed to another worker must not write). Clears the claim and the stage's attempt
        count. Returns False (and changes nothing) when the job had moved on: a duplicate or
        late task is a no-op.
        """
        sources = list(expected)
        for source in sources:
            check_transition(source, target)
        t = now()
        cond: list[ColumnElement[bool]] = [instances.c.sop_instance_uid == sop_instance_uid, instances.c.state.in_(sources)]
        if claimed_by is not None:
            cond.append(instances.c.claimed_by == claimed_by)
        with self.engine.begin() as conn:
            res = conn.execute(
                update(instances)
                .where(*cond)
                .values(state=target, reason=reason, stage=stage, updated_at=t, **_NEW_STAGE, **values)
                .returning(instances.c.id)
            )
            iid = res.scalar()
            if iid is None:
                return False
            conn.execute(insert(state_changes).values(instance_id=iid, state=target, at=t, detail=reason))
            return True

    def set_state(self, sop_instance_uid: str, state: str, *, reason: str | None = None, stage: str | None = None, **values: Any) -> bool:
        """``transition`` from any state the transition table allows into ``state``."""
        if state not in STATES:
            raise ValueError(f"unknown job state {state!r} (expected one of {', '.join(STATES)})")
        return self.transition(sop_instance_uid, state, expected=_sources_of(state), reason=reason, stage=stage, **values)

    # -- claims ---------------------------------------------------------------------------
    def claim(self, sop_instance_uid: str, states: Sequence[str], worker_id: str, *, stale_after: float) -> int | None:
        """Claim a job in one of ``states`` for ``worker_id`` and count an attempt.

        Succeeds when the job is unclaimed or its claimant's heartbeat is older than
        ``stale_after`` seconds. Returns the attempt number (1 for the first), or None.
        """
        t = now()
        stale = t - dt.timedelta(seconds=stale_after)
        with self.engine.begin() as conn:
            res = conn.execute(
                update(instances)
                .where(
                    instances.c.sop_instance_uid == sop_instance_uid,
                    instances.c.state.in_(list(states)),
                    or_(instances.c.claimed_by.is_(None), instances.c.heartbeat_at < stale),
                )
                .values(claimed_by=worker_id, heartbeat_at=t, attempts=instances.c.attempts + 1, retry_at=None)
                .returning(instances.c.attempts)
            )
            attempts = res.scalar()
            return None if attempts is None else int(attempts)

    def heartbeat(self, sop_instance_uid: str, worker_id: str) -> bool:
        with self.engine.begin() as conn:
            res = conn.execute(
                update(instances)
                .where(instances.c.sop_instance_uid == sop_instance_uid, instances.c.claimed_by == worker_id)
                .values(heartbeat_at=now())
            )
            return bool(res.rowcount)

    def release(
        self,
        sop_instance_uid: str,
        worker_id: str,
        *,
        reason: str | None = None,
        retry_in: float | None = None,
        counted: bool = True,
    ) -> bool:
        """Give up a claim after a failed attempt that will be retried (in ``retry_in`` seconds).

        ``counted=False`` takes the attempt back (a transient delivery fault is bounded by the
        destination's ``retry_for``, not by ``max_attempts``). The first failure's time is kept.
        """
        t = now()
        values: dict[str, Any] = {**_CLEAR_CLAIM, "first_failure_at": func.coalesce(instances.c.first_failure_at, t)}
        if reason is not None:
            values["reason"] = reason
        if retry_in is not None:
            values["retry_at"] = t + dt.timedelta(seconds=retry_in)
        if not counted:
            values["attempts"] = instances.c.attempts - 1
        with self.engine.begin() as conn:
            res = conn.execute(
                update(instances)
                .where(instances.c.sop_instance_uid == sop_instance_uid, instances.c.claimed_by == worker_id)
                .values(**values)
            )
            return bool(res.rowcount)

    def release_claims(self, claimed_by: str | None = None, *, older_than: float | None = None) -> list[dict[str, Any]]:
        """Release the claims of a dead worker (ids starting with ``claimed_by``) or stale ones; returns the jobs.

        The attempt they counted stays counted: a loop that keeps killing its worker ends ``failed``.
        """
        cond: list[ColumnElement[bool]] = [instances.c.claimed_by.is_not(None), instances.c.state.not_in(list(FINISHED_STATES))]
        if claimed_by is not None:
            cond.append(or_(instances.c.claimed_by == claimed_by, instances.c.claimed_by.startswith(claimed_by + "/")))
        if older_than is not None:
            cond.append(instances.c.heartbeat_at < now() - dt.timedelta(seconds=older_than))
        released = []
        with self.engine.begin() as conn:
            rows = [dict(r._mapping) for r in conn.execute(select(instances).where(*cond))]
            for row in rows:
                res = conn.execute(
                    update(instances)
                    .where(instances.c.id == row["id"], instances.c.claimed_by == row["claimed_by"])
                    .values(**_CLEAR_CLAIM, updated_at=now())
                )
                if res.rowcount:
                    released.append(row)
        return released

    def claims_of(self, worker_id: str) -> list[dict[str, Any]]:
        """Unfinished jobs claimed by the pool processes of ``worker_id`` (claimant ``worker_id/pid``)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(instances).where(
                    instances.c.claimed_by.startswith(worker_id + "/"), instances.c.state.not_in(list(FINISHED_STATES))
                )
            )
            return [dict(r._mapping) for r in rows]

    def waiting(self) -> list[dict[str, Any]]:
        """Unclaimed jobs waiting for a stage (oldest first): messages the queue should hold."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(instances)
                .where(instances.c.state.in_(list(WAITING_STATES)), instances.c.claimed_by.is_(None))
                .order_by(instances.c.updated_at, instances.c.id)
            )
            return [dict(r._mapping) for r in rows]

    def touch(self, sop_instance_uid: str) -> None:
        """Refresh ``updated_at`` (a task was re-sent for this job) without a state change."""
        with self.engine.begin() as conn:
            conn.execute(
                update(instances).where(instances.c.sop_instance_uid == sop_instance_uid).values(updated_at=now())
            )

    # -- queries --------------------------------------------------------------------------
    def failed(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(instances).where(instances.c.state == "failed").order_by(instances.c.id))
            return [dict(r._mapping) for r in rows]

    def unfinished(self) -> list[dict[str, Any]]:
        """Instances not yet in a final state, oldest first (re-enqueued after a restart)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(instances).where(instances.c.state.not_in(list(FINISHED_STATES))).order_by(instances.c.id)
            )
            return [dict(r._mapping) for r in rows]

    def in_state(self, state: str, limit: int = 1000) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(instances).where(instances.c.state == state).order_by(instances.c.id).limit(limit))
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

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(instances.c.state, func.count()).group_by(instances.c.state))
            found = {r[0]: int(r[1]) for r in rows}
        return {s: found.get(s, 0) for s in STATES}

    def last_jobs(
        self, n: int = 10, *, state: str | None = None, calling_ae: str | None = None,
        since: dt.datetime | None = None, accession: str | None = None,
    ) -> list[dict[str, Any]]:
        """The newest ``n`` jobs, optionally only those in ``state``, from ``calling_ae``, received
        at or after ``since``, or with Accession Number ``accession``."""
        cols = [instances.c[name] for name in (
            "sop_instance_uid", "sop_class_uid", "state", "stage", "reason", "frames", "duplicates",
            "probability", "attempts", "claimed_by", "received_at", "updated_at", "calling_ae", "accession_number",
        )]  # fmt: skip
        query = select(*cols).order_by(instances.c.id.desc()).limit(n)
        if state is not None:
            query = query.where(instances.c.state == state)
        if calling_ae is not None:
            query = query.where(instances.c.calling_ae == calling_ae)
        if since is not None:
            query = query.where(instances.c.received_at >= since)
        if accession is not None:
            query = query.where(instances.c.accession_number == accession)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

