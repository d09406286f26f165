"""Provenance of a research result: what went in (with SHA-256), which model weights, which software, when,
and the command line, so that a number in a report can be traced and reproduced."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
import shlex
from collections.abc import Iterable, Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

PACKAGES = ("aln-node", "numpy", "scipy", "scikit-learn", "statsmodels", "pydicom", "torch", "monai")


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def versions(packages: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions (from package metadata: nothing is imported), ``None`` when not installed."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = None
    return out


def bundle_uids(folder: Path) -> dict[str, str]:
    """``model_uid`` of every bundle in or under ``folder`` (a bundle, or a ``train`` run with fold bundles)."""
    out: dict[str, str] = {}
    candidates = [folder / "configs" / "metadata.json", *sorted(folder.glob("*/configs/metadata.json")),
                  *sorted(folder.glob("fold*/bundle/configs/metadata.json"))]  # fmt: skip
    for meta in candidates:
        try:
            uid = json.loads(meta.read_text()).get("model_uid")
        except (OSError, ValueError):
            continue
        if isinstance(uid, str):
            out[str(meta.parent.parent.relative_to(folder)) if meta.parent.parent != folder else "."] = uid
    return out


def provenance(inputs: Sequence[tuple[str, Path]], bundles: Sequence[tuple[str, Path]], argv: Sequence[str],
               prog: str = "alnnode evaluate") -> dict[str, Any]:  # fmt: skip
    """The ``provenance`` block of ``metrics.json``: inputs (role, path, SHA-256, bytes), model UIDs of the
    bundles used or found beside the predictions, package versions, UTC date and the command line."""
    files = []
    for role, path in inputs:
        if path.is_file():
            files.append({"role": role, "path": str(path.resolve()), "sha256": sha256(path), "bytes": path.stat().st_size})
    models: dict[str, dict[str, str]] = {}
    for name, folder in bundles:
        uids = bundle_uids(folder)
        if uids:
            models[name] = uids
    return {"inputs": files, "model_uids": models, "versions": versions(),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": f"{prog} {shlex.join(list(argv))}".strip()}  # fmt: skip
