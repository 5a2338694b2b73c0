"""Stage 2: self-sampling fine-tuning settings (Li et al., 2021, section 3.3).

Each training sentence draws a window and a threshold; its tokens' exit layers
come from running the exit rule on the frozen stage-1 model's predictions; the
model is then trained with halt-and-copy at those layers, which closes the gap
between joint training (every token at every layer) and early-exit inference.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

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
    sandwich (Tuple[float, float]): share of each batch at the most aggressive
        setting (largest threshold, smallest window) and at full depth.
    loss (str): "ce", or "flooding": per token and layer |CE - CE_stage1|.
    seed (int): seed of the sampler.
    """

    mode: str = "joint"
    windows: Tuple[int, ...] = (2, 3, 4, 5, 6, 7)
    thresholds: Tuple[float, ...] = (0.01, 0.03, 0.05, 0.1, 0.15, 0.2, 0.25)
    double_upper: bool = True
    sandwich: Tuple[float, float] = (0.2, 0.4)
    loss: str = "ce"
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: Dict[str, Any]) -> "TrainingSettings":
        """Validate a `[components.<name>.training]` block; errors name the key."""
        if not isinstance(cfg, dict):
            raise ValueError(f"'training' must be a table of settings; got {cfg!r}")
        known = set(cls.__dataclass_fields__)
        unknown = set(cfg) - known
        if unknown:
            raise ValueError(f"Unknown 'training' settings {sorted(unknown)}; expected {sorted(known)}")
        values = {**{k: f.default for k, f in cls.__dataclass_fields__.items()}, **cfg}
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
        return cls(
            mode=mode, windows=windows, thresholds=thresholds, double_upper=bool(values["double_upper"]),
            sandwich=sandwich, loss=loss, seed=int(values["seed"]),
        )

    def to_config(self) -> Dict[str, Any]:
        return {
            "mode": self.mode, "windows": list(self.windows), "thresholds": list(self.thresholds),
            "double_upper": self.double_upper, "sandwich": list(self.sandwich), "loss": self.loss, "seed": self.seed,
        }


DEFAULT_TRAINING: Dict[str, Any] = TrainingSettings().to_config()
