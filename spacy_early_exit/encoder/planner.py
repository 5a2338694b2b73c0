"""Stage 2: self-sampling fine-tuning settings (Li et al., 2021, section 3.3).

Each training sentence draws a window and a threshold; its tokens' exit layers
come from running the exit rule on the frozen stage-1 model's predictions; the
model is then trained with halt-and-copy at those layers, which closes the gap
between joint training (every token at every layer) and early-exit inference.
"""
import copy
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

from .config_block import is_number, read_block
from .exits import joint_uncertainty, simulate_exit_layers
from .model import EarlyExitEncoder, EncoderInput

TRAINING_MODES = ("joint", "self_sampling", "random")
LOSSES = ("ce", "flooding")


@dataclass(frozen=True)
class TrainingSettings:
    """How `update` trains the off-ramps.

    mode (str): "joint" (stage 1: every layer for every token), "self_sampling"
        (stage 2), or "random" (stage 2 with uniformly drawn exit layers: the
        ablation baseline).
    windows (Tuple[int, ...]): TOKEE windows k to draw from.
    thresholds (Tuple[float, ...]): thresholds to draw from.
    double_upper (bool): double the threshold in the upper half of the layers
        (capped at 0.5), as the reference code does in training and inference.
        Off by default: with calibrated temperatures one threshold means the
        same at every layer, and inference uses one threshold.
    sandwich (Tuple[float, float]): share of each batch at the most aggressive
        setting (largest threshold, smallest window) and at full depth.
    loss (str): "ce", or "flooding": per token and layer |CE - CE_stage1|.
    seed (int): seed of the sampler.
    distill_weight (float): weight of self-distillation (each off-ramp below
        the last also learns the last layer's softened predictions: the
        model's own in stage 1, the frozen stage-1 model's in stage 2); 0 = off.
    distill_temperature (float): the distillation temperature T (> 0).
    """

    mode: str = "joint"
    windows: Tuple[int, ...] = (2, 3, 4, 5, 6, 7)
    thresholds: Tuple[float, ...] = (0.01, 0.03, 0.05, 0.1, 0.15, 0.2, 0.25)
    double_upper: bool = False
    sandwich: Tuple[float, float] = (0.2, 0.4)
    loss: str = "ce"
    seed: int = 0
    distill_weight: float = 0.0
    distill_temperature: float = 2.0

    @classmethod
    def from_config(cls, cfg: Optional[Dict[str, Any]]) -> "TrainingSettings":
        """Validate a `[components.<name>.training]` block; errors name the key."""
        values = read_block("training", cfg, cls)
        mode, loss = values["mode"], values["loss"]
        if mode not in TRAINING_MODES:
            raise ValueError(f"'training.mode' must be one of {TRAINING_MODES}; got {mode!r}")
        if loss not in LOSSES:
            raise ValueError(f"'training.loss' must be one of {LOSSES}; got {loss!r}")
        windows = tuple(values["windows"])
        if not windows or any(isinstance(w, bool) or not isinstance(w, int) or w < 0 for w in windows):
            raise ValueError(f"'training.windows' must be non-negative integers; got {values['windows']!r}")
        thresholds = tuple(float(t) for t in values["thresholds"])
        if not thresholds or any(not 0.0 <= t <= 1.0 for t in thresholds):
            raise ValueError(f"'training.thresholds' must be numbers in [0, 1]; got {values['thresholds']!r}")
        sandwich = tuple(float(s) for s in values["sandwich"])
        if len(sandwich) != 2 or any(s < 0 for s in sandwich) or sum(sandwich) > 1.0:
            raise ValueError(f"'training.sandwich' must be two shares summing to <= 1; got {values['sandwich']!r}")
        weight, temperature = values["distill_weight"], values["distill_temperature"]
        if not is_number(weight) or not 0.0 <= weight:
            raise ValueError(f"'training.distill_weight' must be a number >= 0; got {weight!r}")
        if not is_number(temperature) or not temperature > 0:
            raise ValueError(f"'training.distill_temperature' must be a positive number; got {temperature!r}")
        return cls(
            mode=mode, windows=windows, thresholds=thresholds, double_upper=bool(values["double_upper"]),
            sandwich=sandwich, loss=loss, seed=int(values["seed"]),
            distill_weight=float(weight), distill_temperature=float(temperature),
        )

    def to_config(self) -> Dict[str, Any]:
        return {
            "mode": self.mode, "windows": list(self.windows), "thresholds": list(self.thresholds),
            "double_upper": self.double_upper, "sandwich": list(self.sandwich), "loss": self.loss, "seed": self.seed,
            "distill_weight": self.distill_weight, "distill_temperature": self.distill_temperature,
        }


DEFAULT_TRAINING: Dict[str, Any] = TrainingSettings().to_config()


@dataclass
class ExitPlan:
    """Forced exit layers for one training batch.

    exit_layers (torch.Tensor): long ``[batch, words]``.
    reference_logits (Optional[torch.Tensor]): the frozen stage-1 model's
        ``[layers, n_words, labels]`` (row-major words), for the flooding loss.
    """

    exit_layers: torch.Tensor
    reference_logits: Optional[torch.Tensor] = None


class ExitPlanner:
    """Draws each row's exit setting and turns it into per-word exit layers.

    settings (TrainingSettings): the stage-2 settings.
    reference (EarlyExitEncoder): frozen stage-1 encoder whose full-depth
        predictions decide the exits (and give the flooding loss its floor);
        with several heads, by the joint rule (the max over heads).
    """

    def __init__(self, settings: TrainingSettings, reference: EarlyExitEncoder) -> None:
        if settings.mode == "joint":
            raise ValueError("An exit planner is for stage 2 ('self_sampling' or 'random')")
        if reference is None:
            raise ValueError("Stage 2 needs the stage-1 encoder (frozen) to plan exits")
        self.settings = settings
        self.reference = reference.eval()
        self.generator = torch.Generator().manual_seed(settings.seed)
        # The frozen model's logits per row, computed once as in the reference
        # code: after the first epoch stage 2 costs no extra forward pass.
        self.cache: Dict[bytes, torch.Tensor] = {}

    @classmethod
    def from_current(cls, settings: TrainingSettings, encoder: EarlyExitEncoder) -> "ExitPlanner":
        """A planner over a frozen copy of `encoder` as it is now (stage 2
        starts from the stage-1 weights, which then keep changing)."""
        reference = copy.deepcopy(encoder)
        for param in reference.parameters():
            param.requires_grad_(False)
        return cls(settings, reference)

    def __call__(self, batch: EncoderInput) -> ExitPlan:
        reference_logits = None
        uncertainty = None
        if self.settings.mode == "self_sampling" or self.settings.loss == "flooding" or self.settings.distill_weight > 0:
            reference_logits = self._reference_logits(batch)
            # Several heads on one encoder: the same joint rule as prediction
            # (a word settles when every head is confident).
            joint = joint_uncertainty(reference_logits, self.reference.head_sizes)
            uncertainty = self._per_word(joint, batch.word_mask)
        mask = batch.word_mask
        n_layers = self.reference.num_layers
        if self.settings.mode == "random":
            layers = torch.randint(1, n_layers + 1, mask.shape, generator=self.generator)
            return ExitPlan(layers.to(mask.device).masked_fill(~mask, 0), reference_logits)
        thresholds, windows = self._draw(mask.shape[0], n_layers)
        exits = simulate_exit_layers(uncertainty, mask, thresholds.to(mask.device), windows.to(mask.device))
        return ExitPlan(exits, reference_logits)

    def _reference_logits(self, batch: EncoderInput) -> torch.Tensor:
        """``[layers, n_words, labels]`` of the frozen model, rows from the cache when seen."""
        keys = [_row_key(batch, i) for i in range(batch.input_ids.shape[0])]
        missing = sorted({i for i, key in enumerate(keys) if key not in self.cache})
        if missing:
            subset = select_rows(batch, missing)
            with torch.inference_mode():
                logits = torch.stack(self.reference(subset, all_layers=True).layer_logits)
            counts = subset.word_mask.sum(dim=1).tolist()
            for i, part in zip(missing, torch.split(logits, counts, dim=1)):
                self.cache[keys[i]] = part.clone()
        return torch.cat([self.cache[key] for key in keys], dim=1)

    @staticmethod
    def _per_word(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[layers, n_words]`` in row-major word order -> ``[layers, batch, words]``."""
        grid = values.new_zeros(values.shape[0], *mask.shape)
        rows, cols = mask.nonzero(as_tuple=True)
        grid[:, rows, cols] = values
        return grid

    def _draw(self, n_rows: int, n_layers: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-row thresholds ``[rows, layers]`` and windows ``[rows]``, sandwich rule included."""
        s = self.settings
        pick_t = torch.randint(len(s.thresholds), (n_rows,), generator=self.generator)
        pick_w = torch.randint(len(s.windows), (n_rows,), generator=self.generator)
        base = torch.tensor(s.thresholds)[pick_t]
        windows = torch.tensor(s.windows)[pick_w]
        order = torch.randperm(n_rows, generator=self.generator)
        n_aggressive = int(round(s.sandwich[0] * n_rows))
        n_full = int(round(s.sandwich[1] * n_rows))
        aggressive, full = order[:n_aggressive], order[n_aggressive:n_aggressive + n_full]
        base[aggressive] = max(s.thresholds)
        windows[aggressive] = min(s.windows)
        base[full] = 0.0  # nothing exits: full depth
        per_layer = base[:, None].repeat(1, n_layers)
        if s.double_upper:
            upper = torch.arange(1, n_layers + 1) > n_layers // 2
            per_layer[:, upper] = torch.clamp(per_layer[:, upper] * 2, max=0.5)
        return per_layer, windows


def _row_key(batch: EncoderInput, row: int) -> bytes:
    """A row is identified by its wordpieces and its words' first pieces."""
    length = int(batch.lengths[row])
    words = batch.word_pieces[row]
    return batch.input_ids[row, :length].cpu().numpy().tobytes() + b"|" + words[words >= 0].cpu().numpy().tobytes()


def select_rows(batch: EncoderInput, rows: List[int]) -> EncoderInput:
    """The sub-batch of `rows` (in that order), trimmed to its own longest row."""
    index = torch.tensor(rows, device=batch.input_ids.device)
    lengths = batch.lengths[index]
    n_words = int(batch.word_mask[index].sum(dim=1).max())
    new_row = torch.full((batch.input_ids.shape[0],), -1, dtype=torch.long, device=index.device)
    new_row[index] = torch.arange(len(rows), device=index.device)
    keep = new_row[batch.piece_rows] >= 0
    return EncoderInput(
        input_ids=batch.input_ids[index, : int(lengths.max())],
        lengths=lengths,
        word_pieces=batch.word_pieces[index, :n_words],
        piece_rows=new_row[batch.piece_rows[keep]],
        piece_cols=batch.piece_cols[keep],
        piece_words=batch.piece_words[keep],
    )
