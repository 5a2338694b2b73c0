"""Reduced-precision copies of the encoder's layer stack, for prediction only.

Early exit decides how many layers and tokens run; precision decides how fast
each of them runs. The trained weights stay fp32 (training, ``state_dict`` and
every saved file only ever see them). A prediction at "bf16" or "int8" runs a
converted copy of the layer stack, made once per process on first use and kept
until the weights change:

- "int8": W8A8 products in the layers' Linear modules (Q, K, V, the attention
  output and both FFN projections, `Int8Linear`): int8 weights with one scale
  per output channel, made once; activations quantized at run time with one
  scale per row, that is per token; the product accumulated exactly in int32
  (`torch._int_mm`) and rescaled in fp32. LayerNorms stay fp32. Because every
  scale belongs to one token or one output channel, a token's result depends
  on its own hidden state only: int8 is batch-invariant like fp32 and bf16.
  (torch's dynamic quantization, one activation scale per matrix product over
  the whole sub-batch, would let a token's logits move with its neighbours.)
- "bf16": Linear and LayerNorm weights cast once to bfloat16, the hidden states
  bfloat16 inside the stack. The matrix products run on oneDNN even inside
  `memory.native_kernels`: torch's own bf16 product is several times slower
  than fp32, oneDNN's uses the CPU's bf16 instructions.

In both, the embeddings, the off-ramps and the exit decision stay fp32 (the
stack's output is cast back before each off-ramp), so an uncertainty and a
threshold mean the same thing in every precision. The off-ramps stay fp32 in
int8 too: one is d x C against a layer's ~12 d^2 multiply-accumulates per
token; measured on MiniLM, an int8 off-ramp would save a few per cent of an
int8 layer's time at batch 1 and less at batch 32, while its activation
quantization would add noise to exactly the values compared with the threshold.
FLOPs are counted from the exit schedule, so they do not depend on precision.

A CPU without fast bf16 instructions (avx512_bf16 or AMX) gets one warning per
process and still runs bf16. int8 runs on CPU only (elsewhere one warning,
and the layers run in fp32); where torch has no fast int8 product
(`torch._int_mm` on oneDNN) one warning says so and the same integer
arithmetic is emulated with float products, exactly, and slowly.
Plain PyTorch: nothing here knows about spaCy.
"""
import copy
import dataclasses
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Set, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import LayerParts

PRECISIONS = ("fp32", "bf16", "int8")
LINEAR_PARTS = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")
NORM_PARTS = ("attn_norm", "ffn_norm")
# Symmetric int8: [-127, 127], so that negating a value never overflows.
INT8_MAX = 127
# The smallest row maximum given its own scale (a normal float even / 127).
SCALE_FLOOR = 1e-30
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

# Keys of the warnings already given in this process (one each).
_warned: Set[str] = set()


def validate_precision(value: object) -> str:
    if value not in PRECISIONS:
        raise ValueError(f"'precision' must be one of {', '.join(PRECISIONS)}; got {value!r}")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class LayerStack:
    """The layers one forward pass runs.

    parts (Tuple[LayerParts, ...]): one record per layer, in forward order.
    precision (str): what the parts compute in ("fp32" for the originals).
    dtype (Optional[torch.dtype]): the hidden states' dtype inside the stack;
        None keeps the embeddings' dtype.
    """

    parts: Tuple[LayerParts, ...]
    precision: str = "fp32"
    dtype: Optional[torch.dtype] = None


class BF16Linear(nn.Module):
    """A frozen bfloat16 copy of a Linear layer whose product runs on oneDNN.

    linear (nn.Linear): the layer to copy (left unchanged).
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        # Buffers, not parameters: nothing trains them, and a copy that an
        # optimizer or a state_dict could reach would defeat "fp32 is the truth".
        self.register_buffer("weight", linear.weight.detach().to(torch.bfloat16), persistent=False)
        bias = linear.bias.detach().to(torch.bfloat16) if linear.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)
        return on_onednn(F.linear, x, self.weight, self.bias)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        values, scale = quantize_rows(rows)
        # In place (faster than addcmul too): at batch 32 the [rows, out]
        # temporaries cost more than the multiplications. Elementwise only, so
        # each row stays its own.
        out = self.int_product(values).to(torch.float32).mul_(scale).mul_(self.weight_scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out.view(*x.shape[:-1], self.out_features)

    def int_product(self, values: torch.Tensor) -> torch.Tensor:
        """The exact integer product ``values @ weight_int8.T``.

        values (torch.Tensor): int8 ``[M, in_features]``.
        RETURNS (torch.Tensor): ``[M, out_features]``, int32 from `torch._int_mm`,
            else the same integers as floats.
        """
        if self.use_int_mm:
            return on_onednn(torch._int_mm, values, self.weight_int8.t())
        return values.to(self.emulation_dtype) @ self.weight_emulated

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, use_int_mm={self.use_int_mm}"


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
    _warn_once(
        "int8-int-mm",
        f"precision 'int8': torch._int_mm cannot multiply by a {tuple(weight.shape)} int8 weight here ({reason}); "
        "that layer emulates the integer product with float products (same results, slower)",
    )
    return False


class PrecisionCache:
    """One encoder's reduced-precision layer stacks, made on first use.

    Each stack is kept with the key it was made for (the encoder's weights
    version, the device, and for int8 whether a fast int8 product exists) and
    made again when that key changes. One stack per precision, so settings that alternate (the
    interleaved timings) do not rebuild. The cache is never part of a
    state_dict, and a deepcopy or pickle of the encoder starts it empty.
    """

    def __init__(self) -> None:
        self._stacks: Dict[str, Tuple[Tuple[Any, ...], LayerStack]] = {}

    def stack(self, layers: Sequence[LayerParts], precision: str, weights_version: int) -> LayerStack:
        """The stack to run at `precision`.

        layers (Sequence[LayerParts]): the fp32 originals.
        precision (str): one of PRECISIONS.
        weights_version (int): changes whenever the originals' weights do.
        """
        validate_precision(precision)
        device = layers[0].query.weight.device if layers else torch.device("cpu")
        precision = runnable_precision(precision, device)
        if precision == "fp32":
            return LayerStack(tuple(layers))
        key = (weights_version, device, int8_kernels_available() if precision == "int8" else None)
        cached = self._stacks.get(precision)
        if cached is not None and cached[0] == key:
            return cached[1]
        # A weights change makes every stack stale: drop them all at once.
        self._stacks = {p: entry for p, entry in self._stacks.items() if entry[0][0] == weights_version}
        made = convert(layers, precision)
        # Kept even when conversion failed (fp32, after a warning): no retry per call.
        self._stacks[precision] = (key, made)
        return made

    def clear(self) -> None:
        self._stacks = {}

    def __len__(self) -> int:
        return len(self._stacks)

    def __deepcopy__(self, memo: Dict[int, Any]) -> "PrecisionCache":
        return PrecisionCache()

    def __getstate__(self) -> Dict[str, Any]:
        return {}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self._stacks = {}


def convert(layers: Sequence[LayerParts], precision: str) -> LayerStack:
    """Make a `precision` copy of `layers` (the originals are not touched).

    RETURNS (LayerStack): the copy; the fp32 originals, after a warning, when
        the int8 conversion fails.
    """
    # Made outside inference mode (the first prediction is inside it), so the
    # copies are ordinary tensors that any later forward may use.
    with torch.inference_mode(False), torch.no_grad():
        if precision == "bf16":
            return LayerStack(_bf16_parts(layers), "bf16", torch.bfloat16)
        if precision == "int8":
            try:
                return LayerStack(_int8_parts(layers), "int8")
            except RuntimeError as err:
                _warn_once(
                    "int8-failed",
                    f"precision 'int8': the int8 conversion failed ({type(err).__name__}: "
                    f"{err}); the encoder runs in fp32",
                )
                return LayerStack(tuple(layers))
    return LayerStack(tuple(layers))


def _unique_modules(layers: Sequence[LayerParts], names: Sequence[str]) -> Dict[int, nn.Module]:
    """The distinct modules under `names` (ALBERT reuses one layer's modules at
    every depth: each is converted once, and stays shared)."""
    found: Dict[int, nn.Module] = {}
    for parts in layers:
        for name in names:
            module = getattr(parts, name)
            found.setdefault(id(module), module)
    return found


def _swap(layers: Sequence[LayerParts], names: Sequence[str], new: Dict[int, Any]) -> Tuple[LayerParts, ...]:
    return tuple(
        dataclasses.replace(parts, **{name: new[id(getattr(parts, name))] for name in names})
        for parts in layers
    )


def _int8_parts(layers: Sequence[LayerParts]) -> Tuple[LayerParts, ...]:
    new: Dict[int, nn.Module] = {key: Int8Linear(m) for key, m in _unique_modules(layers, LINEAR_PARTS).items()}
    return _swap(layers, LINEAR_PARTS, new)


def _bf16_parts(layers: Sequence[LayerParts]) -> Tuple[LayerParts, ...]:
    new: Dict[int, nn.Module] = {key: BF16Linear(m) for key, m in _unique_modules(layers, LINEAR_PARTS).items()}
    for key, module in _unique_modules(layers, NORM_PARTS).items():
        norm = copy.deepcopy(module).to(torch.bfloat16)
        norm.requires_grad_(False)
        new[key] = norm
    return _swap(layers, LINEAR_PARTS + NORM_PARTS, new)


def runnable_precision(precision: str, device: torch.device) -> str:
    """`precision`, or "fp32" where it cannot run at all; warns (once per
    process) where it cannot run, or will run slowly."""
    if precision == "int8":
        if device.type != "cpu":
            _warn_once("int8-device", f"precision 'int8' runs on CPU only; on {device.type} the encoder runs in fp32")
            return "fp32"
        if not int8_kernels_available():
            _warn_once(
                "int8-kernels",
                "precision 'int8': this torch has no fast int8 matrix product (torch._int_mm on oneDNN), so "
                "the integer products are emulated with float products: same results, likely slower than "
                "fp32; it still runs",
            )
    elif precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        _warn_once(
            "bf16-cpu",
            "precision 'bf16': this CPU has no bf16 instructions (avx512_bf16 or AMX) or torch has no "
            "oneDNN, so bf16 is emulated and likely slower than fp32; it still runs",
        )
    return precision


@lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively and torch can use it (oneDNN)."""
    if not torch.backends.mkldnn.is_available():
        return False
    flags = _cpu_flags()
    if flags is not None:
        # x86 (avx512_bf16, AMX); ARM lists "bf16" among its features.
        return bool(flags & (set(BF16_CPU_FLAGS) | {"bf16"}))
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe()) if probe is not None else False


def _cpu_flags() -> Optional[Set[str]]:
    """The CPU feature flags from /proc/cpuinfo; None where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf8", errors="replace")
    except OSError:
        return None
    flags: Set[str] = set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags or None


def _warn_once(key: str, message: str) -> None:
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=3)
