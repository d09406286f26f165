"""The ledger's database engine and its schema migrations (Alembic, SQLite and PostgreSQL alike)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
FIRST_REVISION = "0001"  # the schema that versions before Alembic created with metadata.create_all
# PostgreSQL advisory lock key that serialises migrations of edges and workers starting together
_MIGRATION_LOCK = 0x414C4E4E


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets status readers run beside the writer; FULL makes each commit durable before
    # the C-STORE success that depends on it is sent.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def open_engine(url: str) -> Engine:
    """An engine for ``url``: SQLite in WAL mode, or a pooled server connection that survives restarts."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # pre_ping replaces connections a database restart has closed; the connect timeout keeps a
    # C-STORE from waiting long on a database that is down (it is refused with 0x0110 instead).
    return create_engine(url, pool_pre_ping=True, pool_recycle=1800, connect_args={"connect_timeout": 5})


def migrate(engine: Engine) -> None:
    """Create or upgrade the schema to the newest revision (idempotent; safe for concurrent starts)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
        insp = inspect(conn)
        cfg.attributes["connection"] = conn
        if insp.has_table("instances") and not insp.has_table("alembic_version"):
            logger.info("ledger made before schema migrations: stamping revision %s", FIRST_REVISION)
            command.stamp(cfg, FIRST_REVISION)
        command.upgrade(cfg, "head")
