"""Test certificates made with ``openssl``: a CA, a server certificate for 127.0.0.1/localhost, and
client certificates (subject CN = the name), all signed by the CA; and a second, untrusted CA."""

from __future__ import annotations

import hashlib
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import require_tool


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path

    @property
    def fingerprint(self) -> str:
        der = ssl.PEM_cert_to_DER_cert(self.cert.read_text())
        return hashlib.sha256(der).hexdigest()


def _run(*args: str) -> None:
    subprocess.run([require_tool("openssl"), *args], check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str = "aln-test-ca") -> Cert:
    folder.mkdir(parents=True, exist_ok=True)
    ca = Cert(folder / f"{name}.crt", folder / f"{name}.key")
    _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
         "-subj", f"/CN={name}", "-keyout", str(ca.key), "-out", str(ca.cert))  # fmt: skip
    return ca


def issue(ca: Cert, folder: Path, cn: str, *, server: bool = False) -> Cert:
    out = Cert(folder / f"{cn}.crt", folder / f"{cn}.key")
    csr = folder / f"{cn}.csr"
    _run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={cn}",
         "-keyout", str(out.key), "-out", str(csr))  # fmt: skip
    ext = folder / f"{cn}.ext"
    usage = "serverAuth" if server else "clientAuth"
    ext.write_text(
        f"extendedKeyUsage = {usage}\n" + ("subjectAltName = IP:127.0.0.1,DNS:localhost\n" if server else "")
    )
    _run("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial",
         "-days", "2", "-extfile", str(ext), "-out", str(out.cert))  # fmt: skip
    return out
