"""DICOM TLS (PS3.15 Annex B.1 "Basic TLS Secure Transport Connection Profile", with the BCP 195
profile of B.9: TLS 1.2 or newer) for the SCP's second port and the DIMSE dispatch SCU.

The server context verifies client certificates against ``[tls] ca_certificates`` (required with
``require_client_certificate``). A ``[[peers]]`` entry with ``tls_subject`` (subject CN) or
``tls_fingerprint`` (SHA-256 of the DER certificate) binds its AE title to that certificate: the
peer must come over TLS with it, and a certificate bound to one AE cannot call as another.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.config import Peer, Settings, TlsSection
from node.errors import NodeError
from node.receive.guard import GuardedServer

logger = logging.getLogger(__name__)


def server_context(tls: TlsSection) -> ssl.SSLContext:
    """The SCP's context: TLS 1.2+, the node's certificate, client certificates checked when sent."""
    assert tls.certificate is not None and tls.private_key is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195 (RFC 9325), PS3.15 B.9
    try:
        ctx.load_cert_chain(str(tls.certificate), str(tls.private_key))
        if tls.ca_certificates is not None:
            ctx.load_verify_locations(cafile=str(tls.ca_certificates))
    except (ssl.SSLError, OSError) as exc:  # one line naming the keys, no traceback
        raise NodeError(f"[tls] certificate/private_key/ca_certificates cannot be used: {exc}") from None
    if tls.ca_certificates is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
    return ctx


def client_context(ca: Path | None, certificate: Path | None, key: Path | None) -> ssl.SSLContext:
    """An SCU's context: TLS 1.2+, the server's certificate verified (against ``ca`` or the system store)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if certificate is not None:
        ctx.load_cert_chain(str(certificate), str(key) if key else None)
    return ctx


@dataclass(frozen=True)
class PeerCertificate:
    subject_cn: str | None
    fingerprint: str  # SHA-256 of the DER form, lower-case hex


def peer_certificate(raw: Any) -> PeerCertificate | None:
    """The verified client certificate of a TLS connection (None: plain TCP or no certificate)."""
    if not isinstance(raw, ssl.SSLSocket):
        return None
    try:
        der = raw.getpeercert(binary_form=True)
        info = raw.getpeercert() or {}
    except (OSError, ValueError):
        return None
    if not der:
        return None
    subject: Any = info.get("subject", ())
    cn = next((str(v) for rdn in subject for k, v in rdn if k == "commonName"), None)
    return PeerCertificate(cn, hashlib.sha256(der).hexdigest())


def _bound(peer: Peer) -> bool:
    return peer.tls_subject is not None or peer.tls_fingerprint is not None


def _matches(peer: Peer, cert: PeerCertificate) -> bool:
    if peer.tls_fingerprint is not None and peer.tls_fingerprint != cert.fingerprint:
        return False
    return peer.tls_subject is None or peer.tls_subject == cert.subject_cn


def tls_verdict(settings: Settings, calling: str, raw: socket.socket | None) -> str | None:
    """Why an association must be refused for its transport (None: admit); see the module docstring."""
    cert = peer_certificate(raw)
    on_tls = isinstance(raw, ssl.SSLSocket)
    mine = [p for p in settings.peers if p.ae_title == calling and _bound(p)]
    if mine and not on_tls:
        return f"calling AE title {calling!r} is bound to a certificate and must use the TLS port"
    if mine and (cert is None or not any(_matches(p, cert) for p in mine)):
        return f"calling AE title {calling!r}: the client certificate is not the one bound to it"
    if cert is not None and not mine:
        others = [
            p.ae_title for p in settings.peers if _bound(p) and _matches(p, cert) and p.ae_title != calling
        ]
        if others:
            return f"the client certificate is bound to {others[0]!r}, not to calling AE title {calling!r}"
    return None


class TlsServer(GuardedServer):
    """The TLS port: the handshake happens in the association's thread, bounded by the
    association timeout, so a client that stalls it cannot hold up the accept loop."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None and self.ssl_context is not None
        raw, address = self.socket.accept()
        raw.settimeout(self.limits.association_timeout)
        return self.ssl_context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False), address
