"""Markdown and self-contained HTML reports of `alnnode evaluate`, with ROC and PR figures.

The tables follow the study (Table 2: models; Table 3: models against the sonographers, kappa ± SE);
the figures follow its Figures 5-6 (ROC and PR curves), with readers drawn as points on the ROC plane.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workers.research import stats

if TYPE_CHECKING:
    from workers.research.evaluate import Evaluation

logger = logging.getLogger(__name__)

Table = tuple[list[str], list[list[str]]]
METRIC_ROWS = [("ACC (%)", "accuracy"), ("SEN (%)", "sensitivity"), ("SPE (%)", "specificity"),
               ("PPV (%)", "ppv"), ("NPV (%)", "npv")]


def _num(v: Any, fmt: str = "{:.3f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def _p(v: Any) -> str:
    return "n/a" if v is None else ("< 0.001" if v < 0.001 else f"{v:.3f}")


def _prop(row: dict[str, Any], metric: str, ci: bool = True) -> str:
    """``85.25 (52/61) [75.4–93.0]`` as in the study's tables."""
    v = row.get(metric)
    if v is None:
        return f"n/a (0/{row.get(f'{metric}_n', 0)})"
    text = f"{100 * v:.2f} ({row[f'{metric}_k']}/{row[f'{metric}_n']})"
    if ci:
        text += f" [{100 * row[f'{metric}_ci_low']:.1f}–{100 * row[f'{metric}_ci_high']:.1f}]"
    return text


def _kappa(row: dict[str, Any]) -> str:
    return "n/a" if row.get("kappa") is None else f"{row['kappa']:.3f} ± {row['kappa_se']:.3f}"


def model_table(metrics: dict[str, Any]) -> Table:
    head = ["Model", "n", "AUC (95 % CI)", "ACC %", "SEN %", "SPE %", "PPV %", "NPV %", "F1", "Kappa ± SE",
            "Threshold"]
    rows = [[name, str(r["n"]), f"{r['auc']:.3f} ({_num(r['auc_ci_low'])}–{_num(r['auc_ci_high'])})",
             *(_prop(r, m) for _, m in METRIC_ROWS), _num(r["f1"], "{:.4f}"), _kappa(r), f"{r['threshold']:g}"]
            for name, r in metrics["models"].items()]
    return head, rows


def comparison_table(metrics: dict[str, Any]) -> Table:
    head = ["A", "B", "Test", "Cases", "ΔAUC (95 % CI)", "Statistic", "P", "McNemar P (accuracy)"]
    rows = []
    for c in metrics["comparisons"]:
        cases = f"{c['n_pairs']} paired" if c["paired"] else f"{c['n_a']} + {c['n_b']} independent"
        stat = f"Z = {_num(c['z'])}" if c["paired"] else f"D = {_num(c['z'])}, df = {_num(c['df'], '{:.1f}')}"
        mc = c.get("mcnemar")
        mc_text = f"{_p(mc['p_value'])} ({mc['method']})" if mc else "–"
        rows.append([c["a"], c["b"], c["method"], cases,
                     f"{_num(c['auc_diff'])} ({_num(c['ci_low'])} to {_num(c['ci_high'])})", stat,
                     _p(c["p_value"]), mc_text])
    return head, rows


def reader_table(metrics: dict[str, Any]) -> Table:
    """Table 3: one column per reader, then one per model."""
    cols = [(r, metrics["readers"][r]) for r in metrics["readers"]] + list(metrics["models"].items())
    head = ["Finding", *(name for name, _ in cols)]
    rows = [[label, *(_prop(row, m, ci=False) for _, row in cols)] for label, m in METRIC_ROWS]
    rows.append(["F1", *(_num(row["f1"], "{:.4f}") for _, row in cols)])
    rows.append(["Kappa ± SE", *(_kappa(row) for _, row in cols)])
    return head, rows


def mcnemar_table(metrics: dict[str, Any]) -> Table:
    head = ["Reader", "Model", "Cases", "Accuracy: only reader / only model correct", "P (accuracy)",
            "P (sensitivity)", "P (specificity)", "Test (accuracy)"]
    rows = []
    for reader, row in metrics["readers"].items():
        for model, e in row["mcnemar"].items():
            acc = e["accuracy"]
            rows.append([reader, model, str(acc["n"]), f"{acc['b']} / {acc['c']}", _p(acc["p_value"]),
                         _p(e["sensitivity"]["p_value"]) if e["sensitivity"] else "–",
                         _p(e["specificity"]["p_value"]) if e["specificity"] else "–", acc["method"]])
    return head, rows


def localisation_table(metrics: dict[str, Any]) -> Table:
    head = ["Model", "Key frames scored", "CAM peak in mask", "Pointing game (strict)", "Tolerance (px)",
            "Hits within tolerance", "Pointing game", "Missing masks", "Empty masks"]
    rows = [[name, str(r["n"]), str(r["hits_strict"]), _num(r["share_strict"]), f"{r['tolerance_px']:g}",
             str(r["hits"]), _num(r["share"]), str(r["missing_masks"]), str(r["empty_masks"])]
            for name, r in metrics["localisation"].items()]
    return head, rows


# -------------------------------------------------------------------------------------------------- figures
def _figures(result: Evaluation, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = result.metrics
    fig, ax = plt.subplots(figsize=(5.5, 5.5), dpi=120)
    ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1)
    for name, m in result.models.items():
        fpr, tpr, _ = stats.roc_curve(m.labels, m.scores)
        r = metrics["models"][name]
        (line,) = ax.plot(fpr, tpr, lw=1.8,
                          label=f"{name} AUC {r['auc']:.3f} ({_num(r['auc_ci_low'])}–{_num(r['auc_ci_high'])})")
        if r["sensitivity"] is not None and r["specificity"] is not None:  # operating point at the threshold
            ax.plot(1 - r["specificity"], r["sensitivity"], "x", ms=8, mew=2, c=line.get_color())
    for reader, r in metrics["readers"].items():
        if r["sensitivity"] is not None and r["specificity"] is not None:
            ax.plot(1 - r["specificity"], r["sensitivity"], "o", ms=8, label=f"reader {reader}")
    ax.set(xlabel="1 − specificity", ylabel="sensitivity", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01),
           title="ROC", aspect="equal")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    roc = out_dir / "roc.png"
    fig.savefig(roc)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 5.5), dpi=120)
    for name, m in result.models.items():
        recall, precision, ap = stats.pr_curve(m.labels, m.scores)
        ax.step(recall, precision, where="pre", lw=1.8, label=f"{name} AP {ap:.3f}")
    prevalence = np.mean(next(iter(result.models.values())).labels)
    ax.axhline(prevalence, ls="--", c="0.6", lw=1, label=f"prevalence {prevalence:.2f}")
    for reader, r in metrics["readers"].items():
        if r["sensitivity"] is not None and r["ppv"] is not None:
            ax.plot(r["sensitivity"], r["ppv"], "o", ms=8, label=f"reader {reader}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01),
           title="Precision–recall", aspect="equal")
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    pr = out_dir / "pr.png"
    fig.savefig(pr)
    plt.close(fig)
    return [roc, pr]


# ---------------------------------------------------------------------------------------------- documents
def _md_table(table: Table) -> str:
    head, rows = table
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(table: Table) -> str:
    head, rows = table
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def provenance_table(metrics: dict[str, Any]) -> Table:
    prov = metrics.get("provenance") or {}
    rows = [["date (UTC)", str(prov.get("date", ""))], ["command", str(prov.get("command", ""))]]
    rows += [[f"input ({f['role']})", f"{f['path']} sha256 {f['sha256']}"] for f in prov.get("inputs", [])]
    rows += [[f"model {name}", ", ".join(f"{k}: {v}" for k, v in uids.items())]
             for name, uids in prov.get("model_uids", {}).items()]  # fmt: skip
    rows.append(["versions", ", ".join(f"{k} {v}" for k, v in prov.get("versions", {}).items() if v)])
    return ["Item", "Value"], rows


def _sections(metrics: dict[str, Any]) -> list[tuple[str, str, Table | None]]:
    analysis = metrics.get("analysis") or {}
    variance = analysis.get("auc_variance", "DeLong")
    out: list[tuple[str, str, Table | None]] = [
        ("Unit of analysis", f"{analysis.get('unit', 'loop')} level; AUC variance: {variance}. "
                             f"{analysis.get('note', '')}", None),
        ("Models", f"AUC 95 % CI by {variance}; proportions with exact Clopper–Pearson 95 % CIs; "
                   "kappa (calls vs pathology) ± Fleiss–Cohen–Everitt SE.", model_table(metrics))]
    if metrics["comparisons"]:
        out.append(("AUC comparisons", "DeLong's test: paired on shared case ids, else independent samples "
                    "(pROC's D statistic, t with Welch df). McNemar compares correct calls at each threshold.",
                    comparison_table(metrics)))
    if metrics["readers"]:
        out.append(("Readers and models", "As the study's Table 3: % (k/n); kappa ± SE.", reader_table(metrics)))
        out.append(("McNemar: readers vs models", "Paired on shared cases; exact binomial below 25 discordant "
                    "pairs, else continuity-corrected chi-square.", mcnemar_table(metrics)))
    if metrics["localisation"]:
        out.append(("Grad-CAM localisation", "Pointing game: share of key frames whose CAM peak lies in the "
                    "ground-truth mask of the discriminative structure (strict), or within the tolerance of it "
                    "(Zhang et al., IJCV 2018).", localisation_table(metrics)))
    if metrics.get("provenance"):
        out.append(("Provenance", "Inputs with SHA-256, model UIDs of the bundles, software versions, date and "
                    "command line of this report.", provenance_table(metrics)))
    return out


def _write_md(metrics: dict[str, Any], figures: Sequence[Path], path: Path) -> None:
    parts = ["# ALN metastasis: evaluation report", "",
             "_Research use only; not for diagnostic use._", ""]
    for title, note, table in _sections(metrics):
        parts += [f"## {title}", "", note, ""]
        if table is not None:
            parts += [_md_table(table), ""]
    parts += ["## Figures", "", " ".join(f"![{p.stem}]({p.name})" for p in figures), ""]
    if metrics["warnings"]:
        parts += ["## Warnings", "", *(f"- {w}" for w in metrics["warnings"]), ""]
    path.write_text("\n".join(parts))


CSS = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}"
       "td,th{border:1px solid #bbb;padding:4px 8px;font-size:13px}th{background:#eee}"
       ".figs{display:flex;gap:1em;flex-wrap:wrap}.figs img{width:48%;min-width:360px}")


def _write_html(metrics: dict[str, Any], figures: Sequence[Path], path: Path) -> None:
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>ALN evaluation report</title>",
             f"<style>{CSS}</style></head><body><h1>ALN metastasis: evaluation report</h1>",
             "<p><em>Research use only; not for diagnostic use.</em></p>"]
    for title, note, table in _sections(metrics):
        parts += [f"<h2>{html.escape(title)}</h2><p>{html.escape(note)}</p>"]
        if table is not None:
            parts.append(_html_table(table))
    imgs = "".join(
        f"<img alt='{p.stem}' src='data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}'>"
        for p in figures)
    parts.append(f"<h2>Figures</h2><div class='figs'>{imgs}</div>")
    if metrics["warnings"]:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in metrics["warnings"])
                     + "</ul>")
    parts.append("</body></html>\n")
    path.write_text("".join(parts))


def write_report(result: Evaluation, out_dir: Path) -> list[Path]:
    """Write ``roc.png``, ``pr.png``, ``report.md`` and ``report.html`` (PNG files embedded) to ``out_dir``."""
    figures = _figures(result, out_dir)
    md, page = out_dir / "report.md", out_dir / "report.html"
    _write_md(result.metrics, figures, md)
    _write_html(result.metrics, figures, page)
    logger.info("report written to %s", out_dir)
    return [*figures, md, page]
