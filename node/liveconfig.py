"""Live configuration: validated changes written back to the TOML file, and applied to a running node.

A change (``alnnode peers add``, the admin API) edits the file with ``tomlkit`` so that comments and
layout stay as the admin wrote them, validates the whole candidate file with the same pydantic models
as start-up (an error names the field and the value), and replaces the file atomically. The running
node applies the file on SIGHUP (``alnnode config reload`` sends it): new associations use the new
peer list and AE title, new jobs the new destinations and model threshold. Keys that need a restart
(ports, storage, queue, the model bundle) are kept until then and named in the log.

Like Orthanc's ``/tools/reconstruct`` or mercure's live rules, nothing running is interrupted: an
association already admitted keeps going; a job already dispatched is not re-sent.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import AoT, Table

from node.config import ENV_CONFIG, Settings, load_config
from node.errors import ConfigError, NodeError
from node.spool import write_atomic

logger = logging.getLogger(__name__)

PID_FILE = "alnnode.pid"
RELOAD_FILE = "alnnode.reload.json"
RELOAD_WAIT = 10.0  # seconds `alnnode peers add` waits for the node to confirm the reload
# What a running node applies at once; anything else differing in the file waits for a restart.
LIVE_NODE_KEYS = ("ae_title", "reject_unknown_callers")
LIVE_MODEL_KEYS = ("threshold", "min_frames")
LIVE_SECTIONS = ("peers", "destinations")


def config_path(path: str | os.PathLike[str] | None) -> Path:
    """The TOML file a change is written to (``--config``, else ``$ALNNODE_CONFIG``)."""
    chosen = path if path is not None else os.environ.get(ENV_CONFIG)
    if not chosen:
        raise NodeError("no configuration file to change: pass --config FILE or set $ALNNODE_CONFIG")
    p = Path(chosen)
    if not p.is_file():
        raise NodeError(f"config file {str(p)!r} does not exist or is not a file")
    return p


def merge_live(current: Settings, new: Settings) -> tuple[Settings, list[str]]:
    """``current`` with the live keys of ``new``; also returns the changed keys that need a restart."""
    held: list[str] = []
    for section in ("node", "storage", "queue", "model"):
        live = {"node": LIVE_NODE_KEYS, "model": LIVE_MODEL_KEYS}.get(section, ())
        old_d, new_d = getattr(current, section).model_dump(), getattr(new, section).model_dump()
        held += [f"{section}.{k}" for k in old_d if k not in live and old_d[k] != new_d[k]]
    node = current.node.model_copy(update={k: getattr(new.node, k) for k in LIVE_NODE_KEYS})
    model = current.model.model_copy(update={k: getattr(new.model, k) for k in LIVE_MODEL_KEYS})
    update: dict[str, Any] = {s: getattr(new, s) for s in LIVE_SECTIONS}
    return current.model_copy(update={**update, "node": node, "model": model}), held


def changed_keys(before: Settings, after: Settings) -> list[str]:
    """Top-level sections (and section.key) that differ, for logs and the audit trail."""
    keys: list[str] = []
    b, a = before.model_dump(mode="json"), after.model_dump(mode="json")
    for section in b:
        if b[section] == a[section]:
            continue
        if isinstance(b[section], dict):
            keys += [f"{section}.{k}" for k in b[section] if b[section][k] != a[section].get(k)]
        else:
            keys.append(section)
    return keys


def public_view(settings: Settings) -> dict[str, Any]:
    """The settings as JSON-able data with secrets masked (audit before/after, the admin API)."""
    from node.config import mask_url

    data = settings.model_dump(mode="json")
    for dest in data["destinations"]:
        for secret in ("password", "token"):
            if dest.get(secret):
                dest[secret] = "***"
    for section, key in (("storage", "ledger_url"), ("queue", "broker_url")):
        if data[section].get(key):
            data[section][key] = mask_url(str(data[section][key]))
    return data


@dataclass
class Change:
    before: Settings
    after: Settings
    keys: list[str] = field(default_factory=list)


class ConfigFile:
    """One TOML configuration file, changed under a lock (threads and processes: CLI and node)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        with self._lock, open(lock_path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def read(self) -> tomlkit.TOMLDocument:
        return tomlkit.parse(self.path.read_text(encoding="utf-8"))

    def validate(self, text: str) -> Settings:
        """Validate candidate file contents exactly as start-up would (raises ``ConfigError``)."""
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".check")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            return load_config(tmp)
        finally:
            os.unlink(tmp)

    def apply(self, edit: Callable[[tomlkit.TOMLDocument], None]) -> Change:
        """Run ``edit`` on the parsed file, validate the result and write it atomically."""
        with self._locked():
            before = load_config(self.path)
            doc = self.read()
            edit(doc)
            text = tomlkit.dumps(doc)
            after = self.validate(text)
            write_atomic(self.path, text.encode("utf-8"))
        change = Change(before, after, changed_keys(before, after))
        logger.info("configuration %s changed: %s", self.path, ", ".join(change.keys) or "nothing")
        return change

    # -- edits ---------------------------------------------------------------------------------
    def add_peer(self, ae_title: str, host: str | None = None, **extra: Any) -> Change:
        def edit(doc: tomlkit.TOMLDocument) -> None:
            peer = tomlkit.table()
            peer["ae_title"] = ae_title
            if host:
                peer["host"] = host
            for k, v in extra.items():
                if v is not None:
                    peer[k] = v
            _aot(doc, "peers").append(peer)

        return self.apply(edit)

    def remove_peer(self, ae_title: str, host: str | None = None) -> Change:
        def edit(doc: tomlkit.TOMLDocument) -> None:
            peers = _aot(doc, "peers")
            keep = [i for i, p in enumerate(peers) if not (p.get("ae_title") == ae_title and (host is None or p.get("host") == host))]
            if len(keep) == len(peers):
                where = f" at host {host!r}" if host else ""
                raise NodeError(f"peer {ae_title!r}{where} is not configured")
            for i in reversed(range(len(peers))):
                if i not in keep:
                    del peers[i]
            if not len(peers):
                del doc["peers"]

        return self.apply(edit)

    def set_value(self, section: str, key: str, value: Any) -> Change:
        def edit(doc: tomlkit.TOMLDocument) -> None:
            if section not in doc:
                doc[section] = tomlkit.table()
            table = doc[section]
            assert isinstance(table, Table)
            table[key] = value

        return self.apply(edit)

    def put_destination(self, values: dict[str, Any]) -> Change:
        """Add a destination, or replace the one with the same ``name`` (keeps its place in the file)."""

        def edit(doc: tomlkit.TOMLDocument) -> None:
            dests = _aot(doc, "destinations")
            table = tomlkit.table()
            for k, v in values.items():
                if v is not None:
                    table[k] = str(v) if isinstance(v, Path) else v
            for i, d in enumerate(dests):
                if d.get("name") == values.get("name"):
                    old = dests[i]
                    for k in list(old.keys()):
                        if k not in table:
                            del old[k]
                    for k, v in table.items():
                        old[k] = v
                    return
            dests.append(table)

        return self.apply(edit)

    def remove_destination(self, name: str) -> Change:
        def edit(doc: tomlkit.TOMLDocument) -> None:
            dests = _aot(doc, "destinations")
            found = [i for i, d in enumerate(dests) if d.get("name") == name]
            if not found:
                raise NodeError(f"destination {name!r} is not configured")
            del dests[found[0]]
            if not len(dests):
                del doc["destinations"]

        return self.apply(edit)


def _aot(doc: tomlkit.TOMLDocument, key: str) -> AoT:
    if key not in doc:
        doc.append(key, tomlkit.aot())
    value = doc[key]
    if not isinstance(value, AoT):
        raise NodeError(f"{key} in the config file is not an array of tables ([[{key}]])")
    return value


# -- the running node ----------------------------------------------------------------------------
def write_pid(data_dir: Path) -> Path:
    path = data_dir / PID_FILE
    write_atomic(path, f"{os.getpid()}\n".encode())
    return path


def running_node(data_dir: Path) -> int | None:
    """The pid of the ``alnnode serve`` that owns ``data_dir``, or None when none runs."""
    try:
        pid = int((data_dir / PID_FILE).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    # a stale pid file whose number a different program now holds is not our node
    return pid if b"node.cli" in cmdline or b"alnnode" in cmdline else None


def write_reload_result(data_dir: Path, keys: list[str] | None, error: str | None = None) -> None:
    """What the node's last reload did (read by ``signal_reload``, which waits for it)."""
    result = {"ok": error is None, "keys": keys or [], "error": error}
    write_atomic(data_dir / RELOAD_FILE, json.dumps(result).encode())


def signal_reload(settings: Settings, wait: float = RELOAD_WAIT) -> tuple[int | None, dict[str, Any] | None]:
    """Ask the running node (if any) to apply its file, and wait until it has.

    Returns (pid or None when no node runs, the node's report or None if it did not answer in time)."""
    data_dir = settings.storage.data_dir
    pid = running_node(data_dir)
    if pid is None:
        return None, None
    result = data_dir / RELOAD_FILE

    def stamp() -> int | None:
        try:
            return result.stat().st_mtime_ns
        except OSError:
            return None

    before = stamp()
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if stamp() != before:
            try:
                return pid, dict(json.loads(result.read_text()))
            except (OSError, ValueError):
                pass  # replaced again meanwhile: read the next one
        time.sleep(0.05)
    return pid, None


class LiveSettings:
    """Settings that follow their file: ``current()`` re-reads it when it changed (worker processes).

    A file that no longer validates is reported once and the last good settings stay in force."""

    def __init__(self, path: str | os.PathLike[str] | None, settings: Settings) -> None:
        self.path = Path(path) if path else None
        self.settings = settings
        self._stamp = self._stat()
        self._bad: tuple[int, int] | None = None

    def _stat(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def current(self) -> Settings:
        stamp = self._stat()
        if stamp is None or stamp == self._stamp or stamp == self._bad:
            return self.settings
        try:
            new = load_config(self.path)
        except ConfigError as exc:
            self._bad = stamp
            logger.error("config %s changed but is not valid, keeping the previous settings: %s", self.path, exc)
            return self.settings
        self.settings, held = merge_live(self.settings, new)
        self._stamp = stamp
        if held:
            logger.warning("config %s: %s take effect after a restart", self.path, ", ".join(held))
        return self.settings
