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
