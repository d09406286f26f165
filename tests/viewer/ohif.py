"""OHIF's prebuilt viewer and a real Orthanc's DICOMweb behind one origin (no CORS), for the browser test.

``npm ci --prefix tests/viewer --ignore-scripts`` installs ``@ohif/app`` (its ``dist/`` is a ready viewer). This
module serves that folder with our ``app-config.js`` (one DICOMweb data source at ``/dicom-web``) and forwards
``/dicom-web/...`` to Orthanc, like a site's reverse proxy would.
"""

from __future__ import annotations

import http.server
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
DIST = HERE / "node_modules" / "@ohif" / "app" / "dist"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--disable-dev-shm-usage"]

APP_CONFIG = """window.config = {
  routerBasename: '/',
  showStudyList: true,
  extensions: [],
  modes: [],
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'orthanc',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'orthanc',
    configuration: {
      friendlyName: 'Orthanc (aln-node test)',
      name: 'orthanc',
      wadoUriRoot: window.location.origin + '/wado',
      qidoRoot: window.location.origin + '/dicom-web',
      wadoRoot: window.location.origin + '/dicom-web',
      qidoSupportsIncludeField: false,
      imageRendering: 'wadors',
      thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true,
      supportsFuzzyMatching: false,
      supportsWildcard: true,
      omitQuotationForMultipartRequest: true,
      bulkDataURI: { enabled: true },
    },
  }],
};
"""


def require_ohif() -> Path:
    """The OHIF dist folder and Chromium; under CI a missing one fails the test, elsewhere it skips."""
    missing = []
    if not (DIST / "index.html").is_file():
        missing.append(f"{DIST} (run: npm ci --prefix tests/viewer --ignore-scripts)")
    if not CHROMIUM.is_file():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if missing:
        message = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return DIST


class _Handler(http.server.SimpleHTTPRequestHandler):
    upstream = ""  # Orthanc base URL, set per server

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, directory=str(DIST), **kwargs)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        logger.debug("viewer proxy: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        path = self.path.split("?", 1)[0]
        if path.startswith(("/dicom-web/", "/wado")):
            self._forward()
        elif path == "/app-config.js":
            self._send(200, APP_CONFIG.encode(), "application/javascript")
        elif path != "/" and (DIST / path.lstrip("/")).is_file():
            super().do_GET()
        else:  # the viewer's own routes (/viewer?StudyInstanceUIDs=...) are answered by index.html
            self._send(200, (DIST / "index.html").read_bytes(), "text/html")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _forward(self) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range")}
        r = requests.get(self.upstream + self.path, headers=headers, timeout=60)
        self.send_response(r.status_code)
        for key in ("Content-Type", "Content-Disposition"):
            if key in r.headers:
                self.send_header(key, r.headers[key])
        self.send_header("Content-Length", str(len(r.content)))
        self.end_headers()
        self.wfile.write(r.content)


@contextmanager
def viewer(orthanc_url: str) -> Iterator[str]:
    """Serve OHIF + Orthanc's DICOMweb on a free loopback port; yields the viewer's base URL."""
    handler = type("Handler", (_Handler,), {"upstream": orthanc_url.rstrip("/")})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
