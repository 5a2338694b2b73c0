"""Choose exit schedules on held-out data for target FLOPs speed-ups.

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

Tuning is meant for dev data only; the chosen settings are reported on test
elsewhere (`evaluate`, benchmarks).
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from spacy.language import Language
from spacy.training import Example
from tqdm import tqdm

from ..encoder.exit_schedule import ExitSchedule, schedule_grid
from .evaluate import early_exit_pipes, exit_settings
from .measure import (
    GRID,
    Measurement,
    bisect_steps,
    flops_speedup,
    grid_step,
    grid_threshold,
    main_metric,
    measure,
    metric_value,
    threshold_for_speedup,
)
from .prescreen import ExitProfile, screen
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


class Prober:
    """Measures (schedule, grid step) points for real, each at most once.

    Searches for several targets on the same schedule share their runs.

    nlp (Language): the pipeline.
    examples (Sequence[Example]): the dev examples.
    metric (str): the score key.
    num_layers (int): encoder depth.
    batch_size (int): `nlp.pipe` batch size.
    extra (Optional[Dict[str, Any]]): exit fields added to every point (e.g. the precision).
    """

    def __init__(
        self, nlp: Language, examples: Sequence[Example], metric: str, num_layers: int, batch_size: int = 64,
        extra: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.nlp = nlp
        self.extra = dict(extra or {})
        self.examples = examples
        self.metric = metric
        self.num_layers = num_layers
        self.batch_size = batch_size
        self.cache: Dict[str, Dict[int, Measurement]] = {}

    def __call__(self, schedule: ExitSchedule, step: int) -> Measurement:
        probed = self.cache.setdefault(schedule.key, {})
        if step not in probed:
            fields = {**schedule.fields(grid_threshold(step), self.num_layers), **self.extra}
            probed[step] = measure(self.nlp, self.examples, fields, self.metric, self.batch_size)
        return probed[step]

    def probed(self, schedule: ExitSchedule) -> Dict[int, Measurement]:
        """Every grid step measured so far for `schedule`."""
        return self.cache.get(schedule.key, {})


@dataclass
class Candidate:
    """The search's answer for one schedule and target.

    schedule (ExitSchedule): the schedule.
    target (float): the FLOPs speed-up to reach (margin included).
    step (Optional[int]): the grid step chosen; None when base 1.0 misses the target.
    point (Measurement): the chosen point, or base 1.0's when unreachable.
    source (str): "screen" (ranked by the simulation) or "static" (a static cut).
    """

    schedule: ExitSchedule
    target: float
    step: Optional[int]
    point: Measurement
    source: str = "screen"

    @property
    def reached(self) -> bool:
        return self.step is not None

    @property
    def threshold(self) -> Optional[float]:
        return grid_threshold(self.step) if self.step is not None else None

    def as_row(self) -> Dict[str, Any]:
        row = {**self.schedule.as_dict(), "threshold": self.threshold, "source": self.source, "reached": self.reached}
        row.update(self.point.as_row())
        if not self.reached:
            # Base 1.0's speed-up: the most this schedule can give.
            row["max_flops_speedup"] = row.pop("flops_speedup")
            row["score"] = None
        return row


def bracket(probed: Dict[int, Measurement], target: float) -> Tuple[int, int]:
    """Grid steps (low, high) with low below the target and high reaching it.

    Built from earlier runs so later searches start from a narrow interval.
    The speed-up need not be exactly monotone (exits move upper-layer
    states), so `high` is the first run reaching the target above the last
    run missing it: a measured point, never an assumption. Step 0 (threshold
    0) counts as missing: with nothing exiting, the extra off-ramps make it
    slower than full depth.

    probed (Dict[int, Measurement]): runs so far; must contain a step reaching the target.
    target (float): the FLOPs speed-up.
    RETURNS (Tuple[int, int]): the interval to bisect.
    """
    low = max([0] + [s for s, m in probed.items() if m.flops_speedup < target])
    high = min(s for s, m in probed.items() if s > low and m.flops_speedup >= target)
    return low, high


def search_schedule(
    prober: Callable[[ExitSchedule, int], Measurement],
    probed: Callable[[ExitSchedule], Dict[int, Measurement]],
    schedule: ExitSchedule,
    target: float,
    steps: int,
    guess: Optional[float] = None,
) -> Candidate:
    """The smallest grid base threshold whose real FLOPs speed-up reaches `target`.

    prober: measures (schedule, step); probed: the runs so far for a schedule.
    schedule (ExitSchedule): the schedule searched.
    target (float): the FLOPs speed-up to reach.
    steps (int): the most bisection runs after the first probes.
    guess (Optional[float]): where the simulation says the target is: probed
        first, with a point 25% lower, so that bisection starts narrow.
    RETURNS (Candidate): the chosen point, or an unreachable candidate.
    """
    top = prober(schedule, GRID)
    if top.flops_speedup < target:
        return Candidate(schedule, target, None, top)
    if guess is not None and 0.0 < guess < 1.0:
        for value in (guess, 0.75 * guess):
            step = grid_step(value)
            if step > 0 and prober(schedule, step).flops_speedup < target:
                break
    low, high = bracket(probed(schedule), target)
    high = bisect_steps(lambda step: prober(schedule, step).flops_speedup >= target, low, high, steps)
    return Candidate(schedule, target, high, prober(schedule, high))


def best_candidate(candidates: Sequence[Candidate]) -> Optional[Candidate]:
    """The reached candidate with the best score; ties go to the faster one."""
    reached = [c for c in candidates if c.reached]
    if not reached:
        return None
    return max(reached, key=lambda c: (c.point.rank_score, c.point.flops_speedup))


def static_candidates(prober: Prober, num_layers: int, goal: float) -> List[Candidate]:
    """Every static cut (all tokens leave after layer k) measured once; reached when fast enough."""
    out = []
    for layer in range(1, num_layers):
        schedule = ExitSchedule(window=0, min_layer=layer, slope=1.0)
        point = prober(schedule, GRID)
        out.append(Candidate(schedule, goal, GRID if point.flops_speedup >= goal else None, point, "static"))
    return out


def target_report(
    nlp: Language, target: float, goal: float, num_layers: int, candidates: Sequence[Candidate], screened: list,
    extra: Dict[str, Any],
) -> Dict[str, Any]:
    """One target's entry in the tune report."""
    best = best_candidate(candidates)
    entry: Dict[str, Any] = {"target": target, "goal": round(goal, 4), "reachable": best is not None}
    if best is None:
        most = max((c.point.flops_speedup for c in candidates), default=1.0)
        entry.update(exit_mode=None, window=None, threshold=None, thresholds=None, min_layer=None, slope=None,
                     score=None, flops_speedup=None, mean_exit_layer=None)
        entry["reason"] = f"no schedule reaches {target:g}x (+{goal / target - 1:.0%} margin) on this data: the fastest gives {most:.2f}x"
    else:
        fields = {**best.schedule.fields(best.threshold, num_layers), **extra}
        entry.update(exit_mode="tokee", **best.schedule.as_dict(), threshold=best.threshold,
                     thresholds=fields["thresholds"], source=best.source, **best.point.as_row())
        entry["fields"] = fields
        entry["overrides"] = config_overrides(nlp, fields)
    entry["candidates"] = [c.as_row() for c in candidates]
    entry["screen"] = [
        {**p.schedule.as_dict(), "threshold": p.base, "simulated_flops_speedup": round(p.flops_speedup, 3), "proxy": round(p.proxy, 4)}
        for p in screened
    ]
    return entry


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
) -> Dict[str, Any]:
    """For each target FLOPs speed-up, the exit schedule and threshold that score best while reaching it.

    nlp (Language): the pipeline; its exit settings are restored afterwards.
    examples (Sequence[Example]): dev examples (never test).
    targets (Sequence[float]): FLOPs speed-ups to reach.
    windows (Sequence[int]): TOKEE windows k in the schedule grid.
    metric (Optional[str]): score key; None = the early-exit component's main score.
    steps (int): the most bisection runs per measured schedule and target.
    batch_size (int): `nlp.pipe` batch size.
    progress (bool): show a progress bar.
    min_layers (Optional[Sequence[int]]): first exit layers in the grid; None = 1 .. depth-1.
    slopes (Sequence[float]): per-layer threshold growth factors in the grid.
    keep (int): schedules measured for real per target, best simulated first.
    margin (float): relative safety margin on every target (0.02: 2x is tuned to 2.04x).
    precision (Optional[str]): tune for this prediction precision ("fp32",
        "bf16", "int8"), which the chosen fields then set; None = the pipe's, not written.
    RETURNS (Dict[str, Any]): JSON-ready report: the full-depth reference, one
        entry per target (schedule, thresholds, score, speed-up, config
        overrides, every measured candidate and the screen's ranking; or
        `reachable: false` and a reason), and every real run per schedule.
    """
    if not targets or not windows:
        raise ValueError("tune needs at least one target and one window")
    if any(not t > 0 for t in targets):
        raise ValueError(f"Target speed-ups must be positive; got {list(targets)}")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1); got {margin!r}")
    if keep < 1:
        raise ValueError(f"keep must be >= 1; got {keep!r}")
    metric = metric or main_metric(nlp)
    name, pipe = early_exit_pipes(nlp)[0]
    num_layers = pipe.num_layers
    layers = list(min_layers) if min_layers is not None else list(range(1, num_layers))
    schedules = schedule_grid(num_layers, list(windows), layers, list(slopes))
    if not schedules:
        raise ValueError(f"No schedule fits a {num_layers}-layer encoder with min_layers {layers}")
    extra = {"precision": precision} if precision is not None else {}
    with exit_settings(nlp, extra):
        profile = ExitProfile.collect(pipe, examples, batch_size)
    prober = Prober(nlp, examples, metric, num_layers, batch_size, extra)
    full = measure(nlp, examples, {"exit_mode": "off", **extra}, metric, batch_size)
    entries = []
    with tqdm(total=len(targets), desc="tune", disable=not progress) as bar:
        for target in targets:
            goal = target * (1.0 + margin)
            screened = screen(profile, schedules, goal, keep)
            candidates = [
                search_schedule(prober, prober.probed, p.schedule, goal, steps, guess=p.base) for p in screened
            ]
            candidates += static_candidates(prober, num_layers, goal)
            entries.append(target_report(nlp, target, goal, num_layers, candidates, screened, extra))
            bar.update(1)
    return {
        "metric": metric,
        "n_docs": len(examples),
        "component": name,
        "margin": margin,
        "precision": precision or pipe.precision,
        "grid": {"windows": list(windows), "min_layers": layers, "slopes": list(slopes), "keep": keep},
        "full": {"exit_mode": "off", **full.as_row()},
        "targets": entries,
        "runs": {
            key: [{"threshold": grid_threshold(s), **m.as_row()} for s, m in sorted(runs.items())]
            for key, runs in prober.cache.items()
        },
    }


def format_tune_report(report: Dict[str, Any]) -> str:
    """One line per target, for the terminal."""
    full = report["full"]
    lines = [f"full depth: {report['metric']}={full['score']} (1.00x) on {report['n_docs']} docs"]
    for entry in report["targets"]:
        if entry["reachable"]:
            lines.append(
                f"{entry['target']:g}x: window {entry['window']}, exits from layer {entry['min_layer']}, "
                f"slope {entry['slope']:g}, threshold {entry['threshold']} (per layer {entry['thresholds']}): "
                f"{report['metric']}={entry['score']}, FLOPs x{entry['flops_speedup']:.2f}"
            )
        else:
            lines.append(f"{entry['target']:g}x: UNREACHABLE: {entry['reason']}")
    return "\n".join(lines)
