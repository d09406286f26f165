"""``alnnode worker``: run Celery workers for the ``gpu`` and/or ``io`` queues anywhere that sees the
same spool, ledger and broker as the node."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from node.config import load_config
from node.errors import ConfigError
from node.logs import add_log_options, root_refusal, setup_logging

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alnnode worker", description=__doc__)
    p.add_argument("--config", help="TOML config file (default: $ALNNODE_CONFIG)")
    p.add_argument("--queues", default="gpu,io", help="comma-separated queues: gpu (classify), io (render, dispatch)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: [model] device, auto = cuda if present)")
    p.add_argument("--concurrency", type=int, default=1, help="worker processes (default 1: one model in memory)")
    p.add_argument("--name", default=None, help="Celery node name (default alnnode-<queues>@<host>-<pid>)")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--allow-root", action="store_true", help="run even as root (default: refuse)")
    add_log_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if refusal := root_refusal(args.allow_root, "alnnode worker"):
        print(refusal, file=sys.stderr)
        return 2
    try:
        level = logging.getLevelName(args.loglevel.upper())
        setup_logging(level if isinstance(level, int) else logging.INFO, args.log_format, args.log_file,
                      max_mb=args.log_max_mb, backups=args.log_backups)
    except ValueError as exc:
        print(f"alnnode worker: {exc}", file=sys.stderr)
        return 2
    if args.allow_root and os.geteuid() == 0:
        import warnings

        from celery.exceptions import SecurityWarning

        # asked for with --allow-root: one line of ours instead of Celery's banner-sized warning
        warnings.filterwarnings("ignore", category=SecurityWarning)
        logger.warning("running as root (--allow-root): use a service user in production")
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    bad = [q for q in queues if q not in ("gpu", "io")]
    if bad or not queues:
        print(f"alnnode worker: --queues {args.queues!r}: unknown queue {bad[0] if bad else ''!r} (use gpu, io)", file=sys.stderr)
        return 2
    if args.concurrency < 1:
        print(f"alnnode worker: --concurrency {args.concurrency}: must be >= 1", file=sys.stderr)
        return 2
    try:
        settings = load_config(args.config)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"alnnode worker: config: {line}", file=sys.stderr)
        return 2
    device = args.device or (None if settings.model.device == "auto" else settings.model.device)
    if device and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print(f"alnnode worker: --device {device}: CUDA is not available on this host", file=sys.stderr)
            return 2
    from workers.celery_app import configure

    app = configure(settings, device=device)
    name = args.name or f"alnnode-{'-'.join(queues)}@{socket.gethostname()}-{os.getpid()}"
    app.worker_main(
        [
            "worker",
            "-Q", ",".join(queues),
            "-c", str(args.concurrency),
            "-P", "prefork",
            "-n", name,
            "-l", args.loglevel,
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]
    )  # fmt: skip
    return 0
