"""``dimse`` destinations: C-STORE SCU (pynetdicom) with a transient/permanent split of every fault."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association

from node.config import Destination
from node.dispatch.errors import DeliveryError, Failure, status_is_success, status_is_transient
from node.dispatch.objects import Outgoing

logger = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: odd presentation context IDs 1..255

# PS3.8 7.1.1.9: A-ASSOCIATE-RJ result 1 = rejected-permanent, 2 = rejected-transient.
_REJECTED_PERMANENT = 1


def _contexts(items: Sequence[Outgoing]) -> list[tuple[str, str]]:
    """Each object's SOP class in its own transfer syntax, then in Explicit VR Little Endian.

    One transfer syntax per presentation context, so the acceptor's answer says exactly which
    encodings it takes (PS3.7 Annex D.3.3.5); the ELE context is the fallback that every storage
    SCP must accept.
    """
    found: list[tuple[str, str]] = []
    for item in items:
        for key in (
            (item.sop_class_uid, item.transfer_syntax_uid),
            (item.sop_class_uid, ExplicitVRLittleEndian),
        ):
            if key not in found:
                found.append(key)
    return found


def _chunks(items: Sequence[Outgoing]) -> list[list[Outgoing]]:
    """Groups whose presentation contexts fit in one association."""
    groups: list[list[Outgoing]] = []
    current: list[Outgoing] = []
    for item in items:
        if current and len(_contexts([*current, item])) > MAX_CONTEXTS:
            groups.append(current)
            current = []
        current.append(item)
    if current:
        groups.append(current)
    return groups


def _where(dest: Destination) -> str:
    return f"{dest.name} ({dest.ae_title}@{dest.host}:{dest.port}{', TLS' if dest.tls else ''})"


def _associate(dest: Destination, calling_ae: str, contexts: list[tuple[str, str]]) -> Association:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = dest.timeout
    ae.connection_timeout = dest.timeout
    for sop_class, ts in contexts:
        ae.add_requested_context(sop_class, ts)
    opened: list[bool] = []
    handlers: list[Any] = [(evt.EVT_CONN_OPEN, lambda _e: opened.append(True))]
    assert dest.host is not None and dest.port is not None and dest.ae_title is not None
    tls_args = None
    if dest.tls:  # DICOM TLS (node.receive.tls): TLS 1.2+, the PACS's certificate and name verified
        from node.receive.tls import client_context

        context = client_context(dest.tls_ca_certificates, dest.tls_certificate, dest.tls_private_key)
        tls_args = (context, dest.tls_server_name or dest.host)
    assoc = ae.associate(
        dest.host, dest.port, ae_title=dest.ae_title, evt_handlers=handlers, tls_args=tls_args
    )
    if assoc.is_established:
        return assoc
    where = _where(dest)
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        permanent = getattr(rsp, "result", None) == _REJECTED_PERMANENT
        reason = getattr(rsp, "reason_str", None) or "no reason given"
        raise DeliveryError(
            f"{where} rejected the association {'permanently' if permanent else 'transiently'}: {reason} "
            f"(called AE title {dest.ae_title!r}, calling AE title {calling_ae!r})",
            transient=not permanent,
        )
    if not opened:
        raise DeliveryError(
            f"cannot connect to {where}: connection refused or no answer within {dest.timeout:g} s",
            transient=True,
        )
    if assoc.is_aborted:
        raise DeliveryError(f"{where} aborted the association request", transient=True)
    raise DeliveryError(
        f"{where} did not answer the association request within {dest.timeout:g} s", transient=True
    )


def _accepted(assoc: Association, sop_class: str, ts: str) -> bool:
    return any(
        cx.abstract_syntax == sop_class and cx.transfer_syntax[0] == ts for cx in assoc.accepted_contexts
    )


def _store_one(assoc: Association, item: Outgoing, where: str) -> Failure | None:
    ds = item.dataset()
    if not _accepted(assoc, item.sop_class_uid, item.transfer_syntax_uid):
        if not _accepted(assoc, item.sop_class_uid, ExplicitVRLittleEndian):
            return Failure(
                item.sop_instance_uid,
                False,
                f"{where} accepts SOP class {item.sop_class_uid} neither in {item.transfer_syntax_uid} "
                f"nor in Explicit VR Little Endian",
            )
        if UID(item.transfer_syntax_uid).is_compressed:
            try:
                ds.decompress()  # pydicom pixel decoders; the data set becomes Explicit VR LE
            except (RuntimeError, NotImplementedError, ValueError) as exc:
                return Failure(
                    item.sop_instance_uid,
                    False,
                    f"{where} needs Explicit VR Little Endian but {item.transfer_syntax_uid} cannot be "
                    f"decompressed here: {exc}",
                )
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    rsp = assoc.send_c_store(ds)
    if not rsp or "Status" not in rsp:
        return Failure(item.sop_instance_uid, True, f"{where} sent no C-STORE response (timeout or abort)")
    status = int(rsp.Status)
    if status_is_success(status):
        if status != 0:
            logger.warning("%s stored %s with warning 0x%04X", where, item.sop_instance_uid, status)
        return None
    comment = str(rsp.get("ErrorComment", "") or "")
    return Failure(
        item.sop_instance_uid,
        status_is_transient(status),
        f"{where} answered C-STORE with status 0x{status:04X}{' ' + comment if comment else ''}",
    )


def send_dimse(dest: Destination, items: Sequence[Outgoing], calling_ae: str) -> None:
    """C-STORE every object to ``dest``; raise ``DeliveryError`` naming the objects not stored."""
    failures: list[Failure] = []
    sent = 0
    where = _where(dest)
    for group in _chunks(items):
        try:
            assoc = _associate(dest, calling_ae, _contexts(group))
        except DeliveryError as exc:
            if len(group) == len(items):
                raise  # one association for everything: the error applies to every object
            failures += [Failure(i.sop_instance_uid, exc.transient, str(exc)) for i in group]
            continue
        try:
            for item in group:
                if not assoc.is_established:
                    failures.append(
                        Failure(item.sop_instance_uid, True, f"{where} ended the association early")
                    )
                    continue
                failure = _store_one(assoc, item, where)
                if failure:
                    failures.append(failure)
                else:
                    sent += 1
                    logger.info("stored %s at %s", item.sop_instance_uid, where)
        finally:
            if assoc.is_established:
                assoc.release()
    if failures:
        raise DeliveryError.of(dest.name, failures)
