"""The admin REST API, ``/api/v1`` (admin role): peers, our AE title, destinations, routing, model, jobs.

Every change goes through ``node.liveconfig.ConfigFile``: the same pydantic models as the TOML
validate it (422 naming the field and value), it is written back to the file with its comments, then
applied to the running node at once (``Node.reload``) and audited (PS3.15 A.5.3.11, before/after).
Reads return the effective settings with secrets masked. Like MONAI Deploy Informatics Gateway's
``/config/ae`` and Orthanc's ``/modalities``, peers are keyed by AE title.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request

from node.errors import ConfigError, NodeError
from node.http.auth import Principal, require
from node.http.health import broker_of, current_settings
from node.liveconfig import Change, ConfigFile, public_view

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["admin"], dependencies=[Depends(require("admin"))])
MASK = "***"
JsonBody = Annotated[dict[str, Any], Body()]


def config_file(request: Request) -> ConfigFile:
    node = request.app.state.node
    path = getattr(node, "config_path", None)
    if path is None:
        raise HTTPException(409, "the node runs without a configuration file (--config): changes cannot be saved")
    file: ConfigFile | None = getattr(request.app.state, "config_file", None)
    if file is None or file.path != path:
        file = request.app.state.config_file = ConfigFile(path)
    return file


def apply(request: Request, principal: Principal, edit: Any) -> dict[str, Any]:
    """Run one ``ConfigFile`` edit, apply it live and audit it; HTTP errors name the bad value."""
    file = config_file(request)
    try:
        change: Change = edit(file)
    except ConfigError as exc:
        raise HTTPException(422, exc.problems) from None
    except NodeError as exc:
        raise HTTPException(404 if "not configured" in str(exc) else 409, str(exc)) from None
    node = request.app.state.node
    from node.audit import AuditLog

    AuditLog.from_settings(change.after).config_changed(public_view(change.before), public_view(change.after), change.keys,
                                                       user=f"{principal.name} (admin API)")  # fmt: skip
    applied = node.reload() if node is not None else []
    logger.info("admin %r changed %s", principal.name, ", ".join(change.keys) or "nothing")
    return {"changed": change.keys, "applied": applied, "saved_to": str(file.path)}


def _principal(request: Request) -> Principal:
    principal: Principal = request.state.principal
    return principal


# -- configuration ------------------------------------------------------------------------------
@router.get("/config")
def get_config(request: Request) -> dict[str, Any]:
    data = public_view(current_settings(request))
    if "http" in data:  # credential hashes are secrets too
        data["http"]["credentials"] = [{"name": c["name"], "role": c["role"]} for c in data["http"].get("credentials", [])]
    return data


@router.get("/peers")
def list_peers(request: Request) -> list[dict[str, Any]]:
    return [p.model_dump(mode="json", exclude_none=True) for p in current_settings(request).peers]


@router.post("/peers", status_code=201)
def add_peer(request: Request, body: JsonBody) -> dict[str, Any]:
    title = str(body.get("ae_title", "")).strip()
    extra = {k: v for k, v in body.items() if k not in ("ae_title", "host")}
    if any(p.ae_title == title and p.host == (body.get("host") or None) for p in current_settings(request).peers):
        raise HTTPException(409, f"peer {title!r} is already configured")
    return apply(request, _principal(request), lambda f: f.add_peer(body.get("ae_title", ""), body.get("host") or None, **extra))


@router.delete("/peers/{ae_title}")
def remove_peer(request: Request, ae_title: str, host: str | None = None) -> dict[str, Any]:
    return apply(request, _principal(request), lambda f: f.remove_peer(ae_title, host))


@router.get("/node")
def get_node(request: Request) -> dict[str, Any]:
    node = current_settings(request).node
    return {"ae_title": node.ae_title, "reject_unknown_callers": node.reject_unknown_callers, "port": node.port}


@router.put("/node")
def put_node(request: Request, body: JsonBody) -> dict[str, Any]:
    allowed = ("ae_title", "reject_unknown_callers")
    bad = [k for k in body if k not in allowed]
    if bad:
        raise HTTPException(422, [f"node.{bad[0]}: not changeable here (only {', '.join(allowed)}; others need a restart)"])

    def edit(f: ConfigFile) -> Change:
        change = None
        for key, value in body.items():
            change = f.set_value("node", key, value)
        if change is None:
            raise NodeError("nothing to change")
        return change

    return apply(request, _principal(request), edit)


@router.get("/destinations")
def list_destinations(request: Request) -> list[dict[str, Any]]:
    return list(public_view(current_settings(request))["destinations"])


@router.put("/destinations/{name}")
def put_destination(request: Request, name: str, body: JsonBody) -> dict[str, Any]:
    values = {**body, "name": name}
    old = next((d for d in current_settings(request).destinations if d.name == name), None)
    for secret in ("password", "token"):
        if values.get(secret) == MASK:  # the masked value a GET returned: keep the stored secret
            values[secret] = getattr(old, secret) if old is not None else None
    return apply(request, _principal(request), lambda f: f.put_destination(values))


@router.delete("/destinations/{name}")
def remove_destination(request: Request, name: str) -> dict[str, Any]:
    return apply(request, _principal(request), lambda f: f.remove_destination(name))


def _set(section: str, allowed: tuple[str, ...]) -> Any:
    def handler(request: Request, body: JsonBody) -> dict[str, Any]:
        bad = [k for k in body if k not in allowed]
        if bad or not body:
            raise HTTPException(422, [f"{section}.{bad[0] if bad else ''}: only {', '.join(allowed)} can be changed here"])

        def edit(f: ConfigFile) -> Change:
            change = None
            for key, value in body.items():
                change = f.set_value(section, key, value)
            assert change is not None
            return change

        return apply(request, _principal(request), edit)

    return handler


@router.get("/model")
def get_model(request: Request) -> dict[str, Any]:
    from node.http.console_data import model_card

    return model_card(request)


router.put("/model")(_set("model", ("threshold",)))


@router.get("/routing")
def get_routing(request: Request) -> dict[str, Any]:
    model = current_settings(request).model
    return {"min_frames": model.min_frames, "model": str(model.bundle) if model.bundle else None}


router.put("/routing")(_set("model", ("min_frames",)))


# -- jobs -----------------------------------------------------------------------------------------
@router.get("/jobs")
def list_jobs(request: Request, state: str | None = None, ae: str | None = None, since: str | None = None,
              accession: str | None = None, limit: int = 100) -> list[dict[str, Any]]:  # fmt: skip
    from node.http.console_data import find_jobs

    return find_jobs(request, state=state, ae=ae, since=since, accession=accession, limit=limit, admin=True)


@router.get("/jobs/{uid}")
def get_job(request: Request, uid: str) -> dict[str, Any]:
    from node.http.console_data import job_detail

    return job_detail(request, uid, admin=True)


@router.post("/jobs/{uid}/retry")
def retry(request: Request, uid: str) -> dict[str, Any]:
    from node.http.console_data import retry_job

    return retry_job(request.app.state.ledger, current_settings(request), broker_of(request), uid)


@router.get("/associations")
def list_associations(request: Request, limit: int = 100) -> list[dict[str, Any]]:
    from node.http.console_data import recent_associations

    return recent_associations(request, limit)
