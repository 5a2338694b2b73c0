"""Speed/accuracy plots of sweep rows (needs the `plot` extra: matplotlib).

Figures are drawn on an Agg canvas directly, not through pyplot, so plotting
never changes the caller's matplotlib backend or global figure state.
"""
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

CURVES = ("sentee", "tokee")
COLORS = {"sentee": "tab:orange", "tokee": "tab:blue", "static": "tab:gray", "full": "black"}
# One color per tuned schedule family, shared by its tuned points.
FAMILY_COLORS = ("tab:blue", "tab:green", "tab:purple", "tab:red", "tab:brown", "tab:cyan")
FAMILY_PREFIX = "tokee-"
TUNED_PREFIX = "tuned-"


def family_methods(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """The tuned families' methods ("tokee-2x", "tokee-3x/4x"), in row order."""
    return list(dict.fromkeys(str(r["method"]) for r in rows if str(r["method"]).startswith(FAMILY_PREFIX)))


def family_of(tuned_method: str, families: Sequence[str]) -> Optional[str]:
    """The family whose targets include a tuned point's ("tuned-3x" -> "tokee-3x/4x")."""
    target = tuned_method[len(TUNED_PREFIX):]
    return next((f for f in families if target in f[len(FAMILY_PREFIX):].split("/")), None)


def family_label(method: str, meta: Dict[str, Any]) -> str:
    """A family's legend entry: its targets, schedule and stage, as the sweep report describes it."""
    described = next((f for f in meta.get("families") or [] if f.get("method") == method), None)
    label = f"TOKEE {method[len(FAMILY_PREFIX):]} schedule"
    if described is None:
        return label
    details = f"w{described['window']}, from layer {described['min_layer']}, slope {described['slope']:g}"
    if described.get("max_layer"):
        details += f", all out by {described['max_layer']}"
    if described.get("stage"):
        details += f", stage {described['stage']}"
    return f"{label} ({details})"


def scored(rows: Sequence[Dict[str, Any]], method: str) -> List[Dict[str, Any]]:
    """Rows of one method (or every "static-k" for "static") that have a score, by speed-up."""
    if method == "static":
        chosen = [r for r in rows if str(r["method"]).startswith("static-")]
    else:
        chosen = [r for r in rows if r["method"] == method]
    return sorted((r for r in chosen if r["score"] is not None), key=lambda r: r["flops_speedup"])


def xy(rows: Sequence[Dict[str, Any]]) -> Tuple[List[float], List[float]]:
    """FLOPs speed-ups and scores of the rows."""
    return [r["flops_speedup"] for r in rows], [r["score"] for r in rows]


def sweep_meta(path: Path) -> Dict[str, Any]:
    """The fields of the sweep report written beside the plot (sweep.json), or {}.

    write_sweep writes the JSON report before it draws the plot, so the plot
    can name what was swept without another argument.
    """
    report = Path(path).with_suffix(".json")
    try:
        meta = json.loads(report.read_text(encoding="utf8"))
    except (OSError, ValueError):
        return {}
    return {key: value for key, value in meta.items() if key not in ("rows", "columns")} if isinstance(meta, dict) else {}


def describe(location: Optional[str]) -> str:
    """A short name for a data file or pipeline: "corpus/uner_en_ewt/test.spacy" -> "uner_en_ewt/test"."""
    if not location:
        return ""
    parts = Path(location).with_suffix("").parts
    return "/".join(parts[-2:])


def sweep_title(meta: Dict[str, Any]) -> str:
    """The plot title: what was swept, on how many docs, with which TOKEE window."""
    what = " on ".join(part for part in (describe(meta.get("pipeline")), describe(meta.get("data"))) if part)
    details = []
    if meta.get("tuned"):
        details.append(f"TOKEE: the tuned schedules of {describe(meta['tuned'])}")
    if meta.get("window") is not None:
        details.append(f"TOKEE window {meta['window']}")
    for key, name in (("min_layer", "first exit layer"), ("slope", "slope")):
        if meta.get(key) is not None:
            details.append(f"{name} {meta[key]}")
    if meta.get("n_docs"):
        details.append(f"{meta['n_docs']} docs")
    return "\n".join(part for part in (what, ", ".join(details)) if part)


def full_depth_label(meta: Dict[str, Any]) -> str:
    """The full-depth marker's legend entry; it says when the sweep ran on a subset."""
    n_docs = meta.get("n_docs")
    if not n_docs:
        return "full"
    if meta.get("limit"):
        # The test table scores every test doc; this star does not.
        return f"full depth (on this {n_docs}-doc subset)"
    return f"full depth ({n_docs} docs)"


def plot_sweep(
    rows: Sequence[Dict[str, Any]],
    path: Path,
    metric: str,
    title: Optional[str] = None,
    meta: Optional[Dict[str, Any]] = None,
) -> Path:
    """Score against FLOPs speed-up: a line per exit method, markers for static-k and full depth.

    rows (Sequence[Dict[str, Any]]): rows with method, score, flops_speedup (and layer for static-k).
    path (Path): the PNG to write.
    metric (str): the score's name, for the y axis.
    title (Optional[str]): the figure title; None = built from `meta`.
    meta (Optional[Dict[str, Any]]): pipeline, data, window, n_docs, limit of the
        sweep; None = read from the sweep.json beside `path`, if there is one.
    RETURNS (Path): `path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    meta = sweep_meta(path) if meta is None else meta
    title = sweep_title(meta) if title is None else title
    figure = Figure(figsize=(6.4, 4.8), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for method in CURVES:
        x, y = xy(scored(rows, method))
        if x:
            axes.plot(x, y, marker="o", markersize=3, color=COLORS[method], label=method.upper())
    families = family_methods(rows)
    colors = {method: FAMILY_COLORS[i % len(FAMILY_COLORS)] for i, method in enumerate(families)}
    for method in families:
        x, y = xy(scored(rows, method))
        if x:
            axes.plot(x, y, marker="o", markersize=3, color=colors[method], label=family_label(method, meta))
    tuned = [r for r in rows if str(r["method"]).startswith(TUNED_PREFIX) and r["score"] is not None]
    for index, row in enumerate(tuned):
        color = colors.get(family_of(str(row["method"]), families) or "", COLORS["tokee"])
        # One legend entry for all tuned points; each is labelled with its target.
        axes.scatter([row["flops_speedup"]], [row["score"]], marker="D", s=60, color=color, edgecolors="black",
                     zorder=5, label="tuned on dev (scored here)" if index == 0 else None)
        axes.annotate(str(row["method"])[len(TUNED_PREFIX):], (row["flops_speedup"], row["score"]),
                      textcoords="offset points", xytext=(5, -12), fontsize=8)
    static = scored(rows, "static")
    if static:
        x, y = xy(static)
        axes.scatter(x, y, marker="s", color=COLORS["static"], label="static-k", zorder=3)
        for row in static:
            # Label each static point with its layer so the cut is readable.
            axes.annotate(str(row["layer"]), (row["flops_speedup"], row["score"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    full = scored(rows, "full")
    if full:
        x, y = xy(full)
        axes.scatter(x, y, marker="*", s=120, color=COLORS["full"], label=full_depth_label(meta), zorder=4)
        axes.annotate(f"{y[0]:.2f}", (x[0], y[0]), textcoords="offset points", xytext=(6, -10), fontsize=8)
    axes.set_xlabel("FLOPs speed-up (x)")
    axes.set_ylabel(metric)
    axes.grid(True, alpha=0.3)
    if title:
        axes.set_title(title, fontsize=10)
    if axes.get_legend_handles_labels()[0]:
        # Tuned families make long entries: a smaller font keeps the curves visible.
        axes.legend(fontsize=7 if families else None)
    figure.tight_layout()
    figure.savefig(str(path), format="png")
    return Path(path)
