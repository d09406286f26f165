"""Synthetic breast-ultrasound cine loops whose label is visible only in part of the sweep.

A linear probe sweeps (elevationally, with some lateral drift) through a layered breast (skin, subcutaneous
fat with Cooper's ligaments, fibroglandular tissue, retromammary fat, pectoral muscle) holding a hypoechoic
ellipsoidal lesion (1-2 cm wide), so the lesion enters, grows, shrinks and leaves. In positives a slab of the
lesion carries an angular/spiculated margin segment with a 1-1.6 mm echogenic halo and 4-8 microcalcifications
(echogenic foci of about 0.7 mm) -- BI-RADS malignant descriptors -- seen in one contiguous 20-40 % of the
frames; negatives stay circumscribed and oval. The foci and the halo are sized in cm, so they survive the
resize to a small network input (80-112 px) as they would on a real scanner image. Size,
depth, contrast, position, posterior features, cysts, specular reflectors and shadows are drawn from the
same distributions in both classes (the same random stream, in fact), so only the feature carries the label.
Speckle is fully developed: the echo amplitude multiplies circular complex Gaussian scatterers, blurred by
a Gaussian PSF, whose envelope is Rayleigh distributed, then log compressed as a scanner does.

:func:`make_loop` renders one loop in memory; :func:`generate` writes DICOM files, masks and a manifest
and :func:`main` is ``alnnode phantom``.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from workers.research import phantom_dicom as dcm
from workers.research.phantom_dicom import PhantomCase, Region

__all__ = ["LoopMeta", "PhantomCase", "Scene", "describe", "generate", "main", "make_loop", "render", "sample_scene", "sample_sweep"]
logger = logging.getLogger(__name__)

POSTERIOR = ("none", "enhancement", "shadowing")
PSF_SIGMA = (0.5, 0.9, 1.9)
CALC_SIGMA_CM = 0.03  # microcalcifications: echogenic foci of about 0.7 mm (FWHM)  # (frames, rows, columns): elevational, axial and lateral resolution in pixels


@dataclass(frozen=True)
class Lesion:
    """An ellipsoid in tissue coordinates (cm; elevation as a fraction of the sweep)."""

    lateral_cm: float
    depth_cm: float
    semi_lateral_cm: float
    semi_axial_cm: float
    elev_center: float
    elev_radius: float
    contrast: float  # echo amplitude inside relative to surrounding tissue
    lobes: int
    lobulation: float
    lobe_phase: float
    posterior: str
    posterior_strength: float
    edge_shadows: bool


@dataclass(frozen=True)
class Feature:
    """The discriminative margin segment and microcalcifications (drawn for both classes, rendered for positives)."""

    sector_center: float
    sector_width: float
    teeth: int
    tooth_amp: float
    spicule_len: float
    halo_cm: float  # thickness of the echogenic halo around the angular segment
    calcs: tuple[tuple[float, float, float], ...]  # (radius fraction, angle, amplitude)
    fraction: float  # share of the frames that show it


@dataclass(frozen=True)
class Scene:
    """Everything about one breast and its lesion; shared by all loops of a patient."""

    label: int
    frames: int
    size: tuple[int, int]
    depth_cm: float
    layers: tuple[float, ...]  # bottoms of skin, fat, gland, retromammary fat, muscle (cm)
    waves: tuple[tuple[float, float, float, float], ...]  # per boundary: amplitude, cycles/cm, phase, elev phase
    lesion: Lesion
    feature: Feature
    cyst: Lesion | None
    speculars: tuple[tuple[float, ...], ...]  # lateral, depth, elev centre, elev radius, length, angle
    shadow: tuple[float, ...] | None  # lateral, depth, width, strength, elev centre, elev radius
    dyn_range_db: float
    gain_db: float
    drift_cm: float


@dataclass(frozen=True)
class Sweep:
    """Probe motion of one loop: elevation (0..1, increasing) and lateral offset (cm) per frame."""

    elevation: np.ndarray
    offset_cm: np.ndarray
    feature_frames: np.ndarray  # frames crossing the feature slab (empty for negatives)


@dataclass(frozen=True)
class LoopMeta:
    """What a loop shows: label, image region, the frames with the feature and the scene behind it."""

    label: int
    region: Region
    frames_with_feature: np.ndarray
    lesion_frames: np.ndarray
    scene: Scene
    sweep: Sweep = field(repr=False)

    @property
    def static_frame(self) -> int:
        """The frame a sonographer would freeze and store as the static image: the lesion's largest section."""
        return int(np.argmax(_cross_section(self.sweep.elevation, self.scene.lesion)))

    def nuisance(self) -> dict[str, float]:
        """Parameters that vary in both classes and must not predict the label on their own."""
        les = self.scene.lesion
        return {
            "lesion_size_cm": les.semi_lateral_cm,
            "lesion_aspect": les.semi_axial_cm / les.semi_lateral_cm,
            "lesion_depth_cm": les.depth_cm,
            "lesion_lateral_cm": les.lateral_cm,
            "lesion_contrast": les.contrast,
            "lesion_visible_fraction": len(self.lesion_frames) / self.scene.frames,
            "posterior": float(POSTERIOR.index(les.posterior)),
            "lobulation": les.lobulation,
            "depth_setting_cm": self.scene.depth_cm,
            "dynamic_range_db": self.scene.dyn_range_db,
            "gain_db": self.scene.gain_db,
            "has_cyst": float(self.scene.cyst is not None),
            "n_speculars": float(len(self.scene.speculars)),
            "has_shadow": float(self.scene.shadow is not None),
        }


def sample_scene(rng: np.random.Generator, label: int, frames: int, size: tuple[int, int]) -> Scene:
    """Draw a breast and lesion. ``label`` selects only whether the feature is rendered: the random
    stream, hence every nuisance parameter, is the same for both labels."""
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {label!r}")
    if frames < 4:
        raise ValueError(f"frames must be >= 4 so that 20-40 % of them is at least one frame, got {frames}")
    if size[0] < 64 or size[1] < 96:
        raise ValueError(f"size must be at least 64x96, got {size[0]}x{size[1]}")
    u = rng.uniform
    depth = u(3.5, 4.5)
    region = dcm.layout(size, depth)
    width = region.shape[1] * region.delta_cm
    skin = u(0.12, 0.2)
    fat = skin + u(0.3, 0.8)
    gland = fat + u(1.0, 1.6)
    retro = gland + u(0.1, 0.25)
    muscle = retro + u(0.5, 0.9)
    waves = tuple((u(0.0, a), u(0.15, 0.6), u(0, 2 * np.pi), u(0, 2 * np.pi)) for a in (0.03, 0.15, 0.15, 0.1, 0.1))
    a = u(0.5, 1.0)  # semi-axis: 1-2 cm wide, the usual size of a node-positive breast cancer (T1c-T2)
    b = a * u(0.5, 0.85)
    lo, hi = max(b + 0.35, fat), min(depth - b - 0.5, gland + 0.2)
    er = u(0.26, 0.42)
    lesion = Lesion(
        lateral_cm=u(-1, 1) * max(0.0, width / 2 - a - 0.5),
        depth_cm=u(lo, hi) if hi > lo else (lo + hi) / 2,
        semi_lateral_cm=a,
        semi_axial_cm=b,
        elev_center=u(max(0.3, er - 0.05), min(0.7, 1.05 - er)),
        elev_radius=er,
        contrast=u(0.05, 0.22),
        lobes=int(rng.integers(2, 5)),
        lobulation=u(0.0, 0.06),
        lobe_phase=u(0, 2 * np.pi),
        posterior=POSTERIOR[int(rng.choice(3, p=[0.25, 0.45, 0.3]))],
        posterior_strength=u(0.3, 0.8),
        edge_shadows=bool(rng.random() < 0.4),
    )
    sector, span = u(0, 2 * np.pi), u(1.0, 1.7)
    calcs = tuple(
        (u(0.15, 0.8), sector + u(-0.6, 0.6) * span, u(4.0, 7.0)) for _ in range(int(rng.integers(4, 9)))
    )
    feature = Feature(sector, span, int(rng.integers(3, 6)), u(0.3, 0.5), u(0.6, 1.0), u(0.1, 0.16), calcs,
                      u(0.22, 0.38))
    other = -np.sign(lesion.lateral_cm or 1.0)  # cysts and shadows sit on the other side of the image
    cyst = None
    if rng.random() < 0.5:
        ca = u(0.2, 0.4)
        cyst = Lesion(other * u(0.8, 1.0) * (width / 2 - ca - 0.2), u(fat + ca, gland), ca, ca * u(0.6, 0.9),
                      u(0.15, 0.85), u(0.15, 0.3), 0.02, 2, 0.0, 0.0, "enhancement", u(0.5, 0.9), False)
    speculars = tuple(
        (u(-0.5, 0.5) * width, u(skin + 0.05, fat), u(0, 1), u(0.05, 0.2), u(0.25, 0.7), u(-0.25, 0.25))
        for _ in range(int(rng.integers(0, 4)))
    )
    shadow = None
    if rng.random() < 0.4:
        shadow = (other * u(0.2, 0.45) * width, u(fat, gland), u(0.08, 0.2), u(0.4, 0.75), u(0.1, 0.9), u(0.1, 0.35))
    return Scene(label, frames, size, depth, (skin, fat, gland, retro, muscle), waves, lesion, feature, cyst,
                 speculars, shadow, u(48, 60), u(-3, 3), u(-0.5, 0.5))


def sample_sweep(rng: np.random.Generator, scene: Scene) -> Sweep:
    """Probe motion for one loop, and the contiguous frames (20-40 %) that cross the feature slab."""
    f = scene.frames
    speed = np.exp(0.3 * _smooth_1d(rng, f, 4.0))
    elevation = np.concatenate([[0.0], np.cumsum(speed[1:])])
    elevation /= elevation[-1]
    offset = scene.drift_cm * (np.linspace(0, 1, f) - 0.5) + 0.03 * _smooth_1d(rng, f, 3.0)
    les, n_feat = scene.lesion, int(np.clip(round(scene.feature.fraction * f), math.ceil(0.2 * f), int(0.4 * f)))
    scale = _cross_section(elevation, les)
    window = np.convolve(scale >= 0.45, np.ones(n_feat), "valid")
    starts = np.flatnonzero(window == n_feat)
    pick = rng.random()  # drawn for both labels to keep their random streams identical
    start = int(starts[int(pick * len(starts))]) if len(starts) else int(np.argmax(np.convolve(scale, np.ones(n_feat), "valid")))
    feature_frames = np.arange(start, start + n_feat) if scene.label == 1 else np.zeros(0, dtype=int)
    return Sweep(elevation, offset, feature_frames)


def make_loop(
    rng: np.random.Generator, label: int, frames: int = 48, size: tuple[int, int] = (240, 320)
) -> tuple[np.ndarray, np.ndarray, LoopMeta]:
    """One synthetic cine loop in memory.

    Returns
    -------
    frames : uint8 (F, H, W), with UI bars and burned-in text outside the image region
    mask : bool (F, H, W), the discriminative structure (spiculated segment, calcifications); empty for negatives
    meta : :class:`LoopMeta` (``frames_with_feature``, ``region``, ``nuisance()``)
    """
    scene = sample_scene(rng, label, frames, size)
    return render(scene, sample_sweep(rng, scene), rng)


def render(
    scene: Scene, sweep: Sweep, rng: np.random.Generator, top_text: str = "ALN-NODE PHANTOM  L12-5  BREAST"
) -> tuple[np.ndarray, np.ndarray, LoopMeta]:
    """Render ``scene`` as seen along ``sweep`` on a scanner screen (see :func:`make_loop`)."""
    region = dcm.layout(scene.size, scene.depth_cm)
    gray, mask_region = _render_region(scene, sweep, region, rng)
    bottom = f"B  FR 20Hz  D {scene.depth_cm:.1f}cm  G {50 + scene.gain_db:.0f}  DR {scene.dyn_range_db:.0f}"
    out, mask = dcm.compose_screen(gray, mask_region, region, scene.size, top_text, bottom)
    return out, mask, describe(scene, sweep)


def describe(scene: Scene, sweep: Sweep) -> LoopMeta:
    """What a loop of ``scene`` along ``sweep`` will show, without rendering it."""
    lesion_frames = np.flatnonzero(_cross_section(sweep.elevation, scene.lesion) > 0)
    region = dcm.layout(scene.size, scene.depth_cm)
    return LoopMeta(scene.label, region, sweep.feature_frames.copy(), lesion_frames, scene, sweep)


class _Tissue:
    """Echo amplitude, coherent bright reflectors and feature mask on a tissue-fixed grid (F, rows, cols)."""

    def __init__(self, scene: Scene, sweep: Sweep, region: Region, rng: np.random.Generator) -> None:
        self.d = region.delta_cm
        rows, width = region.shape
        off_px = np.round(sweep.offset_cm / self.d).astype(int)
        self.cols0 = off_px - off_px.min()  # first tissue column seen by each frame
        n_cols = width + int(self.cols0.max())
        self.u0 = off_px.min() * self.d - width * self.d / 2  # lateral cm of tissue column 0's left edge
        f = scene.frames
        self.u = (np.arange(n_cols) + 0.5) * self.d + self.u0
        self.z = (np.arange(rows) + 0.5) * self.d
        self.tex = _smooth_fields(rng, 2, (f, rows, n_cols), (6.0, 12.0, 12.0))
        self.echo = np.zeros((f, rows, n_cols), np.float32)
        self.bright = np.zeros_like(self.echo)
        self.mask = np.zeros(self.echo.shape, bool)

    def px(self, lateral_cm: float, depth_cm: float) -> tuple[float, float]:
        """Tissue-grid (row, column) of a point given in cm."""
        return depth_cm / self.d - 0.5, (lateral_cm - self.u0) / self.d - 0.5

    def box(self, t: int, r: float, c: float, half_h: float, half_w: float, to_bottom: bool = False) -> tuple[slice, slice, np.ndarray, np.ndarray]:
        _, rows, cols = self.echo.shape
        r0, r1 = max(0, int(r - half_h)), rows if to_bottom else min(rows, int(r + half_h) + 2)
        c0, c1 = max(0, int(c - half_w)), min(cols, int(c + half_w) + 2)
        return slice(r0, r1), slice(c0, c1), np.arange(r0, r1)[:, None] - r, np.arange(c0, c1)[None, :] - c


def _render_region(scene: Scene, sweep: Sweep, region: Region, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    tis = _Tissue(scene, sweep, region, rng)
    _layers(tis, scene, sweep.elevation)
    scale = _cross_section(sweep.elevation, scene.lesion)
    feature_on = np.zeros(scene.frames, bool)
    feature_on[sweep.feature_frames] = True
    for t in np.flatnonzero(scale > 0.1):
        _ellipsoid(tis, int(t), scene.lesion, float(scale[t]), scene.feature if feature_on[t] else None)
    if scene.cyst is not None:
        cscale = _cross_section(sweep.elevation, scene.cyst)
        for t in np.flatnonzero(cscale > 0.1):
            _ellipsoid(tis, int(t), scene.cyst, float(cscale[t]), None)
    _distractors(tis, scene, sweep.elevation)
    gray = _speckle_and_compress(tis, scene, region, rng)
    mask = np.stack([tis.mask[t, :, c : c + region.shape[1]] for t, c in enumerate(tis.cols0)])
    return gray, mask


def _layers(tis: _Tissue, scene: Scene, elevation: np.ndarray) -> None:
    """Skin, fat (with Cooper's ligaments), gland, retromammary fat, striated pectoral muscle, chest wall."""
    labels = np.zeros(tis.echo.shape, np.uint8)
    previous = np.zeros((len(elevation), len(tis.u)))
    for base, (amp, freq, phase, ephase) in zip(scene.layers, scene.waves, strict=True):
        bound = base + amp * np.sin(2 * np.pi * freq * (tis.u[None, :] + 0.6 * elevation[:, None]) + phase)
        bound = np.maximum(bound + 0.3 * amp * np.sin(2 * np.pi * elevation[:, None] + ephase), previous + 0.05)
        labels += tis.z[None, :, None] > bound[:, None, :]
        previous = bound
    levels = np.array([1.6, 0.22, 1.0, 0.2, 0.4, 0.3], np.float32)
    tex, lig = tis.tex
    echo = levels[labels] * np.clip(1 + 0.3 * tex, 0.3, None)
    ligament = np.exp(-((lig * 6.0) ** 2))
    echo += (np.float32(1.1) * (labels == 1) + np.float32(0.35) * (labels == 2)) * ligament
    # Pectoral muscle: fine oblique echogenic striations (fascicles), one (rows, cols) pattern for all frames.
    striation = (1 + 0.5 * np.sin(2 * np.pi * (tis.z[:, None] + 0.12 * tis.u[None, :]) / 0.09)).astype(np.float32)
    tis.echo[:] = np.where(labels == 4, echo * striation, echo)


def _ellipsoid(tis: _Tissue, t: int, les: Lesion, scale: float, feature: Feature | None) -> None:
    """One section of a lesion (or cyst) with its posterior features; ``feature`` adds the malignant segment."""
    a, b = les.semi_lateral_cm * scale / tis.d, les.semi_axial_cm * scale / tis.d
    reach = 1.3 + (feature.tooth_amp + feature.spicule_len if feature else 0.0)
    r, c = tis.px(les.lateral_cm, les.depth_cm)
    rs, cs, y, x = tis.box(t, r, c, reach * max(a, b) + 3, reach * max(a, b) + 3)
    yn, xn = y / b, x / a
    rn, th = np.hypot(xn, yn), np.arctan2(yn, xn)
    radius = 1 + les.lobulation * np.cos(les.lobes * th + les.lobe_phase)
    if feature is not None:
        dth = np.angle(np.exp(1j * (th - feature.sector_center)))
        sector = np.exp(-((2 * dth / feature.sector_width) ** 6))
        tri = 1 - np.abs(2 * np.mod((dth / feature.sector_width + 0.5) * feature.teeth, 1.0) - 1)
        radius = radius + feature.tooth_amp * tri * sector
    inside = np.clip((radius - rn) / 0.1 + 0.5, 0, 1)
    box = tis.echo[t, rs, cs]
    box *= 1 - inside * (1 - les.contrast * (1 + 0.25 * tis.tex[0][t, rs, cs]))
    if feature is not None:
        # Spiculation: straight lines radiating from the tips and notches of the angular segment,
        # alternately hypo- and hyperechoic (BI-RADS 5th ed., "spiculated margin"), in an echogenic halo.
        rays = np.zeros((2,) + rn.shape)
        base = 1 + 0.5 * feature.tooth_amp
        for k in range(2 * feature.teeth + 1):
            dk = th - (feature.sector_center + feature.sector_width * (k / (2 * feature.teeth) - 0.5))
            along, across = rn * np.cos(dk), rn * np.abs(np.sin(dk)) * np.sqrt(a * b)
            run = (along - base) / feature.spicule_len
            ray = np.exp(-0.12 * across**2) * (run > 0) * np.clip(1 - run, 0, 1)
            rays[k % 2] = np.maximum(rays[k % 2], ray)
        halo_w = feature.halo_cm / (tis.d * np.sqrt(a * b))  # thickness in units of the section's radius
        halo = sector * np.exp(-(((rn - radius - 0.6 * halo_w) / halo_w) ** 2))
        box *= (1 + 3.0 * halo) * (1 - 0.9 * rays[0])
        box += 1.6 * rays[1]
        spicules = rays.max(axis=0)
        tip = 1 + feature.tooth_amp
        tis.mask[t, rs, cs] |= ((sector > 0.3) & (rn < tip + 0.2)) | (spicules > 0.3) | (halo > 0.3)
        for frac, ang, amp in feature.calcs:
            _blob(tis, t, r + frac * np.sin(ang) * b, c + frac * np.cos(ang) * a, amp, CALC_SIGMA_CM / tis.d, mark=True)
    _posterior(tis, t, r, c, a, b, les, scale)


def _posterior(tis: _Tissue, t: int, r: float, c: float, a: float, b: float, les: Lesion, scale: float) -> None:
    """Posterior acoustic enhancement or shadowing below the lesion; optional refraction edge shadows."""
    rs, cs, y, x = tis.box(t, r, c, 0, a + 4, to_bottom=True)
    width = np.sqrt(np.clip(1 - (x / a) ** 2, 0, None))
    below = y - b * width
    ramp = np.clip(below / 3, 0, 1) * width * scale
    k = les.posterior_strength
    if les.posterior == "enhancement":
        fac = 1 + k * ramp * np.exp(-np.clip(below, 0, None) * tis.d / 1.5)
    elif les.posterior == "shadowing":
        fac = 1 - k * np.sqrt(ramp)
    else:
        fac = np.ones_like(ramp)
    if les.edge_shadows:
        edges = np.exp(-(((np.abs(x) - a) / 1.2) ** 2)) * (y > 0)
        fac = fac * (1 - 0.5 * scale * edges)
    tis.echo[t, rs, cs] *= fac.astype(np.float32)


def _blob(tis: _Tissue, t: int, r: float, c: float, amp: float, sigma: float, mark: bool = False) -> None:
    rs, cs, y, x = tis.box(t, r, c, 3 * sigma + 1, 3 * sigma + 1)
    g = np.exp(-(x**2 + y**2) / (2 * sigma**2))
    tis.bright[t, rs, cs] += (amp * g).astype(np.float32)
    if mark:
        tis.mask[t, rs, cs] |= g > 0.25


def _distractors(tis: _Tissue, scene: Scene, elevation: np.ndarray) -> None:
    """Benign look-alikes in both classes: specular reflectors, and a coarse reflector with a shadow."""
    for lat, depth, ec, er, length, angle in scene.speculars:
        for t in map(int, np.flatnonzero(np.abs(elevation - ec) < er)):
            half = 0.5 * length * np.sqrt(1 - ((elevation[t] - ec) / er) ** 2) / tis.d
            r, c = tis.px(lat, depth)
            rs, cs, y, x = tis.box(t, r, c, half + 3, half + 3)
            along = np.clip(x * np.cos(angle) + y * np.sin(angle), -half, half)
            dist2 = (x - along * np.cos(angle)) ** 2 + (y - along * np.sin(angle)) ** 2
            tis.bright[t, rs, cs] += (2.0 * np.exp(-dist2 / 0.6)).astype(np.float32)
    if scene.shadow is not None:
        lat, depth, width, strength, ec, er = scene.shadow
        r, c = tis.px(lat, depth)
        for t in map(int, np.flatnonzero(np.abs(elevation - ec) < er)):
            rs, cs, y, x = tis.box(t, r, c, 4, 2 * width / tis.d + 3, to_bottom=True)
            arc = np.exp(-((x * tis.d / width) ** 2) - 0.5 * ((y + 0.1 * (x * tis.d / width) ** 2 * 8) / 1.2) ** 2)
            tis.bright[t, rs, cs] += (1.8 * arc).astype(np.float32)  # coarse benign reflector, curved
            fac = 1 - strength * np.exp(-((x * tis.d / width) ** 4)) * np.clip(y / 3, 0, 1)
            tis.echo[t, rs, cs] *= fac.astype(np.float32)


def _speckle_and_compress(tis: _Tissue, scene: Scene, region: Region, rng: np.random.Generator) -> np.ndarray:
    """Fully developed speckle (Rayleigh envelope), PSF blur, depth gain and log compression to 8 bits."""
    f, rows, n_cols = tis.echo.shape
    width = region.shape[1]
    depth_gain = (1 + 0.4 * np.exp(-tis.z / 0.15)) * (1 - 0.25 * (tis.z / scene.depth_cm) ** 1.5)
    tis.echo *= depth_gain.astype(np.float32)[None, :, None]
    # Tissue-fixed scatterers: zero-mean unit-variance uniform noise is 4x cheaper to draw than Gaussian and,
    # summed over the PSF's hundreds of taps, gives the same circular Gaussian field (central limit).
    scatter = rng.random((2, f, rows, n_cols), dtype=np.float32)
    scatter -= np.float32(0.5)
    scatter *= np.float32(math.sqrt(12))
    re = np.empty((f, rows, width), np.float32)
    im = np.empty_like(re)
    for t, c in enumerate(tis.cols0):
        window = slice(c, c + width)
        re[t] = tis.echo[t, :, window] * scatter[0, t, :, window] + tis.bright[t, :, window]
        im[t] = tis.echo[t, :, window] * scatter[1, t, :, window]
    ndimage.gaussian_filter(re, PSF_SIGMA, output=re, mode="nearest", truncate=3.0)
    ndimage.gaussian_filter(im, PSF_SIGMA, output=im, mode="nearest", truncate=3.0)
    power = re * re + im * im  # squared Rayleigh envelope
    db = 10 * np.log10(power + 1e-8) + np.float32(scene.gain_db - 20 * math.log10(_psf_gain()))
    # Scanners smooth the log-compressed image a little (speckle reduction); without it nulls look like salt.
    display = ndimage.gaussian_filter(0.64 + db / scene.dyn_range_db, (0, 0.6, 0.8), mode="nearest")
    return np.round(255 * np.clip(display, 0, 1)).astype(np.uint8)


def _psf_gain() -> float:
    """RMS gain of the PSF on white noise, so that the speckle envelope has unit mean square."""
    total = 1.0
    for s in PSF_SIGMA:
        x = np.arange(-int(3 * s + 0.5), int(3 * s + 0.5) + 1)
        k = np.exp(-0.5 * (x / s) ** 2)
        total *= float(((k / k.sum()) ** 2).sum())
    return math.sqrt(total)


def _smooth_fields(rng: np.random.Generator, n: int, shape: tuple[int, int, int], cells: tuple[float, float, float]) -> np.ndarray:
    """``n`` smooth unit-variance Gaussian random fields: coarse noise interpolated with Gaussian weights
    (three small matrix products, much faster than ndimage.zoom)."""
    mats = []
    for size, cell in zip(shape, cells, strict=True):
        centres = (np.arange(int(size / cell) + 3) - 1) * cell
        w = np.exp(-0.5 * ((np.arange(size)[:, None] - centres[None, :]) / (0.6 * cell)) ** 2)
        mats.append((w / np.sqrt((w**2).sum(1, keepdims=True))).astype(np.float32))
    mf, mh, mw = mats
    coarse = rng.standard_normal((n, mf.shape[1], mh.shape[1], mw.shape[1]), dtype=np.float32)
    n_f, n_h, n_w = shape
    x = (coarse @ mw.T).transpose(0, 1, 3, 2).reshape(-1, mh.shape[1]) @ mh.T  # (n*Fc*W, H)
    x = x.reshape(n, mf.shape[1], n_w, n_h).transpose(0, 1, 3, 2).reshape(n, mf.shape[1], n_h * n_w)
    return np.stack([(mf @ x[i]).reshape(n_f, n_h, n_w) for i in range(n)])


def _cross_section(elevation: np.ndarray, les: Lesion) -> np.ndarray:
    """Scale of the ellipsoid's section at each elevation (0 where the plane misses it)."""
    return np.sqrt(np.clip(1 - ((elevation - les.elev_center) / les.elev_radius) ** 2, 0, None))


def _smooth_1d(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    x = ndimage.gaussian_filter1d(rng.standard_normal(n + 8), sigma, mode="reflect")[4:-4]
    return np.asarray(x / (x.std() + 1e-9))


def generate(
    out_dir: str | Path, n: int, *, seed: int = 0, positive_rate: float = 0.5, frames: int = 48,
    size: tuple[int, int] = (240, 320), syntax: str = "jpeg", label_noise: float = 0.0, loops_per_patient: int = 1,
) -> list[PhantomCase]:
    """Write ``n`` loops as DICOM files with masks and ``manifest.csv`` under ``out_dir``.

    Exactly ``round(positive_rate * patients)`` patients are positive; with ``loops_per_patient`` > 1 the loops
    of a patient share study, lesion and label (new sweep and speckle each). Each patient's label is flipped
    with probability ``label_noise`` in the manifest's ``label``; ``true_label`` keeps what the pixels show.
    Same arguments give the same pixel data and UIDs.
    """
    dcm.check_options(n, positive_rate, label_noise, syntax, loops_per_patient)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_patients = -(-n // loops_per_patient)
    true_labels, noisy = dcm.assign_labels(seed, n_patients, positive_rate, label_noise)
    width = max(4, len(str(n - 1)))
    cases, scene = [], None
    for i in range(n):
        p, loop = divmod(i, loops_per_patient)
        if loop == 0:
            scene = sample_scene(np.random.default_rng([seed, 1, p]), int(true_labels[p]), frames, size)
        assert scene is not None
        rng = np.random.default_rng([seed, 2, i])
        ids = dcm.DicomIds.derive(seed, p, loop, i)
        pixels, mask, meta = render(scene, sample_sweep(rng, scene), rng, top_text=ids.screen_title)
        ds = dcm.build_dataset(pixels, meta.region, ids, syntax)
        case_id = f"case{i:0{width}d}"
        label, true_label = int(noisy[p]), int(true_labels[p])
        cases.append(dcm.write_case(out, case_id, pixels, mask, meta.frames_with_feature, ds, label, true_label,
                                    meta.static_frame))
        logger.debug("phantom %s: label %d, feature frames %s", case_id, true_label, meta.frames_with_feature)
    dcm.write_manifest(out, cases)
    return cases


def main(argv: list[str] | None = None) -> int:
    """``alnnode phantom``: write synthetic breast-ultrasound cine loops (DICOM), masks and a manifest."""
    parser = argparse.ArgumentParser(prog="alnnode phantom", description=main.__doc__)
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--n", required=True, type=int, help="number of loops")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--positive-rate", type=float, default=0.5)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", default="240x320", help="frame size HxW (default 240x320)")
    parser.add_argument("--syntax", choices=sorted(dcm.SYNTAXES), default="jpeg")
    parser.add_argument("--label-noise", type=float, default=0.0, help="probability of flipping a label")
    parser.add_argument("--loops-per-patient", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must look like 240x320, got {args.size!r}")
    start = time.perf_counter()
    try:
        cases = generate(args.out, args.n, seed=args.seed, positive_rate=args.positive_rate, frames=args.frames,
                         size=(h, w), syntax=args.syntax, label_noise=args.label_noise,
                         loops_per_patient=args.loops_per_patient)
    except ValueError as exc:
        print(f"alnnode phantom: error: {exc}", file=sys.stderr)
        return 2
    positives = sum(c.true_label for c in cases)
    flipped = sum(c.label != c.true_label for c in cases)
    print(f"wrote {len(cases)} loops ({positives} positive, {flipped} labels flipped) to {args.out} "
          f"in {time.perf_counter() - start:.1f} s; manifest {args.out / 'manifest.csv'}")
    return 0
