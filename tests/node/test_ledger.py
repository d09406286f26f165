"""The ledger's job plane on SQLite and a real PostgreSQL: guarded transitions, claims with heartbeats,
unique deliveries with atomic counters, and migrations of an older ledger."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.config import load_config
from node.errors import ConfigError
from node.ledger import Ledger, NewInstance
from node.ledger.states import TRANSITIONS

UID = "1.2.826.0.1.3680043.10.1.1"


def _instance(uid: str = UID, **kw: object) -> NewInstance:
    values: dict[str, object] = dict(
        sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.3.1", study_instance_uid="1.2.3", series_instance_uid="1.2.4",
        transfer_syntax_uid="1.2.840.10008.1.2.4.50", spool_path="ab/cd/x.dcm", size=10, frames=16, calling_ae="US_ROOM1", association_id=None,
    )  # fmt: skip
    values.update(kw)
    return NewInstance(**values)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    led = Ledger(url)
    yield led
    led.close()


def test_transitions_are_compare_and_set(ledger: Ledger) -> None:
    assert ledger.add_instance(_instance()) is not None
    assert ledger.transition(UID, "queued", expected=["received"])
    assert not ledger.transition(UID, "queued", expected=["received"]), "a duplicate write is a no-op"
    assert ledger.transition(UID, "classified", expected=["queued"])
    assert not ledger.transition(UID, "classified", expected=["received", "queued"]), "a late task changes nothing"
    with pytest.raises(ValueError, match="dispatched -> classified is not allowed"):
        ledger.transition(UID, "classified", expected=["dispatched"])
    assert [s for s, _at, _d in ledger.history(UID)] == ["received", "queued", "classified"]
    assert ("received", "dispatched") not in TRANSITIONS


def test_claims_exclude_a_second_worker_until_the_heartbeat_is_stale(ledger: Ledger) -> None:
    ledger.add_instance(_instance())
    assert ledger.claim(UID, ["received", "queued"], "w1/1", stale_after=30) == 1
    assert ledger.claim(UID, ["received", "queued"], "w2/1", stale_after=30) is None
    assert ledger.heartbeat(UID, "w1/1") and not ledger.heartbeat(UID, "w2/1")
    assert not ledger.transition(UID, "classified", expected=["received"], claimed_by="w2/1"), "only the claimant writes"
    time.sleep(1.1)
    assert [r["sop_instance_uid"] for r in ledger.release_claims(older_than=1)] == [UID]
    assert ledger.claim(UID, ["received", "queued"], "w2/1", stale_after=30) == 2, "the attempt stays counted"
    assert [r["sop_instance_uid"] for r in ledger.release_claims("w2")] == [UID], "a dead worker's claims (its pool processes)"
    assert ledger.claim(UID, ["received"], "w3/1", stale_after=30) == 3
    assert ledger.release(UID, "w3/1", reason="boom", retry_in=5, counted=False)
    row = ledger.find(UID)
    assert row is not None and row["attempts"] == 2 and row["claimed_by"] is None and row["retry_at"] is not None
    assert ledger.claim(UID, ["received"], "w3/1", stale_after=30) == 3
    assert ledger.transition(UID, "classified", expected=["received"], claimed_by="w3/1")
    row = ledger.find(UID)
    assert row is not None and row["attempts"] == 0 and row["claimed_by"] is None, "a new stage starts afresh"


def test_delivery_rows_are_unique_and_counted_atomically(ledger: Ledger) -> None:
    ledger.add_instance(_instance())

    def attempts() -> None:
        for _ in range(10):
            ledger.record_attempt(UID, "pacs", "1.2.9", "pending", "down")

    threads = [threading.Thread(target=attempts) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = ledger.deliveries_of(UID)
    assert len(rows) == 1 and rows[0]["attempts"] == 40


def test_too_long_uid_is_refused_before_insert(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="study_instance_uid"):
        ledger.add_instance(_instance(study_instance_uid="1." * 40 + "1"))
    assert ledger.counts()["received"] == 0


def test_workers_registry(ledger: Ledger) -> None:
    ledger.worker_heartbeat("w1", host="h", pid=1, queues="gpu,io")
    ledger.worker_heartbeat("w1", host="h", pid=1, queues="gpu,io")
    assert [w["id"] for w in ledger.live_workers(30)] == ["w1"]
    ledger.remove_worker("w1")
    assert ledger.live_workers(30) == []


LEGACY = """
CREATE TABLE associations (id INTEGER PRIMARY KEY, calling_ae VARCHAR(16) NOT NULL, called_ae VARCHAR(16) NOT NULL,
  peer_host VARCHAR(64) NOT NULL, peer_port INTEGER NOT NULL, started_at DATETIME NOT NULL, ended_at DATETIME,
  instances INTEGER NOT NULL, failures INTEGER NOT NULL, bytes BIGINT NOT NULL, outcome VARCHAR(16) NOT NULL, reason TEXT);
CREATE TABLE instances (id INTEGER PRIMARY KEY, sop_instance_uid VARCHAR(64) NOT NULL UNIQUE, sop_class_uid VARCHAR(64) NOT NULL,
  study_instance_uid VARCHAR(64), series_instance_uid VARCHAR(64), transfer_syntax_uid VARCHAR(64) NOT NULL,
  spool_path VARCHAR(200) NOT NULL, size BIGINT NOT NULL, frames INTEGER, calling_ae VARCHAR(16),
  association_id INTEGER REFERENCES associations (id), state VARCHAR(16) NOT NULL, stage VARCHAR(16), reason TEXT,
  duplicates INTEGER NOT NULL, attempts INTEGER NOT NULL, model_uid VARCHAR(64), probability VARCHAR(32),
  received_at DATETIME NOT NULL, updated_at DATETIME NOT NULL);
CREATE TABLE state_changes (id INTEGER PRIMARY KEY, instance_id INTEGER NOT NULL REFERENCES instances (id),
  state VARCHAR(16) NOT NULL, at DATETIME NOT NULL, detail TEXT);
CREATE TABLE deliveries (id INTEGER PRIMARY KEY, instance_id INTEGER NOT NULL REFERENCES instances (id),
  destination VARCHAR(64) NOT NULL, result_uid VARCHAR(64) NOT NULL, state VARCHAR(16) NOT NULL,
  attempts INTEGER NOT NULL, last_error TEXT, updated_at DATETIME NOT NULL);
INSERT INTO instances VALUES (1, '1.2.3', '1.2', NULL, NULL, '1.2.840.10008.1.2.1', 'ab/cd/x.dcm', 1, 1, NULL, NULL,
  'rendered', NULL, NULL, 0, 0, NULL, NULL, '2026-11-01 10:00:00', '2026-11-01 10:00:00');
INSERT INTO deliveries VALUES (1, 1, 'pacs', '1.2.9', 'failed', 1, 'x', '2026-11-01 10:00:00');
INSERT INTO deliveries VALUES (2, 1, 'pacs', '1.2.9', 'pending', 2, 'y', '2026-11-01 10:01:00');
"""


def test_a_ledger_made_before_migrations_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(LEGACY)
    ledger = Ledger(f"sqlite:///{path}")
    row = ledger.find("1.2.3")
    assert row is not None and row["state"] == "rendered" and row["claimed_by"] is None
    assert [(d["state"], d["attempts"]) for d in ledger.deliveries_of("1.2.3")] == [("pending", 2)], "duplicate rows merged"
    assert ledger.record_attempt("1.2.3", "pacs", "1.2.9", "sent") == 3
    ledger.close()
    Ledger(f"sqlite:///{path}").close()  # idempotent


def test_visibility_timeout_must_exceed_the_longest_task(tmp_path: Path) -> None:
    cfg = tmp_path / "a.toml"
    cfg.write_text('[queue]\nvisibility_timeout = 600\n[storage]\ndata_dir = "var"\n')
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert err.value.problems == ["queue.visibility_timeout = 600: must exceed the longest task time limit (660 s)"]
    cfg.write_text('[queue]\nbroker_url = "redis://:s3cret@db:6379/0"\n')
    settings = load_config(cfg)
    assert settings.queue.heartbeat_timeout == 30 and settings.queue.max_attempts == 3
    assert "s3cret" not in repr(settings.queue)
