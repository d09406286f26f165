"""The web console, ``/console``: server-rendered Jinja2 pages with htmx (vendored, no build step).

Login: a form checks the username and password against ``[[http.credentials]]`` (the same
``Authenticator`` as the API) and sets a session cookie (HMAC-signed with a key made at start,
HttpOnly, SameSite=Strict, 8 h); every form also carries a CSRF token derived from the session.
Each login, good or bad, is audited (PS3.15 A.5.3.13 User Authentication). Viewers see the
dashboard, jobs and associations; admins also edit peers and destinations, press Retry, and see
accession numbers and patient IDs. No page shows a patient name.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from node.http import console_data as data
from node.http.auth import Principal
from node.http.health import broker_of, current_settings

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(prefix="/console", tags=["console"], include_in_schema=False)
static = StaticFiles(directory=str(HERE / "static"))
COOKIE = "alnnode_session"
SESSION_SECONDS = 8 * 3600


def _key(request: Request) -> bytes:
    key: bytes | None = getattr(request.app.state, "session_key", None)
    if key is None:
        key = request.app.state.session_key = secrets.token_bytes(32)  # sessions end with the process
    return key


def _sign(request: Request, payload: str) -> str:
    return hmac.new(_key(request), payload.encode(), hashlib.sha256).hexdigest()


def make_session(request: Request, principal: Principal) -> str:
    payload = base64.urlsafe_b64encode(f"{principal.name}\n{principal.role}\n{int(time.time()) + SESSION_SECONDS}".encode()).decode()
    return f"{payload}.{_sign(request, payload)}"


def read_session(request: Request) -> Principal | None:
    value = request.cookies.get(COOKIE, "")
    payload, _, mac = value.partition(".")
    if not payload or not hmac.compare_digest(mac, _sign(request, payload)):
        return None
    try:
        name, role, expires = base64.urlsafe_b64decode(payload).decode().split("\n")
    except (ValueError, UnicodeDecodeError):
        return None
    if int(expires) < time.time():
        return None
    return Principal(name, role)


def csrf_token(request: Request) -> str:
    return _sign(request, "csrf:" + request.cookies.get(COOKIE, ""))


class LoginRequired(Exception):
    """Raised by ``user`` when no valid session: answered with a redirect to the login page."""


def user(request: Request) -> Principal:
    principal = read_session(request)
    if principal is None:
        raise LoginRequired()
    request.state.principal = principal
    return principal


def admin_user(request: Request, principal: Annotated[Principal, Depends(user)]) -> Principal:
    if not principal.may("admin"):
        raise HTTPException(403, f"{principal.name!r} has role {principal.role!r}; this page needs admin")
    return principal


User = Annotated[Principal, Depends(user)]
AdminUser = Annotated[Principal, Depends(admin_user)]


def check_csrf(request: Request, csrf: Annotated[str, Form()] = "") -> None:
    if not hmac.compare_digest(csrf, csrf_token(request)):
        raise HTTPException(403, "stale or missing form token: reload the page")


def page(request: Request, name: str, principal: Principal | None, status_code: int = 200, **context: Any) -> HTMLResponse:
    settings = current_settings(request)
    return templates.TemplateResponse(
        request,
        name,
        {"user": principal, "admin": bool(principal and principal.may("admin")), "csrf": csrf_token(request),
         "ae_title": settings.node.ae_title, **context},  # fmt: skip
        status_code=status_code,
    )


def install(app: Any) -> None:
    """Mount the console, its static files and the login redirect on ``app``."""
    app.include_router(router)
    app.mount("/console/static", static, name="console-static")

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, _exc: LoginRequired) -> Response:
        return RedirectResponse("/console/login", status_code=303)


# -- login ------------------------------------------------------------------------------------------
@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> HTMLResponse:
    return page(request, "login.html", None, error=None)


@router.post("/login")
def login(request: Request, username: Annotated[str, Form()] = "", password: Annotated[str, Form()] = "") -> Response:
    from node.audit import AuditLog

    auth = request.app.state.authenticator
    basic = base64.b64encode(f"{username}:{password}".encode()).decode()
    principal = auth.authenticate(f"Basic {basic}") if username and password else None
    client = request.client.host if request.client else None
    audit = AuditLog.from_settings(current_settings(request))
    if principal is None:
        audit.authentication(username[:64], client, success=False, reason="wrong username or password")
        logger.warning("console login failed for %r from %s", username[:64], client)
        return page(request, "login.html", None, error="Wrong username or password.", status_code=401)
    audit.authentication(principal.name, client, success=True)
    logger.info("console login by %r from %s", principal.name, client)
    response = RedirectResponse("/console/", status_code=303)
    secure = request.url.scheme == "https"
    response.set_cookie(COOKIE, make_session(request, principal), max_age=SESSION_SECONDS, httponly=True, samesite="strict", secure=secure)
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


# -- pages ------------------------------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request, principal: User) -> HTMLResponse:
    return page(request, "dashboard.html", principal, d=data.dashboard(request))


@router.get("/jobs", response_class=HTMLResponse)
def jobs(request: Request, principal: User, state: str = "", ae: str = "", since: str = "", accession: str = "") -> HTMLResponse:
    admin = principal.may("admin")
    rows = data.find_jobs(request, state=state, ae=ae, since=since, accession=accession if admin else None, admin=admin)
    filters = {"state": state, "ae": ae, "since": since, "accession": accession}
    name = "jobs_table.html" if request.headers.get("hx-request") else "jobs.html"
    from node.ledger.states import STATES

    return page(request, name, principal, jobs=rows, filters=filters, states=STATES)


@router.get("/jobs/{uid}", response_class=HTMLResponse)
def job(request: Request, uid: str, principal: User, message: str = "") -> HTMLResponse:
    return page(request, "job.html", principal, job=data.job_detail(request, uid, admin=principal.may("admin")), message=message)


@router.get("/jobs/{uid}/heatmap.png")
def heatmap(request: Request, uid: str, _principal: User) -> Response:
    return Response(data.heatmap_png(request, uid), media_type="image/png")


@router.post("/jobs/{uid}/retry", dependencies=[Depends(check_csrf)])
def retry(request: Request, uid: str, principal: AdminUser) -> Response:
    result = data.retry_job(request.app.state.ledger, current_settings(request), broker_of(request), uid)
    logger.info("console: %r pressed Retry on %s: %s", principal.name, uid, result["state"])
    from urllib.parse import quote

    return RedirectResponse(f"/console/jobs/{uid}?message={quote(result['state'] + ': ' + result['detail'])}", status_code=303)


@router.get("/associations", response_class=HTMLResponse)
def associations(request: Request, principal: User) -> HTMLResponse:
    return page(request, "associations.html", principal, rows=data.recent_associations(request, 200))


@router.get("/model", response_class=HTMLResponse)
def model(request: Request, principal: User) -> HTMLResponse:
    return page(request, "model.html", principal, card=data.model_card(request))


# -- editors (admin) ----------------------------------------------------------------------------------
def _edit(request: Request, principal: Principal, edit: Any) -> list[str]:
    """Apply an edit like the API does; returns the validation messages (empty: saved and applied)."""
    from node.http.admin import apply

    try:
        apply(request, principal, edit)
    except HTTPException as exc:
        detail = exc.detail
        return [str(d) for d in detail] if isinstance(detail, list) else [str(detail)]
    return []


@router.get("/peers", response_class=HTMLResponse)
def peers(request: Request, principal: AdminUser, errors: list[str] | None = None) -> HTMLResponse:
    return page(request, "peers.html", principal, peers=current_settings(request).peers, errors=errors or [], saved=False)


@router.post("/peers", response_class=HTMLResponse, dependencies=[Depends(check_csrf)])
def peers_change(request: Request, principal: AdminUser, action: Annotated[str, Form()],
                 ae_title: Annotated[str, Form()] = "", host: Annotated[str, Form()] = "") -> HTMLResponse:  # fmt: skip
    if action == "add":
        errors = _edit(request, principal, lambda f: f.add_peer(ae_title, host.strip() or None))
    else:
        errors = _edit(request, principal, lambda f: f.remove_peer(ae_title, host.strip() or None))
    status = 422 if errors else 200
    return page(request, "peers.html", principal, peers=current_settings(request).peers, errors=errors, saved=not errors,
                form={"ae_title": ae_title, "host": host}, status_code=status)  # fmt: skip


DEST_FIELDS = ("name", "kind", "ae_title", "host", "port", "url", "path", "calling_ae_title", "timeout", "retry_for")


@router.get("/destinations", response_class=HTMLResponse)
def destinations(request: Request, principal: AdminUser) -> HTMLResponse:
    rows = data.public_destinations(request)
    return page(request, "destinations.html", principal, destinations=rows, fields=DEST_FIELDS, errors=[], saved=False)


@router.post("/destinations", response_class=HTMLResponse, dependencies=[Depends(check_csrf)])
async def destinations_change(request: Request, principal: AdminUser) -> HTMLResponse:
    form = await request.form()
    action = str(form.get("action", "save"))
    name = str(form.get("name", "")).strip()
    if action == "remove":
        errors = _edit(request, principal, lambda f: f.remove_destination(name))
    else:
        old = next((d for d in current_settings(request).destinations if d.name == name), None)
        # fields the form does not show (retry settings, secrets) stay as they are in the file
        values: dict[str, Any] = old.model_dump(exclude_defaults=True) if old is not None else {}
        for key in DEST_FIELDS:
            raw = str(form.get(key, "")).strip()
            if raw:
                values[key] = _number(raw) if key in ("port", "timeout", "retry_for") else raw
            else:
                values.pop(key, None)
        errors = _edit(request, principal, lambda f: f.put_destination(values))
    rows = data.public_destinations(request)
    return page(request, "destinations.html", principal, destinations=rows, fields=DEST_FIELDS, errors=errors,
                saved=not errors, status_code=422 if errors else 200)  # fmt: skip


def _number(raw: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            continue
    return raw  # the model validation names it
