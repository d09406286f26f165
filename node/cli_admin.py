"""Operator commands of ``alnnode``: ``peers list|add|remove``, ``config reload`` and the helpers of
``status`` (finding the ledger, ``--since``). Changes go through ``node.liveconfig`` (the same code
as the admin API): validated, written to the TOML with its comments, applied to the running node.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import re
from collections.abc import Callable
from typing import Any

from node.config import Settings, load_config, mask_url
from node.errors import NodeError

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def add_admin_parsers(sub: Any, cfg_sub: Any, with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    with_config(cfg_sub.add_parser("reload", help="apply the configuration file to the running node (as SIGHUP does)"))
    pe = sub.add_parser("peers", help="list, add or remove the modalities allowed to associate")
    pe_sub = pe.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = with_config(pe_sub.add_parser("list", help="the configured peers"))
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    add = with_config(pe_sub.add_parser("add", help="allow a calling AE title (from one host, when given)"))
    add.add_argument("ae_title", metavar="AE_TITLE")
    add.add_argument("--host", help="the peer's address; other addresses are refused")
    rm = with_config(pe_sub.add_parser("remove", help="refuse a calling AE title from the next association on"))
    rm.add_argument("ae_title", metavar="AE_TITLE")
    rm.add_argument("--host", help="remove only the entry for this address")


def parse_since(text: str) -> dt.datetime:
    """``--since``: an ISO date or date-time (UTC unless it names a zone) or ``30m``/``2h``/``7d`` ago."""
    text = text.strip()
    m = _RELATIVE.match(text)
    if m:
        return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=float(m.group(1)) * _UNIT_SECONDS[m.group(2)])
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise NodeError(f"--since {text!r}: not a date (2026-12-01, 2026-12-01T08:00) or an age (30m, 2h, 7d)") from None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def open_ledger(settings: Settings, config: str | None) -> Any:
    """The node's ledger, or a ``NodeError`` saying where it was looked for (never a new empty one)."""
    from sqlalchemy.exc import SQLAlchemyError

    from node.ledger import Ledger

    url = settings.ledger_url
    if url.startswith("sqlite:///"):
        path = settings.storage.data_dir / "ledger.sqlite" if settings.storage.ledger_url is None else None
        target = path if path is not None else url.removeprefix("sqlite:///")
        if not str(target).startswith(":") and not _exists(target):
            where = f"config {config!r}" if config else "the built-in defaults (no --config, no $ALNNODE_CONFIG)"
            raise NodeError(f"no ledger at {str(target)!r} (from {where}): pass the node's --config FILE or set $ALNNODE_CONFIG")
    try:
        return Ledger(url)
    except SQLAlchemyError as exc:
        detail = " ".join(str(getattr(exc, "orig", exc)).split())[:200]
        raise NodeError(f"cannot open the ledger {mask_url(url)}: {detail}") from None


def _exists(path: Any) -> bool:
    from pathlib import Path

    return Path(path).is_file()


def _who() -> str:
    try:
        return f"{getpass.getuser()} (alnnode CLI)"
    except (KeyError, OSError):
        return "alnnode CLI"


def _applied(settings: Settings, change: Any, what: str) -> None:
    from node.audit import AuditLog
    from node.liveconfig import public_view, signal_reload

    AuditLog.from_settings(change.after).config_changed(public_view(change.before), public_view(change.after), change.keys, user=_who())
    pid, result = signal_reload(change.after)
    if pid is None:
        print(f"{what}; no node runs on {settings.storage.data_dir}: it applies at the next start")
    elif result is None:
        print(f"{what}; the node (pid {pid}) did not confirm the reload yet: see its log")
    elif not result["ok"]:
        raise NodeError(f"{what} in the file, but the node (pid {pid}) did not apply it: {result['error']}")
    else:
        print(f"{what}; applied to the running node (pid {pid})")


def cmd_peers(args: argparse.Namespace) -> int:
    from node.liveconfig import ConfigFile, config_path

    if args.action == "list":
        settings = load_config(args.config)
        peers = [p.model_dump(exclude_none=True) for p in settings.peers]
        if args.json:
            print(json.dumps(peers, indent=2))
            return 0
        if not settings.node.reject_unknown_callers:
            print("note: [node] reject_unknown_callers = false: any calling AE title is accepted")
        for p in peers:
            print(f"{p['ae_title']:<16} {p.get('host', '(any host)')}")
        if not peers:
            print("no peers configured")
        return 0
    file = ConfigFile(config_path(args.config))
    host = args.host or None
    if args.action == "add":
        settings = load_config(file.path)
        if any(p.ae_title == args.ae_title.strip() and p.host == host for p in settings.peers):
            raise NodeError(f"peer {args.ae_title!r}{f' at host {host!r}' if host else ''} is already configured")
        change = file.add_peer(args.ae_title, host)
        _applied(settings, change, f"peer {args.ae_title.strip()} added")
    else:
        settings = load_config(file.path)
        change = file.remove_peer(args.ae_title.strip(), host)
        _applied(settings, change, f"peer {args.ae_title.strip()} removed")
    return 0


def cmd_config_reload(args: argparse.Namespace) -> int:
    from node.liveconfig import RELOAD_WAIT, config_path, signal_reload

    path = config_path(args.config)
    settings = load_config(path)  # a bad file is refused here, naming the key; the node keeps running
    pid, result = signal_reload(settings)
    if pid is None:
        raise NodeError(f"no running node found for data_dir {str(settings.storage.data_dir)!r} (no live {settings.storage.data_dir}/alnnode.pid)")
    if result is None:
        raise NodeError(f"the node (pid {pid}) did not confirm the reload within {RELOAD_WAIT:.0f} s: see its log")
    if not result["ok"]:
        raise NodeError(f"the node (pid {pid}) refused the reload: {result['error']}")
    print(f"configuration {path} applied to the node (pid {pid}): " + (", ".join(result["keys"]) or "no change"))
    return 0
