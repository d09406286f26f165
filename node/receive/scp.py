"""The DICOM SCP: association policy, C-ECHO and C-STORE (PS3.4 Annex A and B).

Handlers do I/O only. This module decides who may associate (AE titles, application context,
association slots per host and reserved for peers) and keeps every association's ledger row and temp
files in step with its end; the C-STORE service itself is ``node.receive.store``, connection-level
limits (pending sockets, PDU sizes) are ``node.receive.guard``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association

from node.audit import AuditLog
from node.config import Settings
from node.errors import STATUS_SUCCESS
from node.ledger import Ledger
from node.metrics import count_association
from node.receive.contexts import (
    STORAGE_SOP_CLASSES,
    TRANSFER_SYNTAXES,
    VERIFICATION_SOP_CLASS,
    VERIFICATION_TRANSFER_SYNTAXES,
)
from node.receive.guard import (
    ConnectionLimits,
    GuardedServer,
    GuardedSocket,
    install_temp_file_factory,
    ticker,
    wake_pending,
)
from node.receive.store import Storer, printable
from node.receive.tls import TlsServer, server_context, tls_verdict
from node.spool import Spool

logger = logging.getLogger(__name__)

DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1
# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
REJECT_NO_REASON = (0x01, 0x01, 0x01)
REJECT_APPLICATION_CONTEXT = (0x01, 0x01, 0x02)
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_LIMIT = (0x02, 0x03, 0x02)  # transient, service provider (presentation), local limit exceeded
TICK_SECONDS = 0.25


@dataclass
class _Assoc:
    assoc: Association
    host: str
    peer: bool
    aid: int | None = None


@dataclass
class Receiver:
    """C-ECHO/C-STORE SCP bound to one spool and ledger."""

    settings: Settings
    spool: Spool
    ledger: Ledger
    on_stored: Callable[[str], None] | None = None  # enqueue hook, called with the SOP Instance UID
    audit: AuditLog | None = None  # PS3.15 A.5 audit trail (node.audit)
    _assocs: dict[int, _Assoc] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    storer: Storer = field(init=False)

    def __post_init__(self) -> None:
        self.storer = Storer(self.settings, self.spool, self.ledger)

    def sweep_incoming(self, force: bool = False) -> int:
        return self.storer.sweep_incoming(force)
    tls_server: GuardedServer | None = None

    # -- association policy -----------------------------------------------------------------
    def _peer(self, assoc: Association) -> tuple[str, str, str, int]:
        rq = assoc.requestor.primitive
        calling = printable(getattr(rq, "calling_ae_title", ""), 16)
        called = printable(getattr(rq, "called_ae_title", ""), 16)
        return calling, called, printable(assoc.requestor.address, 64), int(assoc.requestor.port or 0)

    def policy(self, calling: str, called: str, host: str) -> tuple[tuple[int, int, int], str] | None:
        """Return (reject code, reason) when the association must be refused, else None."""
        node = self.settings.node
        if called != node.ae_title:
            return REJECT_CALLED_AE, f"called AE title {called!r} is not ours ({node.ae_title!r})"
        if node.reject_unknown_callers:
            if not self.is_peer(calling, host):
                if any(p.ae_title == calling for p in self.settings.peers):
                    return REJECT_CALLING_AE, f"calling AE title {calling!r} is not allowed from host {host}"
                return REJECT_CALLING_AE, f"calling AE title {calling!r} is not a configured peer"
        return None

    def is_peer(self, calling: str, host: str) -> bool:
        return any(p.ae_title == calling and (p.host is None or p.host == host) for p in self.settings.peers)

    def _slots(self, host: str, peer: bool) -> str | None:
        """Why no association slot is free for this caller (None: admit), PS3.8 9.3.4 2/3/2.

        Called with ``_lock`` held."""
        node = self.settings.node
        reserved = min(node.reserved_peer_slots, node.max_associations - 1)
        active = list(self._assocs.values())
        if len(active) >= node.max_associations:
            return f"max_associations = {node.max_associations} reached"
        if sum(1 for a in active if a.host == host) >= node.max_associations_per_host:
            return f"max_associations_per_host = {node.max_associations_per_host} reached for {host}"
        if not peer and sum(1 for a in active if not a.peer) >= node.max_associations - reserved:
            return f"the last {reserved} association slot(s) are reserved for configured peers"
        return None

    def _reject(self, event: evt.Event, code: tuple[int, int, int], reason: str) -> None:
        calling, called, host, port = self._peer(event.assoc)
        logger.warning("association from %s@%s:%d rejected: %s", calling, host, port, reason)
        count_association(calling, accepted=False)
        if self.audit is not None:
            self.audit.association(calling, host, accepted=False, reason=reason)
        try:  # recorded before the peer hears of it, so `alnnode status` agrees with what the peer saw
            self.ledger.record_rejected(calling, called, host, port, reason)
        except Exception as exc:  # the ledger being down never lets a caller in
            logger.error("could not record the rejection of %s@%s in the ledger: %s", calling, host, exc)
        try:
            event.assoc.acse.send_reject(*code)
        finally:
            event.assoc.kill()

    def handle_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        server = assoc._server
        if isinstance(server, GuardedServer):
            server.promote(assoc.dul.socket.socket if assoc.dul.socket else None)
        assoc.acse_timeout = self.settings.node.acse_timeout
        calling, called, host, _ = self._peer(assoc)
        rq = assoc.requestor.primitive
        app_context = str(getattr(rq, "application_context_name", "") or "")
        if app_context != DICOM_APPLICATION_CONTEXT:
            return self._reject(event, REJECT_APPLICATION_CONTEXT, f"application context {app_context[:64]!r} is not DICOM's")
        if not getattr(rq, "presentation_context_definition_list", None):
            return self._reject(event, REJECT_NO_REASON, "no presentation context proposed")
        verdict = self.policy(calling, called, host)
        if verdict is None and (why := tls_verdict(self.settings, calling, assoc.dul.socket.socket if assoc.dul.socket else None)):
            verdict = REJECT_CALLING_AE, why  # certificate binding of [[peers]] (node.receive.tls)
        if verdict is not None:
            return self._reject(event, *verdict)
        peer = self.is_peer(calling, host)
        with self._lock:  # admitted now, so two requests cannot both take the last slot
            full = self._slots(host, peer)
            if full is None:
                self._assocs[id(assoc)] = _Assoc(assoc, host, peer)
        if full is not None:
            return self._reject(event, REJECT_LIMIT, full)

    def handle_rejected(self, event: evt.Event) -> None:
        # pynetdicom's own rejections (unsupported protocol version, its association limit)
        calling, called, host, port = self._peer(event.assoc)
        with self._lock:
            self._assocs.pop(id(event.assoc), None)
        logger.warning("association from %s@%s:%d rejected by the DICOM layer", calling, host, port)
        count_association(calling, accepted=False)
        if self.audit is not None:
            self.audit.association(calling, host, accepted=False, reason="rejected by the DICOM layer")
        try:
            self.ledger.record_rejected(calling, called, host, port, "rejected by the DICOM layer")
        except Exception as exc:
            logger.error("could not record the rejection of %s@%s in the ledger: %s", calling, host, exc)

    def handle_established(self, event: evt.Event) -> None:
        calling, called, host, port = self._peer(event.assoc)
        sock = event.assoc.dul.socket
        if sock is not None and sock.socket is not None:
            try:
                sock.socket.settimeout(self.settings.node.network_timeout)  # no recv() blocks forever
            except OSError:  # already closed by the peer: the close events follow
                pass
        try:
            aid = self.ledger.open_association(calling, called, host, port)
        except Exception as exc:  # stores will answer 0x0110 while the ledger is down
            logger.error("association from %s@%s:%d not recorded: %s", calling, host, port, exc)
            return
        with self._lock:
            state = self._assocs.get(id(event.assoc))
            if state is not None:
                state.aid = aid
        if state is None:  # ended before we got here
            self._close_row(aid, "closed")
        logger.info("association %d from %s@%s:%d established", aid, calling, host, port)
        count_association(calling, accepted=True)
        if self.audit is not None:
            self.audit.association(calling, host, accepted=True)

    def _close_row(self, aid: int, outcome: str, reason: str | None = None) -> None:
        try:
            self.ledger.close_association(aid, outcome, reason)
            logger.info("association %d %s", aid, outcome)
        except Exception as exc:
            logger.error("association %d ended (%s) but the ledger could not record it: %s", aid, outcome, exc)

    def _close(self, assoc: Association, outcome: str) -> None:
        self._drop_partial(assoc)
        with self._lock:
            state = self._assocs.pop(id(assoc), None)
        if state is not None and state.aid is not None:
            sock = assoc.dul.socket
            reason = sock.oversized if isinstance(sock, GuardedSocket) else None
            self._close_row(state.aid, "aborted" if reason else outcome, reason)

    def _drop_partial(self, assoc: Association) -> None:
        """Remove the temp file of a C-STORE data set whose transfer did not complete."""
        message = getattr(assoc.dimse, "message", None)
        handle = getattr(message, "_data_set_file", None)
        path = getattr(message, "_data_set_path", None)
        if handle is not None:
            try:
                handle.close()
            except OSError:
                pass
        if isinstance(path, Path) and path.parent == self.spool.incoming:
            self.spool.discard(path)
            logger.info("removed the partial data set of an interrupted transfer")

    def handle_released(self, event: evt.Event) -> None:
        self._close(event.assoc, "released")

    def handle_aborted(self, event: evt.Event) -> None:
        self._close(event.assoc, "aborted")

    def handle_closed(self, event: evt.Event) -> None:
        # The transport can close before the reactor reports the abort that caused it.
        assoc = event.assoc
        wake_pending(assoc)
        try:
            aborted = assoc.is_aborted or assoc.acse.is_aborted()
        except (AttributeError, IndexError):
            aborted = assoc.is_aborted
        self._close(assoc, "aborted" if aborted else "released" if assoc.is_released else "closed")

    # -- housekeeping (ticker thread) -------------------------------------------------------------
    def reap_ended(self) -> None:
        """Close the rows of associations whose thread ended without a release/abort/close event."""
        with self._lock:
            ended = [s.assoc for s in self._assocs.values() if not s.assoc.is_alive() and s.assoc.ident is not None]
        for assoc in ended:
            self._close(assoc, "closed")

    # -- DIMSE services ---------------------------------------------------------------------
    def handle_echo(self, event: evt.Event) -> int:
        return STATUS_SUCCESS

    def handle_store(self, event: evt.Event) -> int | Dataset:
        with self._lock:
            state = self._assocs.get(id(event.assoc))
        aid = state.aid if state is not None else None
        calling, _called, host, _port = self._peer(event.assoc)
        return self.storer.handle(event, aid, calling or None, self.on_stored, peer_host=host, audit=self.audit)

    # -- the AE -------------------------------------------------------------------------------
    def build_ae(self) -> AE:
        node = self.settings.node
        ae = AE(ae_title=node.ae_title)
        # Slots are counted by handle_requested (max_associations, per host, reserved for peers);
        # pynetdicom's own count also includes pending sockets, so its ceiling sits above ours.
        ae.maximum_associations = 4 * node.max_associations + node.max_associations_per_host
        ae.maximum_pdu_size = node.max_pdu_size
        ae.acse_timeout = node.acse_timeout
        ae.dimse_timeout = node.dimse_timeout
        ae.network_timeout = node.network_timeout
        ae.require_called_aet = True
        ae.add_supported_context(VERIFICATION_SOP_CLASS, list(VERIFICATION_TRANSFER_SYNTAXES))
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        return ae

    def handlers(self) -> list[Any]:
        return [
            (evt.EVT_REQUESTED, self.handle_requested),
            (evt.EVT_REJECTED, self.handle_rejected),
            (evt.EVT_ESTABLISHED, self.handle_established),
            (evt.EVT_RELEASED, self.handle_released),
            (evt.EVT_ABORTED, self.handle_aborted),
            (evt.EVT_CONN_CLOSE, self.handle_closed),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
        ]

    def _start_tls(self, ae: AE, limits: ConnectionLimits) -> GuardedServer:
        tls = self.settings.tls
        assert tls.port is not None
        server = cast(
            GuardedServer,
            ae.make_server((self.settings.node.host, tls.port), evt_handlers=self.handlers(), server_class=TlsServer,
                           limits=limits, incoming=self.spool.incoming, ssl_context=server_context(tls)),
        )  # fmt: skip
        ae._servers.append(server)
        threading.Thread(target=server.serve_forever, name="alnnode-tls-acceptor", daemon=True).start()
        logger.info("DICOM TLS listening on %s:%d", *server.server_address[:2])
        return server

    def start(self, block: bool = False) -> GuardedServer:
        """Listen on the configured host/port (in a background thread unless ``block``); returns the server."""
        _config.STORE_RECV_CHUNKED_DATASET = True  # pynetdicom's documented switch (no in-memory data sets)
        install_temp_file_factory()
        self.spool.incoming.mkdir(parents=True, exist_ok=True)
        node = self.settings.node
        ae = self.build_ae()
        limits = ConnectionLimits(
            association_timeout=node.association_timeout,
            max_pending=node.max_associations,
            max_pending_per_host=node.max_associations_per_host,
            max_pdu_size=node.max_pdu_size,
        )
        server = cast(
            GuardedServer,
            ae.make_server(
                (node.host, node.port),
                evt_handlers=self.handlers(),
                server_class=GuardedServer,
                limits=limits,
                incoming=self.spool.incoming,
            ),
        )
        ae._servers.append(server)  # so that server.shutdown() / ae.shutdown() find it, as start_server does
        stop = threading.Event()
        server.on_shutdown.append(stop.set)
        tasks: list[Callable[[], object]] = [server.close_overdue, self.reap_ended, self.sweep_incoming]
        if self.settings.tls.port is not None:  # DICOM TLS beside the plain port (node.receive.tls)
            self.tls_server = self._start_tls(ae, limits)
            server.on_shutdown.append(self.tls_server.shutdown)
            tasks.append(self.tls_server.close_overdue)
        ticker(TICK_SECONDS, stop, tasks)
        if block:
            server.serve_forever()
        else:
            threading.Thread(target=server.serve_forever, name="alnnode-acceptor", daemon=True).start()
        return server
