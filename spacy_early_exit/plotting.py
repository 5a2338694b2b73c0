"""Speed/accuracy plots of sweep rows (needs the `plot` extra: matplotlib).

Figures are drawn on an Agg canvas directly, not through pyplot, so plotting
never changes the caller's matplotlib backend or global figure state.
"""
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

CURVES = ("sentee", "tokee")
COLORS = {"sentee": "tab:orange", "tokee": "tab:blue", "static": "tab:gray", "full": "black"}


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


def plot_sweep(rows: Sequence[Dict[str, Any]], path: Path, metric: str, title: Optional[str] = None) -> Path:
    """Score against FLOPs speed-up: a line per exit method, markers for static-k and full depth.

    rows (Sequence[Dict[str, Any]]): rows with method, score, flops_speedup (and layer for static-k).
    path (Path): the PNG to write.
    metric (str): the score's name, for the y axis.
    title (Optional[str]): the figure title.
    RETURNS (Path): `path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.8), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for method in CURVES:
        x, y = xy(scored(rows, method))
        if x:
            axes.plot(x, y, marker="o", markersize=3, color=COLORS[method], label=method.upper())
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
        axes.scatter(x, y, marker="*", s=120, color=COLORS["full"], label="full", zorder=4)
    axes.set_xlabel("FLOPs speed-up (x)")
    axes.set_ylabel(metric)
    axes.grid(True, alpha=0.3)
    if title:
        axes.set_title(title)
    if axes.get_legend_handles_labels()[0]:
        axes.legend()
    figure.tight_layout()
    figure.savefig(str(path), format="png")
    return Path(path)
