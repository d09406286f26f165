"""``/healthz`` (the process answers), ``/readyz`` (it can do its job) and ``/metrics`` (Prometheus).

Readiness checks, each named in the answer (503 names the failing ones, as Kubernetes and load
balancers read it): ``ledger`` (a query), ``broker`` (a connection), ``disk`` (free space above
``[storage] min_free_mb``, where C-STORE would answer 0xA700), ``worker`` (a heartbeat in the
workers registry within ``[queue] heartbeat_timeout``) and ``model`` (the bundle was checked at start).
Probes carry no credential (kubelet, systemd, Docker health checks): these two answer with check
names and short reasons only, never configuration or patient data. ``/metrics`` needs the viewer role.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from node.config import Settings
from node.http.auth import require

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


def current_settings(request: Request) -> Settings:
    """The node's settings now (after live reloads), else the app's."""
    node = request.app.state.node
    settings: Settings = node.settings if node is not None else request.app.state.settings
    return settings


def broker_of(request: Request) -> Any:
    node = request.app.state.node
    if node is not None and node.broker is not None:
        return node.broker
    broker = getattr(request.app.state, "broker", None)
    if broker is None:
        from node.queue import Broker

        broker = request.app.state.broker = Broker(request.app.state.settings)
    return broker


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:200]


def readiness(request: Request) -> dict[str, dict[str, Any]]:
    """Every check as ``{"ok": bool, "detail": str}``."""
    from node.retention import disk_status

    settings = current_settings(request)
    ledger = request.app.state.ledger
    checks: dict[str, dict[str, Any]] = {}

    def check(name: str, fn: Any) -> None:
        t0 = time.monotonic()
        try:
            ok, detail = fn()
        except Exception as exc:  # a check that raises is a failing check, named
            ok, detail = False, _one_line(exc)
        checks[name] = {"ok": bool(ok), "detail": detail, "ms": round(1000 * (time.monotonic() - t0))}

    def ledger_check() -> tuple[bool, str]:
        counts = ledger.counts()
        return True, f"{sum(counts.values())} job(s)"

    def broker_check() -> tuple[bool, str]:
        ok = broker_of(request).reachable()
        return ok, "reachable" if ok else "unreachable"

    def disk_check() -> tuple[bool, str]:
        disk = disk_status(settings)
        return disk.free_mb >= disk.refuse_mb, f"{disk.free_mb:.0f} MB free (floor {disk.refuse_mb} MB)"

    def worker_check() -> tuple[bool, str]:
        live = ledger.live_workers(settings.queue.heartbeat_timeout)
        if live:
            return True, f"{len(live)} live worker(s)"
        return False, f"no worker heartbeat within {settings.queue.heartbeat_timeout:.0f} s"

    def model_check() -> tuple[bool, str]:
        if settings.model.bundle is None:
            return True, "no model configured (objects are stored and skipped)"
        node = request.app.state.node
        bundle = getattr(node, "bundle", None) if node is not None else None
        if bundle is None and node is not None:
            return False, f"bundle {settings.model.bundle} not loaded"
        return True, f"{bundle.name} {bundle.version}" if bundle is not None else "configured"

    check("ledger", ledger_check)
    check("broker", broker_check)
    check("disk", disk_check)
    check("worker", worker_check)
    check("model", model_check)
    return checks


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    checks = readiness(request)
    failing = [name for name, c in checks.items() if not c["ok"]]
    if failing:
        logger.warning("not ready: %s", ", ".join(f"{n} ({checks[n]['detail']})" for n in failing))
        body = {"status": "not ready", "failing": failing, "checks": checks}
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ready", "failing": [], "checks": checks})


@router.get("/metrics", dependencies=[Depends(require("viewer"))])
def metrics(request: Request) -> Response:
    from node.metrics import exposition

    data, content_type = exposition(request.app.state.ledger)
    return Response(data, media_type=content_type)
