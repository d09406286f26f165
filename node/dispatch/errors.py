"""Delivery faults and the split between transient ones (retry later) and permanent ones (stop now).

A transient fault is one that waiting can cure: the destination is down or busy (connection refused,
timeouts, association rejected-transient, 0xA7xx out of resources, HTTP 5xx / 408 / 429). A permanent
fault is one only a person can cure: a misconfigured destination (rejected-permanent, e.g. a wrong
called AE title; HTTP 4xx such as 401 bad credentials or 404 wrong URL), or an object the destination
refuses (0xA9xx data set does not match SOP class, 0xCxxx cannot understand, SOP class not
supported). Retrying a permanent fault only delays the operator's alarm, so ``deliver`` stops at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from node.errors import NodeError

# PS3.4 Annex B.2.3 / PS3.7 Annex C: failure statuses that waiting can cure.
_TRANSIENT_STATUSES = frozenset({0x0110, 0x0213})  # processing failure, resource limitation


def status_is_success(status: int) -> bool:
    """Success (0x0000) or a warning (0x0001, 0xBxxx): the object is stored (PS3.7 C.1-C.3)."""
    return status == 0x0000 or status == 0x0001 or (status & 0xF000) == 0xB000


def status_is_transient(status: int) -> bool:
    """A failure status that a later attempt may not get: 0xA7xx out of resources, 0x0110, 0x0213."""
    return (status & 0xFF00) == 0xA700 or status in _TRANSIENT_STATUSES


def http_is_transient(code: int) -> bool:
    """HTTP 5xx, 408 Request Timeout and 429 Too Many Requests may pass; other 4xx will not."""
    return code >= 500 or code in (408, 429)


@dataclass(frozen=True)
class Failure:
    """One result object that was not delivered, and why."""

    sop_instance_uid: str
    transient: bool
    reason: str

    def __post_init__(self) -> None:
        from node.config import mask_secrets

        object.__setattr__(self, "reason", mask_secrets(self.reason))


class DeliveryError(NodeError):
    """An attempt to deliver to one destination failed.

    ``failures`` names the result objects not delivered; when empty, none was (e.g. the destination
    could not be reached). ``transient`` is true when every failure may pass with time.
    """

    def __init__(self, message: str, *, transient: bool, failures: Iterable[Failure] = ()) -> None:
        from node.config import mask_secrets

        super().__init__(mask_secrets(message))  # the ledger and `alnnode status` never show a URL's password
        self.failures = tuple(failures)
        self.transient = transient and all(f.transient for f in self.failures)

    @classmethod
    def of(cls, destination: str, failures: Iterable[Failure]) -> DeliveryError:
        """One error for several per-object failures (message lists each object and reason)."""
        items = tuple(failures)
        text = "; ".join(f"{f.sop_instance_uid}: {f.reason}" for f in items)
        return cls(f"{destination}: {text}", transient=all(f.transient for f in items), failures=items)
