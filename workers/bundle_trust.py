"""What a bundle's ``model_uid`` covers, and the calibration / OOD statistics stored beside the weights.

Every result names the model by its UID, and the node refuses research-only bundles (untrained, or trained on
synthetic phantoms, even in part) unless ``[model] allow_research_models`` is set. Those flags, the calibration
(temperature and operating point) and the out-of-distribution statistics change what a result says, so they are
hashed with the weights (PS3.5 B.2 ``2.25`` UID from the first 128 bits of a SHA-256): editing
``metadata.json`` to clear ``synthetic_only`` or change a threshold makes the bundle fail to load, naming
``model_uid``. Bundles written before this scheme (no ``model_uid_covers``) hash the weights only; they still
load when they declare themselves research-only (nothing to bypass), and are refused otherwise.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.calibration import Calibration
from workers.errors import BundleError
from workers.ood import OodStats

COVERS = ["weights", "synthetic_only", "untrained", "calibration", "ood"]


def _weights_digest(digest: Any, state: dict[str, torch.Tensor]) -> None:
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def _uid(digest: Any) -> str:
    return "2.25." + str(int.from_bytes(digest.digest()[:16], "big"))


def legacy_uid(state: dict[str, torch.Tensor]) -> str:
    """The weights-only UID of bundles written before :data:`COVERS`."""
    digest = hashlib.sha256()
    _weights_digest(digest, state)
    return _uid(digest)


def bundle_uid(state: dict[str, torch.Tensor], metadata: dict[str, Any], ood_arrays: dict[str, np.ndarray] | None) -> str:
    """SHA-256 over the weights, the research flags, calibration, OOD metadata and OOD arrays."""
    digest = hashlib.sha256()
    _weights_digest(digest, state)
    covered = {k: metadata.get(k) for k in COVERS if k != "weights"}
    digest.update(b"|metadata|" + json.dumps(covered, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(ood_arrays or {}):
        array = np.ascontiguousarray((ood_arrays or {})[name], dtype=np.float64)
        digest.update(f"|ood.{name}|{array.shape}|".encode() + array.tobytes())
    return _uid(digest)


def stamp(state: dict[str, torch.Tensor], metadata: dict[str, Any], root: Path, calibration: Calibration | None,
          ood: OodStats | None) -> None:  # fmt: skip
    """Put calibration and OOD statistics into ``metadata`` (arrays under ``root``) and set ``model_uid``."""
    metadata["calibration"] = calibration.to_dict() if calibration is not None else None
    metadata["ood"] = ood.metadata() if ood is not None else None
    if ood is not None:
        ood.save(root)
    metadata["model_uid_covers"] = list(COVERS)
    metadata["model_uid"] = bundle_uid(state, metadata, ood.arrays() if ood is not None else None)


def verify(state: dict[str, torch.Tensor], metadata: dict[str, Any], root: Path) -> tuple[Calibration | None, OodStats | None]:
    """Check ``model_uid`` against what it covers; return the bundle's calibration and OOD statistics.

    Raises
    ------
    BundleError
        ``model_uid`` does not match (weights, flags, calibration or OOD statistics were changed), or the
        calibration / OOD entries are unreadable.
    """
    uid = metadata["model_uid"]
    if "model_uid_covers" not in metadata:
        if legacy_uid(state) != uid:
            raise BundleError(f"model_uid: {uid} does not match the weights in {root / 'models' / 'model.pt'}")
        if not (metadata.get("synthetic_only") or metadata.get("untrained")):
            raise BundleError(f"model_uid: {uid} covers the weights only (bundle from before aln-node 0.2), so "
                              "its clinical flags cannot be trusted; train or save the bundle again")  # fmt: skip
        return None, None
    try:
        calibration = Calibration.from_dict(metadata["calibration"]) if metadata.get("calibration") else None
        ood = OodStats.load(root, metadata["ood"]) if metadata.get("ood") else None
    except ValueError as exc:
        raise BundleError(str(exc)) from exc
    if bundle_uid(state, metadata, ood.arrays() if ood is not None else None) != uid:
        raise BundleError(f"model_uid: {uid} does not match the weights, research flags, calibration and OOD "
                          f"statistics of bundle {root} (metadata.json or models/ edited?)")  # fmt: skip
    return calibration, ood


def add_statistics(root: Path, calibration: Calibration | None, ood: OodStats | None) -> str:
    """Store calibration / OOD statistics in a saved bundle (``alnnode train``); returns the new model UID."""
    from workers.models.card import model_card

    root = Path(root)
    meta_path = root / "configs" / "metadata.json"
    metadata = json.loads(meta_path.read_text())
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    verify(state, metadata, root)
    stamp(state, metadata, root, calibration, ood)
    meta_path.write_text(json.dumps(metadata, indent=2) + "\n")
    (root / "docs" / "README.md").write_text(model_card(metadata))
    inference = root / "configs" / "inference.json"  # the standalone run names the model UID too (#15)
    if inference.is_file():
        config = json.loads(inference.read_text())
        if isinstance(config.get("result"), dict) and "model_uid" in config["result"]:
            config["result"]["model_uid"] = metadata["model_uid"]
            inference.write_text(json.dumps(config, indent=2) + "\n")
    return str(metadata["model_uid"])
