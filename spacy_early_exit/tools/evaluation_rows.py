"""Which rows an evaluation runs, from a `tune` (or stage-choice) report.

The tuned targets come with the static cuts that bracket them in speed-up, so
a test table always shows an early-exit point beside the cheap alternative a
practitioner would otherwise pick; rows are ordered full depth first, then
slowest to fastest.
"""
from typing import Any, Callable, Dict, List, Optional, Sequence

from spacy.language import Language

from ..encoder.exit_schedule import ExitSchedule
from ..encoder.exits import static_thresholds
from .evaluate import Setting, early_exit_pipes


def pipeline_stage(nlp: Language) -> int:
    """The training stage of a pipeline's first early-exit component: 1 for
    joint training of every off-ramp, 2 for the exit-aware fine-tuning modes."""
    return 1 if early_exit_pipes(nlp)[0][1].training.mode == "joint" else 2


def static_fields(layer: int, num_layers: int) -> Dict[str, Any]:
    """Exit fields of the static cut after `layer`: every token leaves there."""
    return {"exit_mode": "tokee", "window": 0, "threshold": 1.0, "thresholds": list(static_thresholds(layer, num_layers))}


def speedup_key(cost: Optional[str]) -> str:
    """The row key of a tune report's speed-up measure ("flops" or "layers")."""
    return "layer_speedup" if cost == "layers" else "flops_speedup"


def static_runs(report: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The static cuts a `tune` report measured on dev, from its real runs.

    The tuner measures every static cut after layers 1 .. depth-1 (schedule
    window 0, first exit layer k, base threshold 1.0) for every target.

    report (Dict[str, Any]): a `tune` report.
    RETURNS (List[Dict[str, Any]]): per layer, ``layer`` and the run's score,
        flops_speedup, layer_speedup and mean_exit_layer; [] when the report
        kept no runs.
    """
    runs = report.get("runs") or {}
    found = []
    layer = 1
    while True:
        at_one = [run for run in runs.get(ExitSchedule(window=0, min_layer=layer, slope=1.0).key, []) if run["threshold"] == 1.0]
        if not at_one:
            return found
        found.append({"layer": layer, **{k: v for k, v in at_one[0].items() if k != "threshold"}})
        layer += 1


def bracketing_layers(statics: Sequence[Dict[str, Any]], speedups: Sequence[float], key: str = "flops_speedup") -> List[int]:
    """The static cuts next to each speed-up: the fastest one at most as fast,
    and the slowest one at least as fast (the fair comparisons on each side).

    statics (Sequence[Dict[str, Any]]): rows with ``layer`` and the speed-up `key`.
    speedups (Sequence[float]): the tuned targets' speed-ups, same measure.
    RETURNS (List[int]): the chosen layers, deepest first.
    """
    chosen = set()
    for speedup in speedups:
        slower = [row for row in statics if row[key] <= speedup]
        faster = [row for row in statics if row[key] >= speedup]
        if slower:
            chosen.add(max(slower, key=lambda row: row[key])["layer"])
        if faster:
            chosen.add(min(faster, key=lambda row: row[key])["layer"])
    return sorted(chosen, reverse=True)


def report_settings(
    report: Dict[str, Any], load: Callable[[Optional[str]], Language], num_layers: int, default: str
) -> List[Setting]:
    """The rows to evaluate for a `tune` report: full depth, each reachable
    target's setting, and the static cuts that bracket the targets' dev speed-ups.

    A report from `project/scripts/choose_stage.py` names per row the pipeline
    (the calibrated model of the stage kept on dev) it runs on; a plain `tune`
    report's rows all run on the default pipeline.

    report (Dict[str, Any]): the report.
    load (Callable[[Optional[str]], Language]): a pipeline by path; None = the default one.
    num_layers (int): encoder depth (static cuts are after layers 1 .. depth-1).
    default (str): the default pipeline's path, recorded in the rows that run on it.
    RETURNS (List[Setting]): full depth first; each setting's `info` says its
        stage and pipeline (and target or layer).
    """

    def setting(method: str, fields: Dict[str, Any], path: Optional[str], **info: Any) -> Setting:
        nlp = load(path)
        return Setting(method, fields, nlp, {"stage": pipeline_stage(nlp), "pipeline": path or default, **info})

    full = report.get("full") or {}
    settings = [setting("full", {"exit_mode": "off"}, full.get("pipeline"))]
    speedups = []
    key = speedup_key(report.get("cost"))
    for entry in report["targets"]:
        if not entry["reachable"]:
            continue
        # Reports before exit schedules had no "fields": a flat threshold.
        fields = entry.get("fields") or {"exit_mode": "tokee", "window": entry["window"], "threshold": entry["threshold"], "thresholds": None}
        settings.append(setting(f"tokee-{entry['target']:g}x", fields, entry.get("pipeline"), target=entry["target"]))
        if entry.get(key) is not None:
            speedups.append(entry[key])
    statics = {row["layer"]: row for row in report.get("static") or static_runs(report)}
    # Without dev runs of the static cuts, every cut is shown.
    layers = bracketing_layers(list(statics.values()), speedups, key) if statics else list(range(num_layers - 1, 0, -1))
    for layer in layers:
        path = statics.get(layer, {}).get("pipeline")
        settings.append(setting(f"static-{layer}", static_fields(layer, num_layers), path, layer=layer, window=None, threshold=None))
    return settings


def by_speedup(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The first (reference) row, then the others from slowest to fastest, so
    each tuned row sits between the static cuts that bracket it."""
    return list(rows[:1]) + sorted(rows[1:], key=lambda row: row["flops_speedup"])


__all__ = ["bracketing_layers", "by_speedup", "pipeline_stage", "report_settings", "speedup_key", "static_fields", "static_runs"]
