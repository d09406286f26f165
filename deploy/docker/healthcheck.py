#!/usr/bin/env python3
"""Container health check of aln-node (Docker HEALTHCHECK, Kubernetes exec readiness probe).

``edge``: GET ``/healthz`` on the node's HTTP port (``[http] port``, 8080). Until the HTTP app is
running (it lands with the operator-surface work) a refused connection falls back to a TCP connect
to the DICOM port; a TCP close without an A-ASSOCIATE-RQ costs the listener nothing (PS3.8 9.1.1).
``worker``: the broker named by ``[queue] broker_url`` accepts a TCP connection (a worker that
cannot reach it takes no jobs). Exit 0 healthy, 1 unhealthy, with one line saying why.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit


def _tcp(host: str, port: int, timeout: float) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"


def check_edge(url: str, dicom_port: int, timeout: float) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback URL)
            return None if resp.status == 200 else f"{url}: HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code}"
    except urllib.error.URLError as exc:
        if not isinstance(exc.reason, ConnectionRefusedError):
            return f"{url}: {exc.reason}"
    problem = _tcp("127.0.0.1", dicom_port, timeout)
    return None if problem is None else f"{url} refused and DICOM port {problem}"


def check_worker(broker_url: str | None, timeout: float) -> str | None:
    if not broker_url:
        return None  # embedded queue: nothing remote to reach
    parts = urlsplit(broker_url)
    if not parts.hostname:
        return None
    problem = _tcp(parts.hostname, parts.port or 6379, timeout)
    return None if problem is None else f"broker {problem}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="alnnode-healthcheck", description=__doc__)
    p.add_argument("role", choices=("edge", "worker"))
    p.add_argument("--config", default=os.environ.get("ALNNODE_CONFIG"))
    p.add_argument("--url", default=None, help="health URL (default http://127.0.0.1:8080/healthz)")
    p.add_argument("--timeout", type=float, default=4.0)
    args = p.parse_args(argv)
    from node.config import load_config
    from node.errors import ConfigError

    try:
        settings = load_config(args.config)
    except ConfigError as exc:
        print(f"unhealthy: config: {exc.problems[0]}")  # noqa: T201 (a CLI)
        return 1
    if args.role == "edge":
        http_port = int(os.environ.get("ALNNODE_HTTP__PORT", "8080"))
        url = args.url or f"http://127.0.0.1:{http_port}/healthz"
        problem = check_edge(url, settings.node.port, args.timeout)
    else:
        broker = settings.queue.broker_url
        problem = check_worker(broker.get_secret_value() if broker is not None else None, args.timeout)
    print(f"unhealthy: {problem}" if problem else "healthy")  # noqa: T201
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
