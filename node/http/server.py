"""Serve the HTTP application with uvicorn in a thread of ``alnnode serve`` (HTTPS when configured).

The socket is bound here (so ``port = 0`` gives a free port and the address is known before the first
request) and handed to uvicorn; ``stop()`` lets uvicorn finish the requests in flight.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from typing import Any

import uvicorn

from node.config import Settings
from node.errors import NodeError

logger = logging.getLogger(__name__)

STOP_SECONDS = 30


class HttpServer:
    """One uvicorn server for ``app`` on ``[http] host/port``."""

    def __init__(self, settings: Settings, app: Any) -> None:
        http = settings.http
        self.scheme = "https" if http.tls_certificate else "http"
        kwargs: dict[str, Any] = {}
        if http.tls_certificate is not None:
            kwargs.update(ssl_certfile=str(http.tls_certificate), ssl_keyfile=str(http.tls_private_key))
            if http.tls_ca_certificates is not None:
                kwargs["ssl_ca_certs"] = str(http.tls_ca_certificates)
            kwargs["ssl_cert_reqs"] = ssl.CERT_REQUIRED if http.require_client_certificate else ssl.CERT_NONE
        try:  # a key that does not match its certificate, a passphrase-protected key: one line, no traceback
            if http.tls_certificate is not None:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                    str(http.tls_certificate), str(http.tls_private_key)
                )
        except (ssl.SSLError, OSError) as exc:
            raise NodeError(f"http.tls_certificate/tls_private_key cannot be used: {exc}") from None
        self.config = uvicorn.Config(
            app,
            log_config=None,  # the node's logging (node.logs) handles uvicorn's loggers
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=STOP_SECONDS,
            lifespan="off",
            **kwargs,
        )
        self.server = uvicorn.Server(self.config)
        family = socket.AF_INET6 if ":" in http.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((http.host, http.port))
        except OSError as exc:
            self.sock.close()
            raise NodeError(f"cannot listen for HTTP on {http.host}:{http.port}: {exc.strerror}") from None
        self.sock.listen(128)
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.address
        return f"{self.scheme}://{host}:{port}"

    def start(self) -> None:
        def run() -> None:
            try:
                asyncio.run(self.server.serve(sockets=[self.sock]))
            except Exception:  # the DICOM side keeps running; the log says why HTTP stopped
                logger.exception("HTTP server stopped with an error")

        self._thread = threading.Thread(target=run, name="alnnode-http", daemon=True)
        self._thread.start()
        logger.info("HTTP (DICOMweb, UPS-RS) listening on %s", self.url)

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_SECONDS + 5)
        self.sock.close()
