"""Supervision of worker processes: started, watched, restarted with backoff, and never orphaned.

Each child asks the kernel to SIGKILL it when its parent dies (``PR_SET_PDEATHSIG``), so killing the
node (even with SIGKILL) leaves no worker behind; the Celery pool processes do the same towards their
worker (``workers.celery_app``). Children that exit are reaped at once (no zombies) and restarted
after a backoff that doubles up to a minute and resets once a child has run for a while. The
``on_exit`` hook lets the owner hand the dead worker's claimed jobs to another worker immediately.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
BACKOFF_FIRST, BACKOFF_MAX, HEALTHY_AFTER = 1.0, 60.0, 60.0
ENV_WORKER_ID = "ALNNODE_WORKER_ID"


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process when its parent exits (no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux
        return


def _child_setup() -> None:
    die_with_parent()
    # The parent may have died between fork and prctl: then nobody would ever signal us.
    if os.getppid() == 1:
        os._exit(1)


@dataclass
class Child:
    name: str
    command: Sequence[str]
    log: Path | None
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    generation: int = 0
    started: float = 0.0
    backoff: float = BACKOFF_FIRST
    restart_at: float = 0.0

    @property
    def worker_id(self) -> str:
        return f"{self.name}.{self.generation}"


class Supervisor:
    """Keeps ``children`` running until ``stop()``; all process starts happen on its own thread
    (a death signal follows the thread that forked, so that thread must live as long as we do)."""

    def __init__(self, on_exit: Callable[[str, int], None] | None = None, poll: float = 0.5) -> None:
        self.children: list[Child] = []
        self.on_exit = on_exit
        self.poll = poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def add(self, name: str, command: Sequence[str], *, log: Path | None = None, env: dict[str, str] | None = None) -> Child:
        child = Child(name, list(command), log, dict(env or {}))
        with self._lock:
            self.children.append(child)
        return child

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="alnnode-supervisor", daemon=True)
        self._thread.start()

    def _spawn(self, child: Child) -> None:
        child.generation += 1
        env = dict(os.environ, **child.env, **{ENV_WORKER_ID: child.worker_id})
        out = open(child.log, "ab") if child.log else None  # noqa: SIM115 (closed below); None: inherit ours
        try:
            child.proc = subprocess.Popen(child.command, stdout=out, stderr=out, env=env, preexec_fn=_child_setup)
        finally:
            if out is not None:
                out.close()
        child.started = time.monotonic()
        logger.info("worker %s started (pid %d)", child.worker_id, child.proc.pid)

    def _check(self, child: Child) -> None:
        now = time.monotonic()
        if child.proc is None:
            if now >= child.restart_at:
                self._spawn(child)
            return
        code = child.proc.poll()  # reaps the child when it has exited: no zombies
        if code is None:
            return
        ran = now - child.started
        dead_id, dead_pid = child.worker_id, child.proc.pid
        child.proc = None
        if ran >= HEALTHY_AFTER:
            child.backoff = BACKOFF_FIRST
        child.restart_at = now + child.backoff
        child.backoff = min(child.backoff * 2, BACKOFF_MAX)
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        logger.error("worker %s (pid %d) died (%s) after %.0f s; restarting in %.0f s", dead_id, dead_pid, how, ran, child.restart_at - now)
        if self.on_exit is not None:
            try:
                self.on_exit(dead_id, code)
            except Exception as exc:  # the hook (ledger) may be down; the reaper covers it
                logger.error("after worker %s died: %s: %s", dead_id, type(exc).__name__, exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                children = list(self.children)
            for child in children:
                try:
                    self._check(child)
                except OSError as exc:
                    logger.error("cannot start worker %s: %s", child.name, exc)
                    child.restart_at = time.monotonic() + BACKOFF_MAX
            self._stop.wait(self.poll)
        self._terminate()

    def _terminate(self, grace: float = 30.0) -> None:
        procs = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        for proc in procs:
            proc.terminate()  # Celery's warm shutdown: finish the running task, then exit
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for child in self.children:
            child.proc = None

    def stop(self, timeout: float = 45.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def pids(self) -> list[int]:
        return [c.proc.pid for c in self.children if c.proc is not None]
