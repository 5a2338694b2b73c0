"""The Linear modules of a prediction layer stack (see precision.py).

`FP32Linear` is the fp32 product with the weight stored transposed (the
layout CPU BLAS multiplies fastest at a few rows); `BF16Linear` runs a
bfloat16 product on oneDNN; `Int8Linear` is a W8A8 product with per-token
activation scales and per-channel weight scales, accumulated exactly in
int32. Plain PyTorch.
"""
import warnings
from typing import Any, Callable, Dict, Optional, Sequence, Set, Tuple

import torch
import torch.nn.functional as F
from torch import nn

# Symmetric int8: [-127, 127], so that negating a value never overflows.
INT8_MAX = 127
# The smallest row maximum given its own scale (a normal float even / 127).
SCALE_FLOOR = 1e-30
# Keys of the warnings already given in this process (one each).
_warned: Set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Warn about a hardware limit once per process, not once per batch."""
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


class FP32Linear(nn.Module):
    """A frozen fp32 copy of a Linear layer, its weight stored ``[in, out]``.

    `nn.Linear` keeps ``[out, in]`` and multiplies by its transpose. Measured
    on a 2-core Xeon (1 thread, MKL), that product at the 7-30 rows of one
    sentence takes 1.3-2x as long as the same product against a row-major
    ``[in, out]`` copy (x @ W.T at 14 rows of 384 -> 1536: 298 us against
    152 us); at a few hundred rows both take the same time. So a prediction
    at batch size 1 keeps a transposed copy (one more fp32 copy of the layer
    weights, as bf16 and int8 keep theirs). The result is the same product up
    to float rounding order.

    linear (nn.Linear): the layer to copy (left unchanged).
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        # Buffers, as in BF16Linear: nothing trains or saves the copy.
        self.register_buffer("weight_t", linear.weight.detach().float().t().contiguous(), persistent=False)
        bias = linear.bias.detach().float().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.dim() == 2
        rows = x if flat else x.reshape(-1, self.in_features)
        if self.bias is None:
            out = rows @ self.weight_t
        else:
            out = torch.addmm(self.bias, rows, self.weight_t)
        return out if flat else out.view(*x.shape[:-1], self.out_features)

    def output_slice(self, start: int, stop: int) -> "FP32Linear":
        """This layer restricted to output channels [start, stop): a column
        view of the same ``[in, out]`` weight (BLAS reads it with its row
        stride, no copy)."""
        part = _sliced(self, start, stop, {"weight_t": 1, "bias": 0})
        part.out_features = stop - start
        return part

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class BF16Linear(nn.Module):
    """A frozen bfloat16 copy of a Linear layer whose product runs on oneDNN.

    On CPU the weight is also reordered once into oneDNN's own blocked layout
    (`torch.ops.mkldnn._reorder_linear_weight`), which the product then reads
    as it is: `F.linear` on a plain bf16 weight reorders it on every call.
    Measured (1 thread, AMX; 384 -> 1536): 80 against 176 us at 1 row, 90
    against 205 at 14, 372 against 528 at 300, with identical results. A slice
    (`output_slice`) multiplies its plain weight view.

    linear (nn.Linear): the layer to copy (left unchanged).
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        # Buffers, not parameters: nothing trains them, and a copy that an
        # optimizer or a state_dict could reach would defeat "fp32 is the truth".
        self.register_buffer("weight", linear.weight.detach().to(torch.bfloat16), persistent=False)
        bias = linear.bias.detach().to(torch.bfloat16) if linear.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)
        self.packed: Optional[torch.Tensor] = packed_bf16_weight(self.weight)

    #: Run the packed product at bucketed row counts (`row_bucket`); False
    #: only to measure what the buckets save (benchmarks/unseen_documents.py).
    bucket_rows = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)
        if self.packed is None:
            return on_onednn(F.linear, x, self.weight, self.bias)
        rows = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        n = rows.shape[0]
        rows = pad_rows(rows, row_bucket(n) if self.bucket_rows else n)
        out = on_onednn(torch.ops.mkldnn._linear_pointwise, rows, self.packed, self.bias, "none", [], "")[:n]
        return out if x.dim() == 2 else out.view(*x.shape[:-1], self.out_features)

    def output_slice(self, start: int, stop: int) -> "BF16Linear":
        """This layer restricted to output channels [start, stop), sharing its
        plain weight's memory (a packed weight cannot be sliced)."""
        part = _sliced(self, start, stop, {"weight": 0, "bias": 0})
        part.out_features = stop - start
        part.packed = None
        return part


def row_bucket(n: int) -> int:
    """The row count a oneDNN product runs `n` rows at: `n` up to 16, then
    rounded up to a multiple of 16 (to 256), 64 (to 1,024), 256 (to 4,096),
    1,024 beyond.

    oneDNN compiles a kernel for every new input shape and keeps 1,024 of
    them. The rows of a prediction step (active tokens of a batch) take
    almost every count up to a few thousand, so a stream of new documents
    kept compiling: measured at batch 32 (CoNLL-2003, 1 thread, TOKEE 2x),
    bf16 took 1.07 s on 400 unseen sentences and 0.54 s on the same ones
    again, while fp32 took the same time both ways. About 60 counts per
    weight shape remain; the padding is at most 15 rows up to 256, 63 up to
    1,024, 255 up to 4,096 (under 25% of the rows from 64 rows on).
    """
    for step, limit in ((16, 256), (64, 1024), (256, 4096)):
        if n <= limit:
            return n if n <= 16 else -(-n // step) * step
    return -(-n // 1024) * 1024


def pad_rows(rows: torch.Tensor, n: int) -> torch.Tensor:
    """`rows` (2-D) with zero rows appended up to `n`. Only the new rows are
    zeroed: `F.pad` fills the whole result before copying the rows in, 7% of
    a profiled batch-32 bf16 prediction."""
    if rows.shape[0] >= n:
        return rows
    out = rows.new_empty(n, rows.shape[1])
    out[: rows.shape[0]] = rows
    out[rows.shape[0]:].zero_()
    return out


def packed_bf16_weight(weight: torch.Tensor) -> Optional[torch.Tensor]:
    """`weight` (bf16 ``[out, in]``, CPU) in oneDNN's blocked layout, checked
    once against the plain product; None where this torch cannot (no oneDNN,
    another device, or a result that differs)."""
    reorder = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available() or reorder is None:
        return None
    try:
        packed = on_onednn(reorder, weight, 16)
        probe = torch.randn(3, weight.shape[1], generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
        got = on_onednn(torch.ops.mkldnn._linear_pointwise, probe, packed, None, "none", [], "")
        want = on_onednn(F.linear, probe, weight)
    except (RuntimeError, AttributeError):
        return None
    return packed if torch.allclose(got.float(), want.float(), rtol=1e-2, atol=1e-2) else None


def on_onednn(op: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    """`op(*args)` with oneDNN switched on for this call only.

    Prediction runs with oneDNN off (memory.native_kernels), but torch's own
    bf16 and int8 products are several times (int8: ~200x) slower than
    oneDNN's; the elementwise ops around them keep torch's kernels.

    op (Callable[..., torch.Tensor]): the product to run.
    """
    backend = torch.backends.mkldnn
    if backend.enabled:
        return op(*args)
    backend.enabled = True
    try:
        return op(*args)
    finally:
        backend.enabled = False


def quantize_rows(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one scale per row (over the last dimension).

    x (torch.Tensor): float ``[..., K]``.
    RETURNS (Tuple[torch.Tensor, torch.Tensor]): int8 values of x's shape and
        the float scales ``[..., 1]`` (max |row| / 127), so x ~ values * scales.
    """
    # Few ops, in place where the tensor is fresh: at batch size 1 every
    # Linear sees a dozen rows, and per-op overhead rivals the product.
    # A floor instead of a branch: an all-zero row quantizes to zeros, not 0 / 0.
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_(min=SCALE_FLOOR).div_(INT8_MAX)
    # |x| / scale <= 127 up to rounding (and < 1 under the floor), so it rounds
    # into [-127, 127] with no clamp.
    return torch.round(x / scale).to(torch.int8), scale


class Int8Linear(nn.Module):
    """A frozen W8A8 copy of a Linear layer, exact in int32, batch-invariant.

    Weights: int8 with one scale per output channel, quantized once.
    Activations: int8 with one scale per row (a token), quantized per call.
    The int8 x int8 product accumulates exactly in int32 (`torch._int_mm` on
    oneDNN), and each output is rescaled by its row's and its channel's scale,
    so every output row depends on that input row alone: the result of a token
    is the same whatever else is in the batch (a per-tensor activation scale,
    as in torch's dynamic quantization, would make it depend on the batch).

    linear (nn.Linear): the layer to copy (left unchanged).
    use_int_mm (Optional[bool]): multiply with `torch._int_mm`; False
        emulates the same integer product with float products (exact, slow);
        None = `torch._int_mm` where it runs this shape exactly.
    """

    def __init__(self, linear: nn.Linear, use_int_mm: Optional[bool] = None) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight, scale = quantize_rows(linear.weight.detach().float())
        # Buffers, as in BF16Linear: nothing trains or saves them. The weight
        # stays [out, in]; the product reads its transpose, which oneDNN
        # multiplies as fast as a [in, out] copy, and faster at one row.
        self.register_buffer("weight_int8", weight.contiguous(), persistent=False)
        self.register_buffer("weight_scale", scale.squeeze(-1), persistent=False)
        bias = linear.bias.detach().float().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)
        self.use_int_mm = int_mm_is_exact(self.weight_int8) if use_int_mm is None else use_int_mm
        # Float products of int8 values are exact integers while every partial
        # sum stays below 2^24 (fp32) or 2^53 (fp64): pick the cheaper exact one.
        exact_in_fp32 = self.in_features * INT8_MAX * INT8_MAX < 2**24
        self.emulation_dtype = torch.float32 if exact_in_fp32 else torch.float64
        emulated = None if self.use_int_mm else self.weight_int8.t().to(self.emulation_dtype)
        self.register_buffer("weight_emulated", emulated, persistent=False)
        # The transposed view the product reads, made once: at batch size 1
        # each op around a product is a visible share of it.
        self.weight_int8_t = self.weight_int8.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.dim() == 2
        rows = x if flat else x.reshape(-1, self.in_features)
        values, scale = quantize_rows(rows)
        # In place (faster than addcmul too): at batch 32 the [rows, out]
        # temporaries cost more than the multiplications. Elementwise only, so
        # each row stays its own.
        out = self.int_product(values).to(torch.float32).mul_(scale).mul_(self.weight_scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out if flat else out.view(*x.shape[:-1], self.out_features)

    def int_product(self, values: torch.Tensor) -> torch.Tensor:
        """The exact integer product ``values @ weight_int8.T``.

        values (torch.Tensor): int8 ``[M, in_features]``.
        RETURNS (torch.Tensor): ``[M, out_features]``, int32 from `torch._int_mm`,
            else the same integers as floats.
        """
        if self.use_int_mm:
            return on_onednn(torch._int_mm, values, self.weight_int8_t)
        return values.to(self.emulation_dtype) @ self.weight_emulated

    def output_slice(self, start: int, stop: int) -> "Int8Linear":
        """This layer restricted to output channels [start, stop), sharing its
        memory; its outputs are exactly those columns of this layer's, since
        every weight scale belongs to one output channel."""
        part = _sliced(self, start, stop, {"weight_int8": 0, "weight_scale": 0, "bias": 0, "weight_emulated": 1})
        part.out_features = stop - start
        part.weight_int8_t = part.weight_int8.t()
        return part

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, use_int_mm={self.use_int_mm}"


def _sliced(module: nn.Module, start: int, stop: int, buffer_dims: Dict[str, int]) -> Any:
    """A shallow copy of `module` whose buffers are views of rows (dim 0) or
    columns (dim 1) [start, stop) of the original's; plain attributes are shared.

    buffer_dims (Dict[str, int]): each buffer's output-channel dimension.
    """
    part = type(module).__new__(type(module))
    nn.Module.__init__(part)
    for name, value in vars(module).items():
        if not name.startswith("_") and name != "training":
            setattr(part, name, value)
    for name, dim in buffer_dims.items():
        tensor = getattr(module, name)
        part.register_buffer(name, None if tensor is None else tensor.narrow(dim, start, stop - start), persistent=False)
    part.train(module.training)
    return part


def concatenated(linears: Sequence[nn.Linear]) -> nn.Linear:
    """A throwaway fp32 Linear whose output is the concatenation of
    `linears`' outputs (same input size), for conversion into one projection.
    A missing bias counts as zeros."""
    first = linears[0]
    weight = torch.cat([linear.weight.detach() for linear in linears])
    fused = nn.Linear(first.in_features, weight.shape[0], bias=any(l.bias is not None for l in linears),
                      device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(weight)
        if fused.bias is not None:
            fused.bias.copy_(torch.cat([
                l.bias.detach() if l.bias is not None else weight.new_zeros(l.out_features) for l in linears
            ]))
    return fused


def int8_kernels_available() -> bool:
    """Whether this torch has a fast int8 matrix product: `torch._int_mm`,
    which on CPU is fast on oneDNN only."""
    return hasattr(torch, "_int_mm") and torch.backends.mkldnn.is_available()


def int_mm_is_exact(weight: torch.Tensor) -> bool:
    """Whether `torch._int_mm` runs against this ``[out, in]`` int8 weight and
    gives the exact integer product. Checked on a few full-range rows, so a
    kernel that saturates its intermediate sums (int8 kernels without VNNI can)
    is caught as well as one that refuses the shape; warns once otherwise."""
    if not int8_kernels_available():
        return False
    generator = torch.Generator().manual_seed(0)
    probe = torch.randint(-INT8_MAX, INT8_MAX + 1, (4, weight.shape[1]), dtype=torch.int8, generator=generator)
    probe[0] = INT8_MAX
    probe[1] = -INT8_MAX
    try:
        got = on_onednn(torch._int_mm, probe, weight.t())
    except RuntimeError as err:
        reason = f"{type(err).__name__}: {err}"
    else:
        if torch.equal(got.double(), probe.double() @ weight.t().double()):
            return True
        reason = "its result is not the exact integer product"
    warn_once(
        "int8-int-mm",
        f"precision 'int8': torch._int_mm cannot multiply by a {tuple(weight.shape)} int8 weight here ({reason}); "
        "that layer emulates the integer product with float products (same results, slower)",
    )
    return False
