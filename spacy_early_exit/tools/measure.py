"""Score and FLOPs speed-up of one exit setting on a data set.

`measure` runs the examples through `nlp.pipe` under the given exit fields and
scores them with spaCy's Scorer; `threshold_for_speedup` bisects a single
threshold for a FLOPs target from FLOPs alone (no labels read); the tuner
bisects exit schedules with the same grid and `bisect_steps`.
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence

from spacy.language import Language
from spacy.training import Example

from .evaluate import cost_summary, exit_settings, run_examples, score, task_heads
from .heads import HeadScoring, HeadValues, head_main_metric, head_value, rounded_scores, score_heads


def flops_speedup(nlp: Language, texts: Sequence[str], fields: dict, batch_size: int = 64) -> float:
    """Corpus FLOPs speed-up of `nlp` on `texts` with the given exit fields."""
    with exit_settings(nlp, fields):
        docs = list(nlp.pipe(texts, batch_size=batch_size))
    return cost_summary(docs, nlp)["flops_speedup"]


# Thresholds are searched on a 4-decimal grid, so a reported threshold is
# exactly the one that was run (no rounding after the search).
GRID = 10_000


def grid_threshold(step: int) -> float:
    """The threshold of grid step `step` (0..GRID)."""
    return round(step / GRID, 4)


def grid_step(threshold: float) -> int:
    """The grid step at or just above `threshold`."""
    return min(GRID, max(0, int(-(-threshold * GRID // 1))))


def bisect_steps(reaches: Callable[[int], bool], low: int, high: int, steps: int) -> int:
    """Narrow (low misses, high reaches) to the smallest reaching grid step.

    reaches (Callable[[int], bool]): runs one grid step; True when it reaches the target.
    low (int), high (int): a step known to miss and one known to reach.
    steps (int): the most runs.
    RETURNS (int): the smallest step found to reach.
    """
    for _ in range(steps):
        if high - low <= 1:
            break
        middle = (low + high) // 2
        if reaches(middle):
            high = middle
        else:
            low = middle
    return high


def threshold_for_speedup(
    nlp: Language,
    texts: Sequence[str],
    target: float,
    exit_mode: str = "tokee",
    window: int = 2,
    steps: int = 12,
) -> Optional[float]:
    """The smallest grid threshold whose FLOPs speed-up on `texts` reaches
    `target`, from FLOPs alone (no labels read).

    RETURNS (Optional[float]): the threshold, or None when even threshold 1.0
        does not reach the target.
    """
    fields = {"exit_mode": exit_mode, "window": window, "thresholds": None}

    def reaches(step: int) -> bool:
        return flops_speedup(nlp, texts, {**fields, "threshold": grid_threshold(step)}) >= target

    if not reaches(GRID):
        return None
    return grid_threshold(bisect_steps(reaches, 0, GRID, steps))


@dataclass(frozen=True)
class Measurement:
    """Score and cost of one exit setting on a data set.

    score (Optional[float]): the metric as spaCy reports it (0-1); None when
        the scorer has nothing to score (e.g. no gold or predicted entities).
    flops_speedup (float): corpus FLOPs speed-up against full depth.
    mean_exit_layer (float): mean 1-based exit layer over scored tokens.
    layer_speedup (float): full depth's layers per doc over the layers each
        doc runs (see `evaluate.cost_summary`): the batch-size-1 cost.
    head_scores (Optional[HeadValues]): on a shared encoder, each head's
        metric (0-1); `score` is then the first head's.
    objective (Optional[float]): on a shared encoder, the worst head's score
        minus its full-depth score (0-1 scale); what the tuner maximizes.
    worst_head (Optional[str]): the head that gives `objective`.
    """

    score: Optional[float]
    flops_speedup: float
    mean_exit_layer: float
    layer_speedup: float = 1.0
    head_scores: Optional[HeadValues] = None
    objective: Optional[float] = None
    worst_head: Optional[str] = None

    def speedup(self, cost: str) -> float:
        """The speed-up under one cost measure (see COSTS)."""
        return self.flops_speedup if validate_cost(cost) == "flops" else self.layer_speedup

    def as_row(self) -> Dict[str, Any]:
        """Rounded like `evaluation.compare` rows: score in 0-100; on a shared
        encoder also ``scores`` per head, ``objective`` (points) and ``worst_head``."""
        row: Dict[str, Any] = {
            "score": round(100.0 * self.score, 2) if self.score is not None else None,
            "flops_speedup": round(self.flops_speedup, 3),
            "mean_exit_layer": round(self.mean_exit_layer, 3),
            "layer_speedup": round(self.layer_speedup, 3),
        }
        if self.head_scores is not None:
            objective = round(100.0 * self.objective, 2) if self.objective is not None else None
            row.update(scores=rounded_scores(self.head_scores), objective=objective, worst_head=self.worst_head)
        return row

    @property
    def rank_score(self) -> float:
        """The score for ranking: the worst head's loss on a shared encoder, else
        the score; a missing one ranks below every real one."""
        value = self.objective if self.head_scores is not None else self.score
        return value if value is not None else float("-inf")


def main_metric(nlp: Language) -> str:
    """The first early-exit task component's main score key: the highest
    default score weight among the keys its scorer reports.

    nlp (Language): the pipeline.
    RETURNS (str): e.g. "ents_f" for `tokee_ner`.
    """
    heads = task_heads(nlp)
    if not heads:
        raise ValueError(f"The pipeline {nlp.pipe_names} has no early-exit task component to score")
    return head_main_metric(nlp, *heads[0])


def metric_value(scores: Dict[str, Any], metric: str) -> Optional[float]:
    """`scores[metric]` as a float; fails naming the available keys when it is absent.

    scores (Dict[str, Any]): spaCy's scores.
    metric (str): the key.
    RETURNS (Optional[float]): the value, or None when the scorer gave None.
    """
    if metric not in scores:
        raise ValueError(f"Metric {metric!r} not in the scores: {sorted(scores)}")
    value = scores[metric]
    return float(value) if value is not None else None


def measure(
    nlp: Language, examples: Sequence[Example], fields: Dict[str, Any], metric: str, batch_size: int = 64,
    heads: Optional[HeadScoring] = None,
) -> Measurement:
    """Run `examples` through `nlp` with the exit `fields` and score them.

    nlp (Language): the pipeline (its settings are restored afterwards).
    examples (Sequence[Example]): gold examples.
    fields (Dict[str, Any]): exit fields, as for `evaluation.exit_settings`.
    metric (str): the score key (ignored with `heads`: the first head's metric is the score).
    batch_size (int): `nlp.pipe` batch size.
    heads (Optional[HeadScoring]): on a shared encoder, each head's metric
        and full-depth score: every head is scored and the worst head's loss
        is the objective.
    RETURNS (Measurement): score, FLOPs speed-up and mean exit layer.
    """
    if heads is None:
        with exit_settings(nlp, fields):
            scores, cost = score(nlp, examples, batch_size=batch_size)
        return Measurement(metric_value(scores, metric), cost["flops_speedup"], cost["mean_exit_layer"], cost["layer_speedup"])
    with exit_settings(nlp, fields):
        scored = run_examples(nlp, examples, batch_size)
        cost = cost_summary([eg.predicted for eg in scored], nlp)
    values = score_heads(nlp, scored, heads.metrics)
    objective, worst = heads.objective(values)
    return Measurement(
        head_value(values, next(iter(values))), cost["flops_speedup"], cost["mean_exit_layer"], cost["layer_speedup"],
        values, objective, worst,
    )


# What a target speed-up counts: "flops", the corpus FLOPs (what batches of
# many docs pay for), or "layers", the encoder layers each doc runs (what one
# doc at a time pays for; see evaluate.cost_summary).
COSTS = ("flops", "layers")


def validate_cost(value: object) -> str:
    if value not in COSTS:
        raise ValueError(f"'cost' must be one of {', '.join(COSTS)}; got {value!r}")
    return value  # type: ignore[return-value]
