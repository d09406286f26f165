"""Retention: delete what every destination has acknowledged, keep the rest, prune the ledger, watch the disk.

Rules (``[retention]``, all off by default):

- A *dispatched* job's spooled loop and result objects are deleted ``delivered_days`` after the last
  of its deliveries was acknowledged, and only when every delivery recorded for it is ``sent`` (a
  C-STORE success, PS3.4 Annex B.2.3, or an HTTP 2xx of STOW-RS/Orthanc). A job with no delivery
  rows (no destinations configured: the result folder is the only copy) is never deleted.
- A *skipped* object (not routed to the model) is deleted ``skipped_days`` after it was skipped.
- Failed and unfinished jobs are kept until they are retried, or purged by an operator
  (``alnnode gc --purge-failed``), which deletes their files and ledger rows.
- The ledger rows of a job whose files are gone are pruned ``ledger_days`` after the job's last
  change, with the number pruned kept per month and state in ``retention_pruned``; closed
  associations with no remaining job are pruned the same way.
- The disk alarm is raised when free space under ``data_dir`` is below ``disk_alarm_mb``.

Every function takes the settings, the ledger and ``now``, so a test can move the clock. Files are
deleted before the ledger says so: a crash in between leaves a job that the next run deletes again
(unlinking a missing file is a no-op), never a ledger that claims data is gone while it is not.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Table,
    and_,
    case,
    delete,
    exists,
    func,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError

from node.config import Settings
from node.ledger import Ledger, associations, deliveries, instances, metadata, state_changes
from node.outbox import result_dir
from node.spool import Spool, fsync_dir

logger = logging.getLogger(__name__)

BATCH = 500  # rows per statement: keeps IN lists and transactions short on big ledgers

# Jobs whose files retention deleted (reason: delivered | skipped). A row here means "the spooled
# loop and its results are gone on purpose", which `alnnode retry` and `status` report.
retention_deleted = Table(
    "retention_deleted",
    metadata,
    Column("instance_id", Integer, ForeignKey("instances.id"), primary_key=True),
    Column("deleted_at", DateTime(timezone=True), nullable=False),
    Column("reason", String(16), nullable=False),
    Column("bytes", BigInteger, nullable=False, default=0),
)

# What pruning removed from the ledger, one row per run, month and state: history survives pruning.
retention_pruned = Table(
    "retention_pruned",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("pruned_at", DateTime(timezone=True), nullable=False),
    Column("kind", String(16), nullable=False),  # instances | associations
    Column("period", String(7), nullable=False),  # YYYY-MM of received_at / started_at
    Column("state", String(16), nullable=False),  # job state / association outcome
    Column("count", Integer, nullable=False),
)


@dataclass(frozen=True)
class DiskStatus:
    path: str
    free_mb: float
    alarm_mb: int
    refuse_mb: int  # [storage] min_free_mb: C-STORE answers 0xA700 below this

    @property
    def alarm(self) -> bool:
        return self.free_mb < self.alarm_mb

    def line(self) -> str:
        text = (
            f"disk: {self.free_mb:.0f} MB free in {self.path} (alarm below {self.alarm_mb} MB, "
            f"C-STORE refused below {self.refuse_mb} MB)"
        )
        if self.alarm:
            text = f"ALARM {text}: free space or lower [retention] delivered_days"
        return text


@dataclass(frozen=True)
class Removal:
    """One job whose files are (or, in a dry run, would be) deleted."""

    sop_instance_uid: str
    state: str
    reason: str  # delivered | skipped | purged
    since: dt.datetime  # acknowledged / skipped / failed at
    bytes: int


@dataclass
class RetentionReport:
    now: dt.datetime
    dry_run: bool
    removed: list[Removal] = field(default_factory=list)
    pruned: dict[str, int] = field(default_factory=dict)  # instances / associations
    kept: dict[str, int] = field(default_factory=dict)  # why jobs with files were kept
    disk: DiskStatus | None = None

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        mb = sum(r.bytes for r in self.removed) / 1e6
        by = Counter(r.reason for r in self.removed)
        parts = [f"{verb} {len(self.removed)} job(s) ({mb:.1f} MB" + "".join(f", {n} {k}" for k, n in sorted(by.items())) + ")"]
        verb = "would prune" if self.dry_run else "pruned"
        parts.append(f"{verb} {self.pruned.get('instances', 0)} job row(s) and {self.pruned.get('associations', 0)} association row(s)")
        kept = ", ".join(f"{n} {k}" for k, n in sorted(self.kept.items()) if n)
        parts.append(f"kept {kept or 'nothing else'}")
        return "; ".join(parts)


def ensure_tables(ledger: Ledger) -> None:
    """Create the retention tables in a ledger made before this module was imported."""
    metadata.create_all(ledger.engine, tables=[retention_deleted, retention_pruned])


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes; the ledger writes UTC.
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _period(value: dt.datetime | None) -> str:
    return "unknown" if value is None else f"{value.year:04d}-{value.month:02d}"


def disk_status(settings: Settings) -> DiskStatus:
    path = settings.storage.data_dir
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return DiskStatus(
        str(path), shutil.disk_usage(probe).free / 1e6, settings.retention.disk_alarm_mb, settings.storage.min_free_mb
    )


# -- what to delete ---------------------------------------------------------------------------
_not_deleted = ~exists().where(retention_deleted.c.instance_id == instances.c.id)
_cols = (instances.c.id, instances.c.sop_instance_uid, instances.c.state, instances.c.spool_path)


def delivered_candidates(ledger: Ledger, older_than: dt.datetime) -> list[dict[str, Any]]:
    """Dispatched jobs, not yet deleted, all of whose deliveries were acknowledged before ``older_than``."""
    acked = func.max(deliveries.c.updated_at)
    unsent = func.sum(case((deliveries.c.state != "sent", 1), else_=0))
    query = (
        select(*_cols, acked.label("since"))
        .join(deliveries, deliveries.c.instance_id == instances.c.id)
        .where(instances.c.state == "dispatched", _not_deleted)
        .group_by(*_cols)
        .having(and_(unsent == 0, acked < older_than))
        .order_by(instances.c.id)
    )
    with ledger.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def _state_candidates(ledger: Ledger, state: str, older_than: dt.datetime) -> list[dict[str, Any]]:
    query = (
        select(*_cols, instances.c.updated_at.label("since"))
        .where(instances.c.state == state, instances.c.updated_at < older_than, _not_deleted)
        .order_by(instances.c.id)
    )
    with ledger.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def _kept(ledger: Ledger) -> dict[str, int]:
    """Jobs whose files stay, by why: unfinished, failed, dispatched without any acknowledged destination."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            select(instances.c.state, func.count()).where(_not_deleted).group_by(instances.c.state)
        ).all()
        no_dest = conn.execute(
            select(func.count())
            .select_from(instances)
            .where(
                instances.c.state == "dispatched",
                _not_deleted,
                ~exists().where(deliveries.c.instance_id == instances.c.id),
            )
        ).scalar_one()
    by_state = {r[0]: int(r[1]) for r in rows}
    return {
        "unfinished": sum(n for s, n in by_state.items() if s not in ("dispatched", "skipped", "failed")),
        "failed (until retried or purged)": by_state.get("failed", 0),
        "dispatched without destinations": int(no_dest),
    }


# -- deleting ---------------------------------------------------------------------------------
def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return 0


def _delete_files(settings: Settings, spool: Spool, row: dict[str, Any], dry_run: bool) -> int:
    spooled = spool.path_of(row["spool_path"])
    results = result_dir(settings.storage.data_dir, row["sop_instance_uid"])
    size = _size(spooled) + _size(results)
    if not dry_run:
        spooled.unlink(missing_ok=True)
        shutil.rmtree(results, ignore_errors=True)
        if settings.storage.fsync and spooled.parent.exists():
            fsync_dir(spooled.parent)
    return size


def _mark_deleted(ledger: Ledger, instance_id: int, reason: str, size: int, now: dt.datetime) -> None:
    try:
        with ledger.engine.begin() as conn:
            conn.execute(insert(retention_deleted).values(instance_id=instance_id, deleted_at=now, reason=reason, bytes=size))
    except IntegrityError:  # another edge sharing the ledger deleted it in the same minute
        pass


def _record_pruned(conn: Any, kind: str, counts: Counter[tuple[str, str]], now: dt.datetime) -> None:
    rows = [{"pruned_at": now, "kind": kind, "period": p, "state": s, "count": n} for (p, s), n in counts.items()]
    if rows:
        conn.execute(insert(retention_pruned), rows)


def _delete_instance_rows(conn: Any, ids: list[int], now: dt.datetime) -> int:
    """Delete jobs' rows (children first: the ledger's foreign keys) and count them by month and state."""
    for child in (state_changes.c.instance_id, deliveries.c.instance_id, retention_deleted.c.instance_id):
        conn.execute(delete(child.table).where(child.in_(ids)))
    gone = conn.execute(
        delete(instances).where(instances.c.id.in_(ids)).returning(instances.c.state, instances.c.received_at)
    ).all()
    _record_pruned(conn, "instances", Counter((_period(r[1]), r[0]) for r in gone), now)
    return len(gone)


def _chunks(items: list[Any]) -> Iterable[list[Any]]:
    for i in range(0, len(items), BATCH):
        yield items[i : i + BATCH]


def prune_ledger(ledger: Ledger, older_than: dt.datetime, now: dt.datetime, dry_run: bool = False) -> dict[str, int]:
    """Prune rows of deleted jobs last changed before ``older_than``, then orphan closed associations."""
    deleted_ids = select(retention_deleted.c.instance_id)
    job_query = select(instances.c.id).where(instances.c.id.in_(deleted_ids), instances.c.updated_at < older_than)
    assoc_where = (
        associations.c.outcome != "open",
        associations.c.started_at < older_than,
        ~exists().where(instances.c.association_id == associations.c.id),
    )
    with ledger.engine.connect() as conn:
        ids = [int(r[0]) for r in conn.execute(job_query)]
    if dry_run:
        with ledger.engine.connect() as conn:
            n_assoc = conn.execute(select(func.count()).select_from(associations).where(*assoc_where)).scalar_one()
        return {"instances": len(ids), "associations": int(n_assoc)}
    pruned = {"instances": 0, "associations": 0}
    for chunk in _chunks(ids):
        with ledger.engine.begin() as conn:
            pruned["instances"] += _delete_instance_rows(conn, chunk, now)
    with ledger.engine.begin() as conn:
        gone = conn.execute(
            delete(associations).where(*assoc_where).returning(associations.c.outcome, associations.c.started_at)
        ).all()
        _record_pruned(conn, "associations", Counter((_period(r[1]), r[0]) for r in gone), now)
        pruned["associations"] = len(gone)
    return pruned


def run_retention(
    settings: Settings,
    ledger: Ledger,
    now: dt.datetime | None = None,
    *,
    dry_run: bool = False,
    purge_failed: bool = False,
    purge_older_than_days: float = 0.0,
) -> RetentionReport:
    """Apply ``[retention]`` once (the node calls this every ``interval_minutes``; ``alnnode gc`` too).

    ``purge_failed`` (an operator's explicit choice, never scheduled) also deletes the files and
    ledger rows of failed jobs last changed more than ``purge_older_than_days`` ago.
    """
    ensure_tables(ledger)
    now = now or dt.datetime.now(dt.UTC)
    cfg = settings.retention
    spool = Spool(settings.storage.data_dir, fsync=settings.storage.fsync)
    report = RetentionReport(now=now, dry_run=dry_run)
    plans: list[tuple[str, list[dict[str, Any]]]] = []
    if cfg.delivered_days is not None:
        plans.append(("delivered", delivered_candidates(ledger, now - dt.timedelta(days=cfg.delivered_days))))
    if cfg.skipped_days is not None:
        plans.append(("skipped", _state_candidates(ledger, "skipped", now - dt.timedelta(days=cfg.skipped_days))))
    if purge_failed:
        plans.append(("purged", _state_candidates(ledger, "failed", now - dt.timedelta(days=purge_older_than_days))))
    purged_ids: list[int] = []
    for reason, rows in plans:
        for row in rows:
            size = _delete_files(settings, spool, row, dry_run)
            report.removed.append(Removal(row["sop_instance_uid"], row["state"], reason, _aware(row["since"]), size))
            if dry_run:
                continue
            if reason == "purged":
                purged_ids.append(int(row["id"]))
            else:
                _mark_deleted(ledger, int(row["id"]), reason, size, now)
            logger.info("retention: %s %s (%s, %d bytes)", "purged" if reason == "purged" else "deleted", row["sop_instance_uid"], reason, size)
    pruned = {"instances": 0, "associations": 0}
    for chunk in _chunks(purged_ids):
        with ledger.engine.begin() as conn:
            pruned["instances"] += _delete_instance_rows(conn, chunk, now)
    if cfg.ledger_days is not None:
        more = prune_ledger(ledger, now - dt.timedelta(days=cfg.ledger_days), now, dry_run)
        pruned = {k: pruned[k] + more[k] for k in pruned}
    if dry_run:
        pruned["instances"] += sum(1 for r in report.removed if r.reason == "purged")
    report.pruned = pruned
    report.kept = _kept(ledger)
    report.disk = disk_status(settings)
    return report


# -- what status shows ------------------------------------------------------------------------
def retention_summary(ledger: Ledger) -> dict[str, Any]:
    """{"deleted": {reason: jobs}, "deleted_bytes": n, "pruned": {kind: {state: n}}} for ``alnnode status``."""
    ensure_tables(ledger)
    with ledger.engine.connect() as conn:
        deleted = conn.execute(
            select(retention_deleted.c.reason, func.count(), func.coalesce(func.sum(retention_deleted.c.bytes), 0)).group_by(
                retention_deleted.c.reason
            )
        ).all()
        pruned = conn.execute(
            select(retention_pruned.c.kind, retention_pruned.c.state, func.sum(retention_pruned.c.count)).group_by(
                retention_pruned.c.kind, retention_pruned.c.state
            )
        ).all()
    out: dict[str, Any] = {
        "deleted": {r[0]: int(r[1]) for r in deleted},
        "deleted_bytes": sum(int(r[2]) for r in deleted),
        "pruned": {},
    }
    for kind, state, n in pruned:
        out["pruned"].setdefault(kind, {})[state] = int(n)
    return out


def deleted_at(ledger: Ledger, sop_instance_uid: str) -> tuple[dt.datetime, str] | None:
    """(when, why) a job's files were deleted by retention, or None (``alnnode retry`` refuses then)."""
    ensure_tables(ledger)
    with ledger.engine.connect() as conn:
        row = conn.execute(
            select(retention_deleted.c.deleted_at, retention_deleted.c.reason)
            .join(instances, instances.c.id == retention_deleted.c.instance_id)
            .where(instances.c.sop_instance_uid == sop_instance_uid)
        ).first()
    return (_aware(row[0]), str(row[1])) if row else None


def retention_loop(settings: Settings, ledger: Ledger, stop: threading.Event) -> None:
    """Run ``run_retention`` every ``[retention] interval_minutes`` until ``stop`` is set (a node thread).

    Logs a summary when something was deleted, and a warning while the disk alarm is raised.
    """
    interval = settings.retention.interval_minutes * 60
    while True:
        try:
            report = run_retention(settings, ledger)
            if report.removed or any(report.pruned.values()):
                logger.info("retention: %s", report.summary())
            if report.disk is not None and report.disk.alarm:
                logger.warning("%s", report.disk.line())
        except Exception as exc:  # a locked or unreachable ledger: try again at the next interval
            logger.error("retention run failed (will retry in %.0f min): %s", interval / 60, exc)
        if stop.wait(interval):
            return
