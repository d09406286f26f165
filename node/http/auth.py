"""HTTP authentication and roles: ``require(role)`` is the FastAPI dependency of every route.

A request carries ``Authorization: Bearer <token>`` or ``Basic <user:password>`` (RFC 6750, RFC 7617).
No credential or a wrong one: 401 with ``WWW-Authenticate``; a valid one without the role: 403. There
is no anonymous access. Roles: ``modality`` (STOW-RS), ``viewer`` (QIDO-RS, WADO-RS, UPS-RS reads and
workitem creation), ``admin`` (everything, the admin API). Stored hashes are scrypt (``node.http.hashing``);
a verified credential is remembered by the SHA-256 of what was presented, so only the first request of a
client pays the key derivation.

``python -m node.http.auth`` prints a new random token and the ``[[http.credentials]]`` entry to paste.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import logging
import secrets
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fastapi import HTTPException, Request

from node.config import Credential
from node.http.hashing import make_hash, verify

logger = logging.getLogger(__name__)

# What each role may do; admin implies viewer (and modality: an operator may re-send a study).
ROLE_GRANTS = {"modality": {"modality"}, "viewer": {"viewer"}, "admin": {"admin", "viewer", "modality"}}
_CACHE_SIZE = 256


@dataclass(frozen=True)
class Principal:
    """Who made the request (the credential's name, logged and audited; never the secret)."""

    name: str
    role: str

    def may(self, role: str) -> bool:
        return role in ROLE_GRANTS[self.role]


class Authenticator:
    """Checks presented credentials against the configured hashes."""

    def __init__(self, credentials: Sequence[Credential]) -> None:
        self.credentials = list(credentials)
        self._verified: OrderedDict[bytes, Principal] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def schemes(self) -> str:
        basic = any(c.username for c in self.credentials)
        return 'Bearer realm="alnnode"' + (', Basic realm="alnnode", charset="UTF-8"' if basic else "")

    def authenticate(self, header: str | None) -> Principal | None:
        if not header:
            return None
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if not value:
            return None
        key = hashlib.sha256(f"{scheme.lower()} {value}".encode()).digest()
        with self._lock:
            known = self._verified.get(key)
            if known is not None:
                self._verified.move_to_end(key)
                return known
        found = self._check(scheme.lower(), value)
        if found is not None:
            with self._lock:
                self._verified[key] = found
                while len(self._verified) > _CACHE_SIZE:
                    self._verified.popitem(last=False)
        return found

    def _check(self, scheme: str, value: str) -> Principal | None:
        if scheme == "bearer":
            for cred in self.credentials:
                if cred.token_hash is not None and verify(value, cred.token_hash.get_secret_value()):
                    return Principal(cred.name, cred.role)
            return None
        if scheme == "basic":
            try:
                user, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            if not sep:
                return None
            for cred in self.credentials:
                if cred.username == user and cred.password_hash is not None:
                    if verify(password, cred.password_hash.get_secret_value()):
                        return Principal(cred.name, cred.role)
                    return None
        return None


def authenticator_of(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.authenticator
    return auth


def require(role: str) -> Callable[[Request], Principal]:
    """FastAPI dependency: the request's ``Principal``, or 401 (no/wrong credential) / 403 (role)."""
    if role not in ROLE_GRANTS:
        raise ValueError(f"unknown role {role!r} (expected one of {', '.join(ROLE_GRANTS)})")

    def dependency(request: Request) -> Principal:
        auth = authenticator_of(request)
        principal = auth.authenticate(request.headers.get("authorization"))
        if principal is None:
            client = request.client.host if request.client else "?"
            logger.warning(
                "HTTP %s %s from %s: no valid credential (401)", request.method, request.url.path, client
            )
            raise HTTPException(
                401,
                "a valid bearer token or basic credential is required",
                {"WWW-Authenticate": auth.schemes},
            )
        if not principal.may(role):
            logger.warning(
                "HTTP %s %s by %r (role %s): needs role %s (403)",
                request.method,
                request.url.path,
                principal.name,
                principal.role,
                role,
            )
            raise HTTPException(
                403, f"credential {principal.name!r} has role {principal.role!r}; this needs {role!r}"
            )
        request.state.principal = principal
        return principal

    return dependency


def main(argv: Sequence[str] | None = None) -> int:
    """Print a new token (or hash a password from stdin) and the TOML entry to paste."""
    p = argparse.ArgumentParser(
        prog="python -m node.http.auth", description="make an [[http.credentials]] entry"
    )
    p.add_argument("--name", default="client", help="the credential's name (shown in logs)")
    p.add_argument("--role", choices=sorted(ROLE_GRANTS), default="viewer")
    p.add_argument(
        "--password", metavar="USERNAME", help="hash a password read from stdin for basic credentials"
    )
    args = p.parse_args(argv)
    if args.password:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            sys.stderr.write("python -m node.http.auth: empty password on stdin\n")
            return 2
        entry = f'username = "{args.password}"\npassword_hash = "{make_hash(password)}"'
    else:
        token = secrets.token_urlsafe(32)
        sys.stdout.write(f"# the token (shown once; give it to the client): {token}\n")
        entry = f'token_hash = "{make_hash(token)}"'
    sys.stdout.write(f'[[http.credentials]]\nname = "{args.name}"\nrole = "{args.role}"\n{entry}\n')
    return 0


if __name__ == "__main__":
    sys.exit(main())
