"""A real PostgreSQL server for tests (fixtures ``postgres`` and ``postgres_url``, registered in the root
conftest): a private cluster made with ``initdb`` on a free loopback port, stopped and removed at teardown.

    def test_x(postgres_url: str) -> None:
        ...  # "postgresql+psycopg://alnnode@127.0.0.1:PORT/alnnode"

    def test_y(postgres: PostgresServer) -> None:
        postgres.stop(); ...; postgres.start()   # an outage of the ledger

Debian keeps the server binaries in ``/usr/lib/postgresql/<version>/bin`` (not on PATH). ``initdb`` refuses to
run as root, so as root the cluster belongs to the ``postgres`` user and lives in a folder it can reach
(``tmp_path`` is 0700 under pytest); see shared/FIELD-NOTES.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port, wait_for

__all__ = ["PostgresServer", "postgres", "postgres_url"]

USER = "alnnode"
DATABASE = "alnnode"


def server_bin() -> Path:
    """The newest installed PostgreSQL server's bin folder; fails under CI when none is installed."""
    root = Path("/usr/lib/postgresql")
    found = sorted((p for p in root.glob("*/bin") if (p / "initdb").exists()), key=lambda p: int(p.parent.name))
    if found:
        return found[-1]
    if os.environ.get("CI"):
        pytest.fail("PostgreSQL server binaries are missing (.ci/run must apt-get install postgresql)")
    pytest.skip("PostgreSQL server binaries are missing (apt-get install postgresql)")


class PostgresServer:
    """One private PostgreSQL cluster on 127.0.0.1:``port`` with database and user ``alnnode`` (trust auth)."""

    def __init__(self) -> None:
        self.bin = server_bin()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="alnnode-pg-"))
        self.data = self.root / "data"
        self.as_root = os.geteuid() == 0
        os.chmod(self.root, 0o755)
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", USER, "-E", "UTF8", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / tool), *args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=check, cwd=self.root)

    def start(self) -> PostgresServer:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=on"
        out = self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w", "start", check=False)
        if out.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace") if (self.root / "server.log").exists() else ""
            pytest.fail(f"PostgreSQL did not start: {out.stdout}{out.stderr}{log[-2000:]}")
        wait_for(self.ready, 30, 0.2, what="PostgreSQL to accept connections")
        if not getattr(self, "_created", False):
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, DATABASE)
            self._created = True
        return self

    def ready(self) -> bool:
        out = self._run("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), check=False)
        return out.returncode == 0

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast`` closes clients; ``immediate`` is a crash without shutdown checkpoint)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    """A started private PostgreSQL cluster; stopped and removed at teardown."""
    server = PostgresServer().start()
    yield server
    server.remove()


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    """SQLAlchemy URL of the ``postgres`` fixture's database (psycopg 3 driver)."""
    return postgres.url
