"""``alnnode``: the command line of the node (admin) and of the research tools.

Edge commands live here; research and worker commands are dispatched lazily to ``workers`` so the
edge never imports torch or monai.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from node import __version__
from node.errors import ConfigError, NodeError
from node.ledger.states import STATES
from node.logs import add_log_options, root_refusal

# Research/compute commands: name -> module whose main(argv) runs it (imported only when used).
WORKER_COMMANDS = {
    "phantom": ("workers.research.phantom", "make synthetic breast-ultrasound cine loops"),
    "train": ("workers.research.train", "train a classifier with cross-validation"),
    "evaluate": ("workers.research.evaluate", "metrics, DeLong CIs and report"),
    "bundle": ("workers.bundle", "make or inspect a MONAI model bundle"),
    "worker": ("workers.worker", "run Celery workers for the gpu/io queues"),
}


def _setup_logging(verbose: int, args: argparse.Namespace | None = None) -> None:
    from node.logs import setup_logging

    level = logging.WARNING - 10 * min(verbose, 2)
    setup_logging(
        level,
        getattr(args, "log_format", "text"),
        getattr(args, "log_file", None),
        max_mb=getattr(args, "log_max_mb", 50),
        backups=getattr(args, "log_backups", 5),
    )
    if verbose == 0:
        # our own one-line messages say what failed; pynetdicom's ERROR lines would repeat it
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alnnode", description="ALN cine-loop AI node (research use, not for diagnostic use)")
    p.add_argument("--version", action="version", version=f"alnnode {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", help="TOML config file (default: $ALNNODE_CONFIG, else built-in defaults)")
        return sp

    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="action", required=True, metavar="ACTION")
    with_config(cfg_sub.add_parser("check", help="validate and print the effective configuration"))
    from node.cli_admin import add_admin_parsers

    add_admin_parsers(sub, cfg_sub, with_config)

    sv = with_config(sub.add_parser("serve", help="run the DICOM listener (C-ECHO, C-STORE)"))
    sv.add_argument("--allow-root", action="store_true", help="run even as root (default: refuse)")
    add_log_options(sv)

    st = with_config(sub.add_parser("status", help="job counts by state and the last jobs"))
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("-n", "--last", type=int, default=10, help="how many recent jobs to list")
    st.add_argument("--failed", action="store_true", help="list failed jobs with their stage and reason")
    st.add_argument("--state", choices=STATES, help="list only jobs in this state")
    st.add_argument("--ae", metavar="AE", help="list only jobs sent by this calling AE title")
    st.add_argument("--since", metavar="WHEN", help="list only jobs received since WHEN: 2026-12-01, 2026-12-01T08:00, or 30m / 2h / 7d ago")
    st.add_argument("--accession", metavar="NUMBER", help="list only jobs with this Accession Number")

    ec = sub.add_parser("echo", help="C-ECHO a DICOM peer")
    ec.add_argument("to", metavar="AE@HOST:PORT")
    ec.add_argument("--calling", default="ALNNODE", help="our calling AE title")
    ec.add_argument("--timeout", type=float, default=10.0)

    sd = sub.add_parser("send", help="C-STORE files/directories, each in its own transfer syntax")
    sd.add_argument("paths", nargs="+", metavar="PATH")
    sd.add_argument("--to", required=True, metavar="AE@HOST:PORT")
    sd.add_argument("--calling", default="ALNNODE", help="our calling AE title")
    sd.add_argument("--timeout", type=float, default=60.0)
    sd.add_argument("-q", "--quiet", action="store_true", help="only the summary and failures")

    rt = with_config(sub.add_parser("retry", help="re-send results (or re-run failed jobs)"))
    rt.add_argument("uid", nargs="?", metavar="UID", help="SOP Instance UID of the source loop")
    rt.add_argument("--failed", action="store_true", help="every failed job")

    gc = with_config(sub.add_parser("gc", help="apply [retention]: delete delivered loops and results, prune the ledger"))
    gc.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    gc.add_argument("--purge-failed", action="store_true", help="also delete failed jobs (files and ledger rows)")
    gc.add_argument("--older-than", type=float, default=0.0, metavar="DAYS", help="with --purge-failed: only jobs failed this long ago")
    gc.add_argument("--json", action="store_true", help="machine-readable output")

    for name, (_module, help_text) in WORKER_COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return p


def _cmd_config_check(args: argparse.Namespace) -> int:
    from node.config import effective_toml, load_config

    settings = load_config(args.config)
    print(effective_toml(settings))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from node.config import load_config
    from node.service import Node, serve_forever

    settings = load_config(args.config)
    node = Node.open(settings, args.config or os.environ.get("ALNNODE_CONFIG"))

    def ready(host: str, port: int) -> None:
        if node.bundle is not None and node.bundle.research_only:
            print(f"alnnode: model {node.bundle.name} is a RESEARCH model (untrained or synthetic-only): research use only", flush=True)
        if node.http is not None:
            print(f"alnnode: DICOMweb/UPS-RS on {node.http.url}/dicom-web", flush=True)
        print(f"alnnode: {settings.node.ae_title} listening on {host}:{port} (data in {settings.storage.data_dir})", flush=True)

    serve_forever(node, ready)
    return 0


def _retention_status(settings: Any, ledger: Any) -> tuple[Any, dict[str, Any]]:
    from node.retention import disk_status, retention_summary

    return disk_status(settings), retention_summary(ledger)


def _cmd_status(args: argparse.Namespace) -> int:
    from node.cli_admin import open_ledger, parse_since
    from node.config import load_config
    from node.ledger import as_jsonable

    settings = load_config(args.config)
    since = parse_since(args.since) if args.since else None
    ledger = open_ledger(settings, args.config)
    state = "failed" if args.failed else args.state
    counts = ledger.counts()
    n = args.last if not args.failed else 10**6
    jobs = as_jsonable(ledger.last_jobs(n, state=state, calling_ae=args.ae, since=since, accession=args.accession))
    assocs = ledger.association_summary()
    workers = as_jsonable(ledger.live_workers(settings.queue.heartbeat_timeout))
    disk, retention = _retention_status(settings, ledger)
    if args.json:
        print(json.dumps({"counts": counts, "associations": assocs, "workers": workers, "last_jobs": jobs, "retention": retention,
                          "disk": disk.__dict__ | {"alarm": disk.alarm}}, indent=2))  # fmt: skip
        return 0
    print(disk.line())
    print("jobs by state: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if retention["deleted"] or retention["pruned"]:
        deleted = ", ".join(f"{k} {v}" for k, v in sorted(retention["deleted"].items())) or "none"
        pruned = ", ".join(f"{k} {v}" for k, v in sorted(retention["pruned"].get("instances", {}).items())) or "none"
        print(f"retention: files deleted of {deleted} job(s); pruned from the ledger: {pruned}")
    print("associations: " + (", ".join(f"{k} {v}" for k, v in sorted(assocs.items())) or "none"))
    print("live workers: " + (", ".join(f"{w['id']} ({w['queues']})" for w in workers) or "none"))
    filters = [f"in state {state}" if state and not args.failed else "", f"from {args.ae}" if args.ae else "",
               f"since {since:%Y-%m-%d %H:%M} UTC" if since else "", f"with accession {args.accession}" if args.accession else ""]  # fmt: skip
    if jobs:
        print(f"{'failed' if args.failed else 'last'} {len(jobs)} job(s)" + "".join(f" {f}" for f in filters if f) + ":")
        print(f"  {'SOP Instance UID':<64} {'state':<10} {'frames':>6}  {'received (UTC)':<16} {'calling AE':<16} {'accession':<16} reason")
        for j in jobs:
            reason = j["reason"] or ""
            if j["stage"]:
                reason = f"[{j['stage']}] {reason}"
            if j["probability"]:
                reason = f"p={j['probability']} {reason}".strip()
            received = str(j["received_at"] or "")[:16].replace("T", " ")
            print(f"  {j['sop_instance_uid']:<64} {j['state']:<10} {j['frames'] or '':>6}  {received:<16} "
                  f"{j['calling_ae'] or '':<16} {j['accession_number'] or '':<16} {reason}")  # fmt: skip
    elif args.failed:
        print("no failed jobs")
    elif any(filters):
        print("no jobs " + " ".join(f for f in filters if f))
    return 0


def _cmd_gc(args: argparse.Namespace) -> int:
    from node.config import load_config
    from node.ledger import Ledger
    from node.retention import run_retention

    if args.older_than < 0:
        raise NodeError(f"--older-than {args.older_than}: must be >= 0 days")
    settings = load_config(args.config)
    if not settings.storage.data_dir.is_dir():
        raise NodeError(f"[storage] data_dir {str(settings.storage.data_dir)!r} does not exist: nothing to clean up")
    ledger = Ledger(settings.ledger_url)
    cfg = settings.retention
    report = run_retention(settings, ledger, dry_run=args.dry_run, purge_failed=args.purge_failed, purge_older_than_days=args.older_than)
    if args.json:
        out = {
            "dry_run": report.dry_run,
            "removed": [{**r.__dict__, "since": r.since.isoformat()} for r in report.removed],
            "pruned": report.pruned,
            "kept": report.kept,
            "disk": {**(report.disk.__dict__ if report.disk else {}), "alarm": bool(report.disk and report.disk.alarm)},
        }
        print(json.dumps(out, indent=2))
        return 0
    if cfg.delivered_days is None and cfg.skipped_days is None and cfg.ledger_days is None and not args.purge_failed:
        print("retention is off: set [retention] delivered_days (and skipped_days, ledger_days) to delete anything")
    verb = "would delete" if args.dry_run else "deleted"
    for r in report.removed:
        print(f"{verb} {r.sop_instance_uid} ({r.state}, {r.reason} since {r.since:%Y-%m-%d %H:%M}, {r.bytes / 1e6:.1f} MB)")
    print(report.summary())
    if report.disk is not None:
        print(report.disk.line())
    return 0


def _cmd_echo(args: argparse.Namespace) -> int:
    from node.scu import echo, parse_address

    to = parse_address(args.to)
    echo(to, calling=args.calling, timeout=args.timeout)
    print(f"C-ECHO {to}: success")
    return 0


def _cmd_send(args: argparse.Namespace) -> int:
    from node.scu import SendResult, parse_address, send

    to = parse_address(args.to)

    def progress(i: int, n: int, r: SendResult) -> None:
        if r.ok and args.quiet:
            return
        mark = "OK  " if r.ok else "FAIL"
        print(f"[{i}/{n}] {mark} {r.path}: {r.message}", flush=True)

    results = send(args.paths, to, calling=args.calling, timeout=args.timeout, progress=progress)
    failed = [r for r in results if not r.ok]
    print(f"sent {len(results) - len(failed)} of {len(results)} file(s) to {to}; {len(failed)} failed")
    if not results:
        print("alnnode send: no files found", file=sys.stderr)
        return 1
    return 1 if failed else 0


def _cmd_retry(args: argparse.Namespace) -> int:
    from node.config import load_config
    from node.ledger import Ledger
    from node.outbox import retry_job
    from node.queue import Broker

    if bool(args.uid) == bool(args.failed):
        raise NodeError("retry needs a UID or --failed (not both)")
    settings = load_config(args.config)
    ledger = Ledger(settings.ledger_url)
    if args.failed:
        rows = ledger.failed()
    else:
        row = ledger.find(args.uid)
        if row is None:
            raise NodeError(f"no job with SOP Instance UID {args.uid!r} in the ledger")
        from node.retention import deleted_at

        if gone := deleted_at(ledger, args.uid):
            raise NodeError(f"{args.uid}: loop and results were deleted by retention ({gone[1]}) on {gone[0]:%Y-%m-%d %H:%M} UTC; nothing to re-send")
        rows = [row]
    bad = 0
    broker = Broker(settings)
    for row in rows:
        state, detail = retry_job(settings, ledger, broker, row)
        uid = row["sop_instance_uid"]
        if state == "failed":
            bad += 1
            detail = f"failed again: {detail}"
        print(f"{uid}: {'dispatched' if state == 'dispatched' else detail}")
    if not rows:
        print("nothing to retry")
    broker.close()
    return 1 if bad else 0


def _cmd_peers(args: argparse.Namespace) -> int:
    from node.cli_admin import cmd_peers

    return cmd_peers(args)


def _cmd_config_reload(args: argparse.Namespace) -> int:
    from node.cli_admin import cmd_config_reload

    return cmd_config_reload(args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Worker commands parse their own options: hand over everything after the command name.
    for i, word in enumerate(argv):
        if word in WORKER_COMMANDS:
            if all(a.startswith("-") for a in argv[:i]):
                _setup_logging(argv[:i].count("-v") + 2 * argv[:i].count("-vv"))
                module = importlib.import_module(WORKER_COMMANDS[word][0])
                return int(module.main(argv[i + 1 :]))
            break
        if not word.startswith("-"):
            break
    args = _parser().parse_args(argv)
    if args.command == "serve" and (refusal := root_refusal(args.allow_root, "alnnode serve")):
        print(refusal, file=sys.stderr)
        return 2
    try:
        _setup_logging(args.verbose, args)
    except ValueError as exc:  # --log-file not writable, bad rotation values
        print(f"alnnode: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve" and args.allow_root and os.geteuid() == 0:
        logging.getLogger("node.cli").warning("running as root (--allow-root): use a service user in production")
    handlers = {
        "config": _cmd_config_check,
        "serve": _cmd_serve,
        "status": _cmd_status,
        "echo": _cmd_echo,
        "send": _cmd_send,
        "retry": _cmd_retry,
        "gc": _cmd_gc,
        "peers": _cmd_peers,
    }
    if args.command == "config" and args.action == "reload":
        handlers["config"] = _cmd_config_reload
    try:
        return handlers[args.command](args)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"alnnode: config: {line}", file=sys.stderr)
        return 2
    except NodeError as exc:
        print(f"alnnode: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `alnnode status | head`: the reader left; Python's documented way to exit quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
