"""A cheap pre-screen of exit schedules from one full-depth pass over dev.

Measuring an exit setting for real means running the dev set through the
pipeline, seconds to minutes each. A schedule search would need hundreds of
such runs. Instead, one full-depth pass records every off-ramp's prediction
and uncertainty for every word; the TOKEE rule is then replayed on those
(`encoder.exit_schedule`) for any schedule and threshold in milliseconds,
giving a simulated FLOPs speed-up and a token-level proxy score. The replay
ignores that halted tokens change the states above them, so it only ranks:
the tuner measures the few best schedules for real.

The proxy score is token accuracy, or, when the classes have an outside class
("O", as in NER), the micro F1 of the other classes: entity F1 follows it far
more closely than accuracy dominated by "O".
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy
import torch
from spacy.training import Example

from ..layers.architecture import full_depth_logits, get_aligner, get_shim
from ..encoder.exit_schedule import ExitSchedule, RowShapes, simulated_exits, simulated_flops, simulated_layer_speedup
from ..encoder.exits import normalized_entropy
from ..pipes.base import EarlyExitPipe
from .measure import validate_cost

OUTSIDE = "O"
# Base thresholds the screen tries per schedule: geometric, dense at the low end
# where accurate settings live, ending at 1.0 (exit at min_layer: the static cut).
BASE_GRID = tuple(round(float(t), 4) for t in numpy.geomspace(0.002, 1.0, 40))


@dataclass
class ScreenPoint:
    """One simulated (schedule, base threshold).

    schedule (ExitSchedule): the schedule.
    base (float): its base threshold.
    flops_speedup (float): simulated corpus FLOPs speed-up.
    proxy (float): simulated token-level score (0-1).
    layer_speedup (float): simulated layers-per-doc speed-up (rows as docs).
    """

    schedule: ExitSchedule
    base: float
    flops_speedup: float
    proxy: float
    layer_speedup: float = 1.0

    def speedup(self, cost: str) -> float:
        """The simulated speed-up under one cost measure ("flops" or "layers")."""
        return self.flops_speedup if validate_cost(cost) == "flops" else self.layer_speedup


class ExitProfile:
    """Every off-ramp's prediction and uncertainty for every word of a data set, at full depth.

    uncertainty (torch.Tensor): ``[layers, rows, words]``, with the pipe's temperatures.
    predicted (torch.Tensor): long ``[layers, rows, words]``, each ramp's argmax class.
    gold (torch.Tensor): long ``[rows, words]``, gold class, -1 where unscored
        (padding, missing gold, or a word read from another window of its doc).
    shapes (RowShapes): what the cost depends on.
    outside (Optional[int]): the outside class's index, if there is one.
    pipe (EarlyExitPipe): the component profiled (for its cost model and depth).
    """

    def __init__(
        self,
        uncertainty: torch.Tensor,
        predicted: torch.Tensor,
        gold: torch.Tensor,
        shapes: RowShapes,
        outside: Optional[int],
        pipe: EarlyExitPipe,
    ) -> None:
        self.uncertainty = uncertainty
        self.predicted = predicted
        self.gold = gold
        self.shapes = shapes
        self.outside = outside
        self.pipe = pipe

    @property
    def num_layers(self) -> int:
        return int(self.uncertainty.shape[0])

    @classmethod
    def collect(cls, pipe: EarlyExitPipe, examples: Sequence[Example], batch_size: int = 64) -> "ExitProfile":
        """Run `examples` once at full depth through `pipe` (at its precision) and keep what the screen needs.

        pipe (EarlyExitPipe): a trained early-exit component.
        examples (Sequence[Example]): gold examples (dev).
        batch_size (int): docs per forward pass.
        """
        model = pipe.model
        aligner = get_aligner(model)
        policy = pipe.policy
        index_of = {name: i for i, name in enumerate(pipe.class_names)}
        per_row: List[Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray, int, numpy.ndarray]] = []
        examples = list(examples)
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            docs = [eg.predicted for eg in chunk]
            rows, layouts = aligner.layout(docs)
            output = full_depth_logits(model, docs, policy.precision)
            logits = torch.as_tensor(model.ops.to_numpy(output.layer_logits))
            offsets = numpy.concatenate([[0], numpy.cumsum([len(r.word_cols) for r in rows])])
            golds = [numpy.full(len(r.word_cols), -1, dtype="int64") for r in rows]
            for example, layout in zip(chunk, layouts):
                for token, gold in enumerate(pipe.gold_classes(example)):
                    row = int(layout.token_rows[token])
                    if row >= 0 and gold in index_of:
                        golds[row][int(layout.token_slots[token])] = index_of[gold]
            for i, row in enumerate(rows):
                part = logits[:, offsets[i]:offsets[i + 1]]
                uncertainty = torch.stack(
                    [normalized_entropy(part[l], policy.layer_temperature(l + 1)) for l in range(part.shape[0])]
                )
                pieces = numpy.bincount(row.pair_words, minlength=len(row.word_cols)) if len(row.pair_words) else numpy.zeros(len(row.word_cols), dtype="int64")
                per_row.append((uncertainty.numpy(), part.argmax(dim=-1).numpy(), golds[i], len(row.ids), pieces))
        return cls._pad(per_row, pipe)

    @classmethod
    def _pad(cls, per_row: list, pipe: EarlyExitPipe) -> "ExitProfile":
        n_layers = get_shim(pipe.model).encoder.num_layers
        n_rows = len(per_row)
        width = max([len(r[2]) for r in per_row] + [1])
        uncertainty = torch.zeros(n_layers, n_rows, width)
        predicted = torch.zeros(n_layers, n_rows, width, dtype=torch.long)
        gold = torch.full((n_rows, width), -1, dtype=torch.long)
        mask = torch.zeros(n_rows, width, dtype=torch.bool)
        word_pieces = torch.zeros(n_rows, width, dtype=torch.long)
        row_pieces = torch.zeros(n_rows, dtype=torch.long)
        for i, (unc, pred, g, n_pieces, pieces) in enumerate(per_row):
            n = len(g)
            uncertainty[:, i, :n] = torch.as_tensor(unc)
            predicted[:, i, :n] = torch.as_tensor(pred)
            gold[i, :n] = torch.as_tensor(g)
            mask[i, :n] = True
            word_pieces[i, :n] = torch.as_tensor(pieces)
            row_pieces[i] = n_pieces
        names = pipe.class_names
        outside = names.index(OUTSIDE) if OUTSIDE in names else None
        return cls(uncertainty, predicted, gold, RowShapes(mask, word_pieces, row_pieces), outside, pipe)

    def simulate(self, schedule: ExitSchedule, base: float) -> ScreenPoint:
        """Replay the TOKEE rule for one schedule at one base threshold."""
        thresholds = schedule.thresholds(base, self.num_layers)
        exits = simulated_exits(self.uncertainty, self.shapes.word_mask, schedule.window, thresholds)
        flops, full = simulated_flops(exits, self.shapes, thresholds, get_shim(self.pipe.model).encoder.cost)
        chosen = self.predicted.gather(0, (exits.clamp(min=1) - 1)[None]).squeeze(0)
        return ScreenPoint(schedule, base, full / flops if flops else 1.0, self.proxy_score(chosen),
                           simulated_layer_speedup(exits, self.num_layers))

    def proxy_score(self, predicted: torch.Tensor) -> float:
        """Token accuracy, or the non-outside micro F1 when there is an outside class."""
        scored = self.gold >= 0
        gold, pred = self.gold[scored], predicted[scored]
        if not len(gold):
            return 0.0
        if self.outside is None:
            return float((gold == pred).float().mean())
        correct = float(((gold == pred) & (gold != self.outside)).sum())
        n_pred, n_gold = float((pred != self.outside).sum()), float((gold != self.outside).sum())
        if not n_pred or not n_gold or not correct:
            return 0.0
        precision, recall = correct / n_pred, correct / n_gold
        return 2 * precision * recall / (precision + recall)


def cheapest_reaching(
    profile: ExitProfile, schedule: ExitSchedule, goal: float, grid: Sequence[float] = BASE_GRID, cost: str = "flops"
) -> Optional[ScreenPoint]:
    """The smallest grid base threshold whose simulated speed-up (under
    `cost`) reaches `goal` (the most accurate point fast enough), or None when 1.0 does not."""
    top = profile.simulate(schedule, grid[-1])
    if top.speedup(cost) < goal:
        return None
    low, high = 0, len(grid) - 1
    best = top
    while low < high:  # the speed-up grows with the threshold: bisect the grid
        middle = (low + high) // 2
        point = profile.simulate(schedule, grid[middle])
        if point.speedup(cost) >= goal:
            high, best = middle, point
        else:
            low = middle + 1
    return best  # always the point at grid[high]: set whenever high moves, and top is grid[-1]


def screen(
    profile: ExitProfile, schedules: Sequence[ExitSchedule], goal: float, keep: int, cost: str = "flops"
) -> List[ScreenPoint]:
    """The `keep` schedules whose simulated point at `goal` (a speed-up under
    `cost`) has the best proxy score.

    RETURNS (List[ScreenPoint]): best first; schedules that cannot reach `goal` are left out.
    """
    points = [p for p in (cheapest_reaching(profile, s, goal, cost=cost) for s in schedules) if p is not None]
    points.sort(key=lambda p: (-p.proxy, -p.speedup(cost)))
    return points[:keep]
