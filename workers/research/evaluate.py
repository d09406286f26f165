"""`alnnode evaluate`: AUCs with DeLong CIs, diagnostic metrics, model comparisons and a reader table.

Inputs are predictions CSVs (``case_id,label,score``; score = P(metastasis), a 0/1 score is a binary call)
or a bundle run over a manifest (``path,label,patient_id[,case_id]``), which writes ``predictions.csv``
first. Outputs ``metrics.json``, ``report.md``, ``report.html`` and the ROC/PR figures (the study's
Figures 5-6, Tables 2-3). The inputs are read and checked by :mod:`workers.research.inputs`, the metrics
assembled by :mod:`workers.research.metrics` from :mod:`workers.research.stats`, the documents written by
:mod:`workers.research.report`; this module runs a bundle over a manifest and is the CLI.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.cli_args import (
    Once,
    OnceFlag,
    Parser,
    check_out_dir,
    name_inputs,
    named_path,
    print_error,
    setup_logging,
)
from workers.research import gate_report
from workers.research.bundle_run import fold_cams, run_bundle
from workers.research.clustered import AGGREGATES, has_clusters, to_patients
from workers.research.inputs import (  # noqa: F401  (re-exported: the public names of evaluate)
    PREDICTION_COLUMNS,
    EvaluationError,
    ManifestRow,
    ModelScores,
    read_manifest,
    read_predictions,
    read_readers,
)
from workers.research.metrics import (  # noqa: F401  (re-exported)
    compare_models,
    json_clean,
    localisation,
    model_metrics,
    reader_metrics,
)
from workers.research.provenance import provenance

logger = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Everything the report needs: the JSON-ready metrics and the raw scores for the curves."""

    metrics: dict[str, Any]
    models: dict[str, ModelScores]
    readers: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)  # reader -> case -> (y, call)


UNITS = ("patient", "loop")
EVALUATE_OUTPUTS = ("metrics.json", "report.md", "report.html", "roc.png", "pr.png", "predictions.csv", "gradcam")


def _analysis(models: list[ModelScores], unit: str, how: str) -> tuple[dict[str, Any], bool, list[str]]:
    """What unit the statistics are on, and whether loop-level AUCs need the clustered variance."""
    multi = [m.name for m in models if has_clusters(m)]
    info: dict[str, Any] = {"unit": unit, "patient_score": how if unit == "patient" else None,
                            "models_with_several_loops_per_patient": multi}  # fmt: skip
    notes: list[str] = []
    if not multi:
        info["auc_variance"] = "DeLong"
        info["note"] = ("one loop per patient (or no patient_id column): loop and patient level coincide; "
                        "DeLong variance")  # fmt: skip
        return info, False, notes
    if unit == "patient":
        info["auc_variance"] = "DeLong (on one score per patient)"
        info["note"] = (f"patient level: each patient's score is the {how} of its loops' scores; AUC, 2x2 metrics "
                        "and comparisons are over patients; the pointing game and readers stay per loop")  # fmt: skip
        return info, False, notes
    info["auc_variance"] = "Obuchowski (1997) clustered"
    info["note"] = ("loop level with several loops per patient: AUC CIs and paired tests use Obuchowski's clustered "
                    "variance (patients as clusters); the 2x2 metrics' exact CIs treat loops as independent and are "
                    "too narrow")  # fmt: skip
    return info, True, notes


def evaluate(
    models: list[ModelScores], thresholds: dict[str, float], readers: Path | None = None,
    manifest: Path | None = None, pointing_tolerance: float = 0.0, unit: str = "patient", patient_score: str = "mean",
) -> Evaluation:
    """Compute every number of ``metrics.json``.

    ``unit="patient"`` (default) scores each patient once (``patient_score`` of its loops) when a model has
    several loops per patient; ``unit="loop"`` keeps the loops with Obuchowski's clustered AUC variance.
    """
    if unit not in UNITS:
        raise EvaluationError(f"--unit {unit!r}: not one of {', '.join(UNITS)}")
    if patient_score not in AGGREGATES:
        raise EvaluationError(f"--patient-score {patient_score!r}: not one of {', '.join(AGGREGATES)}")
    by_name: dict[str, ModelScores] = {}
    for m in models:
        if m.name in by_name:
            raise EvaluationError(f"two models named {m.name!r} ({by_name[m.name].source} and {m.source}): "
                                  "name them NAME=PATH")  # fmt: skip
        by_name[m.name] = m
    truth: dict[str, int] = {}
    for m in models:
        for case_id, i in m.index.items():
            y = int(m.labels[i])
            if truth.setdefault(case_id, y) != y:
                raise EvaluationError(f"case_id {case_id!r}: label {y} in {m.source} disagrees with another file")
    analysis, clustered, warnings = _analysis(models, unit, patient_score)
    scored = dict(by_name)
    if unit == "patient" and analysis["models_with_several_loops_per_patient"]:
        try:
            scored = {n: (to_patients(m, patient_score) if m.patients else m) for n, m in by_name.items()}
        except ValueError as exc:
            raise EvaluationError(f"--unit patient: {exc}") from exc
    metrics: dict[str, Any] = {"analysis": analysis, "models": {}, "comparisons": [], "readers": {},
                               "localisation": {}}  # fmt: skip
    for name, m in scored.items():
        row, warn = model_metrics(m, thresholds[name], clustered=clustered and has_clusters(m))
        metrics["models"][name] = row
        warnings += warn
    names = list(scored)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            comp, warn = compare_models(scored[a], scored[b], thresholds[a], thresholds[b],
                                        clustered=clustered and has_clusters(scored[a]))  # fmt: skip
            metrics["comparisons"].append(comp)
            warnings += warn
    reader_cases: dict[str, dict[str, tuple[int, int]]] = {}
    if readers is not None:
        reader_cases = read_readers(readers, truth)
        metrics["readers"], warn = reader_metrics(reader_cases, by_name, thresholds)
        warnings += warn
    metrics["localisation"], warn = localisation(by_name, manifest, pointing_tolerance)
    warnings += warn
    for w in warnings:
        logger.warning("%s", w)
    metrics["warnings"] = warnings
    return Evaluation(json_clean(metrics), scored, reader_cases)


# -------------------------------------------------------------------------------------------------- CLI
def _thresholds(values: list[str], names: list[str]) -> dict[str, float]:
    """``T`` (all models) and ``NAME=T`` values; the same key with two different values is an error."""
    given: dict[str, tuple[float, str]] = {}
    for v in values:
        key, _, num = v.rpartition("=")
        try:
            t = float(num)
        except ValueError:
            raise EvaluationError(f"--threshold {v!r}: not a number (use T or NAME=T)") from None
        if not 0.0 <= t <= 1.0:
            raise EvaluationError(f"--threshold {v!r}: {t} outside [0, 1]")
        if key and key not in names:
            raise EvaluationError(f"--threshold {v!r}: no model named {key!r} (models: {', '.join(names)})")
        if key in given and given[key][0] != t:
            raise EvaluationError(f"--threshold given twice for {key or 'all models'}: {given[key][1]!r} and {v!r}")
        given[key] = (t, v)
    default = given.get("", (0.5, ""))[0]
    return {n: given.get(n, (default, ""))[0] for n in names}


def build_parser() -> Parser:
    p = Parser(prog="alnnode evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--predictions", type=named_path, nargs="+", action="extend", default=[], metavar="[NAME=]CSV",
                   help="predictions CSV(s) case_id,label,score[,patient_id,fold,path]; list or repeat; the model "
                        "is named NAME, else the file stem, else (stems alike) its folder")
    p.add_argument("--bundle", type=Path, action=Once, help="MONAI bundle folder to run over --manifest")
    p.add_argument("--manifest", type=Path, action=Once,
                   help="CSV path,label,patient_id[,case_id]; masks/CASE.npz beside it for the pointing game")
    p.add_argument("--readers", type=Path, action=Once, help="CSV case_id,reader,call (call 0/1)")
    p.add_argument("--threshold", nargs="+", action="extend", default=[], metavar="T|NAME=T",
                   help="call positive when score >= T (default 0.5 for every model); NAME=T for one model")
    p.add_argument("--unit", choices=UNITS, default="patient", action=Once,
                   help="statistics per patient (one score per patient when it has several loops) or per loop "
                        "(Obuchowski's clustered AUC variance)")
    p.add_argument("--patient-score", choices=AGGREGATES, default="mean", action=Once,
                   help="a patient's score from its loops' scores (--unit patient)")
    p.add_argument("--pointing-tolerance", type=float, default=0.0, metavar="PX", action=Once,
                   help="pointing game: a CAM peak within PX pixels of the mask is a hit (Zhang et al. use 15; "
                        "0 is strict; the strict share is always reported too)")
    p.add_argument("--fold-cams", action=OnceFlag,
                   help="pointing game of oof_predictions.csv inputs: explain each held-out positive loop with the "
                        "fold bundle that held it out (RUN/fold{k}/bundle)")
    p.add_argument("--no-gradcam-png", dest="gradcam_png", action="store_false",
                   help="with --bundle, do not write OUT/gradcam/CASE.png")
    p.add_argument("--out", type=Path, required=True, action=Once, help="output folder (new or empty)")
    p.add_argument("--overwrite", action=OnceFlag, help="replace the results of an earlier evaluation in --out")
    return p


def main(argv: list[str]) -> int:
    """Entry point of ``alnnode evaluate``; returns 0, or 2 with a one-line error per problem."""
    args = build_parser().parse_args(argv)
    setup_logging(logging.INFO)
    from workers.research import report

    try:
        if args.bundle is not None and args.manifest is None:
            raise EvaluationError("--bundle needs --manifest")
        if args.bundle is None and not args.predictions:
            raise EvaluationError("give --predictions CSV... or --bundle DIR --manifest CSV")
        if not args.pointing_tolerance >= 0:
            raise EvaluationError(f"--pointing-tolerance {args.pointing_tolerance!r}: must be >= 0 pixels")
        named = name_inputs(args.predictions, "--predictions")
        models = [read_predictions(path, name=name) for name, path in named]  # every input checked first
        if args.manifest is not None:
            read_manifest(args.manifest)
        check_out_dir(args.out, overwrite=args.overwrite, ours=EVALUATE_OUTPUTS)
        if args.bundle is not None:
            cams = args.out / "gradcam" if args.gradcam_png else None
            name, csv_path = run_bundle(args.bundle, args.manifest, args.out, cam_dir=cams)
            models.insert(0, read_predictions(csv_path, name=name))
        if args.fold_cams:
            for m in models:
                if m.folds:
                    fold_cams(m)
        thresholds = _thresholds(args.threshold, [m.name for m in models])
        result = evaluate(models, thresholds, args.readers, args.manifest, args.pointing_tolerance,
                          unit=args.unit, patient_score=args.patient_score)  # fmt: skip
    except (EvaluationError, ValueError) as exc:
        print_error("alnnode evaluate", exc)
        return 2
    inputs = [("predictions", p) for _, p in named] + [(k, p) for k, p in (("manifest", args.manifest),
              ("readers", args.readers)) if p is not None]  # fmt: skip
    bundles = [(n, p.parent) for n, p in named] + ([(models[0].name, args.bundle)] if args.bundle else [])
    result.metrics["provenance"] = provenance(inputs, bundles, argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result.metrics["calibration"] = json_clean(gate_report.calibration_metrics(result.models, args.out))
    if args.bundle is not None and (args.out / "ood_scores.csv").is_file():
        with (args.out / "ood_scores.csv").open(newline="") as fh:
            result.metrics["ood"] = json_clean(gate_report.ood_summary(list(csv.DictReader(fh)), args.out))
    (args.out / "metrics.json").write_text(json.dumps(result.metrics, indent=2, allow_nan=False) + "\n")
    written = report.write_report(result, args.out)
    for name, row in result.metrics["models"].items():
        ci = "CI n/a" if row["auc_ci_low"] is None else f"{row['auc_ci_low']:.3f}-{row['auc_ci_high']:.3f}"
        ece = result.metrics["calibration"].get(name, {}).get("ece")
        print(f"{name}: AUC {row['auc']:.3f} ({ci}), n={row['n']} ({result.metrics['analysis']['unit']} level), "
              f"threshold {row['threshold']:g}" + ("" if ece is None else f", ECE {ece:.3f}"))  # fmt: skip
    if result.metrics.get("ood"):
        o = result.metrics["ood"]
        print(f"OOD gate: {o['gated']}/{o['n']} loops over the bundle's threshold {o['threshold']:.2f} "
              f"(median score {o['quantiles']['median']:.2f})")
    print(f"wrote {args.out / 'metrics.json'} and {', '.join(p.name for p in written)}")
    return 0
