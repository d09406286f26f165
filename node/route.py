"""Routing: which received objects are classified, and whether the configured model may be used.

The node reads only the bundle's ``configs/metadata.json`` (no torch): enough to refuse an untrained
or synthetic-only model unless the operator opted in with ``allow_research_models``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from node.config import Settings
from node.errors import ConfigError
from node.receive.contexts import ULTRASOUND_SOP_CLASSES, name_of


@dataclass(frozen=True)
class BundleSummary:
    name: str
    arch: str
    version: str
    model_uid: str
    synthetic_only: bool
    untrained: bool

    @property
    def research_only(self) -> bool:
        return self.synthetic_only or self.untrained


def check_bundle(settings: Settings) -> BundleSummary | None:
    """Read the configured bundle's metadata; raise ``ConfigError`` naming the problem."""
    path = settings.model.bundle
    if path is None:
        return None
    meta_path = path / "configs" / "metadata.json"
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"model.bundle = {str(path)!r}: no configs/metadata.json (not a MONAI bundle)"]) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError([f"model.bundle = {str(path)!r}: configs/metadata.json is unreadable: {exc}"]) from None
    missing = [k for k in ("name", "arch", "version", "model_uid") if not isinstance(meta.get(k), str)]
    if missing:
        raise ConfigError([f"model.bundle = {str(path)!r}: metadata.json lacks {', '.join(missing)}"])
    summary = BundleSummary(
        name=meta["name"],
        arch=meta["arch"],
        version=meta["version"],
        model_uid=meta["model_uid"],
        synthetic_only=bool(meta.get("synthetic_only", True)),
        untrained=bool(meta.get("untrained", False)),
    )
    if summary.research_only and not settings.model.allow_research_models:
        what = "untrained (random weights)" if summary.untrained else "trained on synthetic data only"
        raise ConfigError(
            [
                f"model.bundle = {str(path)!r}: the model is {what}; "
                "set model.allow_research_models = true to run it for research"
            ]
        )
    return summary


def skip_reason(settings: Settings, sop_class_uid: str, frames: int | None) -> str | None:
    """Why an object is not classified (None: classify it)."""
    if settings.model.bundle is None:
        return "no model bundle configured ([model] bundle)"
    if sop_class_uid not in ULTRASOUND_SOP_CLASSES:
        return f"{name_of(sop_class_uid)} is not an ultrasound object"
    n = frames or 1
    if n < settings.model.min_frames:
        return f"{n} frame(s), fewer than model.min_frames = {settings.model.min_frames}"
    return None
