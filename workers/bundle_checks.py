"""Checks of a bundle on load: metadata fields and types, versions, and weights that fit the declared model.

Each failure is a :class:`~workers.errors.BundleError` whose message starts with the offending field.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from workers.errors import BundleError
from workers.models import ARCHS, ClipClassifier, build

VERSION_RE = re.compile(r"^\d+\.\d+\.\d+([.+-].*)?$")
REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "version": str, "monai_version": str, "pytorch_version": str, "numpy_version": str, "changelog": dict,
    "name": str, "task": str, "description": str, "authors": str, "copyright": str, "intended_use": str,
    "data_source": str, "synthetic_only": bool, "untrained": bool, "arch": str, "options": dict,
    "class_names": list, "network_data_format": dict, "model_uid": str,
}  # fmt: skip


def check_metadata(metadata: Any) -> None:
    if not isinstance(metadata, dict):
        raise BundleError("configs/metadata.json: not a JSON object")
    for key, kind in REQUIRED_FIELDS.items():
        if key not in metadata:
            raise BundleError(f"{key}: missing in configs/metadata.json")
        if not isinstance(metadata[key], kind):
            raise BundleError(
                f"{key}: expected {getattr(kind, '__name__', kind)}, got {type(metadata[key]).__name__}"
            )
    if metadata["arch"] not in ARCHS:
        raise BundleError(f"arch: {metadata['arch']!r} is not one of {', '.join(ARCHS)}")
    if not VERSION_RE.match(metadata["version"]):
        raise BundleError(f"version: {metadata['version']!r} is not a semantic version")
    if not re.fullmatch(r"2\.25\.(0|[1-9]\d{0,38})", metadata["model_uid"]):
        raise BundleError(f"model_uid: {metadata['model_uid']!r} is not a 2.25 UID")
    if len(metadata["class_names"]) != 2:
        raise BundleError(f"class_names: expected 2 classes, got {metadata['class_names']}")
    wanted, running = major_version(metadata["pytorch_version"]), major_version(torch.__version__)
    if wanted is None or wanted != running:
        raise BundleError(
            f"pytorch_version: bundle made with {metadata['pytorch_version']}, running {torch.__version__}"
        )
    try:
        video = metadata["network_data_format"]["inputs"]["video"]
        _ = metadata["network_data_format"]["outputs"]["pred"]
    except (KeyError, TypeError) as exc:
        raise BundleError(f"network_data_format: missing {exc}") from exc
    for key, kind in (("frames", int), ("spatial_shape", list), ("num_channels", int)):
        if not isinstance(video.get(key), kind) or isinstance(video.get(key), bool):
            raise BundleError(
                f"network_data_format.inputs.video.{key}: expected {kind.__name__}, got {video.get(key)!r}"
            )
    if video["num_channels"] != 3:
        raise BundleError(
            f"network_data_format.inputs.video.num_channels: expected 3, got {video['num_channels']}"
        )


def check_state(arch: str, options: dict[str, Any], state: dict[str, torch.Tensor]) -> ClipClassifier:
    """Build ``arch`` (on the meta device: no init cost) and check the state dict fits it exactly."""
    try:
        with torch.device("meta"):
            model = build(arch, **options)
    except ValueError as exc:
        raise BundleError(f"arch/options: {arch!r} cannot be built with options {options}: {exc}") from exc
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise BundleError(
            f"arch: the weights are not a {arch} model with options {options} "
            f"(missing {len(missing)} keys e.g. {missing[:2]}, unexpected {len(unexpected)} e.g. {unexpected[:2]})"
        )
    wrong = [k for k in own if own[k].shape != state[k].shape]
    if wrong:
        raise BundleError(f"options: {options} give shapes that differ from the weights at {wrong[:3]}")
    frames = int(state["clip_frames"])
    if frames != model.frames:
        raise BundleError(f"options: frames={model.frames} but the weights were built for {frames}")
    return model



def major_version(version: str) -> int | None:
    match = re.match(r"(\d+)\.", version)
    return int(match.group(1)) if match else None
