"""Error hierarchy of the node and the DICOM status codes that expected faults map to."""

from __future__ import annotations


class NodeError(Exception):
    """Root of the node's own errors; the message names the bad value."""


class ConfigError(NodeError):
    """The configuration is invalid; ``problems`` holds one line per bad key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class StoreRejected(NodeError):
    """A received object is refused with a DICOM status (PS3.4 Annex B.2.3)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"0x{status:04X}: {reason}")
        self.status = status
        self.reason = reason


# C-STORE statuses used by the node (PS3.4 Table B.2-1 and PS3.7 Annex C).
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_DOES_NOT_MATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110
