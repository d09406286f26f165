"""Typed node configuration: a TOML file with ``ALNNODE_<SECTION>__<KEY>`` environment overrides.

Validated once at start-up (``load_config``) and passed down; a bad value stops start-up with one
line per problem naming the key and the value.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from node.errors import ConfigError

ENV_CONFIG = "ALNNODE_CONFIG"
DESTINATION_KINDS = ("dimse", "dicomweb", "orthanc", "folder")
# Celery soft and hard time limits of each stage (seconds): a stuck decode or a hung destination never
# holds a worker for good. The broker's visibility timeout must exceed the longest (see QueueSection).
TIME_LIMITS = {"classify": (600, 660), "render": (300, 330), "dispatch": (300, 330)}
LONGEST_TASK = max(hard for _soft, hard in TIME_LIMITS.values())


def check_ae_title(value: str) -> str:
    """Return the AE title stripped, or raise naming why it is not valid (PS3.5 6.2, VR AE).

    An AE title is 1-16 characters of the default repertoire, without backslash or control
    characters; leading and trailing spaces are not significant.
    """
    stripped = value.strip(" ")
    if not stripped:
        raise ValueError("AE title is empty")
    if len(value.rstrip(" ")) > 16:
        raise ValueError(f"AE title {value!r} is longer than 16 characters")
    bad = [c for c in stripped if c == "\\" or ord(c) < 0x20 or ord(c) > 0x7E]
    if bad:
        raise ValueError(f"AE title {value!r} contains {bad[0]!r} (no backslash or control characters)")
    return stripped


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _indirect_secret(value: Any) -> Any:
    """``"env:NAME"`` or ``"file:/path"`` in place of a secret: read it from there (once, at start-up).

    Keeps passwords out of the TOML file (systemd ``EnvironmentFile``, Docker/Kubernetes secret files).
    """
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    if not isinstance(value, str):
        return value
    if value.startswith("env:"):
        name = value[4:]
        if name not in os.environ:
            raise ValueError(f"environment variable {name!r} named for a secret is not set")
        return os.environ[name]
    if value.startswith("file:"):
        path = Path(value[5:]).expanduser()
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"secret file {str(path)!r} cannot be read: {exc.__class__.__name__}") from None
    return value


# A secret: never printed (SecretStr), given inline, as "env:NAME" or as "file:/path".
Secret = Annotated[SecretStr, BeforeValidator(_indirect_secret)]
HTTP_ROLES = ("modality", "viewer", "admin")


class NodeSection(_Section):
    ae_title: str = "ALN_AI"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=0, le=65535)  # 0: pick a free port (tests)
    reject_unknown_callers: bool = True
    max_associations: int = Field(16, ge=1, le=1000)
    max_pdu_size: int = Field(262144, ge=0)  # 0 = unlimited (PS3.8 D.1)
    acse_timeout: float = Field(30.0, gt=0)
    dimse_timeout: float = Field(60.0, gt=0)
    network_timeout: float = Field(60.0, gt=0)
    # Receive limits (issue #11): a socket must complete its A-ASSOCIATE-RQ within
    # association_timeout; one address holds at most max_associations_per_host connections;
    # reserved_peer_slots of max_associations are kept for [[peers]] when unknown callers are allowed.
    association_timeout: float = Field(5.0, gt=0, le=600)
    max_associations_per_host: int = Field(8, ge=1, le=1000)
    reserved_peer_slots: int = Field(2, ge=0)  # at most max_associations - 1 take effect
    max_instance_mb: int = Field(2048, ge=1)  # larger C-STORE data sets: 0xA700
    max_inflated_mb: int = Field(512, ge=1)  # Deflated Explicit VR LE inflating beyond: 0xA700
    max_frames: int = Field(10000, ge=1)  # NumberOfFrames beyond: 0xA700

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return check_ae_title(v)


class Peer(_Section):
    """A modality allowed to associate; when ``host`` is set the peer address must match it.

    On the DICOM TLS port, ``tls_subject`` (the client certificate's subject CN) or
    ``tls_fingerprint`` (SHA-256 of the DER certificate, hex, colons allowed) binds the peer to
    its certificate: another certificate cannot use this AE title.
    """

    ae_title: str
    host: str | None = None
    tls_subject: str | None = None
    tls_fingerprint: str | None = None

    @field_validator("tls_fingerprint")
    @classmethod
    def _fingerprint(cls, v: str | None) -> str | None:
        if v is None:
            return None
        hexed = v.replace(":", "").lower()
        if len(hexed) != 64 or any(c not in "0123456789abcdef" for c in hexed):
            raise ValueError(f"{v!r} is not a SHA-256 fingerprint (64 hex digits)")
        return hexed
    # Per-peer input-gate overrides of [model] body_parts / require_body_part (None: the [model] value)
    body_parts: list[str] | None = None
    require_body_part: bool | None = None

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return check_ae_title(v)


class StorageSection(_Section):
    data_dir: Path = Path("var")
    min_free_mb: int = Field(512, ge=0)  # below this, C-STORE answers 0xA700 out of resources
    fsync: bool = True
    ledger_url: Secret | None = None  # any SQLAlchemy URL; default sqlite:///<data_dir>/ledger.sqlite

    @field_validator("data_dir")
    @classmethod
    def _usable(cls, v: Path) -> Path:
        path = v.expanduser().resolve()
        probe = path
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        if not probe.is_dir():
            raise ValueError(f"{str(path)!r} is not a directory")
        if not os.access(probe, os.R_OK | os.W_OK | os.X_OK):
            raise ValueError(f"{str(path)!r} is not readable and writable by this user")
        return path


class Destination(_Section):
    """Where results go (``kind`` = dimse | dicomweb | orthanc | folder)."""

    name: str
    kind: str
    ae_title: str | None = None
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    url: str | None = None
    username: str | None = None
    password: Secret | None = None
    token: Secret | None = None
    path: Path | None = None
    calling_ae_title: str | None = None
    timeout: float = Field(30.0, gt=0)
    # DICOM TLS for kind = "dimse" (PS3.15 B.9): the server certificate is verified against
    # tls_ca_certificates (else the system store) and its name against tls_server_name (else host);
    # tls_certificate/tls_private_key: the node's client certificate, when the PACS requires one.
    tls: bool = False
    tls_ca_certificates: Path | None = None
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    tls_server_name: str | None = None
    # The pipeline retries transient faults (destination down, busy) for `retry_for` seconds with
    # exponential backoff and jitter between `backoff_seconds` and `backoff_max_seconds`, without
    # holding a worker; permanent faults fail at once. `max_attempts` bounds `deliver()` (library use).
    retry_for: float = Field(86400.0, gt=0)
    max_attempts: int = Field(5, ge=1)
    backoff_seconds: float = Field(2.0, ge=0)
    backoff_max_seconds: float = Field(60.0, ge=0)

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in DESTINATION_KINDS:
            raise ValueError(f"unknown destination kind {v!r} (expected one of {', '.join(DESTINATION_KINDS)})")
        return v

    @field_validator("ae_title", "calling_ae_title")
    @classmethod
    def _ae(cls, v: str | None) -> str | None:
        return None if v is None else check_ae_title(v)

    @model_validator(mode="after")
    def _complete(self) -> Destination:
        need = {
            "dimse": ("ae_title", "host", "port"),
            "dicomweb": ("url",),
            "orthanc": ("url",),
            "folder": ("path",),
        }[self.kind]
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"destination {self.name!r} of kind {self.kind!r} needs {', '.join(missing)}")
        return self


class QueueSection(_Section):
    broker_url: Secret | None = None  # None: embedded durable local transport under data_dir
    # Redis re-delivers an unacknowledged message after this long: it must exceed the longest task,
    # or a running task would be handed to a second worker. Dead workers are found by heartbeats.
    visibility_timeout: float = Field(3600.0, gt=0)
    embedded_workers: int = Field(1, ge=0)
    # A job whose worker has not beaten for this long is handed to another worker.
    heartbeat_timeout: float = Field(30.0, ge=5)
    # Attempts of one stage (a crash, an exception, a killed worker) before the job is `failed`.
    max_attempts: int = Field(3, ge=1)

    @field_validator("visibility_timeout")
    @classmethod
    def _longer_than_tasks(cls, v: float) -> float:
        if v <= LONGEST_TASK:
            raise ValueError(f"must exceed the longest task time limit ({LONGEST_TASK} s)")
        return v

    @field_validator("broker_url")
    @classmethod
    def _broker(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().startswith(("redis://", "rediss://")):
            scheme = v.get_secret_value().split(":", 1)[0]
            raise ValueError(f"broker scheme {scheme!r} is not supported (use redis:// or rediss://)")
        return v


class ModelSection(_Section):
    bundle: Path | None = None
    # Present/Absent operating point; unset: the bundle's own (chosen on its out-of-fold data), else 0.5
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    min_frames: int = Field(8, ge=1)
    # Input gate (workers/gate.py): Body Part Examined / Anatomic Region, when present, must be one of these
    body_parts: list[str] = ["BREAST", "AXILLA"]
    require_body_part: bool = False  # true: an empty body part fails the gate too
    gate: bool = True  # image checks and the out-of-distribution gate (false: report every loop)
    allow_research_models: bool = False
    device: str = "auto"
    # CPU inference: bf16 autocast is about 3x faster on CPUs with AVX512-BF16/AMX ("auto" uses it there)
    precision: Literal["auto", "fp32", "bf16"] = "auto"


class TlsSection(_Section):
    """DICOM TLS (PS3.15 B.1 and BCP 195, TLS 1.2+): a second listening port beside [node] port."""

    port: int | None = Field(None, ge=0, le=65535)  # None: no TLS listener; 0: pick a free port (tests)
    certificate: Path | None = None  # PEM, the node's certificate (chain)
    private_key: Path | None = None  # PEM
    ca_certificates: Path | None = None  # PEM bundle that client certificates must chain to
    require_client_certificate: bool = False

    @model_validator(mode="after")
    def _complete(self) -> TlsSection:
        if self.port is not None and (self.certificate is None or self.private_key is None):
            raise ValueError("tls.port needs tls.certificate and tls.private_key")
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("tls.require_client_certificate needs tls.ca_certificates")
        for name in ("certificate", "private_key", "ca_certificates"):
            path = getattr(self, name)
            if path is not None and not path.expanduser().is_file():
                raise ValueError(f"tls.{name} = {str(path)!r} is not a readable file")
        return self


class Credential(_Section):
    """An HTTP client: a bearer token or a username + password, each stored only as a hash.

    Make a hash with ``python -m node.http.auth`` (prints a new random token and its hash) or
    ``python -m node.http.auth --password`` (reads a password from stdin).
    """

    name: str = Field(min_length=1, max_length=64)
    role: Literal["modality", "viewer", "admin"]  # modality: STOW-RS; viewer: QIDO/WADO/UPS; admin: all
    token_hash: Secret | None = None
    username: str | None = None
    password_hash: Secret | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Credential:
        from node.http.hashing import check_hash_format

        has_basic = self.username is not None or self.password_hash is not None
        if (self.token_hash is None) == (not has_basic):
            raise ValueError(f"credential {self.name!r} needs either token_hash or username + password_hash")
        if has_basic and (self.username is None or self.password_hash is None):
            raise ValueError(f"credential {self.name!r} needs both username and password_hash")
        for key in ("token_hash", "password_hash"):
            value = getattr(self, key)
            if value is not None:
                problem = check_hash_format(value.get_secret_value())
                if problem:
                    raise ValueError(f"credentials {self.name!r} {key}: {problem}")
        return self


class HttpSection(_Section):
    """The node's HTTP application (DICOMweb, UPS-RS, admin API), served by ``alnnode serve``."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)  # 0: pick a free port (tests)
    tls_certificate: Path | None = None  # PEM: HTTPS when set (with tls_private_key)
    tls_private_key: Path | None = None
    tls_ca_certificates: Path | None = None  # with require_client_certificate: mutual TLS
    require_client_certificate: bool = False
    credentials: list[Credential] = []
    # STOW-RS limits (each instance also obeys [node] max_instance_mb, max_inflated_mb, max_frames)
    max_request_mb: int = Field(4096, ge=1)  # a body beyond: 413, nothing stored
    max_parts: int = Field(1000, ge=1)  # parts of one multipart request beyond: 413
    base_url: str | None = None  # RetrieveURL prefix when behind a proxy (default: the request's own URL)

    @model_validator(mode="after")
    def _safe(self) -> HttpSection:
        if (self.tls_certificate is None) != (self.tls_private_key is None):
            raise ValueError("http.tls_certificate and http.tls_private_key go together")
        if self.require_client_certificate and (
            self.tls_ca_certificates is None or self.tls_certificate is None
        ):
            raise ValueError("http.require_client_certificate needs HTTPS and http.tls_ca_certificates")
        for name in ("tls_certificate", "tls_private_key", "tls_ca_certificates"):
            path = getattr(self, name)
            if path is not None and not path.expanduser().is_file():
                raise ValueError(f"http.{name} = {str(path)!r} is not a readable file")
        if self.enabled and not self.credentials and not is_loopback(self.host):
            raise ValueError(
                f"http.host = {self.host!r} is not a loopback address: configure [[http.credentials]] first "
                "(no anonymous access over the network)"
            )
        names = [c.name for c in self.credentials]
        users = [c.username for c in self.credentials if c.username]
        for seen in (names, users):
            dup = next((n for n in seen if seen.count(n) > 1), None)
            if dup is not None:
                raise ValueError(f"http.credentials: {dup!r} appears twice")
        return self


class Source(_Section):
    """A DICOMweb archive the node may retrieve studies from (UPS-RS workitems naming a study)."""

    name: str = Field(min_length=1, max_length=64)
    url: str  # the DICOMweb root, e.g. http://pacs:8042/dicom-web
    username: str | None = None
    password: Secret | None = None
    token: Secret | None = None
    timeout: float = Field(60.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not an http:// or https:// URL")
        return v.rstrip("/")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RetentionSection(_Section):
    """What ``alnnode gc`` and the node's scheduled clean-up delete (node/retention.py). Off by default."""

    # Days after the last destination acknowledged a job's results (PS3.7 C-STORE success or an
    # HTTP 2xx) before its spooled loop and result objects are deleted; unset: keep forever.
    delivered_days: float | None = Field(None, ge=0)
    # Days after an object was skipped (not routed to the model) before its spool file is deleted.
    skipped_days: float | None = Field(None, ge=0)
    # Days after a job's last change before the ledger rows of a job whose files are gone are
    # pruned (counts per month and state are kept); unset: keep the rows forever.
    ledger_days: float | None = Field(None, ge=0)
    # Free space under data_dir below which `alnnode status` (and the node's log) raise an alarm;
    # keep it above [storage] min_free_mb, where C-STORE starts answering 0xA700.
    disk_alarm_mb: int = Field(2048, ge=0)
    interval_minutes: float = Field(60.0, gt=0)  # how often the node runs the clean-up


class AuditSection(_Section):
    """The audit trail (node/audit.py): DICOM PS3.15 A.5 messages appended to a file, optionally to syslog."""

    enabled: bool = True
    path: Path | None = None  # default: <data_dir>/audit/audit.xml.log
    syslog_host: str | None = None  # RFC 5424 over UDP (RFC 5426) when set
    syslog_port: int = Field(514, ge=1, le=65535)


class Settings(BaseSettings):
    """The whole configuration; sections mirror the TOML file."""

    model_config = SettingsConfigDict(
        env_prefix="ALNNODE_", env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    node: NodeSection = NodeSection()
    peers: list[Peer] = []
    storage: StorageSection = StorageSection()
    destinations: list[Destination] = []
    queue: QueueSection = QueueSection()
    model: ModelSection = ModelSection()
    retention: RetentionSection = RetentionSection()
    audit: AuditSection = AuditSection()
    tls: TlsSection = TlsSection()
    http: HttpSection = HttpSection()
    sources: list[Source] = []

    @model_validator(mode="after")
    def _unique(self) -> Settings:
        seen: set[tuple[str, str | None]] = set()
        for i, peer in enumerate(self.peers):
            key = (peer.ae_title, peer.host)
            if key in seen:
                raise ValueError(f"peers[{i}].ae_title = {peer.ae_title!r}: duplicate peer")
            seen.add(key)
        for i, peer in enumerate(self.peers):
            if (peer.tls_subject or peer.tls_fingerprint) and self.tls.port is None:
                raise ValueError(f"peers[{i}].ae_title = {peer.ae_title!r}: bound to a TLS certificate, but [tls] port is not set")
        sources = [s.name for s in self.sources]
        if len(set(sources)) != len(sources):
            raise ValueError(f"sources: duplicate name {next(n for n in sources if sources.count(n) > 1)!r}")
        names: set[str] = set()
        for i, dest in enumerate(self.destinations):
            if dest.name in names:
                raise ValueError(f"destinations[{i}].name = {dest.name!r}: duplicate destination name")
            names.add(dest.name)
            if dest.backoff_max_seconds >= self.queue.visibility_timeout:
                raise ValueError(
                    f"destinations[{i}].backoff_max_seconds = {dest.backoff_max_seconds}: "
                    f"must be below queue.visibility_timeout ({self.queue.visibility_timeout})"
                )
        return self

    @property
    def ledger_url(self) -> str:
        if self.storage.ledger_url is not None:
            return self.storage.ledger_url.get_secret_value()
        return f"sqlite:///{self.storage.data_dir / 'ledger.sqlite'}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = settings_cls.model_config.get("toml_file")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


def _format_error(err: Any) -> str:
    loc = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in err["loc"]).replace(".[", "[")
    msg = str(err["msg"]).removeprefix("Value error, ")
    if not loc:
        return msg
    value = err.get("input")
    if isinstance(value, dict | list):
        return f"{loc}: {msg}"
    return f"{loc} = {value!r}: {msg}"


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read and validate the configuration.

    ``path`` (else ``$ALNNODE_CONFIG``, else built-in defaults) is a TOML file; environment
    variables ``ALNNODE_<SECTION>__<KEY>`` override it; ``overrides`` (sections as dicts) win.
    Raises ``ConfigError`` with one line per problem.
    """
    chosen = path if path is not None else os.environ.get(ENV_CONFIG)
    toml_file: Path | None = None
    if chosen:
        toml_file = Path(chosen)
        if not toml_file.is_file():
            raise ConfigError([f"config file {str(toml_file)!r} does not exist or is not a file"])
        try:
            import tomllib

            tomllib.loads(toml_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError([f"config file {str(toml_file)!r}: {exc}"]) from exc

    class _FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=toml_file)

    try:
        loaded = _FileSettings(**overrides)
    except ValidationError as exc:
        raise ConfigError([_format_error(e) for e in exc.errors()]) from None
    return Settings.model_validate(loaded.model_dump())


def mask_url(url: str) -> str:
    """``scheme://user:***@host/...``: a URL's password is never printed (ledger and broker URLs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def mask_secrets(text: str) -> str:
    """Mask the password of every ``scheme://user:password@`` URL in ``text`` (errors, logs, the ledger)."""
    return _URL_PASSWORD.sub(r"\1***@", text)


_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^@/\s]+@")


def effective_toml(settings: Settings) -> str:
    """Render the effective configuration as TOML (secrets masked) for ``alnnode config check``."""

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    def table(header: str, data: dict[str, Any]) -> list[str]:
        lines = [header]
        for key, value in data.items():
            if (
                value is None
                or isinstance(value, dict)
                or (isinstance(value, list) and value and isinstance(value[0], dict))
            ):
                continue
            if isinstance(value, SecretStr):
                secret = value.get_secret_value()
                value = mask_url(secret) if "://" in secret else "***"
            elif isinstance(value, str):
                value = mask_secrets(value)
            lines.append(f"{key} = {scalar(value)}")
        return lines + [""]

    out: list[str] = []
    for section in ("node", "storage", "queue", "model", "retention", "audit", "tls", "http"):
        out += table(f"[{section}]", dict(getattr(settings, section)))
    for cred in settings.http.credentials:
        out += table("[[http.credentials]]", dict(cred))
    for name in ("peers", "destinations", "sources"):
        for item in getattr(settings, name):
            out += table(f"[[{name}]]", dict(item))
    out.insert(0, f"# ledger: {mask_url(settings.ledger_url)}")
    return "\n".join(out)
