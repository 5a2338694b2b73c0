"""Score against FLOPs speed-up over a grid of exit settings.

One trained pipeline is run at every threshold of a grid with SENTEE and with
TOKEE, at full depth, and as the static baselines "static-k" (every token
leaves after layer k, a model cut after that layer). The rows are the data of
a speed/accuracy curve (Li et al., 2021, fig. 3; Schwartz et al., 2020, fig. 2).
"""
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from spacy.language import Language
from spacy.training import Example
from tqdm import tqdm

from ..encoder.exit_schedule import ExitSchedule
from ..encoder.exits import static_thresholds
from .evaluate import early_exit_pipes
from .tune import main_metric, measure

DEFAULT_THRESHOLDS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
COLUMNS = ("method", "window", "threshold", "layer", "score", "flops_speedup", "mean_exit_layer", "layer_speedup")
FILE_STEM = "sweep"


@dataclass(frozen=True)
class SweepPoint:
    """One setting of the sweep and how its row is labelled.

    method (str): "full", "sentee", "tokee" or "static-<k>".
    fields (Dict[str, Any]): exit fields for `evaluation.exit_settings`.
    window (Optional[int]): TOKEE's k (None for other methods).
    threshold (Optional[float]): the single threshold (None for full and static).
    layer (Optional[int]): the static exit layer (None for other methods).
    """

    method: str
    fields: Dict[str, Any] = field(default_factory=dict)
    window: Optional[int] = None
    threshold: Optional[float] = None
    layer: Optional[int] = None


def encoder_depth(nlp: Language) -> int:
    """The layer count shared by every early-exit component (static-k needs one depth)."""
    depths = {name: pipe.num_layers for name, pipe in early_exit_pipes(nlp)}
    if len(set(depths.values())) != 1:
        raise ValueError(f"Early-exit components have different depths {depths}; sweep one pipeline depth at a time")
    return next(iter(depths.values()))


def sweep_points(
    num_layers: int, thresholds: Sequence[float], window: int, min_layer: int = 1, slope: float = 1.0
) -> List[SweepPoint]:
    """Full depth, SENTEE and TOKEE at every threshold, then static-k for k = 1..num_layers.

    num_layers (int): encoder depth.
    thresholds (Sequence[float]): thresholds in [0, 1].
    window (int): TOKEE's k.
    min_layer (int): TOKEE's first exit layer (below it no off-ramp runs).
    slope (float): TOKEE's per-layer threshold growth above `min_layer`
        (the threshold of each row is the base; see encoder.exit_schedule).
    RETURNS (List[SweepPoint]): the settings in row order.
    """
    schedule = ExitSchedule(window, min_layer, slope)
    flat = min_layer == 1 and slope == 1.0
    # Per-layer `thresholds` override `threshold`: clear them for the
    # single-threshold methods, in case the pipeline's config sets them.
    points = [SweepPoint("full", {"exit_mode": "off", "thresholds": None})]
    for threshold in thresholds:
        points.append(
            SweepPoint("sentee", {"exit_mode": "sentee", "threshold": threshold, "thresholds": None}, threshold=threshold)
        )
    for threshold in thresholds:
        if flat:
            fields = {"exit_mode": "tokee", "window": window, "threshold": threshold, "thresholds": None}
        else:
            fields = schedule.fields(threshold, num_layers)
        points.append(SweepPoint("tokee", fields, window=window, threshold=threshold))
    for layer in range(1, num_layers + 1):
        fields = {"exit_mode": "tokee", "thresholds": list(static_thresholds(layer, num_layers))}
        points.append(SweepPoint(f"static-{layer}", fields, layer=layer))
    return points


def run_sweep(
    nlp: Language,
    examples: Sequence[Example],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    window: int = 2,
    metric: Optional[str] = None,
    batch_size: int = 64,
    progress: bool = True,
    min_layer: int = 1,
    slope: float = 1.0,
) -> List[Dict[str, Any]]:
    """Score and FLOPs speed-up of every sweep point.

    nlp (Language): the pipeline; its exit settings are restored afterwards.
    examples (Sequence[Example]): gold examples.
    thresholds (Sequence[float]): thresholds for SENTEE and TOKEE.
    window (int): TOKEE's k.
    metric (Optional[str]): score key; None = the early-exit component's main score.
    batch_size (int): `nlp.pipe` batch size.
    progress (bool): show a progress bar.
    min_layer, slope: TOKEE's exit schedule (see `sweep_points`).
    RETURNS (List[Dict[str, Any]]): one row per point with the COLUMNS keys
        (score in 0-100, None when the scorer had nothing to score).
    """
    metric = metric or main_metric(nlp)
    rows = []
    for point in tqdm(sweep_points(encoder_depth(nlp), thresholds, window, min_layer, slope), desc="sweep", disable=not progress):
        measured = measure(nlp, examples, point.fields, metric, batch_size)
        rows.append(
            {"method": point.method, "window": point.window, "threshold": point.threshold, "layer": point.layer, **measured.as_row()}
        )
    return rows


def write_csv(rows: Sequence[Dict[str, Any]], path: Path) -> Path:
    """The rows as CSV, COLUMNS in order; None is an empty cell."""
    with Path(path).open("w", encoding="utf8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if row[key] is None else row[key] for key in COLUMNS})
    return Path(path)


def write_sweep(
    rows: Sequence[Dict[str, Any]], output_dir: Path, metric: str, meta: Optional[Dict[str, Any]] = None
) -> Dict[str, Path]:
    """Write `sweep.csv`, `sweep.json` and the `sweep.png` plot to `output_dir`.

    rows (Sequence[Dict[str, Any]]): `run_sweep` rows.
    output_dir (Path): created if missing.
    metric (str): the score key (axis label, and recorded in the JSON).
    meta (Optional[Dict[str, Any]]): extra JSON fields (pipeline, data, ...).
    RETURNS (Dict[str, Path]): the written files by kind ("csv", "json", "png").
    """
    from .plotting import plot_sweep  # matplotlib only when a plot is made

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: output_dir / f"{FILE_STEM}.{kind}" for kind in ("csv", "json", "png")}
    write_csv(rows, paths["csv"])
    report = {**(meta or {}), "metric": metric, "columns": list(COLUMNS), "rows": list(rows)}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf8")
    plot_sweep(rows, paths["png"], metric)
    return paths
