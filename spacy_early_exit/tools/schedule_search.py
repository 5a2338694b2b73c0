"""The search for one exit schedule's base threshold, measured for real.

A `Prober` runs (schedule, grid step) points through `nlp.pipe` on dev, each
at most once; `search_schedule` bisects the grid for the smallest base
threshold whose real speed-up reaches a target; the static cuts are the
schedules "every token leaves at layer k". Used by `tune`.
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from spacy.language import Language
from spacy.training import Example

from ..encoder.exit_schedule import ExitSchedule
from .heads import HeadScoring
from .measure import GRID, Measurement, bisect_steps, grid_step, grid_threshold, measure


class Prober:
    """Measures (schedule, grid step) points for real, each at most once.

    Searches for several targets on the same schedule share their runs.

    nlp (Language): the pipeline.
    examples (Sequence[Example]): the dev examples.
    metric (str): the score key.
    num_layers (int): encoder depth.
    batch_size (int): `nlp.pipe` batch size.
    extra (Optional[Dict[str, Any]]): exit fields added to every point (e.g. the precision).
    heads (Optional[HeadScoring]): on a shared encoder, every head's metric and
        full-depth score: points are ranked by the worst head's loss.
    """

    def __init__(
        self, nlp: Language, examples: Sequence[Example], metric: str, num_layers: int, batch_size: int = 64,
        extra: Optional[Dict[str, Any]] = None, heads: Optional[HeadScoring] = None,
    ) -> None:
        self.heads = heads
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
            probed[step] = measure(self.nlp, self.examples, fields, self.metric, self.batch_size, self.heads)
        return probed[step]

    def probed(self, schedule: ExitSchedule) -> Dict[int, Measurement]:
        """Every grid step measured so far for `schedule`."""
        return self.cache.get(schedule.key, {})


@dataclass
class Candidate:
    """The search's answer for one schedule and target.

    schedule (ExitSchedule): the schedule.
    target (float): the speed-up to reach (margin included), FLOPs or layers per doc.
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


def bracket(probed: Dict[int, Measurement], target: float, cost: str = "flops") -> Tuple[int, int]:
    """Grid steps (low, high) with low below the target and high reaching it.

    Built from earlier runs so later searches start from a narrow interval.
    The speed-up need not be exactly monotone (exits move upper-layer
    states), so `high` is the first run reaching the target above the last
    run missing it: a measured point, never an assumption. Step 0 (threshold
    0) counts as missing: with nothing exiting, the extra off-ramps make it
    slower than full depth.

    probed (Dict[int, Measurement]): runs so far; must contain a step reaching the target.
    target (float): the speed-up, under `cost` ("flops" or "layers").
    RETURNS (Tuple[int, int]): the interval to bisect.
    """
    low = max([0] + [s for s, m in probed.items() if m.speedup(cost) < target])
    high = min(s for s, m in probed.items() if s > low and m.speedup(cost) >= target)
    return low, high


def search_schedule(
    prober: Callable[[ExitSchedule, int], Measurement],
    probed: Callable[[ExitSchedule], Dict[int, Measurement]],
    schedule: ExitSchedule,
    target: float,
    steps: int,
    guess: Optional[float] = None,
    cost: str = "flops",
) -> Candidate:
    """The smallest grid base threshold whose real speed-up reaches `target`.

    prober: measures (schedule, step); probed: the runs so far for a schedule.
    schedule (ExitSchedule): the schedule searched.
    target (float): the FLOPs speed-up to reach.
    steps (int): the most bisection runs after the first probes.
    guess (Optional[float]): where the simulation says the target is: probed
        first, with a point 25% lower, so that bisection starts narrow.
    cost (str): what the speed-up counts, "flops" or "layers" (per doc).
    RETURNS (Candidate): the chosen point, or an unreachable candidate.
    """
    top = prober(schedule, GRID)
    if top.speedup(cost) < target:
        return Candidate(schedule, target, None, top)
    if guess is not None and 0.0 < guess < 1.0:
        for value in (guess, 0.75 * guess):
            step = grid_step(value)
            if step > 0 and prober(schedule, step).speedup(cost) < target:
                break
    low, high = bracket(probed(schedule), target, cost)
    high = bisect_steps(lambda step: prober(schedule, step).speedup(cost) >= target, low, high, steps)
    return Candidate(schedule, target, high, prober(schedule, high))


def best_candidate(candidates: Sequence[Candidate], cost: str = "flops") -> Optional[Candidate]:
    """The reached candidate with the best score (on a shared encoder: the
    best worst-head loss); ties go to the faster one."""
    reached = [c for c in candidates if c.reached]
    if not reached:
        return None
    return max(reached, key=lambda c: (c.point.rank_score, c.point.speedup(cost)))


def static_candidates(prober: Prober, num_layers: int, goal: float, cost: str = "flops") -> List[Candidate]:
    """Every static cut (all tokens leave after layer k) measured once; reached when fast enough."""
    out = []
    for layer in range(1, num_layers):
        schedule = ExitSchedule(window=0, min_layer=layer, slope=1.0)
        point = prober(schedule, GRID)
        out.append(Candidate(schedule, goal, GRID if point.speedup(cost) >= goal else None, point, "static"))
    return out
