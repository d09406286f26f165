"""Retention with the clock moved forward: delivered loops go, undelivered and failed ones stay.

Jobs are made the way the node makes them: real ultrasound files committed to a real spool and
recorded in a real SQLite ledger, result objects written to the job's result folder and delivered
by the real outbox to ``folder`` destinations (one that exists, one that does not: a permanent
failure). Only the clock given to ``run_retention`` moves. The CLI is run as a real process.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import update

from node.config import Settings, load_config
from node.ledger import Ledger, NewInstance, instances, metadata
from node.outbox import RESULT_FILES, dispatch_results, result_dir, result_files
from node.retention import deleted_at, retention_loop, retention_summary, run_retention
from node.spool import Spool
from tests.helpers import ALNNODE, ROOT, free_port, require_tool, us_file

DAY = dt.timedelta(days=1)


def _pg_tool(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(found[-1]) if found else require_tool(name)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL cluster on a free loopback port (the scale-out ledger)."""
    initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
    base = Path(tempfile.mkdtemp(prefix="alnnode-pg-"))
    base.chmod(0o755)  # the postgres user must reach it (mkdtemp makes 0700)
    data = base / "data"
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_pg:
        shutil.chown(base, "postgres")
    port = free_port()
    try:
        subprocess.run([*as_pg, initdb, "-D", str(data), "-A", "trust", "-U", "alnnode"], check=True, capture_output=True, timeout=120)
        opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run([*as_pg, pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "start"], check=True, capture_output=True, timeout=120)
        subprocess.run([*as_pg, _pg_tool("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "alnnode", "alnnode"], check=True, capture_output=True, timeout=60)
        yield f"postgresql+psycopg://alnnode@127.0.0.1:{port}/alnnode"
    finally:
        subprocess.run([*as_pg, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest) -> str | None:
    """None: the default SQLite ledger in data_dir; else the PostgreSQL URL of the scale-out setup."""
    return None if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))


def settings_for(tmp: Path, retention: str = "", destinations: tuple[str, ...] = ("pacs",), ledger_url: str | None = None) -> Path:
    dests = ""
    for name in destinations:
        folder = tmp / name  # "missing" is never created: a permanent failure
        if name != "missing":
            folder.mkdir(exist_ok=True)
        dests += f'[[destinations]]\nname = "{name}"\nkind = "folder"\npath = "{folder}"\n'
    (tmp / "data").mkdir(exist_ok=True)
    cfg = tmp / f"alnnode-{'-'.join(destinations) or 'none'}.toml"
    ledger = f'ledger_url = "{ledger_url}"\n' if ledger_url else ""
    cfg.write_text(f'[storage]\ndata_dir = "{tmp / "data"}"\nmin_free_mb = 1\n{ledger}\n[retention]\n{retention}\n{dests}')
    return cfg


def spool_job(settings: Settings, ledger: Ledger, tag: str, name: str = "US1_UNCR.dcm") -> str:
    """A received object, spooled and recorded as the receiver does (PS3.4 B.2.3: success only after this)."""
    spool = Spool(settings.storage.data_dir, fsync=False)
    spool.prepare()
    ds = dcmread(us_file(name))
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[tag, str(settings.storage.data_dir)])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    temp = spool.incoming / f"{tag}.dcm"
    ds.save_as(temp, enforce_file_format=True)
    size = temp.stat().st_size
    rel, _new = spool.commit(temp, ds.SOPInstanceUID)
    ledger.add_instance(
        NewInstance(ds.SOPInstanceUID, ds.SOPClassUID, ds.StudyInstanceUID, ds.SeriesInstanceUID,
                    ds.file_meta.TransferSyntaxUID, rel, size, 1, "US_ROOM1", None)
    )
    return str(ds.SOPInstanceUID)


def render_results(settings: Settings, ledger: Ledger, uid: str) -> None:
    """What the io worker leaves before dispatch: three result objects in the job's folder."""
    folder = result_dir(settings.storage.data_dir, uid)
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(RESULT_FILES):
        ds = dcmread(us_file("US1_UNCR.dcm"))
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[uid, str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / name, enforce_file_format=True)
    for state in ("queued", "classified", "rendered"):  # the guarded path a job takes
        assert ledger.set_state(uid, state)


def files_of(settings: Settings, ledger: Ledger, uid: str) -> list[Path]:
    row = ledger.find(uid)
    assert row is not None
    return [settings.storage.data_dir / "spool" / row["spool_path"], *result_files(settings, uid)]


def test_clock_forward_deletes_delivered_keeps_undelivered(tmp_path: Path, ledger_url: str | None) -> None:
    retention = "delivered_days = 30\nskipped_days = 7\nledger_days = 90\n"
    settings = load_config(settings_for(tmp_path, retention, ledger_url=ledger_url))
    two_dests = load_config(settings_for(tmp_path, retention, ("pacs", "missing"), ledger_url))
    no_dests = load_config(settings_for(tmp_path, retention, (), ledger_url))
    ledger = Ledger(settings.ledger_url)
    if ledger_url:  # one module-wide database: start from an empty ledger
        with ledger.engine.begin() as conn:
            for table in reversed(metadata.sorted_tables):
                conn.execute(table.delete())
    try:
        delivered = spool_job(settings, ledger, "delivered")
        render_results(settings, ledger, delivered)
        assert dispatch_results(settings, ledger, delivered, result_files(settings, delivered))
        half = spool_job(settings, ledger, "half-delivered")  # one destination acknowledged, one failed
        render_results(settings, ledger, half)
        assert not dispatch_results(two_dests, ledger, half, result_files(settings, half))
        waiting = spool_job(settings, ledger, "waiting")  # rendered, not yet dispatched
        render_results(settings, ledger, waiting)
        only_copy = spool_job(settings, ledger, "no-destination")  # results exist only in data_dir
        render_results(settings, ledger, only_copy)
        assert dispatch_results(no_dests, ledger, only_copy, result_files(settings, only_copy))
        skipped = spool_job(settings, ledger, "skipped")
        ledger.set_state(skipped, "skipped", reason="no model bundle configured ([model] bundle)")
        kept = (half, waiting, only_copy)
        assert {ledger.find(u)["state"] for u in kept} == {"failed", "rendered", "dispatched"}  # type: ignore[index]
        # every object arrived 60 days ago: the clock that counts starts at acknowledgement
        with ledger.engine.begin() as conn:
            conn.execute(update(instances).values(received_at=dt.datetime.now(dt.UTC) - 60 * DAY))
        t0 = dt.datetime.now(dt.UTC)

        early = run_retention(settings, ledger, t0 + 29 * DAY)
        assert [r.sop_instance_uid for r in early.removed] == [skipped]  # 7 days after skipping
        assert all(p.exists() for p in files_of(settings, ledger, delivered))

        report = run_retention(settings, ledger, t0 + 31 * DAY)
        assert [(r.sop_instance_uid, r.reason) for r in report.removed] == [(delivered, "delivered")]
        assert report.removed[0].bytes > 4 * 100_000
        assert not any(p.exists() for p in files_of(settings, ledger, delivered))
        assert not result_dir(settings.storage.data_dir, delivered).exists()
        assert len(list((tmp_path / "pacs").rglob("*.dcm"))) == 2 * 3  # the PACS copies are untouched
        for uid in kept:
            assert all(p.exists() for p in files_of(settings, ledger, uid)), uid
        assert report.kept == {"unfinished": 1, "failed (until retried or purged)": 1, "dispatched without destinations": 1}
        assert ledger.find(delivered)["state"] == "dispatched"  # type: ignore[index]
        assert deleted_at(ledger, delivered) is not None
        assert run_retention(settings, ledger, t0 + 32 * DAY).removed == []  # idempotent

        # a re-send of a deleted job is refused with one line, and the job stays dispatched
        retry = subprocess.run([*ALNNODE, "retry", delivered, "--config", str(settings_for(tmp_path, retention, ledger_url=ledger_url))],
                               capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert retry.returncode == 1 and "deleted by retention" in retry.stderr and "Traceback" not in retry.stderr
        assert ledger.find(delivered)["state"] == "dispatched"  # type: ignore[index]

        # ledger rows of deleted jobs go ledger_days after their last change; the counts stay
        late = run_retention(settings, ledger, t0 + 91 * DAY)
        assert late.pruned["instances"] == 2
        assert ledger.find(delivered) is None and ledger.find(skipped) is None
        assert all(ledger.find(u) is not None for u in kept)
        summary = retention_summary(ledger)
        assert summary["pruned"]["instances"] == {"dispatched": 1, "skipped": 1}
        assert summary["deleted"] == {}  # the deletion marks went with the rows

        # failed jobs stay until an operator purges them; unfinished ones even then
        purge = run_retention(settings, ledger, t0 + 400 * DAY, purge_failed=True)
        assert [(r.sop_instance_uid, r.reason) for r in purge.removed] == [(half, "purged")]
        assert ledger.find(half) is None
        assert ledger.find(waiting)["state"] == "rendered"  # type: ignore[index]
        assert all(p.exists() for p in files_of(settings, ledger, waiting))
        assert retention_summary(ledger)["pruned"]["instances"] == {"dispatched": 1, "failed": 1, "skipped": 1}
    finally:
        ledger.close()


def test_default_settings_delete_nothing(tmp_path: Path) -> None:
    settings = load_config(settings_for(tmp_path))
    ledger = Ledger(settings.ledger_url)
    try:
        uid = spool_job(settings, ledger, "kept")
        render_results(settings, ledger, uid)
        assert dispatch_results(settings, ledger, uid, result_files(settings, uid))
        report = run_retention(settings, ledger, dt.datetime.now(dt.UTC) + 10_000 * DAY)
        assert report.removed == [] and report.pruned == {"instances": 0, "associations": 0}
        assert all(p.exists() for p in files_of(settings, ledger, uid))
    finally:
        ledger.close()


def test_scheduled_loop_runs_and_stops(tmp_path: Path) -> None:
    settings = load_config(settings_for(tmp_path, "delivered_days = 0\n"))
    ledger = Ledger(settings.ledger_url)
    try:
        uid = spool_job(settings, ledger, "scheduled")
        render_results(settings, ledger, uid)
        assert dispatch_results(settings, ledger, uid, result_files(settings, uid))
        stop = threading.Event()
        thread = threading.Thread(target=retention_loop, args=(settings, ledger, stop), daemon=True)
        thread.start()
        from tests.helpers import wait_for

        wait_for(lambda: deleted_at(ledger, uid) is not None, 30, what="the scheduled retention run")
        stop.set()
        thread.join(10)
        assert not thread.is_alive()
    finally:
        ledger.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ALNNODE, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_gc_dry_run_lists_without_deleting_then_gc_deletes(tmp_path: Path) -> None:
    cfg = settings_for(tmp_path, "delivered_days = 0\n")
    settings = load_config(cfg)
    ledger = Ledger(settings.ledger_url)
    uid = spool_job(settings, ledger, "gc")
    render_results(settings, ledger, uid)
    assert dispatch_results(settings, ledger, uid, result_files(settings, uid))
    failed = spool_job(settings, ledger, "gc-failed")
    ledger.set_state(failed, "failed", stage="classify", reason="cannot decode")
    paths = files_of(settings, ledger, uid)
    ledger.close()

    dry = cli("gc", "--dry-run", "--config", str(cfg))
    assert dry.returncode == 0, dry.stderr
    assert f"would delete {uid} (dispatched, delivered" in dry.stdout
    assert failed not in dry.stdout and "1 failed (until retried or purged)" in dry.stdout
    assert all(p.exists() for p in paths)

    dry_purge = json.loads(cli("gc", "--dry-run", "--purge-failed", "--json", "--config", str(cfg)).stdout)
    assert {r["sop_instance_uid"]: r["reason"] for r in dry_purge["removed"]} == {uid: "delivered", failed: "purged"}
    assert dry_purge["dry_run"] and all(p.exists() for p in paths)

    real = cli("gc", "--config", str(cfg))
    assert real.returncode == 0, real.stderr
    assert f"deleted {uid}" in real.stdout and "deleted 1 job(s)" in real.stdout
    assert not any(p.exists() for p in paths)
    status = cli("status", "--config", str(cfg))
    assert "retention: files deleted of delivered 1 job(s)" in status.stdout

    bad = cli("gc", "--purge-failed", "--older-than", "-1", "--config", str(cfg))
    assert bad.returncode == 1 and "--older-than -1.0: must be >= 0 days" in bad.stderr


@pytest.mark.parametrize("alarm_mb, alarmed", [(None, False), (10**9, True)])
def test_status_shows_disk_alarm(tmp_path: Path, alarm_mb: int | None, alarmed: bool) -> None:
    cfg = settings_for(tmp_path, "" if alarm_mb is None else f"disk_alarm_mb = {alarm_mb}\n")
    Ledger(load_config(cfg).ledger_url).close()  # a node has run here: `status` reads its ledger
    out = cli("status", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first.startswith("ALARM disk: " if alarmed else "disk: "), first
    assert "C-STORE refused below 1 MB" in first
    as_json = json.loads(cli("status", "--json", "--config", str(cfg)).stdout)
    assert as_json["disk"]["alarm"] is alarmed and as_json["disk"]["alarm_mb"] == (alarm_mb or 2048)
