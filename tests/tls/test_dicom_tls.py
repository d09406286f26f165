"""DICOM TLS on the SCP (PS3.15 B.1/B.9) with DCMTK ``echoscu +tls`` / ``storescu +tls`` and test
certificates made by ``openssl``: trusted client certificates accepted, none or an untrusted one refused
when required, a certificate bound to another AE refused, a bound AE refused on the plain port."""

from __future__ import annotations

import signal
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.ledger import Ledger
from tests.helpers import NodeProcess, free_port, loop_copies, require_tool, wait_for, write_config
from tests.tls.certs import Cert, issue, make_ca

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Cert]:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder)
    rogue = make_ca(folder / "rogue", "rogue-ca")
    return {
        "ca": ca,
        "server": issue(ca, folder, "localhost", server=True),
        "room1": issue(ca, folder, "us-room1"),
        "room2": issue(ca, folder, "us-room2"),
        "rogue": issue(rogue, folder / "rogue", "us-room1"),  # same CN, another CA
    }


@pytest.fixture
def tls_node(tmp_path: Path, pki: dict[str, Cert]) -> Iterator[tuple[int, int, Path, NodeProcess]]:
    port, tls_port = free_port(), free_port()
    data = tmp_path / "var"
    cfg = write_config(
        tmp_path / "alnnode.toml",
        port=port,
        data_dir=data,
        peers=("ECHOSCU",),
        extra=f"""
[[peers]]
ae_title = "US_ROOM1"
tls_subject = "us-room1"
[[peers]]
ae_title = "US_ROOM2"
tls_fingerprint = "{pki["room2"].fingerprint}"
[tls]
port = {tls_port}
certificate = "{pki["server"].cert}"
private_key = "{pki["server"].key}"
ca_certificates = "{pki["ca"].cert}"
require_client_certificate = true
""",
    )
    proc = NodeProcess(cfg, port, tmp_path / "node.log").start()
    yield port, tls_port, data, proc
    proc.stop()


def dcmtk(
    tool: str,
    port: int,
    aet: str,
    *args: str,
    cert: Cert | None = None,
    ca: Cert | None = None,
    tls: bool = True,
    files: tuple[Path, ...] = (),
    called: str = "ALN_AI",
) -> subprocess.CompletedProcess[str]:
    cmd = [require_tool(tool), "-v", "-aet", aet, "-aec", called, "-to", "20"]
    if tls:
        cmd += ["+tls", str(cert.key), str(cert.cert)] if cert else ["+tla"]
        if ca:
            cmd += ["+cf", str(ca.cert)]
    return subprocess.run(
        [*cmd, *args, "127.0.0.1", str(port), *map(str, files)], capture_output=True, text=True, timeout=60
    )


def accepted(out: subprocess.CompletedProcess[str]) -> bool:
    text = out.stdout + out.stderr
    return "Association Accepted" in text and "Rejected" not in text


def test_tls_echo_store_and_certificate_binding(
    tls_node: tuple[int, int, Path, NodeProcess], pki: dict[str, Cert], tmp_path: Path
) -> None:
    port, tls_port, data, _proc = tls_node
    ca = pki["ca"]
    assert accepted(dcmtk("echoscu", tls_port, "US_ROOM1", cert=pki["room1"], ca=ca))
    assert accepted(dcmtk("echoscu", tls_port, "US_ROOM2", cert=pki["room2"], ca=ca))
    (loop,) = loop_copies(tmp_path / "in", 1, "tls", name="OBXXXX1A_rle_2frame.dcm")
    out = dcmtk("storescu", tls_port, "US_ROOM1", "-xr", cert=pki["room1"], ca=ca, files=(loop,))
    assert "Received Store Response (Success)" in out.stdout + out.stderr, out.stdout + out.stderr
    ledger = Ledger(f"sqlite:///{data / 'ledger.sqlite'}")
    try:
        assert len(ledger.last_jobs(10)) == 1
    finally:
        ledger.close()
    # without a client certificate (required), with one from another CA, or a certificate bound to another AE
    assert not accepted(dcmtk("echoscu", tls_port, "US_ROOM1", ca=ca))
    assert not accepted(dcmtk("echoscu", tls_port, "US_ROOM1", cert=pki["rogue"], ca=ca))
    wrong = dcmtk("echoscu", tls_port, "US_ROOM1", cert=pki["room2"], ca=ca)
    assert "Association Rejected" in wrong.stdout + wrong.stderr
    assert (
        "Association Rejected"
        in (o := dcmtk("echoscu", tls_port, "ECHOSCU", cert=pki["room1"], ca=ca)).stdout + o.stderr
    )
    # a bound AE must use TLS; an unbound one still uses the plain port
    assert "Association Rejected" in (o := dcmtk("echoscu", port, "US_ROOM1", tls=False)).stdout + o.stderr
    assert accepted(dcmtk("echoscu", port, "ECHOSCU", tls=False))
    log = (tmp_path / "node.log").read_text()
    assert (
        "not the one bound to it" in log and "bound to 'US_ROOM1'" in log and "must use the TLS port" in log
    )


def test_tls_port_follows_a_reload_and_sigterm_drains_its_associations(
    tls_node: tuple[int, int, Path, NodeProcess], pki: dict[str, Cert], tmp_path: Path
) -> None:
    """SIGHUP's new AE title applies to the TLS port too; SIGTERM waits for a running TLS association."""
    _port, tls_port, _data, node = tls_node
    assert node.proc is not None
    cfg = tmp_path / "alnnode.toml"
    cfg.write_text(cfg.read_text().replace('ae_title = "ALN_AI"', 'ae_title = "ALN_TLS"'))
    node.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: b"config reload" in node.log.read_bytes(), 20, what="SIGHUP to reload the configuration")
    assert accepted(dcmtk("echoscu", tls_port, "US_ROOM1", cert=pki["room1"], ca=pki["ca"], called="ALN_TLS"))
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca"].cert))
    context.load_cert_chain(str(pki["room1"].cert), str(pki["room1"].key))
    ae = AE(ae_title="US_ROOM1")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", tls_port, ae_title="ALN_TLS", tls_args=(context, "localhost"))
    assert assoc.is_established
    try:
        node.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: b"for 1 running association" in node.log.read_bytes(), 20, what="the drain to wait")
        status = assoc.send_c_echo()
        assert status is not None and status.Status == 0x0000, "the running TLS association still works"
    finally:
        assoc.release()
    assert node.proc.wait(60) == 0
