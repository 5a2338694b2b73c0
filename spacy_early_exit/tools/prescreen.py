"""A cheap pre-screen of exit schedules from one full-depth pass over dev.

Measuring an exit setting for real means running the dev set through the
pipeline, seconds to minutes each. A schedule search would need hundreds of
such runs. Instead, one full-depth pass records every off-ramp's prediction
and uncertainty for every word; the TOKEE rule is then replayed on those
(`encoder.exit_schedule`) for any schedule and threshold in milliseconds,
giving a simulated FLOPs speed-up and a token-level proxy score. The replay
ignores that halted tokens change the states above them, so it only ranks:
the tuner measures the few best schedules for real.

On a shared encoder the replay runs the joint rule the encoder runs (the max
over heads of each head's temperature-scaled entropy), and a point's proxy is
the worst head's proxy loss against that head's full-depth proxy, the
tuner's objective in miniature.

The proxy score is token accuracy, or, when the classes have an outside class
("O", as in NER), the micro F1 of the other classes: entity F1 follows it far
more closely than accuracy dominated by "O".
"""
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy
import torch
from spacy.training import Example

from ..layers.architecture import full_depth_logits, get_aligner, get_shim
from ..encoder.exit_schedule import ExitSchedule, RowShapes, simulated_exits, simulated_flops, simulated_layer_speedup
from ..encoder.exits import joint_uncertainty
from ..pipes.head import TaskHead
from ..pipes.owner import EncoderOwner
from .measure import validate_cost

OUTSIDE = "O"
# Base thresholds the screen tries per schedule: geometric, dense at the low end
# where accurate settings live, ending at 1.0 (exit at min_layer: the static cut).
BASE_GRID = tuple(round(float(t), 4) for t in numpy.geomspace(0.002, 1.0, 40))


@dataclass(frozen=True)
class FullDepthRows:
    """One batch of examples run at full depth: per encoder row, every
    off-ramp's logits and each head's gold class ids.

    rows (List[Any]): the aligner's encoder rows (SequenceRow).
    layouts (List[Any]): per doc, where its tokens sit in the rows (DocLayout).
    logits (List[torch.Tensor]): per row ``[layers, words, classes]`` (all heads' columns).
    golds (List[List[numpy.ndarray]]): per row, per head, gold ids per word (-1: none).
    """

    rows: List[Any]
    layouts: List[Any]
    logits: List[torch.Tensor]
    golds: List[List[numpy.ndarray]]


def full_depth_rows(
    model: Any, heads: Sequence[Tuple[str, TaskHead]], examples: Sequence[Example], batch_size: int, precision: str
) -> Iterator[FullDepthRows]:
    """Run `examples` through an encoder's model at full depth, a batch at a time.

    What the screen and the shared-encoder diagnostics both replay exits from.
    model (Any): the encoder owner's Thinc model.
    heads (Sequence[Tuple[str, TaskHead]]): the heads whose gold to read, in head order.
    examples (Sequence[Example]): gold examples.
    batch_size (int): docs per forward pass.
    precision (str): the layer stack's precision.
    YIELDS (FullDepthRows): one per batch.
    """
    aligner = get_aligner(model)
    index_of = [{name: i for i, name in enumerate(head.class_names)} for _, head in heads]
    examples = list(examples)
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        docs = [eg.predicted for eg in chunk]
        rows, layouts = aligner.layout(docs)
        output = full_depth_logits(model, docs, precision)
        logits = torch.as_tensor(model.ops.to_numpy(output.layer_logits))
        offsets = numpy.concatenate([[0], numpy.cumsum([len(r.word_cols) for r in rows])])
        golds = [[numpy.full(len(r.word_cols), -1, dtype="int64") for _ in heads] for r in rows]
        for h, (_, head) in enumerate(heads):
            for example, layout in zip(chunk, layouts):
                for token, gold in enumerate(head.gold_classes(example)):
                    row = int(layout.token_rows[token])
                    if row >= 0 and gold in index_of[h]:
                        golds[row][h][int(layout.token_slots[token])] = index_of[h][gold]
        parts = [logits[:, offsets[i]:offsets[i + 1]] for i in range(len(rows))]
        yield FullDepthRows(rows, layouts, parts, golds)


@dataclass
class ScreenPoint:
    """One simulated (schedule, base threshold).

    schedule (ExitSchedule): the schedule.
    base (float): its base threshold.
    flops_speedup (float): simulated corpus FLOPs speed-up.
    proxy (float): simulated token-level score (0-1); on a shared encoder
        the worst head's proxy minus its full-depth proxy.
    layer_speedup (float): simulated layers-per-doc speed-up (rows as docs).
    head_proxies (Optional[Dict[str, float]]): on a shared encoder, each head's proxy.
    """

    schedule: ExitSchedule
    base: float
    flops_speedup: float
    proxy: float
    layer_speedup: float = 1.0
    head_proxies: Optional[Dict[str, float]] = None

    def speedup(self, cost: str) -> float:
        """The simulated speed-up under one cost measure ("flops" or "layers")."""
        return self.flops_speedup if validate_cost(cost) == "flops" else self.layer_speedup


@dataclass
class HeadProfile:
    """One task head's side of an `ExitProfile`.

    name (str): the component's name.
    predicted (torch.Tensor): long ``[layers, rows, words]``, each ramp's argmax over the head's classes.
    gold (torch.Tensor): long ``[rows, words]``, gold class, -1 where unscored
        (padding, missing gold, or a word read from another window of its doc).
    outside (Optional[int]): the outside class's index, if there is one.
    """

    name: str
    predicted: torch.Tensor
    gold: torch.Tensor
    outside: Optional[int]

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


class ExitProfile:
    """Every off-ramp's prediction and uncertainty for every word of a data set, at full depth.

    uncertainty (torch.Tensor): ``[layers, rows, words]``, with the pipe's
        temperatures; on a shared encoder the joint one (the max over heads).
    heads (List[HeadProfile]): each head's predictions and gold.
    shapes (RowShapes): what the cost depends on.
    pipe (EncoderOwner): the encoder profiled (for its cost model, every head's ramps).
    relative (bool): score a point by the worst head's proxy loss against
        its full-depth proxy (a shared encoder) rather than by the one head's proxy.
    """

    def __init__(
        self, uncertainty: torch.Tensor, heads: List[HeadProfile], shapes: RowShapes, pipe: EncoderOwner,
        relative: bool = False,
    ) -> None:
        self.uncertainty = uncertainty
        self.heads = heads
        self.shapes = shapes
        self.pipe = pipe
        self.relative = relative
        self.full_proxies = [head.proxy_score(head.predicted[-1]) for head in heads]

    # The first head's side, as the profile of one standalone component reads.
    @property
    def predicted(self) -> torch.Tensor:
        return self.heads[0].predicted

    @property
    def gold(self) -> torch.Tensor:
        return self.heads[0].gold

    @property
    def outside(self) -> Optional[int]:
        return self.heads[0].outside

    @property
    def num_layers(self) -> int:
        return int(self.uncertainty.shape[0])

    @classmethod
    def collect(
        cls, pipe: EncoderOwner, examples: Sequence[Example], batch_size: int = 64,
        heads: Optional[Sequence[Tuple[str, TaskHead]]] = None,
    ) -> "ExitProfile":
        """Run `examples` once at full depth through `pipe` (at its precision) and keep what the screen needs.

        pipe (EncoderOwner): a trained standalone component, or a shared `tokee_transformer`.
        examples (Sequence[Example]): gold examples (dev).
        batch_size (int): docs per forward pass.
        heads (Optional[Sequence[Tuple[str, TaskHead]]]): a shared encoder's
            listening components, in its head order; None = `pipe` is its own head.
        """
        relative = heads is not None
        if heads is None:
            if not isinstance(pipe, TaskHead):
                raise ValueError(f"'{pipe.name}' is a shared encoder: pass the heads listening to it")
            heads = [(pipe.name, pipe)]
        model = pipe.model
        encoder = get_shim(model).encoder
        policy = pipe.policy
        columns = [pipe.head_columns(name) if relative else (0, encoder.n_classes) for name, _ in heads]  # type: ignore[attr-defined]
        rows_out: List[Tuple[numpy.ndarray, List[numpy.ndarray], List[numpy.ndarray], int, numpy.ndarray]] = []
        for batch in full_depth_rows(model, heads, examples, batch_size, policy.precision):
            for row, part, row_golds in zip(batch.rows, batch.logits, batch.golds):
                # The rule the encoder runs: the max over every head of its
                # temperature-scaled entropy (one head: the plain entropy).
                uncertainty = torch.stack([
                    joint_uncertainty(part[l], encoder.head_sizes, policy.layer_temperatures(l + 1, encoder.n_heads))
                    for l in range(part.shape[0])
                ])
                predicted = [part[..., a:b].argmax(dim=-1).numpy() for a, b in columns]
                pieces = numpy.bincount(row.pair_words, minlength=len(row.word_cols)) if len(row.pair_words) else numpy.zeros(len(row.word_cols), dtype="int64")
                rows_out.append((uncertainty.numpy(), predicted, row_golds, len(row.ids), pieces))
        return cls._pad(rows_out, pipe, heads, relative)

    @classmethod
    def _pad(cls, per_row: list, pipe: EncoderOwner, heads: Sequence[Tuple[str, TaskHead]], relative: bool) -> "ExitProfile":
        n_layers = get_shim(pipe.model).encoder.num_layers
        n_rows, n_heads = len(per_row), len(heads)
        width = max([len(r[2][0]) for r in per_row] + [1])
        uncertainty = torch.zeros(n_layers, n_rows, width)
        predicted = torch.zeros(n_heads, n_layers, n_rows, width, dtype=torch.long)
        gold = torch.full((n_heads, n_rows, width), -1, dtype=torch.long)
        mask = torch.zeros(n_rows, width, dtype=torch.bool)
        word_pieces = torch.zeros(n_rows, width, dtype=torch.long)
        row_pieces = torch.zeros(n_rows, dtype=torch.long)
        for i, (unc, preds, golds, n_pieces, pieces) in enumerate(per_row):
            n = len(golds[0])
            uncertainty[:, i, :n] = torch.as_tensor(unc)
            for h in range(n_heads):
                predicted[h, :, i, :n] = torch.as_tensor(preds[h])
                gold[h, i, :n] = torch.as_tensor(golds[h])
            mask[i, :n] = True
            word_pieces[i, :n] = torch.as_tensor(pieces)
            row_pieces[i] = n_pieces
        profiles = []
        for h, (name, head) in enumerate(heads):
            names = head.class_names
            profiles.append(HeadProfile(name, predicted[h], gold[h], names.index(OUTSIDE) if OUTSIDE in names else None))
        return cls(uncertainty, profiles, RowShapes(mask, word_pieces, row_pieces), pipe, relative)

    def simulate(self, schedule: ExitSchedule, base: float) -> ScreenPoint:
        """Replay the exit rule (joint over heads) for one schedule at one base threshold."""
        thresholds = schedule.thresholds(base, self.num_layers)
        exits = simulated_exits(self.uncertainty, self.shapes.word_mask, schedule.window, thresholds)
        flops, full = simulated_flops(exits, self.shapes, thresholds, get_shim(self.pipe.model).encoder.cost)
        index = (exits.clamp(min=1) - 1)[None]
        proxies = [head.proxy_score(head.predicted.gather(0, index).squeeze(0)) for head in self.heads]
        speedups = (full / flops if flops else 1.0, simulated_layer_speedup(exits, self.num_layers))
        if not self.relative:
            return ScreenPoint(schedule, base, speedups[0], proxies[0], speedups[1])
        worst = min(p - f for p, f in zip(proxies, self.full_proxies))
        by_head = {head.name: p for head, p in zip(self.heads, proxies)}
        return ScreenPoint(schedule, base, speedups[0], worst, speedups[1], by_head)

    def proxy_score(self, predicted: torch.Tensor) -> float:
        """The first head's token accuracy, or its non-outside micro F1 when it has an outside class."""
        return self.heads[0].proxy_score(predicted)


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
