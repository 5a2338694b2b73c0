"""The bf16 stack's output block as three oneDNN products with fused post-ops.

After attention, a layer runs: output projection, + residual, LayerNorm, FFN
in-projection, activation, FFN out-projection, + residual, LayerNorm. In bf16
each of the two adds and the activation was a separate torch op over the
active rows, and each of the three products padded its input to a row bucket
(`quantized_linear.row_bucket`) and cut its output back. Here oneDNN adds the
residual inside the output projections (binary "add" post-op) and applies
GELU inside the in-projection (eltwise post-op), and the rows are padded once
and stay padded until the last norm. Both post-ops work on the fp32
accumulator before it is rounded to bf16, so the result is the unfused one up
to one bf16 rounding less per step.

Measured (1 thread, AMX, MiniLM sizes 384/1536, benchmarks/kernel_choices.py,
`bf16_output_block` in results/kernel_choices_batch.json): 322 against 365
us at 14 rows, 888 against 1,342 at 200, 2,610 against 3,375 at 600. Plain PyTorch (oneDNN's ops as torch
exposes them).
"""
from typing import Optional

import torch
from torch import nn

from .quantized_linear import BF16Linear, on_onednn, pad_rows, row_bucket

# oneDNN's algorithm names for the two GELUs the families here use, keyed by
# ort_layer.activation_name's answer.
GELU_ALGORITHMS = {"Gelu": "none", "FastGelu": "tanh"}


class BF16OutputBlock:
    """``(context, residual) -> new states`` for one bf16 layer (module docstring).

    attn_out, ffn_in, ffn_out (BF16Linear): the layer's packed bf16 products.
    attn_norm, ffn_norm (nn.LayerNorm): its bf16 norms.
    algorithm (str): oneDNN's GELU algorithm ("none": erf, "tanh").
    """

    def __init__(self, attn_out: BF16Linear, attn_norm: nn.LayerNorm, ffn_in: BF16Linear, ffn_out: BF16Linear,
                 ffn_norm: nn.LayerNorm, algorithm: str) -> None:
        self.attn_out, self.ffn_in, self.ffn_out = attn_out, ffn_in, ffn_out
        self.attn_norm, self.ffn_norm = attn_norm, ffn_norm
        self.algorithm = algorithm

    @classmethod
    def make(cls, attn_out: object, attn_norm: object, ffn_in: object, ffn_out: object, ffn_norm: object,
             activation: Optional[str]) -> Optional["BF16OutputBlock"]:
        """The block, or None where a part is not what it fuses (an unpacked
        product, an activation other than GELU, a norm that is not LayerNorm)."""
        products = (attn_out, ffn_in, ffn_out)
        if activation not in GELU_ALGORITHMS or not all(isinstance(p, BF16Linear) and p.packed is not None for p in products):
            return None
        if not all(isinstance(n, nn.LayerNorm) for n in (attn_norm, ffn_norm)):
            return None
        return cls(attn_out, attn_norm, ffn_in, ffn_out, ffn_norm, GELU_ALGORITHMS[activation])  # type: ignore[arg-type]

    def __call__(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        shape = residual.shape
        width = shape[-1]
        context, residual = context.reshape(-1, width), residual.reshape(-1, width)
        n = residual.shape[0]
        bucket = row_bucket(n) if self.attn_out.bucket_rows else n
        context, residual = pad_rows(context, bucket), pad_rows(residual, bucket)
        linear = torch.ops.mkldnn._linear_pointwise
        attn = self.attn_norm(on_onednn(linear.binary, context, residual, self.attn_out.packed, self.attn_out.bias, "add"))
        inner = on_onednn(linear, attn, self.ffn_in.packed, self.ffn_in.bias, "gelu", [], self.algorithm)
        out = self.ffn_norm(on_onednn(linear.binary, inner, attn, self.ffn_out.packed, self.ffn_out.bias, "add"))
        return out[:n].view(shape)

