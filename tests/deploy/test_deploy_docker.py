"""deploy/docker: compose.yaml validates with Debian's docker-compose and has what the issue asks;
the secret tooling, entry point and health check work on real processes.
"""

from __future__ import annotations

import http.server
import os
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT, NodeProcess, free_port, require_tool, wait_for, write_config

DOCKER = ROOT / "deploy" / "docker"
COMPOSE = DOCKER / "compose.yaml"
OURS = ("edge", "worker-gpu", "worker-io")


def compose_config(*extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    exe = require_tool("docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALNNODE_", "ORTHANC_"))}
    out = subprocess.run([exe, "-f", str(COMPOSE), *extra, "config"], capture_output=True, text=True, timeout=120, env=env)
    return out, (yaml.safe_load(out.stdout) if out.returncode == 0 else {})


def test_compose_file_validates_with_docker_compose() -> None:
    out, cfg = compose_config()
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr
    assert set(cfg["services"]) == {*OURS, "redis", "postgres", "orthanc"}
    assert cfg["services"]["orthanc"]["profiles"] == ["demo"]
    assert all("profiles" not in cfg["services"][s] for s in (*OURS, "redis", "postgres"))
    gpu = cfg["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "--queues" in cfg["services"]["worker-io"]["command"] and "io" in cfg["services"]["worker-io"]["command"]
    assert cfg["services"]["edge"]["build"]["target"] == "edge"
    assert cfg["services"]["worker-gpu"]["build"]["target"] == "worker"
    out_demo, _ = compose_config("--profile", "demo")
    assert out_demo.returncode == 0, out_demo.stderr


def test_compose_has_no_default_passwords() -> None:
    _, cfg = compose_config()
    for name, service in cfg["services"].items():
        env = service.get("environment") or {}
        for key, value in env.items():
            assert "PASSWORD" not in key or key.endswith("_FILE"), f"{name}: {key}"
            assert "://" not in str(value), f"{name}: {key} holds a URL (credentials belong in a secret file)"
    for name, secret in cfg["secrets"].items():
        assert Path(secret["file"]).parent == DOCKER / "secrets", name
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/docker/secrets/ledger_url"], cwd=ROOT)
    assert ignored.returncode == 0, "deploy/docker/secrets/ must be git-ignored"


def test_images_are_multi_stage_non_root_and_the_edge_has_no_torch() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    stages: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("FROM "):
            current = line.split(" AS ")[-1].strip()
            stages[current] = []
        elif current:
            stages[current].append(line)
    assert {"build", "edge-venv", "worker-venv", "runtime", "edge", "worker"} <= set(stages)
    assert "torch" not in "\n".join(stages["edge-venv"] + stages["edge"])
    assert "torch==2.14.1" in "\n".join(stages["worker-venv"])
    for target in ("edge", "worker"):
        body = "\n".join(stages[target])
        assert "USER alnnode" in body and "HEALTHCHECK" in body, target


def test_make_secrets_writes_random_consistent_secrets(tmp_path: Path) -> None:
    require_tool("openssl")
    script = tmp_path / "make-secrets.sh"
    shutil.copy(DOCKER / "make-secrets.sh", script)
    run = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    secrets = tmp_path / "secrets"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    read = {p.name: p.read_text().strip() for p in secrets.iterdir()}
    assert set(read) == {"postgres_password", "redis_password", "ledger_url", "broker_url", "redis.conf", "orthanc.json"}
    assert all(stat.S_IMODE((secrets / n).stat().st_mode) == 0o444 for n in read)
    pg, redis = read["postgres_password"], read["redis_password"]
    assert len(pg) == 48 and pg != redis
    assert read["ledger_url"] == f"postgresql+psycopg://alnnode:{pg}@postgres:5432/alnnode"
    assert read["broker_url"] == f"redis://:{redis}@redis:6379/0" and read["redis.conf"] == f"requirepass {redis}"
    again = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and (secrets / "postgres_password").read_text().strip() == pg  # kept
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(DOCKER / "make-secrets.sh", other / "make-secrets.sh")
    subprocess.run(["sh", str(other / "make-secrets.sh")], check=True, capture_output=True, timeout=60)
    assert (other / "secrets/postgres_password").read_text().strip() != pg  # no fixed value anywhere


def test_entrypoint_reads_secret_files_into_the_config(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger_url"
    ledger.write_text("postgresql+psycopg://alnnode:hunter2@postgres:5432/alnnode\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALNNODE_")}
    env.update(PYTHONPATH=str(ROOT), ALNNODE_STORAGE__LEDGER_URL_FILE=str(ledger))
    cmd = ["sh", str(DOCKER / "entrypoint.sh"), sys.executable, "-m", "node.cli", "config", "check", "--config", str(DOCKER / "alnnode.toml")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'ledger_url = "postgresql+psycopg://alnnode:***@postgres:5432/alnnode"' in out.stdout
    assert "hunter2" not in out.stdout + out.stderr  # and `config check` never prints it
    env["ALNNODE_STORAGE__LEDGER_URL_FILE"] = str(tmp_path / "missing")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and out.stderr.strip().endswith("missing is not a readable file"), out.stderr


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_health() -> Iterator[tuple[int, type[_Health]]]:
    handler = type("Handler", (_Health,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(DOCKER / "healthcheck.py"), *args], capture_output=True, text=True, env=env, timeout=60)


def test_edge_healthcheck_uses_healthz_then_the_dicom_port(tmp_path: Path, http_health: tuple[int, type[_Health]]) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "alnnode.toml", port=port, data_dir=tmp_path / "var")
    down = f"http://127.0.0.1:{free_port()}/healthz"
    out = healthcheck("edge", "--config", str(cfg), "--url", down)
    assert out.returncode == 1 and out.stdout.startswith("unhealthy: ") and str(port) in out.stdout
    node = NodeProcess(cfg, port, tmp_path / "node.log").start()
    try:
        assert healthcheck("edge", "--config", str(cfg), "--url", down).returncode == 0  # no HTTP app yet: DICOM port
        http_port, handler = http_health
        url = f"http://127.0.0.1:{http_port}/healthz"
        assert healthcheck("edge", "--config", str(cfg), "--url", url).stdout.strip() == "healthy"
        handler.status = 503
        out = healthcheck("edge", "--config", str(cfg), "--url", url)
        assert out.returncode == 1 and "HTTP 503" in out.stdout
        # the probes did not use up association slots: the node still answers C-ECHO
        echo = subprocess.run([require_tool("echoscu"), "-aet", "ECHOSCU", "-aec", "ALN_AI", "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60)
        assert echo.returncode == 0, echo.stderr
    finally:
        node.stop()


def test_worker_healthcheck_needs_the_broker(tmp_path: Path) -> None:
    """As the image runs it: the entry point reads the broker URL from its secret file."""
    redis_port = free_port()
    secret = tmp_path / "broker_url"
    secret.write_text(f"redis://:pw@127.0.0.1:{redis_port}/0")
    cfg = write_config(tmp_path / "alnnode.toml", port=free_port(), data_dir=tmp_path / "var")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALNNODE_")}
    env.update(PYTHONPATH=str(ROOT), ALNNODE_QUEUE__BROKER_URL_FILE=str(secret))
    cmd = ["sh", str(DOCKER / "entrypoint.sh"), sys.executable, str(DOCKER / "healthcheck.py"), "worker", "--config", str(cfg)]

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)

    out = check()
    assert out.returncode == 1 and f"broker 127.0.0.1:{redis_port}" in out.stdout and "pw" not in out.stdout
    redis = subprocess.Popen([require_tool("redis-server"), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: check().returncode == 0, 30, interval=0.2, what="redis-server")
    finally:
        redis.terminate()
        redis.wait(10)
