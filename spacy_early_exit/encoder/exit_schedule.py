"""Exit schedules: per-layer TOKEE thresholds from a few numbers, and their simulated cost.

One threshold at every layer is only one way to spend a FLOPs budget. The low
off-ramps of a 6-layer model are often wrong while confident, and a ramp that
lets nobody out still costs its logits. An :class:`ExitSchedule` says

- from which layer tokens may leave (``min_layer``): below it the threshold is
  0, so no off-ramp runs there and none is paid for;
- how the threshold changes with depth (``slope``): layer ``min_layer + i``
  uses ``base * slope**i``, capped at 1;
- optionally, the layer by which every token has left (``max_layer``): its
  threshold is 1. That bounds the layers a doc runs, which is what one doc at
  a time pays for (at batch size 1 a layer costs about the same however few
  tokens are still in it), at a small FLOPs cost.

The static cut after layer k (every token leaves there) is the schedule
``min_layer=k`` at base 1.0, so a search over schedules always contains it.

The simulation below reads full-depth uncertainties: it says where tokens
*would* exit if halting did not change the states above it. That is cheap
(no forward pass per setting), so a tuner can screen many schedules with it
and then measure the few best for real.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .cost import CostModel
from .exits import simulate_exit_layers

# Thresholds are written to configs with this many decimals.
DECIMALS = 4


@dataclass(frozen=True)
class ExitSchedule:
    """A family of per-layer TOKEE thresholds, indexed by one base threshold.

    window (int): TOKEE's k.
    min_layer (int): the first layer (1-based) whose off-ramp may let tokens out.
    slope (float): threshold growth per layer above `min_layer` (1.0: flat).
    max_layer (Optional[int]): the layer at which every token left exits
        (threshold 1); None = the last layer.
    """

    window: int = 2
    min_layer: int = 1
    slope: float = 1.0
    max_layer: Optional[int] = None

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 0:
            raise ValueError(f"schedule 'window' must be an integer >= 0; got {self.window!r}")
        if isinstance(self.min_layer, bool) or not isinstance(self.min_layer, int) or self.min_layer < 1:
            raise ValueError(f"schedule 'min_layer' must be an integer >= 1; got {self.min_layer!r}")
        if not self.slope > 0:
            raise ValueError(f"schedule 'slope' must be positive; got {self.slope!r}")
        if self.max_layer is not None and (
            isinstance(self.max_layer, bool) or not isinstance(self.max_layer, int) or self.max_layer < self.min_layer
        ):
            raise ValueError(f"schedule 'max_layer' must be an integer >= min_layer ({self.min_layer}) or None; got {self.max_layer!r}")

    @property
    def key(self) -> str:
        """A stable name, e.g. "w2-m1-s1" ("w2-m1-s1-c4" with max_layer 4)."""
        cap = f"-c{self.max_layer}" if self.max_layer is not None else ""
        return f"w{self.window}-m{self.min_layer}-s{self.slope:g}{cap}"

    def thresholds(self, base: float, num_layers: int) -> Tuple[float, ...]:
        """The per-layer thresholds at `base`, one per layer.

        base (float): the threshold at `min_layer`, in [0, 1].
        num_layers (int): encoder depth; `min_layer` must not exceed it.
        """
        if self.min_layer > num_layers:
            raise ValueError(f"schedule min_layer {self.min_layer} exceeds the encoder's {num_layers} layers")
        if self.max_layer is not None and self.max_layer > num_layers:
            raise ValueError(f"schedule max_layer {self.max_layer} exceeds the encoder's {num_layers} layers")
        if not 0.0 <= base <= 1.0:
            raise ValueError(f"base threshold must be in [0, 1]; got {base!r}")
        out = []
        for layer in range(1, num_layers + 1):
            if layer < self.min_layer:
                out.append(0.0)
            elif self.max_layer is not None and layer >= self.max_layer:
                out.append(1.0)
            else:
                out.append(round(min(1.0, base * self.slope ** (layer - self.min_layer)), DECIMALS))
        return tuple(out)

    def fields(self, base: float, num_layers: int) -> Dict[str, object]:
        """The component's exit fields for this schedule at `base`."""
        return {
            "exit_mode": "tokee",
            "window": self.window,
            "threshold": round(base, DECIMALS),
            "thresholds": list(self.thresholds(base, num_layers)),
        }

    def as_dict(self) -> Dict[str, object]:
        return {"window": self.window, "min_layer": self.min_layer, "slope": self.slope, "max_layer": self.max_layer}


def schedule_grid(
    num_layers: int, windows: List[int], min_layers: List[int], slopes: List[float],
    max_layers: Sequence[Optional[int]] = (None,),
) -> List[ExitSchedule]:
    """Every schedule of the grid whose layers fit the encoder. A cap at or
    below `min_layer`, or at the last layer, adds nothing and is left out."""
    return [
        ExitSchedule(window, layer, slope, cap)
        for window in windows
        for layer in min_layers
        if layer <= num_layers
        for slope in slopes
        for cap in max_layers
        if cap is None or layer < cap < num_layers
    ]


@dataclass
class RowShapes:
    """What the cost of a padded batch of encoder rows depends on.

    word_mask (torch.Tensor): bool ``[rows, words]``.
    word_pieces (torch.Tensor): long ``[rows, words]``, wordpieces per word (0 on padding).
    row_pieces (torch.Tensor): long ``[rows]``, real pieces per row, specials included.
    """

    word_mask: torch.Tensor
    word_pieces: torch.Tensor
    row_pieces: torch.Tensor


def simulated_exits(uncertainty: torch.Tensor, word_mask: torch.Tensor, window: int, thresholds: Tuple[float, ...]) -> torch.Tensor:
    """Exit layers under one window and per-layer thresholds, from full-depth uncertainties.

    uncertainty (torch.Tensor): ``[layers, rows, words]`` (temperatures applied).
    word_mask (torch.Tensor): bool ``[rows, words]``.
    RETURNS (torch.Tensor): long ``[rows, words]``, 1-based, 0 on padding.
    """
    n_rows = word_mask.shape[0]
    per_row = torch.tensor(thresholds, dtype=uncertainty.dtype).expand(n_rows, -1)
    windows = torch.full((n_rows,), window, dtype=torch.long)
    return simulate_exit_layers(uncertainty, word_mask, per_row, windows)


def simulated_flops(exits: torch.Tensor, shapes: RowShapes, thresholds: Tuple[float, ...], cost: CostModel) -> Tuple[int, int]:
    """FLOPs the encoder would count for these exit layers, and full depth's.

    Counted as the encoder counts (see encoder/model.py): at each layer, every
    real piece of a row that still has an active word is a key/value; the
    active words' pieces and the row's specials are queries; an off-ramp runs
    on the active words where the threshold is above 0, and at the last layer.
    A piece shared by two words is counted for both (a small over-count).

    RETURNS (Tuple[int, int]): (flops, full_flops) summed over rows.
    """
    n_layers = len(thresholds)
    mask = shapes.word_mask
    pieces = shapes.word_pieces * mask
    specials = shapes.row_pieces - pieces.sum(dim=1)
    flops = torch.zeros((), dtype=torch.float64)
    for layer in range(1, n_layers + 1):
        running = mask & (exits >= layer)
        live = running.any(dim=1)
        active = (specials + (pieces * running).sum(dim=1)) * live
        present = shapes.row_pieces * live
        flops += cost.layer_flops(present.double(), active.double()).sum()
        if layer == n_layers or thresholds[layer - 1] > 0.0:
            flops += cost.ramp_flops(running.sum().double())
    n = shapes.row_pieces.double()
    full = (n_layers * cost.layer_flops(n, n) + cost.ramp_flops(mask.sum(dim=1).double())).sum()
    return int(flops.item()), int(full.item())


def simulated_layer_speedup(exits: torch.Tensor, num_layers: int) -> float:
    """Full depth's layers per row over the layers each row runs (its last
    exit), for rows with a word: the batch-size-1 cost, when rows are docs.

    exits (torch.Tensor): long ``[rows, words]``, 1-based, 0 on padding.
    """
    last = exits.max(dim=1).values
    ran = last[last > 0]
    return num_layers * len(ran) / float(ran.sum()) if len(ran) else 1.0
