"""Typed node configuration: a TOML file with ``ALNNODE_<SECTION>__<KEY>`` environment overrides.

Validated once at start-up (``load_config``) and passed down; a bad value stops start-up with one
line per problem naming the key and the value.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from node.errors import ConfigError

ENV_CONFIG = "ALNNODE_CONFIG"
DESTINATION_KINDS = ("dimse", "dicomweb", "orthanc", "folder")


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

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return check_ae_title(v)


class Peer(_Section):
    """A modality allowed to associate; when ``host`` is set the peer address must match it."""

    ae_title: str
    host: str | None = None
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
    ledger_url: str | None = None  # any SQLAlchemy URL; default sqlite:///<data_dir>/ledger.sqlite

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
    password: str | None = None
    token: str | None = None
    path: Path | None = None
    calling_ae_title: str | None = None
    timeout: float = Field(30.0, gt=0)
    max_attempts: int = Field(5, ge=1)
    backoff_seconds: float = Field(2.0, ge=0)
    backoff_max_seconds: float = Field(300.0, ge=0)

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
    broker_url: str | None = None  # None: embedded durable local transport under data_dir
    visibility_timeout: float = Field(900.0, gt=0)
    embedded_workers: int = Field(1, ge=0)


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

    @model_validator(mode="after")
    def _unique(self) -> Settings:
        seen: set[tuple[str, str | None]] = set()
        for i, peer in enumerate(self.peers):
            key = (peer.ae_title, peer.host)
            if key in seen:
                raise ValueError(f"peers[{i}].ae_title = {peer.ae_title!r}: duplicate peer")
            seen.add(key)
        names: set[str] = set()
        for i, dest in enumerate(self.destinations):
            if dest.name in names:
                raise ValueError(f"destinations[{i}].name = {dest.name!r}: duplicate destination name")
            names.add(dest.name)
        return self

    @property
    def ledger_url(self) -> str:
        return self.storage.ledger_url or f"sqlite:///{self.storage.data_dir / 'ledger.sqlite'}"

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


def effective_toml(settings: Settings) -> str:
    """Render the effective configuration as TOML (secrets masked) for ``alnnode config check``."""

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    def table(header: str, data: dict[str, Any]) -> list[str]:
        lines = [header]
        for key, value in data.items():
            if value is None:
                continue
            if key in ("password", "token"):
                value = "***"
            lines.append(f"{key} = {scalar(value)}")
        return lines + [""]

    dumped = settings.model_dump()
    out: list[str] = []
    for section in ("node", "storage", "queue", "model"):
        out += table(f"[{section}]", dumped[section])
    for peer in dumped["peers"]:
        out += table("[[peers]]", peer)
    for dest in dumped["destinations"]:
        out += table("[[destinations]]", dest)
    out.insert(0, f"# ledger: {settings.ledger_url}")
    return "\n".join(out)
