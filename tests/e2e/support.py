"""Helpers of the end-to-end tests: configs with real destinations, storescu, ledger polling."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pydicom import dcmread

from node.ledger import Ledger
from tests.helpers import free_port, require_tool, wait_for
from tests.orthanc import OrthancServer


def destination_toml(kind: str, orthanc: OrthancServer | None, folder: Path | None = None, *, ae: str = "ORTHANC", attempts: int = 8, defaults: bool = False) -> str:
    """A destination table; ``defaults=True`` keeps the shipped retry settings (tests of guarantees)."""
    base = f'[[destinations]]\nname = "pacs"\nkind = "{kind}"\n'
    if not defaults:
        base += f'max_attempts = {attempts}\nbackoff_seconds = 0.5\nbackoff_max_seconds = 3\ntimeout = 20\n'
    if kind == "dimse":
        assert orthanc is not None
        return base + f'ae_title = "{ae}"\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
    if kind == "dicomweb":
        assert orthanc is not None
        return base + f'url = "{orthanc.dicomweb_url}"\n'
    if kind == "orthanc":
        assert orthanc is not None
        return base + f'url = "{orthanc.url}"\n'
    assert folder is not None
    folder.mkdir(parents=True, exist_ok=True)
    return base + f'path = "{folder}"\n'


def pipeline_config(tmp: Path, bundle: Path, destinations: str, *, broker: str | None = None, workers: int = 1, ledger_url: str | None = None) -> tuple[Path, int, Path]:
    """A node config with the shipped defaults of the job plane (heartbeats, attempts, timeouts)."""
    port = free_port()
    data = tmp / "var"
    queue = f'[queue]\nembedded_workers = {workers}\n'
    if broker:
        queue += f'broker_url = "{broker}"\n'
    cfg = tmp / "alnnode.toml"
    cfg.write_text(
        f"""[node]
ae_title = "ALN_AI"
host = "127.0.0.1"
port = {port}
[[peers]]
ae_title = "STORESCU"
[[peers]]
ae_title = "US_ROOM1"
[storage]
data_dir = "{data}"
min_free_mb = 1
{f'ledger_url = "{ledger_url}"' if ledger_url else ""}
[model]
bundle = "{bundle}"
threshold = 0.5
min_frames = 8
allow_research_models = true
device = "cpu"
{queue}
{destinations}
""",
        encoding="utf-8",
    )
    return cfg, port, data


def ledger_of(data: Path) -> Ledger:
    return Ledger(f"sqlite:///{data / 'ledger.sqlite'}")


def storescu(port: int, *files: Path, flag: str = "-xy") -> None:
    exe = require_tool("storescu")
    out = subprocess.run([exe, "-v", flag, "-aet", "US_ROOM1", "-aec", "ALN_AI", "127.0.0.1", str(port), *map(str, files)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.stderr.count("Received Store Response (Success)") + out.stdout.count("Received Store Response (Success)") == len(files), out.stdout + out.stderr


def wait_states(data: Path, uids: list[str], states: set[str], timeout: float = 180) -> None:
    ledger = ledger_of(data)

    def done() -> bool:
        rows = [ledger.find(u) for u in uids]
        return all(r is not None and r["state"] in states for r in rows)

    try:
        wait_for(done, timeout, 0.25, what=f"jobs to reach {states}")
    finally:
        ledger.close()


def source_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


