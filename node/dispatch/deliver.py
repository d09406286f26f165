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


def deliver(
    dest: Destination,
    datasets: Sequence[Item],
    *,
    ledger: Ledger,
    sop_instance_uid: str,
    sleep: Callable[[float], None] = time.sleep,
    calling_ae: str = DEFAULT_CALLING_AE,
) -> bool:
    """Deliver the results of source instance ``sop_instance_uid`` to ``dest``, retrying transient faults.

    Up to ``dest.max_attempts`` attempts, ``backoff_delay`` apart; a permanent fault ends the
    delivery of that object at once. Each attempt updates one ledger ``deliveries`` row per result
    object (state pending|sent|failed, attempts, last_error) before any wait, and later attempts
    resend only the objects not yet delivered. Returns True when every object was delivered.
    Raises a permanent ``DeliveryError`` if an object cannot be read or encoded at all.
    """
    items = prepare(datasets)
    for item in items:
        ledger.record_attempt(sop_instance_uid, dest.name, item.sop_instance_uid, "pending", count=False)
    remaining = list(items)
    delivered = 0
    attempt = 0
    while remaining:
        attempt += 1
        try:
            _send(dest, remaining, calling_ae)
            failures: dict[str, Failure] = {}
        except DeliveryError as exc:
            failures = _failures_of(exc, remaining)
        last = attempt >= dest.max_attempts
        retry: list[Outgoing] = []
        for item in remaining:
            uid = item.sop_instance_uid
            failure = failures.get(uid)
            if failure is None:
                ledger.record_attempt(sop_instance_uid, dest.name, uid, "sent")
                delivered += 1
            elif not failure.transient:
                logger.error("delivery of %s to %s failed permanently: %s", uid, dest.name, failure.reason)
                ledger.record_attempt(sop_instance_uid, dest.name, uid, "failed", failure.reason)
            elif last:
                reason = f"gave up after {attempt} attempt(s): {failure.reason}"
                logger.error("delivery of %s to %s %s", uid, dest.name, reason)
                ledger.record_attempt(sop_instance_uid, dest.name, uid, "failed", reason)
            else:
                ledger.record_attempt(sop_instance_uid, dest.name, uid, "pending", failure.reason)
                retry.append(item)
        remaining = retry
        if remaining:
            delay = backoff_delay(dest, attempt)
            logger.warning(
                "attempt %d/%d to deliver %d object(s) of %s to %s failed (%s); retrying in %.1f s",
                attempt,
                dest.max_attempts,
                len(remaining),
                sop_instance_uid,
                dest.name,
                failures[remaining[0].sop_instance_uid].reason,
                delay,
            )
            sleep(delay)
    return delivered == len(items)
