"""Pixels of the synthetic loops: tissue echo, lesion sections, distractors, speckle and log compression.

:func:`render_region` renders the image region of every frame of a :class:`~workers.research.phantom_scene.Scene`
seen along a :class:`~workers.research.phantom_scene.Sweep`; :mod:`workers.research.phantom_dicom` puts it on a
scanner screen and into DICOM.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from workers.research.phantom_dicom import Region
from workers.research.phantom_scene import (
    CALC_SIGMA_CM,
    PSF_SIGMA,
    Feature,
    Lesion,
    Scene,
    Sweep,
    cross_section,
)


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


def render_region(scene: Scene, sweep: Sweep, region: Region, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    tis = _Tissue(scene, sweep, region, rng)
    _layers(tis, scene, sweep.elevation)
    scale = cross_section(sweep.elevation, scene.lesion)
    feature_on = np.zeros(scene.frames, bool)
    feature_on[sweep.feature_frames] = True
    for t in np.flatnonzero(scale > 0.1):
        _ellipsoid(tis, int(t), scene.lesion, float(scale[t]), scene.feature if feature_on[t] else None)
    if scene.cyst is not None:
        cscale = cross_section(sweep.elevation, scene.cyst)
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
