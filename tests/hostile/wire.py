"""A DICOM Upper Layer client on a raw socket (PS3.8 9.3), for hostile tests and bench/fuzz.py.

PDUs are built byte by byte so that tests can send what no toolkit would: wrong lengths, unknown
types, half a data set followed by an abort or a TCP reset. DIMSE messages are encoded with
pynetdicom's own message classes, so the valid parts are exactly what a real SCU sends.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO

from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import P_DATA_TF

APP_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def item(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(payload)) + payload


def associate_rq(
    calling: str,
    called: str = "ALN_AI",
    contexts: list[tuple[int, str, list[str]]] | None = None,
    *,
    max_pdu: int = 16384,
    app_context: str = APP_CONTEXT,
) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2)."""
    if contexts is None:
        contexts = [(1, VERIFICATION, [IMPLICIT_LE])]
    body = struct.pack(">HH", 1, 0) + called.ljust(16)[:16].encode() + calling.ljust(16)[:16].encode() + b"\0" * 32
    body += item(0x10, app_context.encode())
    for cid, abstract, syntaxes in contexts:
        sub = item(0x30, abstract.encode()) + b"".join(item(0x40, ts.encode()) for ts in syntaxes)
        body += struct.pack(">BBHBBBB", 0x20, 0, len(sub) + 4, cid, 0, 0, 0) + sub
    user = item(0x51, struct.pack(">L", max_pdu)) + item(0x52, b"1.2.826.0.1.3680043.9.3811.0")
    body += item(0x50, user)
    return pdu(0x01, body)


def pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBL", kind, 0, len(body)) + body


RELEASE_RQ = pdu(0x05, b"\0\0\0\0")
ABORT_RQ = pdu(0x07, b"\0\0\0\0")


def p_data(context_id: int, control: int, data: bytes) -> bytes:
    """One P-DATA-TF with one PDV (PS3.8 9.3.5, E.2: control bit 0 command, bit 1 last fragment)."""
    return pdu(0x04, struct.pack(">LBB", len(data) + 2, context_id, control) + data)


def echo_pdus(context_id: int = 1, message_id: int = 1) -> list[bytes]:
    primitive = C_ECHO()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = VERIFICATION
    return _encode(C_ECHO_RQ(), primitive, context_id, 16384)


def store_pdus(
    dataset: bytes, sop_class: str, sop_instance: str, context_id: int = 1, max_pdu: int = 16384, message_id: int = 1
) -> list[bytes]:
    """The P-DATA-TF PDUs of a C-STORE-RQ carrying ``dataset`` (already encoded in the context's syntax)."""
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = sop_class
    primitive.AffectedSOPInstanceUID = sop_instance
    primitive.Priority = 2
    primitive.DataSet = BytesIO(dataset)
    return _encode(C_STORE_RQ(), primitive, context_id, max_pdu)


def _encode(message: C_ECHO_RQ | C_STORE_RQ, primitive: C_ECHO | C_STORE, context_id: int, max_pdu: int) -> list[bytes]:
    message.primitive_to_message(primitive)
    out = []
    for p in message.encode_msg(context_id, max_pdu):
        tf = P_DATA_TF()
        tf.from_primitive(p)
        out.append(tf.encode())
    return out


@dataclass
class Pdu:
    kind: int
    body: bytes

    @property
    def status(self) -> int | None:
        """DIMSE Status (0000,0900) of a response carried in this P-DATA-TF, if any."""
        if self.kind != 0x04:
            return None
        data = self.body[6:]
        pos = 0
        while pos + 8 <= len(data):
            group, elem, length = struct.unpack("<HHL", data[pos : pos + 8])
            if (group, elem) == (0x0000, 0x0900):
                return int(struct.unpack("<H", data[pos + 8 : pos + 10])[0])
            pos += 8 + length
        return None

    @property
    def comment(self) -> str:
        data = self.body[6:]
        pos = 0
        while pos + 8 <= len(data):
            group, elem, length = struct.unpack("<HHL", data[pos : pos + 8])
            if (group, elem) == (0x0000, 0x0902):
                return data[pos + 8 : pos + 8 + length].decode("ascii", "replace").strip()
            pos += 8 + length
        return ""


class Wire:
    """A raw TCP connection to the node that speaks (or breaks) the Upper Layer protocol."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 15.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_pdu(self) -> Pdu | None:
        """The next PDU, or None when the node closed the connection."""
        head = self._read(6)
        if len(head) < 6:
            return None
        kind, _, length = struct.unpack(">BBL", head)
        body = self._read(length)
        return Pdu(kind, body) if len(body) == length else None

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except (ConnectionResetError, TimeoutError, OSError):
                return buf
            if not chunk:
                return buf
            buf += chunk
        return buf

    def closed_by_peer(self, within: float) -> bool:
        """True once the node has closed this connection (EOF or reset) within ``within`` seconds."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                if not self.sock.recv(65536):
                    return True
            except (ConnectionResetError, BrokenPipeError):
                return True
            except (TimeoutError, OSError):
                return False
        return False

    def associate(self, calling: str, contexts: list[tuple[int, str, list[str]]] | None = None, **kw: object) -> Pdu | None:
        self.send(associate_rq(calling, contexts=contexts, **kw))  # type: ignore[arg-type]
        return self.read_pdu()

    def reset(self) -> None:
        """Close with a TCP RST instead of a FIN (SO_LINGER 0)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def responses(wire: Wire) -> Iterator[Pdu]:
    while (p := wire.read_pdu()) is not None:
        yield p
