"""Dispatch: send result objects to the configured destinations (DIMSE, DICOMweb, Orthanc, folder).

``send_to(dest, datasets)`` makes one attempt; ``deliver(dest, datasets, ledger=..., sop_instance_uid=...)``
retries transient faults with exponential backoff and records every attempt in the ledger.
Results carry their own deterministic SOP Instance UIDs, so a resend replaces rather than duplicates.
"""

from node.dispatch.deliver import DEFAULT_CALLING_AE, attempt, backoff_delay, deliver, send_to
from node.dispatch.errors import (
    DeliveryError,
    Failure,
    http_is_transient,
    status_is_success,
    status_is_transient,
)
from node.dispatch.objects import Outgoing, prepare

__all__ = [
    "DEFAULT_CALLING_AE",
    "DeliveryError",
    "Failure",
    "Outgoing",
    "attempt",
    "backoff_delay",
    "deliver",
    "http_is_transient",
    "prepare",
    "send_to",
    "status_is_success",
    "status_is_transient",
]
