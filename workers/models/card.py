"""The model card (``docs/README.md``) written into every bundle, from its metadata."""

from __future__ import annotations

import json
from typing import Any


def model_card(metadata: dict[str, Any]) -> str:
    """Render a Markdown model card; warnings about untrained / synthetic-only weights come first."""
    video = metadata["network_data_format"]["inputs"]["video"]
    warnings = []
    if metadata.get("untrained"):
        warnings.append(
            "**UNTRAINED**: random weights. Its outputs are meaningless; use it only to test the pipeline."
        )
    if metadata.get("synthetic_only"):
        warnings.append(
            "**Synthetic data only**: never trained on patient data; not validated on real ultrasound."
        )
    lines = [
        f"# {metadata['name']} (version {metadata['version']})",
        "",
        *[f"> {w}" for w in warnings],
        "" if warnings else "",
        f"Intended use: **{metadata['intended_use']}**.",
        "",
        "## What it does",
        metadata["task"] + ". " + metadata["description"] + ".",
        "",
        f"- architecture: `{metadata['arch']}`, options `{json.dumps(metadata['options'], sort_keys=True)}`",
        f"- classes: {', '.join(f'{i} = {c}' for i, c in enumerate(metadata['class_names']))}",
        f"- model UID (SHA-256 of the weights): `{metadata['model_uid']}`",
        f"- made with MONAI {metadata['monai_version']}, PyTorch {metadata['pytorch_version']}",
        "",
        "## Input",
        f"A clip of {video['frames']} frames sampled evenly from a B-mode cine loop, cropped to the ultrasound "
        f"image region, resized to 256x256 and centre-cropped to {video['spatial_shape'][0]}x"
        f"{video['spatial_shape'][1]}, RGB float32 in [0, 1], tensor layout (N, 3, T, H, W).",
        "",
        "## Output",
        "Two logits; softmax gives P(no ALN metastasis), P(ALN metastasis). aln-node averages P(ALN metastasis)",
        "over the clips of a loop and explains the clip with Grad-CAM on the last convolutional stage.",
        "",
        "## Run it without aln-node",
        "`models/model.ts` is the network as TorchScript and `configs/inference.json` a MONAI bundle config that",
        "reads a DICOM cine loop with pydicom, crops its ultrasound region (SequenceOfUltrasoundRegions; the whole",
        "frame without one), samples the evaluation clips, applies the same MONAI transforms and averages the",
        "clips' softmax. Only torch, MONAI, numpy and pydicom are needed; from this folder:",
        "",
        "```sh",
        "python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json \\",
        "    --dataset_file LOOP.dcm --output_file prediction.json",
        "```",
        "",
        "8-bit RGB, YBR and MONOCHROME loops are read as aln-node reads them; palette-colour or deeper grey",
        "loops, and loops without ultrasound regions, need `alnnode` (its decoder and region finder).",
        "",
        "## Training data",
        metadata["data_source"],
        "",
    ]
    training = metadata.get("training") or {}
    if training:
        lines += ["```json", json.dumps(training, indent=2, sort_keys=True, default=str), "```", ""]
    lines += [
        "## Limitations",
        "Research software. The study it follows (271 + 49 patients, two hospitals) reports AUC 0.914 on its",
        "internal and 0.773 on its external test set: performance drops across sites and devices. Validate on",
        "local data before any research use; never use for diagnosis.",
        "",
        "## Reference",
        "Shao H, Qian S, Liu Y. Temporal Interlacing Network. AAAI 2020.",
        "",
    ]
    return "\n".join(lines)
