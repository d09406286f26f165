"""Dispatch over DICOM TLS to a real Orthanc with ``DicomTlsEnabled`` (its DCMTK TLS layer): the
node's client certificate and the PACS's certificate are both verified."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.config import Destination
from node.dispatch.dimse import send_dimse
from node.dispatch.errors import DeliveryError
from node.dispatch.objects import prepare
from tests.helpers import loop_copies
from tests.orthanc import OrthancServer
from tests.tls.certs import Cert, issue, make_ca

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def tls_orthanc(tmp_path: Path) -> Iterator[tuple[OrthancServer, dict[str, Cert]]]:
    pki = tmp_path / "pki"
    ca = make_ca(pki)
    certs = {"ca": ca, "pacs": issue(ca, pki, "localhost", server=True), "node": issue(ca, pki, "aln-node")}
    server = OrthancServer(tmp_path)
    config = json.loads(server.config_path.read_text())
    config.update(DicomTlsEnabled=True, DicomTlsCertificate=str(certs["pacs"].cert), DicomTlsPrivateKey=str(certs["pacs"].key),
                  DicomTlsTrustedCertificates=str(ca.cert), DicomTlsRemoteCertificateRequired=True)  # fmt: skip
    server.config_path.write_text(json.dumps(config))
    server.start()
    yield server, certs
    server.kill()


def test_dispatch_to_orthanc_over_tls(
    tls_orthanc: tuple[OrthancServer, dict[str, Cert]], tmp_path: Path
) -> None:
    orthanc, certs = tls_orthanc
    (loop,) = loop_copies(tmp_path / "in", 1, "tlsout", name="OBXXXX1A_rle_2frame.dcm")
    items = prepare([loop])
    base = {
        "name": "pacs",
        "kind": "dimse",
        "ae_title": orthanc.ae_title,
        "host": "127.0.0.1",
        "port": orthanc.dicom_port,
        "timeout": 15,
    }
    dest = Destination(
        **base,
        tls=True,
        tls_ca_certificates=certs["ca"].cert,
        tls_certificate=certs["node"].cert,
        tls_private_key=certs["node"].key,
    )
    send_dimse(dest, items, "ALN_AI")
    assert orthanc.orthanc_id(items[0].sop_instance_uid) is not None
    # the PACS's certificate is not trusted without its CA; plain DICOM cannot talk to a TLS port
    with pytest.raises(DeliveryError):
        send_dimse(Destination(**base, tls=True), items, "ALN_AI")
    with pytest.raises(DeliveryError):
        send_dimse(Destination(**base), items, "ALN_AI")
