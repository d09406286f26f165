"""One attempt (``send_to``) and attempts with exponential backoff recorded in the ledger (``deliver``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from node.config import Destination
from node.dispatch.dimse import send_dimse
from node.dispatch.errors import DeliveryError, Failure
from node.dispatch.folder import send_folder
from node.dispatch.objects import Item, Outgoing, prepare
from node.dispatch.web import send_dicomweb, send_orthanc
from node.ledger import Ledger

logger = logging.getLogger(__name__)

DEFAULT_CALLING_AE = "ALN_AI"  # used when the destination sets no calling_ae_title


def backoff_delay(dest: Destination, attempt: int) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): doubling, capped."""
    return float(min(dest.backoff_seconds * 2 ** (attempt - 1), dest.backoff_max_seconds))


def _send(dest: Destination, items: Sequence[Outgoing], calling_ae: str) -> None:
    if not items:
        return
    try:
        if dest.kind == "dimse":
            send_dimse(dest, items, dest.calling_ae_title or calling_ae)
        elif dest.kind == "dicomweb":
            send_dicomweb(dest, items)
        elif dest.kind == "orthanc":
            send_orthanc(dest, items)
        elif dest.kind == "folder":
            send_folder(dest, items)
        else:
            raise DeliveryError(f"{dest.name}: unknown destination kind {dest.kind!r}", transient=False)
    except DeliveryError:
        raise
    except OSError as exc:  # a socket fault the libraries did not translate
        raise DeliveryError(f"{dest.name}: {type(exc).__name__}: {exc}", transient=True) from exc
    except (ValueError, TypeError, RuntimeError, NotImplementedError) as exc:  # an object no attempt will fix
        raise DeliveryError(f"{dest.name}: {type(exc).__name__}: {exc}", transient=False) from exc


def send_to(dest: Destination, datasets: Sequence[Item], *, calling_ae: str = DEFAULT_CALLING_AE) -> None:
    """Deliver every object once to ``dest``; raise ``DeliveryError`` (with ``transient``) if any fails.

    ``datasets`` are pydicom data sets or paths of PS3.10 files (sent as they are on disk).
    """
    _send(dest, prepare(datasets), calling_ae)


def _failures_of(exc: DeliveryError, items: Sequence[Outgoing]) -> dict[str, Failure]:
    uids = {i.sop_instance_uid for i in items}
    if exc.failures and all(f.sop_instance_uid in uids for f in exc.failures):
        return {f.sop_instance_uid: f for f in exc.failures}
    return {uid: Failure(uid, exc.transient, str(exc)) for uid in uids}


def attempt(
    dest: Destination,
    items: Sequence[Outgoing],
    *,
    ledger: Ledger,
    sop_instance_uid: str,
    calling_ae: str = DEFAULT_CALLING_AE,
    final: bool = False,
) -> list[Failure]:
    """One attempt to deliver ``items`` to ``dest``, recorded per object in the ledger's deliveries.

    Sent objects become ``sent``; a permanent fault (or any fault when ``final``) ``failed``; a
    transient one ``pending`` with its reason. Returns the failures (empty: all delivered).
    """
    try:
        _send(dest, items, calling_ae)
        failures: dict[str, Failure] = {}
    except DeliveryError as exc:
        failures = _failures_of(exc, items)
    for item in items:
        uid = item.sop_instance_uid
        failure = failures.get(uid)
        if failure is None:
            ledger.record_attempt(sop_instance_uid, dest.name, uid, "sent")
        elif not failure.transient or final:
            logger.error("delivery of %s to %s failed: %s", uid, dest.name, failure.reason)
            ledger.record_attempt(sop_instance_uid, dest.name, uid, "failed", failure.reason)
        else:
            ledger.record_attempt(sop_instance_uid, dest.name, uid, "pending", failure.reason)
    return list(failures.values())


def deliver(
    dest: Destination,
    datasets: Sequence[Item],
    *,
    ledger: Ledger,
    sop_instance_uid: str,
    sleep: Callable[[float], None] = time.sleep,
    calling_ae: str = DEFAULT_CALLING_AE,
) -> bool:
    """Deliver the results of source instance ``sop_instance_uid`` to ``dest``, retrying transient faults
    in this process (library use; the pipeline retries through the queue instead, ``node.outbox``).

    Up to ``dest.max_attempts`` attempts, ``backoff_delay`` apart; a permanent fault ends the
    delivery of that object at once; later attempts resend only the objects not yet delivered.
    Returns True when every object was delivered.
    """
    items = prepare(datasets)
    for item in items:
        ledger.record_attempt(sop_instance_uid, dest.name, item.sop_instance_uid, "pending", count=False)
    remaining = list(items)
    n = 0
    while remaining:
        n += 1
        last = n >= dest.max_attempts
        failures = attempt(dest, remaining, ledger=ledger, sop_instance_uid=sop_instance_uid, calling_ae=calling_ae, final=last)
        by_uid = {f.sop_instance_uid: f for f in failures}
        remaining = [i for i in remaining if i.sop_instance_uid in by_uid and by_uid[i.sop_instance_uid].transient and not last]
        if last:
            for f in failures:
                if f.transient:
                    reason = f"gave up after {n} attempt(s): {f.reason}"
                    logger.error("delivery of %s to %s %s", f.sop_instance_uid, dest.name, reason)
                    ledger.record_attempt(sop_instance_uid, dest.name, f.sop_instance_uid, "failed", reason, count=False)
        if remaining:
            delay = backoff_delay(dest, n)
            logger.warning(
                "attempt %d/%d to deliver %d object(s) of %s to %s failed (%s); retrying in %.1f s",
                n, dest.max_attempts, len(remaining), sop_instance_uid, dest.name,
                by_uid[remaining[0].sop_instance_uid].reason, delay,
            )  # fmt: skip
            sleep(delay)
    return all(d["state"] == "sent" for d in ledger.deliveries_of(sop_instance_uid) if d["destination"] == dest.name[:64] and d["result_uid"] in {i.sop_instance_uid for i in items})
