"""Score against FLOPs speed-up over a grid of exit settings.

One trained pipeline is run at every threshold of a grid with SENTEE and with
TOKEE, at full depth, and as the static baselines "static-k" (every token
leaves after layer k, a model cut after that layer). The rows are the data of
a speed/accuracy curve (Li et al., 2021, fig. 3; Schwartz et al., 2020, fig. 2).

Given a tune report, the TOKEE curves are the tuned schedules' families
instead of one untuned schedule: each reachable target's window, first exit
layer, slope and cap with the base threshold swept, on the pipeline the target
came from, and the targets' dev-chosen settings are scored as points
("tuned-<t>x") on the same docs.
"""
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from spacy.language import Language
from spacy.training import Example
from tqdm import tqdm

from ..encoder.exit_schedule import ExitSchedule
from ..encoder.exits import static_thresholds
from .evaluate import early_exit_pipes
from .evaluation_rows import pipeline_stage
from .heads import HeadScoring, head_metrics
from .tune import main_metric, measure

DEFAULT_THRESHOLDS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
COLUMNS = (
    "method", "window", "threshold", "layer", "target", "stage",
    "score", "flops_speedup", "mean_exit_layer", "layer_speedup",
)
FILE_STEM = "sweep"


@dataclass(frozen=True)
class SweepPoint:
    """One setting of the sweep and how its row is labelled.

    method (str): "full", "sentee", "tokee" or "static-<k>".
    fields (Dict[str, Any]): exit fields for `evaluation.exit_settings`.
    window (Optional[int]): TOKEE's k (None for other methods).
    threshold (Optional[float]): the single threshold (None for full and static).
    layer (Optional[int]): the static exit layer (None for other methods).
    target (Optional[float]): the tuned target of a "tuned-<t>x" point.
    pipeline (Optional[str]): the pipeline it runs on; None = the sweep's own.
    """

    method: str
    fields: Dict[str, Any] = field(default_factory=dict)
    window: Optional[int] = None
    threshold: Optional[float] = None
    layer: Optional[int] = None
    target: Optional[float] = None
    pipeline: Optional[str] = None


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
    return points + static_points(num_layers)


def static_points(num_layers: int) -> List[SweepPoint]:
    """static-k for k = 1..num_layers (the last one is full depth through the exit rule)."""
    points = []
    for layer in range(1, num_layers + 1):
        fields = {"exit_mode": "tokee", "thresholds": list(static_thresholds(layer, num_layers))}
        points.append(SweepPoint(f"static-{layer}", fields, layer=layer))
    return points


def entry_schedule(entry: Dict[str, Any]) -> ExitSchedule:
    """A tuned target's exit schedule (reports before schedules: a flat one)."""
    return ExitSchedule(entry["window"], entry.get("min_layer") or 1, entry.get("slope") or 1.0, entry.get("max_layer"))


def tuned_families(report: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The reachable targets grouped by (pipeline, schedule): targets that
    share a schedule on one pipeline share one swept curve.

    report (Dict[str, Any]): a `tune` report or the stage choice's (whose
        targets name their pipeline and stage).
    RETURNS (List[Dict[str, Any]]): per family ``method`` ("tokee-2x",
        "tokee-3x/4x"), ``targets``, ``schedule`` (an ExitSchedule),
        ``pipeline`` (None = the sweep's own) and ``stage`` (None if unknown).
    """
    families: Dict[Tuple[Optional[str], str], Dict[str, Any]] = {}
    for entry in report["targets"]:
        if not entry["reachable"]:
            continue
        schedule = entry_schedule(entry)
        family = families.setdefault(
            (entry.get("pipeline"), schedule.key),
            {"targets": [], "schedule": schedule, "pipeline": entry.get("pipeline"), "stage": entry.get("stage")},
        )
        family["targets"].append(entry["target"])
    for family in families.values():
        family["method"] = "tokee-" + "/".join(f"{t:g}x" for t in family["targets"])
    return list(families.values())


def tuned_sweep_points(report: Dict[str, Any], num_layers: int, thresholds: Sequence[float]) -> List[SweepPoint]:
    """Full depth, SENTEE, each tuned family's base thresholds, each target's
    dev-chosen setting ("tuned-<t>x"), then static-k.

    report (Dict[str, Any]): the tune (or stage choice) report.
    num_layers (int): encoder depth.
    thresholds (Sequence[float]): base thresholds of each family (and SENTEE's thresholds).
    RETURNS (List[SweepPoint]): the settings in row order.
    """
    points = [p for p in sweep_points(num_layers, thresholds, 0) if p.method in ("full", "sentee")]
    for family in tuned_families(report):
        schedule = family["schedule"]
        for threshold in thresholds:
            points.append(SweepPoint(family["method"], schedule.fields(threshold, num_layers), window=schedule.window,
                                     threshold=threshold, pipeline=family["pipeline"]))
    for entry in report["targets"]:
        if entry["reachable"]:
            fields = entry.get("fields") or entry_schedule(entry).fields(entry["threshold"], num_layers)
            points.append(SweepPoint(f"tuned-{entry['target']:g}x", fields, window=entry["window"], threshold=entry["threshold"],
                                     target=entry["target"], pipeline=entry.get("pipeline")))
    return points + static_points(num_layers)


def describe_families(report: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The families as JSON for the sweep report (and the plot's legend)."""
    return [
        {"method": f["method"], "targets": f["targets"], **f["schedule"].as_dict(), "pipeline": f["pipeline"], "stage": f["stage"]}
        for f in tuned_families(report)
    ]


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
    tuned: Optional[Dict[str, Any]] = None,
    load: Optional[Callable[[str], Language]] = None,
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
    tuned (Optional[Dict[str, Any]]): a tune report: sweep its tuned
        families instead of (window, min_layer, slope); see `tuned_sweep_points`.
    load (Optional[Callable[[str], Language]]): a pipeline by path, for the
        targets whose report names another pipeline (e.g. stage 1's).
    RETURNS (List[Dict[str, Any]]): one row per point with the COLUMNS keys
        (score in 0-100, None when the scorer had nothing to score; stage:
        the training stage of the model the point ran on). On a shared
        encoder `score` is the first head's metric and each row adds
        ``scores`` per head, ``objective`` (the worst head's loss against its
        full-depth score on the same pipeline, in points) and ``worst_head``.
    """
    metric = metric or main_metric(nlp)
    depth = encoder_depth(nlp)
    if tuned is not None:
        points = tuned_sweep_points(tuned, depth, thresholds)
    else:
        points = sweep_points(depth, thresholds, window, min_layer, slope)
    rows = []
    # Per pipeline, its shared heads' full-depth scores: each head's reference.
    scorings: Dict[int, Optional[HeadScoring]] = {}
    for point in tqdm(points, desc="sweep", disable=not progress):
        if point.pipeline is not None and load is None:
            raise ValueError(f"The tune report names the pipeline {point.pipeline}: pass `load`")
        model = load(point.pipeline) if point.pipeline is not None else nlp
        measured = measure(model, examples, point.fields, metric, batch_size, head_scoring(model, examples, metric, batch_size, scorings))
        rows.append(
            {"method": point.method, "window": point.window, "threshold": point.threshold, "layer": point.layer,
             "target": point.target, "stage": pipeline_stage(model), **measured.as_row()}
        )
    return rows


def head_scoring(
    model: Language, examples: Sequence[Example], metric: str, batch_size: int, known: Dict[int, Optional[HeadScoring]]
) -> Optional[HeadScoring]:
    """A shared pipeline's head metrics with their full-depth scores (measured
    once per pipeline, kept in `known`); None for standalone components."""
    if id(model) not in known:
        metrics = head_metrics(model, metric)
        full = measure(model, examples, {"exit_mode": "off"}, metric, batch_size, HeadScoring(metrics)) if metrics else None
        known[id(model)] = HeadScoring(metrics, full.head_scores) if metrics and full is not None else None
    return known[id(model)]


def csv_columns(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """COLUMNS, then on a shared encoder one "<head>.<metric>" column per head and the objective."""
    scores = rows[0].get("scores") if rows else None
    if not scores:
        return list(COLUMNS)
    return list(COLUMNS) + [f"{head}.{key}" for head, metric in scores.items() for key in metric] + ["objective", "worst_head"]


def write_csv(rows: Sequence[Dict[str, Any]], path: Path) -> Path:
    """The rows as CSV, COLUMNS in order (and per-head columns on a shared
    encoder); None is an empty cell."""
    columns = csv_columns(rows)
    with Path(path).open("w", encoding="utf8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            flat = {**row, **{f"{h}.{k}": v for h, metric in (row.get("scores") or {}).items() for k, v in metric.items()}}
            writer.writerow({key: "" if flat.get(key) is None else flat[key] for key in columns})
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
    report = {**(meta or {}), "metric": metric, "columns": csv_columns(rows), "rows": list(rows)}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf8")
    plot_sweep(rows, paths["png"], metric)
    return paths
