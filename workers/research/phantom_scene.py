"""Scenes and sweeps of the synthetic loops: the breast, its lesion and the probe's motion.

Everything random about a phantom loop is drawn here (:func:`sample_scene` once per patient,
:func:`sample_sweep` once per loop) from seeded generators; :mod:`workers.research.phantom_render`
turns a scene and a sweep into pixels. Both labels consume the same random stream, so every nuisance
parameter has the same distribution in positives and negatives and only the feature carries the label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from workers.research import phantom_dicom as dcm
from workers.research.phantom_dicom import Region

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
        return int(np.argmax(cross_section(self.sweep.elevation, self.scene.lesion)))

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
    scale = cross_section(elevation, les)
    window = np.convolve(scale >= 0.45, np.ones(n_feat), "valid")
    starts = np.flatnonzero(window == n_feat)
    pick = rng.random()  # drawn for both labels to keep their random streams identical
    start = int(starts[int(pick * len(starts))]) if len(starts) else int(np.argmax(np.convolve(scale, np.ones(n_feat), "valid")))
    feature_frames = np.arange(start, start + n_feat) if scene.label == 1 else np.zeros(0, dtype=int)
    return Sweep(elevation, offset, feature_frames)


def cross_section(elevation: np.ndarray, les: Lesion) -> np.ndarray:
    """Scale of the ellipsoid's section at each elevation (0 where the plane misses it)."""
    return np.sqrt(np.clip(1 - ((elevation - les.elev_center) / les.elev_radius) ** 2, 0, None))


def _smooth_1d(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    x = ndimage.gaussian_filter1d(rng.standard_normal(n + 8), sigma, mode="reflect")[4:-4]
    return np.asarray(x / (x.std() + 1e-9))
