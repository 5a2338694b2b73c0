"""Choose exit schedules on held-out data for target speed-ups.

A target counts FLOPs (`cost="flops"`, what batches of many docs pay for) or
encoder layers per doc (`cost="layers"`, what one doc at a time pays for: at
batch size 1 a layer costs about the same however few tokens are still in it,
so a schedule that lets every token out by some layer is what pays there).

A setting is an exit schedule (TOKEE window, the first layer allowed to exit,
how the threshold changes with depth; see `encoder.exit_schedule`) at a base
threshold. For each target the tuner

1. screens every schedule of a grid from one full-depth pass over dev
   (`prescreen`): the smallest base threshold whose *simulated* speed-up
   reaches the target, ranked by a simulated token-level score;
2. measures the few best for real through `nlp.pipe`, bisecting the base
   threshold until the real speed-up reaches the target (halted tokens change
   the states above them, so only a real run tells);
3. measures every static cut that is fast enough (the schedule "exit
   everything at layer k"), so the chosen setting is never worse on dev than
   the static baseline at the same speed;
4. keeps the best-scoring measured point.

A relative `margin` is added to every target: a test set's speed-up differs
from dev's by a few percent, and a setting tuned to land just on the target
on dev would miss it on test half of the time.

On a shared `tokee_transformer` one schedule serves every head, so a point
is judged by the worst head: the objective is ``min over heads of
(score_h - full_h)``, each head against its own full-depth dev score
(`heads.HeadScoring`); the screen replays the joint exit rule and ranks by
the same worst-head loss in its proxy scores.

Tuning is meant for dev data only; the chosen settings are reported on test
elsewhere (`evaluate`, benchmarks).
"""
import dataclasses
from typing import Any, Dict, Optional, Sequence

from spacy.language import Language
from spacy.training import Example
from tqdm import tqdm

from ..encoder.exit_schedule import schedule_grid
from .evaluate import early_exit_pipes, exit_settings
from .heads import HeadScoring, head_metrics, shared_heads
from .measure import (
    GRID,
    Measurement,
    flops_speedup,
    grid_threshold,
    main_metric,
    measure,
    metric_value,
    threshold_for_speedup,
    validate_cost,
)
from .prescreen import ExitProfile, screen
from .schedule_search import Candidate, Prober, best_candidate, bracket, search_schedule, static_candidates
from .config_files import (
    apply_overrides,
    config_overrides,
    save_tuned_pipeline,
    target_stem,
    write_overrides,
    write_tuned,
)

DEFAULT_TARGETS = (2.0, 3.0, 4.0)
DEFAULT_WINDOWS = (0, 1, 2)
DEFAULT_SLOPES = (0.5, 1.0, 2.0)
DEFAULT_MARGIN = 0.02
DEFAULT_KEEP = 3
COST_NAMES = {"flops": "FLOPs", "layers": "layers per doc"}

__all__ = [
    "GRID", "Measurement", "Prober", "Candidate", "apply_overrides", "bracket", "config_overrides",
    "flops_speedup", "format_tune_report", "grid_threshold", "main_metric", "measure", "metric_value",
    "save_tuned_pipeline", "search_schedule", "target_stem", "threshold_for_speedup",
    "tokee_fields", "tune", "write_overrides", "write_tuned",
]


def tokee_fields(window: int, threshold: float) -> Dict[str, Any]:
    """Exit fields of one flat TOKEE point. Per-layer `thresholds` are cleared
    because they would override the single threshold."""
    return {"exit_mode": "tokee", "window": window, "threshold": threshold, "thresholds": None}


def target_report(
    nlp: Language, target: float, goal: float, num_layers: int, candidates: Sequence[Candidate], screened: list,
    extra: Dict[str, Any],
    cost: str = "flops",
) -> Dict[str, Any]:
    """One target's entry in the tune report."""
    best = best_candidate(candidates, cost)
    entry: Dict[str, Any] = {"target": target, "cost": cost, "goal": round(goal, 4), "reachable": best is not None}
    if best is None:
        most = max((c.point.speedup(cost) for c in candidates), default=1.0)
        entry.update(exit_mode=None, window=None, threshold=None, thresholds=None, min_layer=None, slope=None,
                     max_layer=None, score=None, flops_speedup=None, mean_exit_layer=None, layer_speedup=None)
        entry["reason"] = (
            f"no schedule reaches {target:g}x {COST_NAMES[cost]} (+{goal / target - 1:.0%} margin) on this data: "
            f"the fastest gives {most:.2f}x"
        )
    else:
        fields = {**best.schedule.fields(best.threshold, num_layers), **extra}
        entry.update(exit_mode="tokee", **best.schedule.as_dict(), threshold=best.threshold,
                     thresholds=fields["thresholds"], source=best.source, **best.point.as_row())
        entry["fields"] = fields
        entry["overrides"] = config_overrides(nlp, fields)
    entry["candidates"] = [c.as_row() for c in candidates]
    entry["screen"] = [screen_row(p) for p in screened]
    return entry


def screen_row(point: Any) -> Dict[str, Any]:
    """One screened schedule in the report; on a shared encoder with each head's proxy."""
    row = {**point.schedule.as_dict(), "threshold": point.base, "simulated_flops_speedup": round(point.flops_speedup, 3),
           "simulated_layer_speedup": round(point.layer_speedup, 3), "proxy": round(point.proxy, 4)}
    if point.head_proxies is not None:
        row["head_proxies"] = {name: round(value, 4) for name, value in point.head_proxies.items()}
    return row


def tune(
    nlp: Language,
    examples: Sequence[Example],
    targets: Sequence[float] = DEFAULT_TARGETS,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    metric: Optional[str] = None,
    steps: int = 6,
    batch_size: int = 64,
    progress: bool = False,
    min_layers: Optional[Sequence[int]] = None,
    slopes: Sequence[float] = DEFAULT_SLOPES,
    keep: int = DEFAULT_KEEP,
    margin: float = DEFAULT_MARGIN,
    precision: Optional[str] = None,
    cost: str = "flops",
    max_layers: Optional[Sequence[Optional[int]]] = None,
) -> Dict[str, Any]:
    """For each target speed-up, the exit schedule and threshold that score best while reaching it.

    nlp (Language): the pipeline; its exit settings are restored afterwards.
    examples (Sequence[Example]): dev examples (never test).
    targets (Sequence[float]): FLOPs speed-ups to reach.
    windows (Sequence[int]): TOKEE windows k in the schedule grid.
    metric (Optional[str]): score key; None = the early-exit component's main
        score. On a shared encoder see `heads.head_metrics` (each head's main
        metric unless named as "HEAD=METRIC,...").
    steps (int): the most bisection runs per measured schedule and target.
    batch_size (int): `nlp.pipe` batch size.
    progress (bool): show a progress bar.
    min_layers (Optional[Sequence[int]]): first exit layers in the grid; None = 1 .. depth-1.
    slopes (Sequence[float]): per-layer threshold growth factors in the grid.
    keep (int): schedules measured for real per target, best simulated first.
    margin (float): relative safety margin on every target (0.02: 2x is tuned to 2.04x).
    precision (Optional[str]): tune for this prediction precision ("fp32",
        "bf16", "int8", "int8-ort", "fp32-ort"), which the chosen fields then set; None = the pipe's, not written.
    cost (str): what a target speed-up counts: "flops" (corpus FLOPs, what
        large batches pay for) or "layers" (encoder layers per doc, what one
        doc at a time pays for; see `evaluate.cost_summary`).
    max_layers (Optional[Sequence[Optional[int]]]): layers by which every
        token must have left, in the grid (None in it: no cap); None = no cap
        for "flops", and every cap from layer 2 (and none) for "layers".
    RETURNS (Dict[str, Any]): JSON-ready report: the full-depth reference, one
        entry per target (schedule, thresholds, score, speed-up, config
        overrides, every measured candidate and the screen's ranking; or
        `reachable: false` and a reason), and every real run per schedule.
        On a shared encoder the report adds ``metrics`` (head -> metric) and
        ``objective``; every row adds ``scores`` per head, ``objective`` (the
        worst head's loss in points, maximized) and ``worst_head``; `score`
        is the first head's metric.
    """
    if not targets or not windows:
        raise ValueError("tune needs at least one target and one window")
    if any(not t > 0 for t in targets):
        raise ValueError(f"Target speed-ups must be positive; got {list(targets)}")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1); got {margin!r}")
    if keep < 1:
        raise ValueError(f"keep must be >= 1; got {keep!r}")
    validate_cost(cost)
    metrics = head_metrics(nlp, metric)
    metric = next(iter(metrics.values())) if metrics else (metric or main_metric(nlp))
    name, pipe = early_exit_pipes(nlp)[0]
    num_layers = pipe.num_layers
    layers = list(min_layers) if min_layers is not None else list(range(1, num_layers))
    if max_layers is None:
        max_layers = [None] if cost == "flops" else [None, *range(2, num_layers)]
    caps = list(max_layers)
    schedules = schedule_grid(num_layers, list(windows), layers, list(slopes), caps)
    if not schedules:
        raise ValueError(f"No schedule fits a {num_layers}-layer encoder with min_layers {layers}")
    extra = {"precision": precision} if precision is not None else {}
    with exit_settings(nlp, extra):
        profile = ExitProfile.collect(pipe, examples, batch_size, shared_heads(nlp))
    scoring = HeadScoring(metrics) if metrics else None
    full = measure(nlp, examples, {"exit_mode": "off", **extra}, metric, batch_size, scoring)
    if scoring is not None:
        # Every head's own full-depth score is its reference from here on.
        scoring = HeadScoring(scoring.metrics, full.head_scores)
        objective, worst = scoring.objective(full.head_scores or {})
        full = dataclasses.replace(full, objective=objective, worst_head=worst)
    prober = Prober(nlp, examples, metric, num_layers, batch_size, extra, scoring)
    entries = []
    with tqdm(total=len(targets), desc="tune", disable=not progress) as bar:
        for target in targets:
            goal = target * (1.0 + margin)
            screened = screen(profile, schedules, goal, keep, cost)
            candidates = [
                search_schedule(prober, prober.probed, p.schedule, goal, steps, guess=p.base, cost=cost)
                for p in screened
            ]
            candidates += static_candidates(prober, num_layers, goal, cost)
            entries.append(target_report(nlp, target, goal, num_layers, candidates, screened, extra, cost))
            bar.update(1)
    shared = {"metrics": metrics, "objective": "min over heads of (score - full-depth score)"} if metrics else {}
    return {
        "metric": metric,
        **shared,
        "n_docs": len(examples),
        "component": name,
        "margin": margin,
        "precision": precision or pipe.precision,
        "cost": cost,
        "grid": {"windows": list(windows), "min_layers": layers, "slopes": list(slopes), "max_layers": caps, "keep": keep},
        "full": {"exit_mode": "off", **full.as_row()},
        "targets": entries,
        "runs": {
            key: [{"threshold": grid_threshold(s), **m.as_row()} for s, m in sorted(runs.items())]
            for key, runs in prober.cache.items()
        },
    }


def head_summary(row: Dict[str, Any]) -> str:
    """A shared encoder's per-head scores and the worst head's loss; "" for one component."""
    if "scores" not in row:
        return ""
    scores = ", ".join(f"{head} {key}={value}" for head, metric in row["scores"].items() for key, value in metric.items())
    return f" [{scores}; worst {row['worst_head']} {row['objective']:+}]" if row.get("objective") is not None else f" [{scores}]"


def format_tune_report(report: Dict[str, Any]) -> str:
    """One line per target, for the terminal."""
    full = report["full"]
    lines = [f"full depth: {report['metric']}={full['score']} (1.00x) on {report['n_docs']} docs{head_summary(full)}"]
    for entry in report["targets"]:
        if entry["reachable"]:
            cap = f", all out by layer {entry['max_layer']}" if entry.get("max_layer") else ""
            lines.append(
                f"{entry['target']:g}x {COST_NAMES[entry.get('cost', 'flops')]}: window {entry['window']}, "
                f"exits from layer {entry['min_layer']}{cap}, "
                f"slope {entry['slope']:g}, threshold {entry['threshold']} (per layer {entry['thresholds']}): "
                f"{report['metric']}={entry['score']}, FLOPs x{entry['flops_speedup']:.2f}, "
                f"layers per doc x{entry['layer_speedup']:.2f}{head_summary(entry)}"
            )
        else:
            lines.append(f"{entry['target']:g}x: UNREACHABLE: {entry['reason']}")
    return "\n".join(lines)
