"""The outbox: one attempt to send a job's result objects to every configured destination.

Used by the ``io`` worker's dispatch stage (which retries transient faults through the queue, with
backoff, for the destination's ``retry_for``) and by ``alnnode retry`` (which runs it in the CLI
process with the current configuration, so a fixed destination is used at once). Objects already
delivered to a destination are not sent to it again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.config import Destination, Settings
from node.ledger import Ledger
from node.spool import uid_key

logger = logging.getLogger(__name__)

# One folder per job under data_dir/results: the prediction and the rendered objects.
SR_FILE, SC_KEY_FILE, SC_CINE_FILE = "sr.dcm", "sc_key_frame.dcm", "sc_cine.dcm"
RESULT_FILES = (SC_KEY_FILE, SC_CINE_FILE, SR_FILE)  # heatmaps first: the SR references them
NOT_ASSESSABLE_FILE = "not_assessable.txt"  # the input gate's reason (workers.gate): the SR alone goes out


def result_dir(data_dir: Path, sop_instance_uid: str) -> Path:
    key = uid_key(sop_instance_uid)
    return data_dir / "results" / key[:2] / key


def result_files(settings: Settings, sop_instance_uid: str) -> list[Path]:
    """The objects to send for a job: the SR and its heatmaps, or the SR alone for a loop the input gate
    found not assessable (issue #9), so the dispatch stage and ``alnnode retry`` send the same."""
    folder = result_dir(settings.storage.data_dir, sop_instance_uid)
    if (folder / NOT_ASSESSABLE_FILE).is_file():
        return [folder / SR_FILE]
    return [folder / name for name in RESULT_FILES]


@dataclass
class Outcome:
    """What one dispatch attempt achieved: per destination, delivered or why not."""

    delivered: list[str] = field(default_factory=list)
    transient: dict[str, str] = field(default_factory=dict)  # destination -> reason (retry later)
    permanent: dict[str, str] = field(default_factory=dict)  # destination -> reason (a person must act)
    missing: list[str] = field(default_factory=list)  # result files that are not on disk

    @property
    def done(self) -> bool:
        return not (self.transient or self.permanent or self.missing)

    def reason(self) -> str:
        if self.missing:
            return f"result file(s) missing: {', '.join(self.missing)}"
        return "; ".join(f"{d}: {r}" for d, r in {**self.permanent, **self.transient}.items())


def dispatch_once(settings: Settings, ledger: Ledger, uid: str, files: Sequence[Path], *, final: bool = False) -> Outcome:
    """Try every destination once for the objects it does not have yet; nothing waits or sleeps here."""
    from node.dispatch import attempt, prepare

    outcome = Outcome(missing=[f.name for f in files if not f.exists()])
    if outcome.missing:
        return outcome
    items = prepare(list(files))
    for dest in settings.destinations:
        sent = {d["result_uid"] for d in ledger.deliveries_of(uid) if d["destination"] == dest.name[:64] and d["state"] == "sent"}
        todo = [i for i in items if i.sop_instance_uid not in sent]
        if not todo:
            outcome.delivered.append(dest.name)
            continue
        failures = attempt(dest, todo, ledger=ledger, sop_instance_uid=uid, calling_ae=settings.node.ae_title, final=final)
        audit_sent(settings, dest, todo, failures)
        if not failures:
            outcome.delivered.append(dest.name)
            continue
        text = "; ".join(sorted({f.reason for f in failures}))
        if all(f.transient for f in failures):
            outcome.transient[dest.name] = text
        else:
            outcome.permanent[dest.name] = text
    return outcome


def audit_sent(settings: Settings, dest: Destination, items: Sequence[Any], failures: Sequence[Any]) -> None:
    """DICOM Instances Transferred (sent, PS3.15 A.5.3.6) for one destination's attempt; metrics too."""
    from node.audit import MINOR_FAILURE, SUCCESS, AuditLog
    from node.metrics import count_dispatch

    count_dispatch(dest.name, ok=not failures)
    classes: dict[str, int] = {}
    for item in items:
        classes[item.sop_class_uid] = classes.get(item.sop_class_uid, 0) + 1
    peer = dest.ae_title or dest.url or str(dest.path)
    study = getattr(items[0], "study_instance_uid", None) if items else None
    reason = "; ".join(sorted({f.reason for f in failures})) or None
    AuditLog.from_settings(settings).transferred(received=False, peer_ae=f"{dest.name} ({peer})", peer_host=dest.host, study_uid=study,
                                                 sop_classes=classes, outcome=MINOR_FAILURE if failures else SUCCESS, reason=reason)  # fmt: skip


def retry_budget(settings: Settings, names: Sequence[str]) -> float:
    """Seconds the failing destinations allow for retries (the shortest ``retry_for`` among them)."""
    dests: list[Destination] = [d for d in settings.destinations if d.name in names]
    return min((d.retry_for for d in dests), default=0.0)


def next_delay(settings: Settings, names: Sequence[str], tries: int) -> float:
    """Backoff before try ``tries + 1``: Celery's exponential interval with full jitter, capped,
    never shorter than the destination's first step (jitter spreads a burst of retries)."""
    from celery.utils.time import get_exponential_backoff_interval

    dests = [d for d in settings.destinations if d.name in names] or list(settings.destinations)
    base = min(d.backoff_seconds for d in dests) if dests else 2.0
    cap = max(d.backoff_max_seconds for d in dests) if dests else 60.0
    delay = get_exponential_backoff_interval(factor=max(base, 0.5), retries=max(tries - 1, 0), maximum=cap, full_jitter=True)
    return float(min(cap, max(base, delay)))


def dispatch_results(settings: Settings, ledger: Ledger, uid: str, files: Sequence[Path]) -> bool:
    """One final attempt to every destination, then ``rendered -> dispatched`` or ``failed`` (library use
    and tests; the pipeline's dispatch stage retries transient faults through the queue instead)."""
    if not settings.destinations:
        return ledger.transition(uid, "dispatched", expected=["rendered"], reason=f"no destinations configured; results in {files[0].parent}")
    outcome = dispatch_once(settings, ledger, uid, files, final=True)
    if outcome.done:
        return ledger.transition(uid, "dispatched", expected=["rendered"], reason=", ".join(outcome.delivered))
    ledger.transition(uid, "failed", expected=["rendered"], stage="dispatch", reason=outcome.reason())
    return False


def retry_job(settings: Settings, ledger: Ledger, broker: Any, row: dict[str, Any]) -> tuple[str, str]:
    """An operator's retry (``alnnode retry``, the console's Retry button); returns (state, detail).

    A job that has results is re-sent now, in this process, with the current configuration (a fixed
    destination is used at once; transient faults are left to the workers); a job that failed before
    its results existed is queued for classification again. ``state`` is ``changed`` when the job
    moved on meanwhile (nothing done).
    """
    from node.queue import TASK_CLASSIFY, TASK_DISPATCH

    uid, state = row["sop_instance_uid"], row["state"]
    if state in ("rendered", "dispatched") or (state == "failed" and row["stage"] == "dispatch"):
        if state != "rendered" and not ledger.transition(uid, "rendered", expected=[state], reason="retry by the operator"):
            now = ledger.find(uid) or {}
            return "changed", f"changed meanwhile (now {now.get('state')}); not retried"
        outcome = dispatch_once(settings, ledger, uid, result_files(settings, uid))
        if outcome.done:
            ledger.transition(uid, "dispatched", expected=["rendered"], reason=", ".join(outcome.delivered))
            return "dispatched", ", ".join(outcome.delivered)
        if outcome.transient and not (outcome.permanent or outcome.missing):
            broker.send(TASK_DISPATCH, uid)
            return "rendered", f"not delivered yet ({outcome.reason()}); the workers keep retrying"
        ledger.transition(uid, "failed", expected=["rendered"], stage="dispatch", reason=outcome.reason())
        return "failed", outcome.reason()
    if state == "failed":
        ledger.transition(uid, "queued", expected=["failed"], reason="retry by the operator")
        broker.send(TASK_CLASSIFY, uid)
        return "queued", "re-queued for classification"
    return state, "nothing to retry"
