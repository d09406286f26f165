"""The HTTP listener is a TCP socket asyncio recognises, so every accepted connection gets TCP_NODELAY.

asyncio sets TCP_NODELAY on an accepted connection only when the socket's protocol is IPPROTO_TCP
(``asyncio.base_events._set_nodelay``); a socket made with ``socket(AF_INET, SOCK_STREAM)`` has protocol 0,
and then each response (headers and body are two writes) waits for the client's delayed ACK, about
40 ms per request (found by ``bench/stow.py``: 1.5x Orthanc's time before, 0.87x after).
"""

from __future__ import annotations

import socket
from pathlib import Path

from node.config import load_config
from node.http.app import create_app
from node.http.server import HttpServer
from node.ledger import Ledger


def test_accepted_connections_get_tcp_nodelay(tmp_path: Path) -> None:
    settings = load_config(None, storage={"data_dir": str(tmp_path / "var")}, http={"enabled": True, "port": 0})
    settings.storage.data_dir.mkdir(parents=True)
    ledger = Ledger(settings.ledger_url)
    try:
        http = HttpServer(settings, create_app(settings, ledger))
        try:
            assert http.sock.proto == socket.IPPROTO_TCP
        finally:
            http.sock.close()
    finally:
        ledger.close()
