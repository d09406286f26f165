"""Logging for the entry points (``serve``, ``worker``, the CLI): one line per record, text or JSON.

Library modules only call ``logging.getLogger(__name__)``; handlers are installed here, once, by the
entry point. The text format is a fixed, greppable ``key=value`` line (journald and ``grep`` friendly);
``--log-format json`` writes JSON lines (one object per record) for log shippers (Loki, Elastic,
CloudWatch). A record never spans lines: newlines of messages and tracebacks are escaped, so a log
line always starts with a timestamp. ``--log-file PATH`` writes to a size-rotated file instead of
stderr (``logging.handlers.RotatingFileHandler``). Messages carry UIDs and AE titles, never patient
names: that is the callers' rule, this module adds only time, level, logger and process id.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.handlers
import sys
from pathlib import Path
from typing import Any, Literal

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[str, ...] = ("text", "json")
DEFAULT_MAX_MB = 50
DEFAULT_BACKUPS = 5

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is context to keep.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def _timestamp(record: logging.LogRecord) -> str:
    return dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


class TextFormatter(logging.Formatter):
    """``2026-12-01T21:30:00.123Z INFO node.service[4711]: message key=value exc="..."``"""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}[{record.process}]: {record.getMessage()}"
        for key, value in _context(record).items():
            line += f" {key}={value}"
        if record.exc_info:
            line += f" exc={json.dumps(self.formatException(record.exc_info))}"
        elif record.stack_info:
            line += f" stack={json.dumps(record.stack_info)}"
        return _one_line(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, pid, msg, context fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        obj.update(_context(record))
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        elif record.stack_info:
            obj["stack"] = record.stack_info
        return json.dumps(obj, default=str)


class PeerDisconnectFilter(logging.Filter):
    """pynetdicom logs a peer that resets or times out as ERROR with a traceback (``LOGGER.exception``
    on an ``OSError``). For an edge on a hospital network that is routine, not a fault of the node:
    such a record becomes one WARNING line without the traceback. Other pynetdicom exceptions keep
    their level and traceback (they may be bugs)."""

    ROUTINE = "Connection closed before the entire PDU was received"

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("pynetdicom"):
            return True
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, OSError):  # ConnectionResetError, BrokenPipeError, TimeoutError, ssl.SSLError
            record.msg, record.args = f"peer connection error: {error}", None
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        elif record.levelno == logging.ERROR and record.getMessage() == self.ROUTINE:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def make_handler(
    fmt: str = "text",
    log_file: str | Path | None = None,
    *,
    max_mb: float = DEFAULT_MAX_MB,
    backups: int = DEFAULT_BACKUPS,
) -> logging.Handler:
    """A handler writing ``fmt`` lines to stderr, or to ``log_file`` rotated at ``max_mb`` (``backups`` kept)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(LOG_FORMATS)}")
    if max_mb <= 0 or backups < 0:
        raise ValueError(f"log rotation needs max_mb > 0 and backups >= 0 (got {max_mb}, {backups})")
    handler: logging.Handler
    if log_file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        path = Path(log_file).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.handlers.RotatingFileHandler(
                path, maxBytes=int(max_mb * 1024 * 1024), backupCount=backups, encoding="utf-8"
            )
        except OSError as exc:
            raise ValueError(f"log file {str(path)!r} cannot be opened: {exc.strerror or exc}") from None
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(PeerDisconnectFilter())
    return handler


def setup_logging(
    level: int = logging.WARNING,
    fmt: str = "text",
    log_file: str | Path | None = None,
    *,
    max_mb: float = DEFAULT_MAX_MB,
    backups: int = DEFAULT_BACKUPS,
) -> None:
    """Install the one handler of this process on the root logger (replacing earlier ones)."""
    handler = make_handler(fmt, log_file, max_mb=max_mb, backups=backups)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)  # warnings.warn (e.g. from Celery) become one log line too


def add_log_options(parser: Any) -> None:
    """The ``--log-format`` / ``--log-file`` options shared by ``serve`` and ``worker``."""
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text", help="stderr/log-file line format (default text)")
    parser.add_argument("--log-file", metavar="PATH", default=None, help="log to this file (rotated) instead of stderr")
    parser.add_argument("--log-max-mb", type=float, default=DEFAULT_MAX_MB, metavar="MB", help=f"rotate the log file at this size (default {DEFAULT_MAX_MB})")
    parser.add_argument("--log-backups", type=int, default=DEFAULT_BACKUPS, metavar="N", help=f"rotated files kept (default {DEFAULT_BACKUPS})")


def root_refusal(allow_root: bool, prog: str) -> str | None:
    """The one-line refusal when this process runs as root without ``--allow-root``, else None.

    A DICOM listener and model workers parse untrusted input (PS3.15 E.1 treats every peer as
    untrusted): they run as the ``alnnode`` service user (deploy/systemd, deploy/docker). With
    ``--allow-root`` (containers that map root, CI) Celery's own root check is told so through
    ``C_FORCE_ROOT``.
    """
    import os

    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    if not allow_root:
        return (
            f"{prog}: refusing to run as root (uid 0); run as the alnnode service user "
            "(see README 'Install as a service') or pass --allow-root"
        )
    os.environ["C_FORCE_ROOT"] = "1"
    return None
