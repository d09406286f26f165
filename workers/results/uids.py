"""Deterministic UIDs for result objects, so a redelivered task never stores a second copy.

A PACS de-duplicates on SOP Instance UID: when the same loop is classified again by the same
model (a Celery redelivery after a worker crash, a manual re-run), the SR and secondary captures
must carry the UIDs of the first delivery, so the PACS replaces or ignores them instead of showing
two reports. The UIDs are therefore a pure function of (source SOP Instance UID, model UID, kind).

Encoding: PS3.5 Annex B.2 allows the root ``2.25.`` followed by the decimal value of a UUID.
We take the first 128 bits of a SHA-256 digest and set the RFC 9562 version-8 ("custom") and
variant bits, so the value is a well-formed UUID; its decimal form has at most 39 digits and the
whole UID at most 44 characters, well within the 64 of PS3.5 section 9.1.
"""

from __future__ import annotations

import hashlib
import uuid

from pydicom.uid import UID

# Kinds used by the writers; any other non-empty string is accepted too.
SR_SERIES = "sr-series"
SR_INSTANCE = "sr-instance"
SC_SERIES = "sc-series"
SC_KEY_FRAME = "sc-key-frame"
SC_CINE = "sc-cine"
TRACKING = "tracking"

_NAMESPACE = "aln-node/results/v1"


def result_uid(source_sop_instance_uid: str, model_uid: str, kind: str) -> str:
    """Return the deterministic UID of one result object (or series) of one source loop.

    Parameters
    ----------
    source_sop_instance_uid
        SOP Instance UID of the classified cine loop.
    model_uid
        UID of the model that produced the result (changes whenever the weights change).
    kind
        What the UID names, e.g. :data:`SR_SERIES`, :data:`SR_INSTANCE`, :data:`SC_KEY_FRAME`.

    Returns
    -------
    str
        A ``2.25.<decimal UUIDv8>`` UID, equal for equal inputs and different otherwise.

    Raises
    ------
    ValueError
        When an argument is empty.
    """
    for name, value in (
        ("source_sop_instance_uid", source_sop_instance_uid),
        ("model_uid", model_uid),
        ("kind", kind),
    ):
        if not value or not value.strip():
            raise ValueError(f"result_uid: {name} must not be empty, got {value!r}")
    # NUL cannot occur in a UID or in our kinds, so the concatenation is unambiguous.
    key = "\0".join((_NAMESPACE, kind, source_sop_instance_uid.strip(), model_uid.strip()))
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    number = uuid.UUID(bytes=digest[:16]).int
    # RFC 9562: version 8 in bits 48..51, variant 0b10 in bits 64..65 (big-endian numbering).
    number &= ~(0xF << 76)
    number |= 0x8 << 76
    number &= ~(0x3 << 62)
    number |= 0x2 << 62
    return f"2.25.{number}"


def device_uid(model_uid: str) -> str:
    """Return ``model_uid`` when it is a valid DICOM UID, else a stable UID derived from it.

    Bundles are expected to carry a DICOM UID as model UID; a hash string or a name is mapped
    to a ``2.25`` UID so the SR's Device Observer UID (a UI element) stays valid.
    """
    if UID(model_uid).is_valid:
        return model_uid
    return result_uid(model_uid, model_uid, "device")
