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

Scenes and sweeps are drawn in :mod:`workers.research.phantom_scene`, pixels rendered in
:mod:`workers.research.phantom_render`. :func:`make_loop` renders one loop in memory; :func:`generate` writes DICOM files, masks and a manifest
and :func:`main` is ``alnnode phantom``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from workers.research import phantom_dicom as dcm
from workers.research.phantom_dicom import PhantomCase
from workers.research.phantom_render import render_region
from workers.research.phantom_scene import (  # noqa: F401  (re-exported: the public names of the phantoms)
    POSTERIOR,
    Feature,
    Lesion,
    LoopMeta,
    Scene,
    Sweep,
    cross_section,
    sample_scene,
    sample_sweep,
)

__all__ = ["LoopMeta", "PhantomCase", "Scene", "describe", "generate", "main", "make_loop", "render", "sample_scene", "sample_sweep"]
logger = logging.getLogger(__name__)


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
    gray, mask_region = render_region(scene, sweep, region, rng)
    bottom = f"B  FR 20Hz  D {scene.depth_cm:.1f}cm  G {50 + scene.gain_db:.0f}  DR {scene.dyn_range_db:.0f}"
    out, mask = dcm.compose_screen(gray, mask_region, region, scene.size, top_text, bottom)
    return out, mask, describe(scene, sweep)


def describe(scene: Scene, sweep: Sweep) -> LoopMeta:
    """What a loop of ``scene`` along ``sweep`` will show, without rendering it."""
    lesion_frames = np.flatnonzero(cross_section(sweep.elevation, scene.lesion) > 0)
    region = dcm.layout(scene.size, scene.depth_cm)
    return LoopMeta(scene.label, region, sweep.feature_frames.copy(), lesion_frames, scene, sweep)



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
