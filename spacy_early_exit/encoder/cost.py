"""The analytic FLOPs model behind ``flops`` and ``full_flops`` (docs/method.md,
"The FLOPs model", states it for users).

Per layer, hidden size d, FFN width f, n wordpieces present, q of them active:
K and V projections 2*n*d*d, Q and output projections 2*q*d*d, attention
scores and weighted sum 2*q*n*d, FFN 2*q*d*f multiply-accumulates. An off-ramp
costs d*C per word scored. FLOPs are 2 x MACs. Embeddings, norms and softmax
are left out on both sides of every ratio.
"""
from dataclasses import dataclass
from typing import Union

import torch

Count = Union[int, torch.Tensor]


@dataclass(frozen=True)
class CostModel:
    """hidden (int), ffn (int) widths and n_classes (int) of the off-ramps."""

    hidden: int
    ffn: int
    n_classes: int

    def layer_flops(self, present: Count, active: Count) -> Count:
        """FLOPs of one layer with `present` key/value pieces and `active` query pieces."""
        d = self.hidden
        macs = 2 * present * d * d + 2 * active * d * d + 2 * active * present * d + 2 * active * d * self.ffn
        return 2 * macs

    def ramp_flops(self, words: Count) -> Count:
        """FLOPs of one off-ramp scoring `words` words."""
        return 2 * words * self.hidden * self.n_classes
