"""MONAI-layout model bundles: save, verify on load, and the ``alnnode bundle`` CLI.

Layout (MONAI bundle specification, ``docs/source/mb_specification.rst``)::

    BUNDLE/configs/metadata.json   what the model is, its input/output contract, versions, model_uid
    BUNDLE/configs/inference.json  MONAI config: ``network_def`` with ``_target_: workers.models.build``
    BUNDLE/models/model.pt         state dict (no pickled code)
    BUNDLE/models/model.ts         TorchScript (optional)
    BUNDLE/docs/README.md          model card

``model_uid`` is a DICOM UID of the ``2.25.<integer>`` form (PS3.5 B.2) made from the first 128 bits
of the SHA-256 of the weights, so every result can name the exact weights that produced it and the
UID changes whenever any weight changes. Loading refuses a bundle whose metadata and weights disagree,
naming the field.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch

from workers import __version__ as aln_version
from workers.errors import BundleError
from workers.models import ARCHS, ClipClassifier, build
from workers.models.card import model_card
from workers.prediction import ModelInfo

logger = logging.getLogger(__name__)

CLASS_NAMES = ["no ALN metastasis", "ALN metastasis"]
INTENDED_USE = "research use only, not for diagnostic use"
_SCHEMA = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json"
)
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+([.+-].*)?$")
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "version": str, "monai_version": str, "pytorch_version": str, "numpy_version": str, "changelog": dict,
    "name": str, "task": str, "description": str, "authors": str, "copyright": str, "intended_use": str,
    "data_source": str, "synthetic_only": bool, "untrained": bool, "arch": str, "options": dict,
    "class_names": list, "network_data_format": dict, "model_uid": str,
}  # fmt: skip


@dataclass
class LoadedBundle:
    """A verified bundle: the model (eval mode, on ``device``) and what results must say about it."""

    model: ClipClassifier
    metadata: dict[str, Any]
    info: ModelInfo
    frames: int
    size: int
    path: Path | None = None
    device: str = "cpu"
    explainer: Any = field(default=None, repr=False, compare=False)  # Grad-CAM object, made on first use


def weights_uid(state: dict[str, torch.Tensor]) -> str:
    """DICOM UID ``2.25.<int>`` from the SHA-256 over names, dtypes, shapes and bytes of a state dict."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "2.25." + str(int.from_bytes(digest.digest()[:16], "big"))


def _data_format(frames: int, size: int) -> dict[str, Any]:
    channel_def = {str(i): name for i, name in enumerate(CLASS_NAMES)}
    return {
        "inputs": {
            "video": {
                "type": "video", "format": "RGB", "modality": "US", "num_channels": 3,
                "spatial_shape": [size, size], "frames": frames, "dtype": "float32", "value_range": [0, 1],
                "is_patch_data": False, "channel_def": {"0": "R", "1": "G", "2": "B"},
                "layout": "N,C,T,H,W",
            }
        },
        "outputs": {
            "pred": {
                "type": "probabilities", "format": "classes", "num_channels": 2, "spatial_shape": [2],
                "dtype": "float32", "value_range": [0, 1], "is_onehot": False, "channel_def": channel_def,
                "network_output": "logits (softmax in inference.json postprocessing)",
            }
        },
    }  # fmt: skip


def _inference_config(arch: str, options: dict[str, Any]) -> dict[str, Any]:
    return {
        "imports": ["$import torch", "$import workers.models"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "workers.models.build", "arch": arch, **options},
        "network": "$@network_def.to(@device)",
        "checkpoint": "$@bundle_root + '/models/model.pt'",
        "load_weights": "$@network.load_state_dict(torch.load(@checkpoint, map_location=@device, weights_only=True))",
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Activations", "softmax": True},
        "preprocessing_note": "frames are decoded, cropped and sampled by workers.preprocess; see docs/README.md",
    }


def save_bundle(
    model: ClipClassifier,
    out_dir: str | Path,
    *,
    arch: str,
    options: dict[str, Any],
    name: str,
    synthetic_only: bool,
    untrained: bool = False,
    training: dict[str, Any] | None = None,
    version: str = "0.1.0",
    torchscript: bool = False,
) -> Path:
    """Write ``model`` as a MONAI bundle directory and return its path.

    ``arch`` and ``options`` must rebuild ``model`` with :func:`workers.models.build` (checked).
    ``training`` (epochs, data, metrics, ...) is recorded as is; its ``data_source`` key, when
    present, replaces the default description of the training data.
    """
    if arch not in ARCHS:
        raise BundleError(f"arch: {arch!r} is not one of {', '.join(ARCHS)}")
    if not _VERSION_RE.match(version):
        raise BundleError(f"version: {version!r} is not a semantic version")
    options = {k: v for k, v in options.items() if k != "weights"}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _check_state(arch, options, state)
    frames, size = int(state["clip_frames"]), int(state["clip_size"])
    training = dict(training or {})
    if untrained:
        data_source = "none: random initial weights (alnnode bundle create); not trained on any data"
    elif synthetic_only:
        data_source = "synthetic breast-ultrasound cine loops generated by aln-node (no patient data)"
    else:
        data_source = "user-supplied labelled breast-ultrasound cine loops (see training)"
    metadata: dict[str, Any] = {
        "schema": _SCHEMA,
        "version": version,
        "changelog": {version: "untrained bundle" if untrained else "trained bundle"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "aln_node_version": aln_version,
        "required_packages_version": {"torchvision": _torchvision_version()},
        "name": name,
        "task": "Prediction of axillary lymph node metastasis from a breast-ultrasound cine loop",
        "description": f"{arch} video classifier ({_describe(options)}), 2 classes, after the ALN-US video study",
        "authors": "aln-node",
        "copyright": "Copyright (c) aln-node contributors",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "intended_use": INTENDED_USE,
        "data_source": str(training.get("data_source", data_source)),
        "data_type": "dicom",
        "synthetic_only": bool(synthetic_only or untrained),
        "untrained": bool(untrained),
        "arch": arch,
        "options": options,
        "class_names": list(CLASS_NAMES),
        "training": training,
        "references": ['Shao H, Qian S, Liu Y. "Temporal Interlacing Network", AAAI 2020'],
        "network_data_format": _data_format(frames, size),
        "model_uid": weights_uid(state),
    }
    out = Path(out_dir)
    for sub in ("configs", "models", "docs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    torch.save(state, out / "models" / "model.pt")
    (out / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    (out / "configs" / "inference.json").write_text(
        json.dumps(_inference_config(arch, options), indent=2) + "\n"
    )
    (out / "docs" / "README.md").write_text(model_card(metadata))
    if torchscript:
        _save_torchscript(model, out / "models" / "model.ts", frames, size)
    logger.info("bundle %s (%s, %s) written to %s", name, arch, metadata["model_uid"], out)
    return out


def load_bundle(path: str | Path, device: str = "cpu") -> LoadedBundle:
    """Load and verify a bundle; the model comes back in eval mode on ``device``.

    Raises
    ------
    BundleError
        Missing files, missing or mistyped metadata fields, unknown arch, incompatible versions,
        weights that do not match ``model_uid``, or metadata (arch, options, frames, size) that does
        not describe the weights. The message starts with the offending field.
    """
    root = Path(path)
    meta_path, weights_path = root / "configs" / "metadata.json", root / "models" / "model.pt"
    for needed in (meta_path, weights_path):
        if not needed.is_file():
            raise BundleError(f"{needed.relative_to(root)}: missing in bundle {root}")
    try:
        metadata = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"configs/metadata.json: not readable JSON in {root}: {exc}") from exc
    _check_metadata(metadata)
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt file
        raise BundleError(f"models/model.pt: cannot be read ({exc})") from exc
    if not isinstance(state, dict) or "clip_frames" not in state:
        raise BundleError("models/model.pt: not an aln-node state dict (no clip_frames)")
    if weights_uid(state) != metadata["model_uid"]:
        raise BundleError(f"model_uid: {metadata['model_uid']} does not match the weights in {weights_path}")
    video = metadata["network_data_format"]["inputs"]["video"]
    frames, size = int(state["clip_frames"]), int(state["clip_size"])
    if video["frames"] != frames:
        raise BundleError(
            f"network_data_format.inputs.video.frames: metadata says {video['frames']}, weights were built for {frames}"
        )
    if list(video["spatial_shape"]) != [size, size]:
        raise BundleError(
            f"network_data_format.inputs.video.spatial_shape: metadata says {video['spatial_shape']}, weights were built for {[size, size]}"
        )
    model = _check_state(metadata["arch"], metadata["options"], state)
    model.load_state_dict(state, strict=True, assign=True)
    model = model.to(device).eval()
    info = ModelInfo(
        name=metadata["name"], arch=metadata["arch"], version=metadata["version"], model_uid=metadata["model_uid"],
        synthetic_only=metadata["synthetic_only"], untrained=metadata["untrained"],
    )  # fmt: skip
    logger.info("bundle %s loaded from %s (%s, %s) on %s", info.name, root, info.arch, info.model_uid, device)
    return LoadedBundle(model, metadata, info, frames, size, root, str(device))


def _check_metadata(metadata: Any) -> None:
    if not isinstance(metadata, dict):
        raise BundleError("configs/metadata.json: not a JSON object")
    for key, kind in _REQUIRED.items():
        if key not in metadata:
            raise BundleError(f"{key}: missing in configs/metadata.json")
        if not isinstance(metadata[key], kind):
            raise BundleError(
                f"{key}: expected {getattr(kind, '__name__', kind)}, got {type(metadata[key]).__name__}"
            )
    if metadata["arch"] not in ARCHS:
        raise BundleError(f"arch: {metadata['arch']!r} is not one of {', '.join(ARCHS)}")
    if not _VERSION_RE.match(metadata["version"]):
        raise BundleError(f"version: {metadata['version']!r} is not a semantic version")
    if not re.fullmatch(r"2\.25\.(0|[1-9]\d{0,38})", metadata["model_uid"]):
        raise BundleError(f"model_uid: {metadata['model_uid']!r} is not a 2.25 UID")
    if len(metadata["class_names"]) != 2:
        raise BundleError(f"class_names: expected 2 classes, got {metadata['class_names']}")
    wanted, running = _major(metadata["pytorch_version"]), _major(torch.__version__)
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


def _check_state(arch: str, options: dict[str, Any], state: dict[str, torch.Tensor]) -> ClipClassifier:
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


def _save_torchscript(model: ClipClassifier, path: Path, frames: int, size: int) -> None:
    example = torch.rand(1, 3, frames, size, size, device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch.jit is deprecated upstream but still the format MONAI bundles ship (models/model.ts);
            # the tracer's shape-check warnings concern input checks that are constant for a fixed clip size
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.jit.save(torch.jit.trace(model, example, check_trace=False), str(path))
    except (RuntimeError, TypeError) as exc:
        logger.warning("TorchScript export of %s failed, bundle has no model.ts: %s", model.arch, exc)
    finally:
        model.train(was_training)


def _major(version: str) -> int | None:
    match = re.match(r"(\d+)\.", version)
    return int(match.group(1)) if match else None


def _describe(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(options.items())) or "default options"


def _torchvision_version() -> str:
    import torchvision

    return str(torchvision.__version__).split("+")[0]


def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE parsed as JSON when it is JSON (``depth=18`` -> 18), else kept as text."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"model option wants KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def main(argv: list[str] | None = None) -> int:
    """``alnnode bundle create --arch ARCH --out DIR [--option k=v ...] [--name NAME]`` and ``verify DIR``."""
    parser = argparse.ArgumentParser(
        prog="alnnode bundle", description="Create or verify aln-node model bundles."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="write an UNTRAINED bundle (random weights) for pipeline tests")
    create.add_argument("--arch", required=True, choices=ARCHS)
    create.add_argument("--out", required=True, type=Path)
    create.add_argument("--option", action="append", default=[], type=parse_option, metavar="KEY=VALUE")
    create.add_argument("--name", default=None)
    create.add_argument("--seed", type=int, default=0)
    create.add_argument("--torchscript", action="store_true", help="also write models/model.ts")
    verify = sub.add_parser("verify", help="load a bundle, check it, print what it is")
    verify.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "create":
            options = dict(args.option)
            torch.manual_seed(args.seed)
            model = build(args.arch, **options)
            name = args.name or f"aln-{args.arch}-untrained"
            out = save_bundle(model, args.out, arch=args.arch, options=options, name=name, synthetic_only=True,
                              untrained=True, torchscript=args.torchscript)  # fmt: skip
            print(f"untrained {args.arch} bundle written to {out.resolve()}")
        else:
            loaded = load_bundle(args.path)
            print(json.dumps({"path": str(args.path.resolve()), **loaded.info.__dict__, "frames": loaded.frames,
                              "size": loaded.size, "options": loaded.metadata["options"]}, indent=2))  # fmt: skip
    except (BundleError, ValueError) as exc:
        print(f"alnnode bundle: error: {exc}")
        return 2
    return 0
