"""Rendering of Grad-CAM overlays with a burned-in information panel (numpy, matplotlib LUT, Pillow).

Layout of one rendered frame (width = source Columns)::

    +--------------------------------------+
    |  source frame, 1:1 pixels, with the  |  rows 0 .. Rows-1: same pixel coordinates as the
    |  Grad-CAM blended where CAM > floor  |  source frame, so a viewer's cursor position maps
    |  and corner marks around the crop    |  back to the loop
    +--------------------------------------+
    |  banner text            colour bar   |  appended panel: never hides anatomy (on frames too
    +--------------------------------------+  narrow for both, the colour bar goes below the text)
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from workers.prediction import Box

CAM_FLOOR = 0.2  # below this the map is noise and is not drawn
MAX_ALPHA = 0.55  # strongest overlay still lets the echo texture show through
COLORMAP = "jet"
PANEL_BG = (16, 16, 16)
WHITE = (255, 255, 255)
YELLOW = (255, 215, 0)
ORANGE = (255, 140, 0)
LIGHT_GREEN = (144, 238, 144)
GREY = (170, 170, 170)

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class BannerLine:
    """One line of burned-in text: parts drawn left to right, each in its own colour."""

    parts: tuple[tuple[str, RGB], ...]

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.parts)


@functools.cache
def colormap_lut(name: str = COLORMAP) -> np.ndarray:
    """256 x 3 uint8 lookup table of a matplotlib colormap (no pyplot, no display)."""
    cmap = matplotlib.colormaps[name]
    return np.round(cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).astype(np.uint8)


def blend_cam(
    frame_rgb: np.ndarray,
    cam: np.ndarray,
    *,
    floor: float = CAM_FLOOR,
    max_alpha: float = MAX_ALPHA,
    colormap: str = COLORMAP,
) -> np.ndarray:
    """Alpha-blend a colour-mapped CAM onto an RGB frame where the CAM exceeds ``floor``.

    Opacity rises linearly from 0 at ``floor`` to ``max_alpha`` at 1, so the overlay has soft
    edges and weak evidence stays faint.
    """
    if frame_rgb.shape[:2] != cam.shape or frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3:
        raise ValueError(f"frame {frame_rgb.shape} and CAM {cam.shape} do not have the same rows x columns")
    weights = np.clip(np.nan_to_num(cam.astype(np.float32)), 0.0, 1.0)
    colours = colormap_lut(colormap)[np.round(weights * 255.0).astype(np.uint8)].astype(np.float32)
    alpha = np.clip((weights - floor) / max(1.0 - floor, 1e-6), 0.0, 1.0) * max_alpha
    alpha = alpha[..., None]
    blended = frame_rgb.astype(np.float32) * (1.0 - alpha) + colours * alpha
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _font_size(width: int) -> int:
    # About 1/36 of the image width: 18 px on a 640-column frame, readable at 1:1 on a PACS screen.
    return max(11, round(width / 36))


def _corner_marks(draw: ImageDraw.ImageDraw, box: Box, rows: int, cols: int) -> None:
    """L-shaped marks at the corners of the analysed region (less clutter than a full frame)."""
    y0, x0 = max(box.y0, 0), max(box.x0, 0)
    y1, x1 = min(box.y1, rows) - 1, min(box.x1, cols) - 1
    if y1 <= y0 or x1 <= x0:
        return
    arm = max(6, min(x1 - x0, y1 - y0) // 12)
    for cy, cx, dy, dx in ((y0, x0, 1, 1), (y0, x1, 1, -1), (y1, x0, -1, 1), (y1, x1, -1, -1)):
        draw.line([(cx, cy), (cx + dx * arm, cy)], fill=GREY, width=2)
        draw.line([(cx, cy), (cx, cy + dy * arm)], fill=GREY, width=2)


def _colour_bar(draw: ImageDraw.ImageDraw, left: int, top: int, width: int, size: int) -> None:
    """Horizontal colour bar of the displayed CAM range (floor .. 1) with its labels."""
    font = _font(max(10, int(size * 0.8)))
    draw.text((left, top), "Grad-CAM", fill=WHITE, font=font)
    bar_top = top + int(size * 1.2)
    bar_height = max(8, int(size * 0.9))
    lut = colormap_lut()
    for i in range(width):
        level = CAM_FLOOR + (1.0 - CAM_FLOOR) * i / max(width - 1, 1)
        colour = tuple(int(c) for c in lut[round(level * 255)])
        draw.line([(left + i, bar_top), (left + i, bar_top + bar_height)], fill=colour)
    draw.rectangle([left - 1, bar_top - 1, left + width, bar_top + bar_height + 1], outline=GREY)
    label_top = bar_top + bar_height + 3
    draw.text((left, label_top), "low", fill=GREY, font=font)
    draw.text((left + width, label_top), "high", fill=GREY, font=font, anchor="ra")


@dataclass(frozen=True)
class _Layout:
    """Where the panel's parts go: the text beside the colour bar, or (narrow frames) above it."""

    size: int  # nominal font size of the frame width: line spacing, colour bar
    font_size: int  # the text's font, shrunk (not below 9) until the longest line fits
    margin: int
    bar_width: int
    stacked: bool
    text: tuple[tuple[tuple[str, RGB], ...], ...]  # the lines as drawn (wrapped at spaces if need be)
    text_height: int
    height: int  # of the whole panel


def _width(parts: Sequence[tuple[str, RGB]], font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> float:
    return sum(font.getlength(text) for text, _ in parts)


def _wrap(line: BannerLine, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: float) -> list[tuple[tuple[str, RGB], ...]]:
    """Break ``line`` at spaces into lines no wider than ``width`` (a single longer word stays whole)."""
    out: list[list[tuple[str, RGB]]] = [[]]
    for text, colour in line.parts:
        for token in re.findall(r"\S+|\s+", text):
            if out[-1] and not token.isspace() and _width([*out[-1], (token, colour)], font) > width:
                while out[-1] and out[-1][-1][0].isspace():
                    out[-1].pop()
                out.append([])
            if token.isspace() and not out[-1]:
                continue  # no leading blanks on a continuation line
            out[-1].append((token, colour))
    return [tuple(parts) for parts in out if parts]


def _layout(cols: int, lines: Sequence[BannerLine]) -> _Layout:
    size = _font_size(cols)
    margin = max(6, size // 2)

    def longest(font_size: int) -> float:
        return max((_font(font_size).getlength(line.text) for line in lines), default=0.0)

    def font_for(width: int) -> int:
        font_size = size
        while font_size > 9 and longest(font_size) > width:
            font_size -= 1
        return font_size

    bar_width = max(60, cols // 5)
    text_width = cols - bar_width - 3 * margin
    font_size = font_for(text_width)
    stacked = longest(font_size) > text_width
    if stacked:  # the text would run under the colour bar: give it the full width, the bar goes below
        text_width = cols - 2 * margin
        font_size = font_for(text_width)
        bar_width = min(text_width, max(60, cols // 3))
    font = _font(font_size)
    text = tuple(wrapped for line in lines for wrapped in _wrap(line, font, text_width))
    text_height = int(len(text) * size * 1.35) + size // 2
    bar_height = int(size * 1.2) + max(8, int(size * 0.9)) + 3 + size
    body = text_height + bar_height if stacked else max(text_height, bar_height)
    return _Layout(size, font_size, margin, bar_width, stacked, text, text_height, body + size // 2)


def panel_height(cols: int, lines: Sequence[BannerLine]) -> int:
    """Rows of the panel that :func:`render_frame` appends for ``lines`` on a frame ``cols`` wide."""
    return _layout(cols, lines).height


def render_frame(
    frame_rgb: np.ndarray,
    cam: np.ndarray,
    crop: Box | None,
    lines: Sequence[BannerLine],
    panel_rows: int = 0,
) -> np.ndarray:
    """Blend ``cam`` onto ``frame_rgb`` and append the information panel; uint8 (rows + 1 + panel, cols, 3),
    the panel at least ``panel_rows`` high (a cine's frames share the tallest panel).

    The text sits beside the colour bar; on frames too narrow for that (even at a 9-px font) the colour
    bar goes below the text, so nothing overlaps, and a line still too long at a 9-px font wraps at spaces.
    """
    rows, cols = cam.shape
    blended = blend_cam(frame_rgb, cam)
    lay = _layout(cols, lines)
    canvas = Image.new("RGB", (cols, rows + 1 + max(lay.height, panel_rows)), PANEL_BG)
    canvas.paste(Image.fromarray(blended, "RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.line([(0, rows), (cols - 1, rows)], fill=GREY, width=1)  # where the frame ends
    if crop is not None:
        _corner_marks(draw, crop, rows, cols)
    font = _font(lay.font_size)
    y = rows + 1 + lay.margin
    for parts in lay.text:
        x = float(lay.margin)
        for text, colour in parts:
            draw.text((x, y), text, fill=colour, font=font)
            x += font.getlength(text)
        y += int(lay.size * 1.35)
    if lay.stacked:
        _colour_bar(draw, lay.margin, rows + 1 + lay.margin + lay.text_height, lay.bar_width, lay.size)
    else:
        _colour_bar(draw, cols - lay.bar_width - lay.margin, rows + 1 + lay.margin, lay.bar_width, lay.size)
    return np.asarray(canvas, dtype=np.uint8).copy()
