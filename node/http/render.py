"""Rendered frames for WADO-RS (PS3.18 8.3.5 / 10.4.1.1.3): one frame as 8-bit JPEG or PNG.

Pixel data is decoded by pydicom's pixel handlers (pylibjpeg, GDCM) one frame at a time; YBR is
converted to RGB, palette colour through its LUTs (PS3.3 C.7.6.3.1.5), monochrome through the VOI
LUT or window (PS3.3 C.11.2), MONOCHROME1 inverted. No torch or monai on the edge.
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
from fastapi import HTTPException
from PIL import Image
from pydicom.pixels import apply_color_lut, apply_voi_lut, pixel_array

from node.http.dicomweb_index import Entry


def render(entry: Entry, frame: int, media: str) -> bytes:
    header = entry.header
    if "Rows" not in header:
        raise HTTPException(406, f"instance {entry.sop_instance} has no pixel data to render")
    frames = int(header.get("NumberOfFrames", 1) or 1)
    if frame > frames:
        raise HTTPException(404, f"frame {frame} does not exist (the instance has {frames})")
    try:
        arr = pixel_array(str(entry.path), index=frame - 1 if frames > 1 else None)
    except Exception as exc:  # a codec the node cannot decode
        raise HTTPException(
            406, f"pixel data of {entry.sop_instance} cannot be decoded here: {exc}"
        ) from None
    photometric = str(header.get("PhotometricInterpretation", ""))
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, header)
    elif photometric.startswith("MONOCHROME"):
        arr = apply_voi_lut(arr, header).astype(np.float64)
        low, high = float(arr.min()), float(arr.max())
        arr = (arr - low) / (high - low or 1.0) * 255.0
        if photometric == "MONOCHROME1":
            arr = 255.0 - arr
    if arr.dtype != np.uint8:
        peak = float(arr.max()) or 1.0
        arr = arr / (65535.0 if peak > 255 else 255.0) * 255.0 if peak > 255 else arr
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    buf = BytesIO()
    Image.fromarray(arr).save(buf, "PNG" if media == "image/png" else "JPEG", quality=90)
    return buf.getvalue()
