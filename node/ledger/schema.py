"""The ledger's tables (SQLAlchemy Core) and the checks applied before anything is inserted.

Only UIDs, AE titles and addresses are stored, never patient names or identifiers. The schema is
created and upgraded by Alembic (``node/ledger/migrations``), the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

UID_MAX = 64  # PS3.5 9.1: a UID is at most 64 characters
AE_MAX = 16  # PS3.5 6.2, VR AE
SH_MAX = 16  # PS3.5 6.2, VR SH
HOST_MAX = 64
WORKER_ID_MAX = 128

associations = Table(
    "associations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("calling_ae", String(AE_MAX), nullable=False),
    Column("called_ae", String(AE_MAX), nullable=False),
    Column("peer_host", String(HOST_MAX), nullable=False),
    Column("peer_port", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True)),
    Column("instances", Integer, nullable=False, default=0),
    Column("failures", Integer, nullable=False, default=0),
    Column("bytes", BigInteger, nullable=False, default=0),
    Column("outcome", String(16), nullable=False, default="open"),  # open|released|aborted|rejected|...
    Column("reason", Text),
)

instances = Table(
    "instances",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sop_instance_uid", String(UID_MAX), nullable=False, unique=True),
    Column("sop_class_uid", String(UID_MAX), nullable=False),
    Column("study_instance_uid", String(UID_MAX)),
    Column("series_instance_uid", String(UID_MAX)),
    Column("transfer_syntax_uid", String(UID_MAX), nullable=False),
    Column("spool_path", String(200), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("frames", Integer),
    Column("calling_ae", String(AE_MAX)),
    Column("association_id", Integer, ForeignKey("associations.id")),
    # Accession Number (0008,0050), VR SH: how a radiologist finds a study (admin views only)
    Column("accession_number", String(SH_MAX), index=True),
    Column("state", String(16), nullable=False, index=True),
    Column("stage", String(16)),  # stage that failed
    Column("reason", Text),  # why skipped/failed, or the last error of a stage being retried
    Column("duplicates", Integer, nullable=False, default=0),
    Column("attempts", Integer, nullable=False, default=0),  # attempts of the current stage
    Column("model_uid", String(UID_MAX)),
    Column("probability", String(32)),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, index=True),
    # The job plane (shared/DESIGN.md): which worker runs the current stage and when it last said so.
    Column("claimed_by", String(WORKER_ID_MAX)),
    Column("heartbeat_at", DateTime(timezone=True)),
    Column("retry_at", DateTime(timezone=True)),  # a retry of the current stage is scheduled for then
    Column("first_failure_at", DateTime(timezone=True)),  # start of the current run of transient failures
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
    Column("result_uid", String(UID_MAX), nullable=False),
    Column("state", String(16), nullable=False),  # pending|sent|failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("instance_id", "destination", "result_uid", name="uq_delivery"),
)

workers = Table(
    "workers",
    metadata,
    Column("id", String(WORKER_ID_MAX), primary_key=True),
    Column("host", String(HOST_MAX), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("queues", String(64), nullable=False),  # comma-separated: gpu,io
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False, index=True),
)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def aware(value: dt.datetime) -> dt.datetime:
    """A ledger timestamp as an aware UTC datetime (SQLite returns them naive, in UTC)."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


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
    accession_number: str | None = None

    def check(self) -> None:
        """Raise ``ValueError`` naming a value that does not fit its column (never truncate a UID)."""
        for name in ("sop_instance_uid", "sop_class_uid", "study_instance_uid", "series_instance_uid", "transfer_syntax_uid"):
            value = getattr(self, name)
            if value is not None and len(value) > UID_MAX:
                raise ValueError(f"{name} = {value[:80]!r}: longer than {UID_MAX} characters")
        if self.accession_number is not None and len(self.accession_number) > SH_MAX:
            raise ValueError(f"accession_number = {self.accession_number!r}: longer than {SH_MAX} characters")
        if self.calling_ae is not None and len(self.calling_ae) > AE_MAX:
            raise ValueError(f"calling_ae = {self.calling_ae!r}: longer than {AE_MAX} characters")
