"""The listening socket's defences against exhaustion, below the DICOM association policy.

pynetdicom 3.0 gives every TCP connection two threads and reads PDUs with blocking ``recv`` calls:
a socket that sends one byte (or declares a 4 GiB PDU and trickles it) would hold its threads and
its association slot forever, and a declared PDU length is read into memory whatever was
negotiated. This module adds, for the node's own server only (subclasses passed to pynetdicom's
``AE.make_server``, nothing changed process-wide):

- ``GuardedServer`` keeps every connection *pending* until its A-ASSOCIATE-RQ has been read.
  A pending connection is closed after ``association_timeout`` seconds (the ARTIM idea of
  PS3.8 9.1.5, but on an absolute deadline the peer cannot extend by trickling bytes). At most
  ``max_associations_per_host`` connections of one address, and ``max_associations`` in all, are
  pending at once: a new connection evicts the oldest pending one, so a burst of silent sockets
  can never keep a modality's association request out.
- ``GuardedSocket`` checks each PDU header before its body is read: a P-DATA-TF longer than the
  Maximum Length we announced (PS3.8 9.3.1, D.1) or any other PDU over 1 MiB is answered with an
  A-ABORT (source 2 service provider, reason 6 invalid PDU parameter value, PS3.8 9.3.8) and the
  connection is closed; nothing of it is buffered.
- C-STORE data sets are streamed to temp files in the spool's ``incoming/`` folder (same file
  system as the spool: accepting is an fsync and a rename), see ``spooling_temp_file``.
"""

from __future__ import annotations

import logging
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pynetdicom import dimse_messages
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

logger = logging.getLogger(__name__)

P_DATA_TF = 0x04
OTHER_PDU_LIMIT = 1 << 20  # A-ASSOCIATE-RQ with hundreds of contexts stays far below 1 MiB
ABORT_INVALID_PARAMETER = 0x06  # PS3.8 Table 9-26: invalid-PDU-parameter value


@dataclass(frozen=True)
class ConnectionLimits:
    association_timeout: float = 5.0
    max_pending: int = 16
    max_pending_per_host: int = 8
    max_pdu_size: int = 262144  # 0: unlimited (PS3.8 D.1)


class GuardedSocket(AssociationSocket):
    """An ``AssociationSocket`` that refuses PDUs longer than allowed before reading their body."""

    _pdata_limit: int = 0
    _expect_header: bool = True
    oversized: str | None = None

    def recv(self, nr_bytes: int) -> bytearray:
        data = super().recv(nr_bytes)
        if len(data) < nr_bytes:  # EOF or reset: the connection is over
            wake_pending(self.assoc)
        if not self._expect_header:
            self._expect_header = True
            return data
        if len(data) != 6:
            return data
        pdu_type, _, length = struct.unpack(">BBL", bytes(data))
        limit = self._pdata_limit if pdu_type == P_DATA_TF else OTHER_PDU_LIMIT
        if limit and length > limit:
            self.oversized = f"PDU type 0x{pdu_type:02X} declares {length} bytes, over the {limit} allowed"
            logger.warning("A-ABORT to %s: %s", _peer_name(self.socket), self.oversized)
            abort = A_ABORT_RQ()
            abort.source = 0x02
            abort.reason_diagnostic = ABORT_INVALID_PARAMETER
            raw = self.socket
            if raw is not None:
                try:
                    raw.sendall(abort.encode())
                    raw.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            wake_pending(self.assoc)
            return bytearray()  # pynetdicom reads a short header as "transport closed" (Evt17)
        self._expect_header = False
        return data


def wake_pending(assoc: Any) -> None:
    """End the acceptor thread's wait for an A-ASSOCIATE-RQ that can no longer come.

    pynetdicom's acceptor waits up to its ACSE timeout on the DUL's user queue even after the
    connection closed, with its DUL thread polling every millisecond meanwhile; a stream of
    closed-before-request connections would pile up threads. ``None`` on that queue is what its
    own timeout path sees, so the thread ends at once (association.py ``run_reactor``).
    """
    try:
        if assoc.requestor.primitive is None and assoc.dul.to_user_queue.empty():
            assoc.dul.to_user_queue.put(None)
    except AttributeError:
        pass


def _peer_name(sock: socket.socket | None) -> str:
    try:
        return "{}:{}".format(*sock.getpeername()[:2]) if sock is not None else "?"
    except OSError:
        return "?"


class GuardedHandler(RequestHandler):
    server: GuardedServer

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        sock = assoc.dul.socket
        assert sock is not None
        sock.__class__ = GuardedSocket  # same object, checked recv(); see module docstring
        assert isinstance(sock, GuardedSocket)
        sock._pdata_limit = self.server.limits.max_pdu_size
        # The wait for the A-ASSOCIATE-RQ is bounded by the association timeout; the AE's own
        # ACSE timeout applies again once the request is in (Receiver.handle_requested).
        assoc.acse_timeout = self.server.limits.association_timeout
        return assoc


@dataclass
class _Pending:
    sock: socket.socket
    host: str
    since: float


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with pending-connection limits and deadlines."""

    def __init__(self, *args: Any, limits: ConnectionLimits, incoming: Path, **kwargs: Any) -> None:
        self.limits = limits
        self.incoming = incoming
        self._pending: dict[int, _Pending] = {}
        self._plock = threading.Lock()
        self.on_shutdown: list[Callable[[], object]] = []
        kwargs["request_handler"] = GuardedHandler
        super().__init__(*args, **kwargs)

    def shutdown(self) -> None:
        for hook in self.on_shutdown:
            hook()
        super().shutdown()

    # socketserver's hook, called in the accept loop before a handler thread starts
    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = str(client_address[0])
        now = time.monotonic()
        evict: list[_Pending] = []
        with self._plock:
            same = sorted((p for p in self._pending.values() if p.host == host), key=lambda p: p.since)
            while len(same) >= self.limits.max_pending_per_host:
                evict.append(same.pop(0))
            rest = sorted((p for p in self._pending.values() if p not in evict), key=lambda p: p.since)
            while len(rest) >= self.limits.max_pending:
                evict.append(rest.pop(0))
            for p in evict:
                self._pending.pop(id(p.sock), None)
            self._pending[id(request)] = _Pending(request, host, now)
        for p in evict:
            logger.warning("closed a connection from %s without an association request: too many pending", p.host)
            _shutdown(p.sock)
        return True

    def promote(self, raw: socket.socket | None) -> None:
        """The connection's A-ASSOCIATE-RQ has been read: it is no longer pending."""
        if raw is not None:
            with self._plock:
                self._pending.pop(id(raw), None)

    def close_overdue(self) -> int:
        """Close pending connections older than the association timeout; returns how many."""
        deadline = time.monotonic() - self.limits.association_timeout
        with self._plock:
            overdue = [p for p in self._pending.values() if p.since < deadline or p.sock.fileno() == -1]
            for p in overdue:
                self._pending.pop(id(p.sock), None)
        for p in overdue:
            if p.sock.fileno() != -1:
                logger.warning(
                    "closed a connection from %s: no association request within %g s",
                    p.host,
                    self.limits.association_timeout,
                )
                _shutdown(p.sock)
        return len(overdue)

    def pending_count(self) -> int:
        with self._plock:
            return len(self._pending)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked recv() of the DUL thread
    except OSError:
        pass


def spooling_temp_file(*args: Any, **kwargs: Any) -> IO[bytes]:
    """``NamedTemporaryFile`` for pynetdicom's chunked C-STORE receive.

    pynetdicom 3.0 has ``_config.STORE_RECV_CHUNKED_DATASET`` but no setting for where the temp
    file goes (it calls ``tempfile.NamedTemporaryFile`` with the process temp dir). Setting
    ``tempfile.tempdir``/``TMPDIR`` would move every temp file of the process (and of the worker
    processes it starts) into the spool, so instead this factory sends only the data sets of
    associations served by a ``GuardedServer`` to that server's ``incoming/`` folder; any other
    caller gets the standard behaviour. It runs in the association's DUL thread.
    """
    assoc = getattr(threading.current_thread(), "assoc", None)
    server = getattr(assoc, "_server", None)
    if isinstance(server, GuardedServer):
        kwargs.setdefault("dir", server.incoming)
        kwargs.setdefault("prefix", "rx-")
    return tempfile.NamedTemporaryFile(*args, **kwargs)  # type: ignore[no-any-return]


def install_temp_file_factory() -> None:
    if getattr(dimse_messages, "NamedTemporaryFile", None) is not spooling_temp_file:
        dimse_messages.NamedTemporaryFile = spooling_temp_file  # type: ignore[assignment]


def ticker(interval: float, stop: threading.Event, tasks: list[Callable[[], object]]) -> threading.Thread:
    """A daemon thread running ``tasks`` every ``interval`` seconds until ``stop`` is set."""

    def run() -> None:
        while not stop.wait(interval):
            for task in tasks:
                try:
                    task()
                except Exception:  # a failed housekeeping pass must not end the others
                    logger.exception("receive housekeeping failed")

    thread = threading.Thread(target=run, name="alnnode-receive-guard", daemon=True)
    thread.start()
    return thread
