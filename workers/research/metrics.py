"""The numbers of ``metrics.json``: per-model AUC and 2x2 metrics, model comparisons, the reader table and
the pointing game. Statistics come from :mod:`workers.research.stats`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from workers.research import stats
from workers.research.inputs import ModelScores


def json_clean(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): json_clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value



def model_metrics(m: ModelScores, threshold: float) -> tuple[dict[str, Any], list[str]]:
    """Metrics of one model: AUC (DeLong CI) plus the thresholded 2x2 metrics."""
    est = stats.auc_delong(m.labels, m.scores)
    calls = m.scores >= threshold
    out, warnings = stats.binary_metrics(stats.Counts.from_calls(m.labels, calls), m.name)
    if min(est.n_pos, est.n_neg) < 2:
        warnings.append(f"{m.name}: AUC CI undefined with {est.n_pos} positive and {est.n_neg} negative cases")
    elif est.variance == 0.0:
        warnings.append(f"{m.name}: AUC {est.auc:g} separates the classes perfectly; its DeLong CI has zero width")
    out.update(auc=est.auc, auc_ci_low=est.ci_low, auc_ci_high=est.ci_high, auc_se=math.sqrt(est.variance),
               threshold=threshold, binary_scores=bool(np.isin(m.scores, (0.0, 1.0)).all()),
               n_pos=est.n_pos, n_neg=est.n_neg)
    return out, warnings


def compare_models(a: ModelScores, b: ModelScores, ta: float, tb: float) -> tuple[dict[str, Any], list[str]]:
    """DeLong test of AUC(a) - AUC(b): paired on shared case ids, unpaired otherwise; McNemar if paired."""
    warnings: list[str] = []
    shared = sorted(set(a.index) & set(b.index))
    ia = np.array([a.index[c] for c in shared], dtype=int)
    ib = np.array([b.index[c] for c in shared], dtype=int)
    labels = a.labels[ia]
    paired = bool(shared) and 0 < int(labels.sum()) < labels.size
    result: dict[str, Any] = {"a": a.name, "b": b.name, "paired": paired, "n_pairs": len(shared) if paired else 0}
    if paired:
        if len(shared) < max(len(a.index), len(b.index)):
            warnings.append(f"{a.name} vs {b.name}: paired on the {len(shared)} shared case ids "
                            f"of {len(a.index)} and {len(b.index)}")
        result["mcnemar"] = stats.mcnemar((a.scores[ia] >= ta) == labels, (b.scores[ib] >= tb) == labels).as_dict()
    elif shared:
        warnings.append(f"{a.name} vs {b.name}: the {len(shared)} shared cases hold one class only; "
                        "compared as independent samples")
    try:
        res = (stats.delong_paired(labels, a.scores[ia], b.scores[ib]) if paired
               else stats.delong_unpaired(a.labels, a.scores, b.labels, b.scores))
    except ValueError as exc:
        warnings.append(f"{a.name} vs {b.name}: no AUC test: {exc}")
        result.update(dict.fromkeys(("auc_a", "auc_b", "auc_diff", "z", "p_value", "ci_low", "ci_high", "df")),
                      n_a=len(a.index), n_b=len(b.index), method="not tested")
        return result, warnings
    result.update(auc_a=res.auc_a, auc_b=res.auc_b, auc_diff=res.auc_diff, z=res.statistic,
                  p_value=res.p_value, ci_low=res.ci_low, ci_high=res.ci_high, df=res.df,
                  n_a=res.n_a, n_b=res.n_b, method=res.method)
    return result, warnings


def reader_metrics(
    readers: dict[str, dict[str, tuple[int, int]]], models: dict[str, ModelScores], thresholds: dict[str, float]
) -> tuple[dict[str, Any], list[str]]:
    """The study's Table 3: per reader 2x2 metrics with CIs, and McNemar against each model's calls."""
    out: dict[str, Any] = {}
    warnings: list[str] = []
    for reader, cases in readers.items():
        ids = sorted(cases)
        y = np.array([cases[c][0] for c in ids], dtype=int)
        calls = np.array([cases[c][1] for c in ids], dtype=int)
        counts, warn = stats.binary_metrics(stats.Counts.from_calls(y, calls), reader)
        warnings += warn
        row: dict[str, Any] = {**counts, "mcnemar": {}}
        for name, m in models.items():
            shared = [c for c in ids if c in m.index]
            if not shared:
                warnings.append(f"reader {reader} and model {name} share no case; no McNemar test")
                continue
            yy = np.array([cases[c][0] for c in shared], dtype=int)
            rc = np.array([cases[c][1] for c in shared], dtype=int)
            mc = m.scores[[m.index[c] for c in shared]] >= thresholds[name]
            entry: dict[str, Any] = {"accuracy": stats.mcnemar(rc == yy, mc == yy).as_dict()}
            for metric, cls in (("sensitivity", 1), ("specificity", 0)):
                sel = yy == cls
                entry[metric] = stats.mcnemar(rc[sel] == cls, mc[sel] == cls).as_dict() if sel.any() else None
            row["mcnemar"][name] = entry
        out[reader] = row
    return out, warnings


def localisation(
    models: dict[str, ModelScores], manifest: Path | None, tolerance: float = 0.0
) -> tuple[dict[str, Any], list[str]]:
    """Pointing game per model from the CAM peaks in its predictions and ``masks/CASE.npz`` by the manifest:
    strict (``hits_strict``, ``share_strict``) and within ``tolerance`` pixels (``hits``, ``share``).

    Cases whose mask is empty in every frame (no lesion structure to point at) are left out and counted;
    a key frame whose own mask is empty while others are not counts as a miss.
    """
    if manifest is None or not (manifest.parent / "masks").is_dir():
        return {}, []
    mask_dir = manifest.parent / "masks"
    out: dict[str, Any] = {}
    warnings: list[str] = []
    for name, m in models.items():
        if not m.peaks:
            continue
        peaks: list[tuple[int, int] | None] = []
        masks: list[np.ndarray | None] = []
        missing = empty = 0
        for case_id, (key_frame, peak) in sorted(m.peaks.items()):
            path = mask_dir / f"{case_id}.npz"
            if not path.is_file():
                missing += 1
                continue
            with np.load(path) as npz:
                if "mask" not in npz:
                    warnings.append(f"{path}: no array 'mask'; case left out of the pointing game")
                    continue
                stack = np.asarray(npz["mask"], dtype=bool)
            if stack.ndim != 3 or not 0 <= key_frame < stack.shape[0]:
                warnings.append(f"{path}: mask shape {stack.shape} has no frame {key_frame}; case left out")
                continue
            if not stack.any():  # nothing to point at (e.g. a negative loop); a key frame off the lesion is a miss
                empty += 1
                continue
            peaks.append(peak)
            masks.append(stack[key_frame])
        if missing:
            warnings.append(f"{name}: {missing} case(s) without masks/CASE.npz left out of the pointing game")
        scored = sum(p is not None for p in peaks)
        share = stats.pointing_game(peaks, masks, tolerance) if scored else None
        strict = stats.pointing_game(peaks, masks) if scored else None
        out[name] = {"n": scored, "tolerance_px": tolerance, "hits": round(share * scored) if share is not None else 0,
                     "share": share, "hits_strict": round(strict * scored) if strict is not None else 0,
                     "share_strict": strict, "missing_masks": missing, "empty_masks": empty}  # fmt: skip
    return out, warnings
