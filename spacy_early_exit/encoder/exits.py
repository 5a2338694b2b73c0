"""The exit rules: per-token uncertainty, window max, SENTEE/TOKEE decisions.

Conventions where the papers leave a choice (see README, "Exit semantics"):
- Uncertainty is the normalized entropy of ``softmax(logits / T_l)``, computed
  from ``log_softmax`` so large logits cannot overflow.
- The window max runs over the words of one sequence that are still active;
  words that have already halted count as settled (uncertainty 0). The
  reference code meant to do this but its exclusion branch is dead.
- SENTEE is the window rule with an unbounded window: the whole sequence
  (one document, or one window of a long document) exits together.
- With several heads on one encoder (one fused off-ramp per layer, each head
  a slice of its columns), a token's uncertainty is the max over the heads:
  it halts only when every head is confident. The max over heads commutes
  with the window max, so the window rule runs unchanged on it.
"""
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .precision import validate_precision

EXIT_MODES = ("tokee", "sentee", "off")


@dataclass(frozen=True)
class ExitPolicy:
    """When tokens leave the encoder.

    mode (str): "tokee" (window rule), "sentee" (whole sequence), "off" (full depth).
    threshold (float): exit when the (window) uncertainty is below this, in [0, 1];
        0 never exits, 1 always exits (so per-layer `thresholds` of 0s then 1s
        give a static model cut after a chosen layer).
    window (int): k of the +-k window for TOKEE, >= 0.
    thresholds (Optional[Tuple[float, ...]]): one threshold per layer; overrides
        `threshold` when given.
    temperatures (Optional[Tuple[float, ...]]): one positive temperature per
        layer, dividing that off-ramp's logits before the uncertainty (every
        head's, when the encoder has several).
    head_temperatures (Optional[Tuple[Optional[Tuple[float, ...]], ...]]):
        per head, in the encoder's head order, one temperature per layer or
        None (that head falls back to `temperatures`); overrides
        `temperatures` for the heads it names.
    precision (str): what the layer stack computes in at prediction: "fp32",
        "bf16", "int8" or "int8-ort" (see encoder/precision.py). Off-ramps and
        the exit decision are fp32 in all of them; training is always fp32.
    """

    mode: str = "tokee"
    threshold: float = 0.1
    window: int = 2
    thresholds: Optional[Tuple[float, ...]] = None
    temperatures: Optional[Tuple[float, ...]] = None
    precision: str = "fp32"
    head_temperatures: Optional[Tuple[Optional[Tuple[float, ...]], ...]] = None

    def __post_init__(self) -> None:
        validate_mode(self.mode)
        validate_precision(self.precision)
        validate_threshold(self.threshold, "threshold")
        validate_window(self.window)
        if self.thresholds is not None:
            object.__setattr__(self, "thresholds", validate_per_layer(self.thresholds, "thresholds"))
        if self.temperatures is not None:
            object.__setattr__(self, "temperatures", validate_per_layer(self.temperatures, "temperatures"))
        if self.head_temperatures is not None:
            object.__setattr__(self, "head_temperatures", validate_per_head(self.head_temperatures))

    def check_depth(self, num_layers: int) -> None:
        """Fail when a per-layer list does not have one value per layer."""
        per_head = [values for values in self.head_temperatures or () if values is not None]
        for field, values in [("thresholds", self.thresholds), ("temperatures", self.temperatures)] + [
            ("temperatures", values) for values in per_head
        ]:
            if values is not None and len(values) != num_layers:
                raise ValueError(
                    f"'{field}' has {len(values)} values but the encoder has "
                    f"{num_layers} layers: give one value per layer, or null"
                )

    def check_heads(self, n_heads: int) -> None:
        """Fail when per-head temperatures do not give one entry per head."""
        if self.head_temperatures is not None and len(self.head_temperatures) != n_heads:
            raise ValueError(
                f"per-head 'temperatures' has {len(self.head_temperatures)} entries but the "
                f"encoder has {n_heads} heads: give one per head, or null"
            )

    def layer_threshold(self, layer: int) -> float:
        """Threshold for 1-based `layer`."""
        return self.thresholds[layer - 1] if self.thresholds is not None else self.threshold

    def layer_temperature(self, layer: int) -> float:
        """Temperature for 1-based `layer` (1.0 when uncalibrated)."""
        return self.temperatures[layer - 1] if self.temperatures is not None else 1.0

    def layer_temperatures(self, layer: int, n_heads: int) -> Tuple[float, ...]:
        """One temperature per head for 1-based `layer`, in the encoder's head order."""
        shared = self.layer_temperature(layer)
        if self.head_temperatures is None:
            return (shared,) * n_heads
        return tuple(shared if values is None else values[layer - 1] for values in self.head_temperatures)


def validate_mode(mode: object) -> str:
    if mode not in EXIT_MODES:
        raise ValueError(f"'exit_mode' must be one of {', '.join(EXIT_MODES)}; got {mode!r}")
    return mode  # type: ignore[return-value]


def validate_threshold(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(
            f"'{field}' must be a number in [0, 1] (a normalized entropy); got {value!r}"
        )
    return float(value)


def validate_window(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"'window' must be an integer >= 0; got {value!r}")
    return value


def validate_per_layer(values: object, field: str) -> Tuple[float, ...]:
    """A list of per-layer numbers (its length is checked against the depth by `check_depth`)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"'{field}' must be a list of numbers, one per layer; got {values!r}")
    out = []
    for value in values:
        if field == "temperatures":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                value > 0 and math.isfinite(value)
            ):
                raise ValueError(f"'temperatures' must be positive finite numbers; got {value!r}")
            out.append(float(value))
        else:
            out.append(validate_threshold(value, field))
    return tuple(out)


def validate_per_head(values: object) -> Tuple[Optional[Tuple[float, ...]], ...]:
    """Per-head temperatures: a list with, per head, a per-layer list or None."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"per-head 'temperatures' must be a list with one entry per head; got {values!r}")
    return tuple(None if entry is None else validate_per_layer(entry, "temperatures") for entry in values)


def normalized_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / T) divided by log(C), in [0, 1].

    logits (torch.Tensor): ``[..., C]``.
    RETURNS (torch.Tensor): ``[...]``.
    """
    n_classes = logits.shape[-1]
    if n_classes < 2:
        return torch.zeros(logits.shape[:-1], dtype=logits.dtype, device=logits.device)
    log_p = F.log_softmax(logits / temperature if temperature != 1.0 else logits, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(dim=-1)
    return (entropy / math.log(n_classes)).clamp_(0.0, 1.0)


def joint_uncertainty(
    logits: torch.Tensor, head_sizes: Sequence[int], temperatures: Optional[Sequence[float]] = None
) -> torch.Tensor:
    """The uncertainty of several heads read from one fused off-ramp: per
    token, the max over heads of each head's normalized entropy, so a token
    counts as settled only when every head is confident. One head is exactly
    `normalized_entropy`.

    logits (torch.Tensor): ``[..., sum(head_sizes)]``, the heads' columns side by side.
    head_sizes (Sequence[int]): each head's class count, in column order.
    temperatures (Optional[Sequence[float]]): one per head; None = 1.0 each.
    RETURNS (torch.Tensor): ``[...]``, in [0, 1].
    """
    temps = list(temperatures) if temperatures is not None else [1.0] * len(head_sizes)
    if len(temps) != len(head_sizes):
        raise ValueError(f"{len(temps)} temperatures for {len(head_sizes)} heads")
    if len(head_sizes) == 1:
        return normalized_entropy(logits, temps[0])
    if not head_sizes:
        return logits.new_zeros(logits.shape[:-1])
    parts = torch.split(logits, list(head_sizes), dim=-1)
    return torch.stack([normalized_entropy(part, t) for part, t in zip(parts, temps)]).amax(dim=0)


def static_thresholds(layer: int, num_layers: int) -> Tuple[float, ...]:
    """Per-layer thresholds that send every token out at `layer` (1-based):
    the "static" baseline, a model cut after that layer."""
    if not 1 <= layer <= num_layers:
        raise ValueError(f"static exit layer must be in 1..{num_layers}; got {layer}")
    return tuple(0.0 if l < layer else 1.0 for l in range(1, num_layers + 1))


def window_max(values: torch.Tensor, window: Optional[int]) -> torch.Tensor:
    """Max over +-`window` neighbours along the last axis (None: whole row).

    values (torch.Tensor): ``[batch, words]``, non-negative, padding set to 0.
    """
    if window is None:
        return values.max(dim=1, keepdim=True).values.expand_as(values)
    if window == 0:
        return values
    return F.max_pool1d(values[:, None, :], kernel_size=2 * window + 1, stride=1, padding=window)[:, 0, :]


def exit_decisions(
    uncertainty: torch.Tensor, active: torch.Tensor, policy: ExitPolicy, layer: int
) -> torch.Tensor:
    """Which active words exit after `layer`.

    uncertainty (torch.Tensor): ``[batch, words]`` at this layer (any value where inactive).
    active (torch.Tensor): bool ``[batch, words]``, words still in the encoder.
    RETURNS (torch.Tensor): bool ``[batch, words]``.
    """
    threshold = policy.layer_threshold(layer)
    if threshold >= 1.0:
        # 1.0 means "exit here": a uniform distribution has entropy exactly 1,
        # which a strict comparison would keep running.
        return active
    settled = torch.where(active, uncertainty, torch.zeros_like(uncertainty))
    window = None if policy.mode == "sentee" else policy.window
    return active & (window_max(settled, window) < threshold)


def simulate_exit_layers(
    uncertainty: torch.Tensor, word_mask: torch.Tensor, thresholds: torch.Tensor, windows: torch.Tensor
) -> torch.Tensor:
    """Exit layers the TOKEE rule would give, from precomputed uncertainties.

    Used in stage 2: the uncertainties come from the frozen stage-1 model at
    full depth, and each row has its own sampled threshold(s) and window.

    uncertainty (torch.Tensor): ``[layers, batch, words]``.
    word_mask (torch.Tensor): bool ``[batch, words]``.
    thresholds (torch.Tensor): ``[batch, layers]``; >= 1 always exits.
    windows (torch.Tensor): long ``[batch]``, window k per row.
    RETURNS (torch.Tensor): long ``[batch, words]``, 1-based, 0 on padding.
    """
    n_layers = uncertainty.shape[0]
    active = word_mask.clone()
    exits = torch.zeros(word_mask.shape, dtype=torch.long, device=word_mask.device)
    distinct = sorted(set(windows.tolist()))
    for index in range(n_layers - 1):
        settled = torch.where(active, uncertainty[index], torch.zeros_like(uncertainty[index]))
        peak = torch.zeros_like(settled)
        for k in distinct:
            rows = windows == k
            peak[rows] = window_max(settled[rows], k)
        limit = thresholds[:, index : index + 1]
        leaving = active & ((peak < limit) | (limit >= 1.0))
        exits = exits.masked_fill(leaving, index + 1)
        active = active & ~leaving
    return exits.masked_fill(active, n_layers)
