"""``alnnode worker``: Celery workers for the ``gpu`` and/or ``io`` queues, anywhere that sees the same
spool, ledger and broker as the node.

The command is a small supervisor (``node.supervise``): it runs the Celery worker as a child process,
restarts it when it dies or stops consuming (with backoff, logged), hands the jobs a dead child had
claimed to the queue at once, and takes the child down with it. ``--child`` runs the Celery worker
itself (what the supervisor and the node's embedded workers start).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from typing import Any

from node.config import Settings, load_config
from node.errors import ConfigError
from node.logs import add_log_options, root_refusal, setup_logging

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alnnode worker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML config file (default: $ALNNODE_CONFIG)")
    p.add_argument("--queues", default="gpu,io", help="comma-separated queues: gpu (classify), io (render, dispatch)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: [model] device, auto = cuda if present)")
    p.add_argument("--concurrency", type=int, default=1, help="worker processes (default 1: one model in memory)")
    p.add_argument("--name", default=None, help="worker name (default alnnode-<queues>@<host>-<pid>)")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--allow-root", action="store_true", help="run even as root (default: refuse)")
    add_log_options(p)
    return p


def _fail(message: str) -> int:
    print(f"alnnode worker: {message}", file=sys.stderr)
    return 2


def child_command(args: argparse.Namespace, queues: list[str], name: str) -> list[str]:
    cmd = [sys.executable, "-m", "node.cli", "worker", "--child", "--queues", ",".join(queues),
           "--concurrency", str(args.concurrency), "--name", name, "--loglevel", args.loglevel,
           "--log-format", args.log_format, "--log-max-mb", str(args.log_max_mb), "--log-backups", str(args.log_backups)]  # fmt: skip
    if args.allow_root:
        cmd.append("--allow-root")
    if args.log_file:
        cmd += ["--log-file", args.log_file]
    if args.config:
        cmd += ["--config", args.config]
    if args.device:
        cmd += ["--device", args.device]
    return cmd


def _supervise(settings: Settings, args: argparse.Namespace, queues: list[str], name: str) -> int:
    from node.queue import Broker
    from node.reaper import resend_claims_of
    from node.supervise import Supervisor

    ledger_holder: dict[str, Any] = {}

    def on_exit(worker_id: str, _code: int) -> None:
        from node.ledger import Ledger

        ledger = ledger_holder.setdefault("ledger", Ledger(settings.ledger_url))
        broker = ledger_holder.setdefault("broker", Broker(settings))
        resend_claims_of(ledger, broker, worker_id)

    sup = Supervisor(on_exit=on_exit)
    sup.add(name, child_command(args, queues, name))
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        logger.info("signal %d: stopping the worker", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # `systemctl reload`: the workers re-read the file themselves before each task (node.liveconfig)
    signal.signal(signal.SIGHUP, lambda *_: logger.info("SIGHUP: the configuration file is applied before the next task"))
    sup.start()
    stop.wait()
    sup.stop()
    return 0


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
        return _fail(f"--queues {args.queues!r}: unknown queue {bad[0] if bad else ''!r} (use gpu, io)")
    if args.concurrency < 1:
        return _fail(f"--concurrency {args.concurrency}: must be >= 1")
    try:
        settings = load_config(args.config)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"alnnode worker: config: {line}", file=sys.stderr)
        return 2
    device = args.device or (None if settings.model.device == "auto" else settings.model.device)
    name = args.name or f"alnnode-{'-'.join(queues)}@{socket.gethostname()}-{os.getpid()}"
    if not args.child:
        return _supervise(settings, args, queues, name)
    if device and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return _fail(f"--device {device}: CUDA is not available on this host")
    from node.metrics import ENV_DIR, setup

    if not os.environ.get(ENV_DIR):  # a worker beside the node (not its child): share its metrics folder
        setup(settings.storage.data_dir, fresh=False)
    from workers.celery_app import configure

    app = configure(settings, device=device, queues=tuple(queues), config_path=args.config or os.environ.get("ALNNODE_CONFIG"))
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
