"""Hashes of HTTP tokens and passwords: scrypt (RFC 7914) with a random salt, never the secret itself.

Format: ``scrypt$N$r$p$<salt, base64>$<hash, base64>``. ``python -m node.http.auth`` makes one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# RFC 7914 section 2 / OWASP password storage: N = 2^15, r = 8, p = 1 costs ~32 MiB and ~50 ms.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_MAXMEM = 64 * 2**20


def make_hash(secret: str, *, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(
        secret.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=_MAXMEM
    )
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes]:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not of the form scrypt$N$r$p$salt$hash (make one with: python -m node.http.auth)")
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt, digest = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
    except ValueError:
        raise ValueError("N, r, p must be integers and salt, hash base64") from None
    if n < 2**14 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16 or len(salt) < 8 or len(digest) < 32:
        raise ValueError("scrypt parameters too weak or malformed (N >= 2^14 power of two, salt >= 8 bytes)")
    return n, r, p, salt, digest


def check_hash_format(stored: str) -> str | None:
    """Why ``stored`` is not a usable hash (None when it is); the message never repeats the value."""
    try:
        _parse(stored)
    except ValueError as exc:
        return str(exc)
    return None


def verify(secret: str, stored: str) -> bool:
    n, r, p, salt, digest = _parse(stored)
    got = hashlib.scrypt(
        secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=max(_MAXMEM, 256 * n * r), dklen=len(digest)
    )
    return hmac.compare_digest(got, digest)
