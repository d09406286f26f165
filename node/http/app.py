"""The HTTP application factory: one FastAPI app, one router per module.

``create_app(settings, ledger, ...)`` returns the app; each service is an ``APIRouter`` in its own
module (``dicomweb`` STOW/QIDO/WADO-RS, ``ups`` UPS-RS; the operator surface adds ``admin``,
``console``, ``health``) mounted here with one ``include_router`` line. Routers read what they need
from ``request.app.state`` (``settings``, ``ledger``, ``spool``, ``node``) through the helpers below,
and protect every route with ``Depends(require(role))`` (``node.http.auth``).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from node import __version__
from node.config import Settings
from node.http.auth import Authenticator
from node.ledger import Ledger
from node.spool import Spool

logger = logging.getLogger(__name__)

RESEARCH_NOTICE = "research use only / not for diagnostic use"


def create_app(
    settings: Settings, ledger: Ledger, *, spool: Spool | None = None, node: Any = None
) -> FastAPI:
    """Build the node's HTTP application over ``ledger`` and ``spool`` (``node``: the running Node, if any)."""
    app = FastAPI(
        title="aln-node",
        version=__version__,
        description=f"DICOMweb and UPS-RS services of the aln-node AI node ({RESEARCH_NOTICE}).",
        docs_url=None,  # no unauthenticated pages (no /docs, /redoc, /openapi.json)
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.ledger = ledger
    app.state.spool = spool or Spool(settings.storage.data_dir, fsync=settings.storage.fsync)
    app.state.node = node
    app.state.authenticator = Authenticator(settings.http.credentials)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _refused(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code not in (401, 403):  # auth refusals are logged by node.http.auth
            client = request.client.host if request.client else "?"
            logger.warning(
                "HTTP %s %s from %s: %d %s",
                request.method,
                request.url.path,
                client,
                exc.status_code,
                exc.detail,
            )
        return await http_exception_handler(request, exc)

    from node.http import dicomweb, ups

    app.include_router(dicomweb.router)
    app.include_router(ups.router)
    from node.http import admin, console, health

    app.include_router(admin.router)
    app.include_router(health.router)
    console.install(app)
    return app


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def ledger_of(request: Request) -> Ledger:
    ledger: Ledger = request.app.state.ledger
    return ledger


def spool_of(request: Request) -> Spool:
    spool: Spool = request.app.state.spool
    return spool
