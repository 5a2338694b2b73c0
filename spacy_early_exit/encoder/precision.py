"""Prediction copies of the encoder's layer stack: fp32, bf16 and int8.

Early exit decides how many layers and tokens run; precision decides how fast
each of them runs. The trained weights stay fp32 (training, ``state_dict`` and
every saved file only ever see them). A prediction runs a converted copy of
the layer stack, made once per process on first use and kept until the
weights change:

- "fp32" (on CPU): the same fp32 weights stored transposed (`FP32Linear`),
  the layout CPU BLAS multiplies fastest at the few rows of one sentence
  (up to 2x faster products at batch size 1, the same at a few hundred
  rows); the query and the [key; value] projections are one copy each
  (once a token has halted the layer asks queries of fewer pieces than it
  projects keys for; where all run, two calls cost what one fused [Q; K; V]
  call does, within 15% either way: benchmarks/results/kernel_choices.json).
  On other devices fp32 runs the original modules.

- "int8": W8A8 products in the layers' Linear modules (Q, K, V, the attention
  output and both FFN projections, `Int8Linear`): int8 weights with one scale
  per output channel, made once; activations quantized at run time with one
  scale per row, that is per token; the product accumulated exactly in int32
  (`torch._int_mm`) and rescaled in fp32. Q, K and V are one product against
  their concatenated weights (and K, V one where only keys and values are
  needed), so a layer quantizes its input once for all three: at batch size 1
  the per-call work around a product costs as much as the product itself.
  LayerNorms stay fp32. Because every
  scale belongs to one token or one output channel, a token's result depends
  on its own hidden state only: int8 is batch-invariant like fp32 and bf16.
  (torch's dynamic quantization, one activation scale per matrix product over
  the whole sub-batch, would let a token's logits move with its neighbours.)
- "bf16": Linear and LayerNorm weights cast once to bfloat16, the hidden states
  bfloat16 inside the stack. The matrix products run on oneDNN even inside
  `memory.native_kernels`: torch's own bf16 product is several times slower
  than fp32, oneDNN's uses the CPU's bf16 instructions; the weights are
  reordered once into oneDNN's layout (`BF16Linear`). Query and [key; value]
  are two products, as in fp32.

- "int8-ort" and "fp32-ort": the "int8" (or "fp32") arithmetic with each
  layer's dense work, from the query, key and value products to the last
  LayerNorm, one ONNX Runtime session call (`ort_layer.OrtLayer`), and at
  batch size 1 a whole sequence (embeddings, layers, off-ramps, exit rule)
  one call (`ort_document`); graphs built in memory from the fp32 weights.
  Needs the optional `onnx` and `onnxruntime` packages (the "ort" extra);
  without them, on another device, or where a session does not match the
  torch layer on a probe, one warning and "int8" (or "fp32") runs instead.
In all of them, the embeddings, the off-ramps and the exit decision stay fp32 (the
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
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Set, Tuple

import torch
from torch import nn

from .backbone import LayerParts
from .bf16_block import BF16OutputBlock
from .ort_layer import OrtUnavailable, activation_name, onnxruntime_missing, with_sessions
from .quantized_linear import BF16Linear, FP32Linear, Int8Linear, concatenated, int8_kernels_available, warn_once as _warn_once

PRECISIONS = ("fp32", "bf16", "int8", "int8-ort", "fp32-ort")
# The precisions whose layers run as ONNX Runtime sessions, and the
# arithmetic of their products.
ORT_PRECISIONS = {"int8-ort": "int8", "fp32-ort": "fp32"}
LINEAR_PARTS = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")
# The projections each converted on their own; query, key and value are one
# fused projection (see _with_attention_inputs).
OUTPUT_PARTS = ("attn_out", "ffn_in", "ffn_out")
NORM_PARTS = ("attn_norm", "ffn_norm")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")



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

    def stack(self, layers: Sequence[LayerParts], precision: str, weights_version: int, num_heads: int = 0) -> LayerStack:
        """The stack to run at `precision`.

        layers (Sequence[LayerParts]): the fp32 originals.
        precision (str): one of PRECISIONS.
        weights_version (int): changes whenever the originals' weights do.
        num_heads (int): attention heads (the "int8-ort" graphs need them).
        """
        validate_precision(precision)
        device = layers[0].query.weight.device if layers else torch.device("cpu")
        precision = runnable_precision(precision, device)
        if precision == "fp32" and device.type != "cpu":
            return LayerStack(tuple(layers))
        key = (weights_version, device, int8_kernels_available() if precision.startswith("int8") else None)
        cached = self._stacks.get(precision)
        if cached is not None and cached[0] == key:
            return cached[1]
        # A weights change makes every stack stale: drop them all at once.
        self._stacks = {p: entry for p, entry in self._stacks.items() if entry[0][0] == weights_version}
        made = convert(layers, precision, num_heads)
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


def convert(layers: Sequence[LayerParts], precision: str, num_heads: int = 0) -> LayerStack:
    """Make a `precision` copy of `layers` (the originals are not touched).

    RETURNS (LayerStack): the copy; the fp32 originals, after a warning, when
        the int8 conversion fails.
    """
    # Made outside inference mode (the first prediction is inside it), so the
    # copies are ordinary tensors that any later forward may use.
    with torch.inference_mode(False), torch.no_grad():
        if precision in ORT_PRECISIONS:
            made = _ort_stack(layers, num_heads, ORT_PRECISIONS[precision])
            if made is not None:
                return made
            precision = ORT_PRECISIONS[precision]
        if precision == "fp32":
            return LayerStack(_fp32_parts(layers))
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


def _ort_stack(layers: Sequence[LayerParts], num_heads: int, products: str) -> Optional[LayerStack]:
    """The "int8-ort" (or "fp32-ort") stack: the torch parts of the same
    arithmetic, each with its layer's session; None (after one warning)
    where that cannot be made or fails the probe (`ort_layer.with_sessions`)."""
    try:
        torch_parts = _int8_parts(layers) if products == "int8" else _fp32_parts(layers)
        parts = with_sessions(torch_parts, layers, num_heads, products)
    except OrtUnavailable as err:
        _warn_once(f"{products}-ort-failed", f"precision '{products}-ort': {err}; the torch {products} layers run instead")
        return None
    return LayerStack(parts, f"{products}-ort")


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


def _fp32_parts(layers: Sequence[LayerParts]) -> Tuple[LayerParts, ...]:
    new: Dict[int, nn.Module] = {key: FP32Linear(m) for key, m in _unique_modules(layers, OUTPUT_PARTS).items()}
    return _with_attention_inputs(_swap(layers, OUTPUT_PARTS, new), layers, FP32Linear, fuse_query=False)


def _int8_parts(layers: Sequence[LayerParts]) -> Tuple[LayerParts, ...]:
    new: Dict[int, nn.Module] = {key: Int8Linear(m) for key, m in _unique_modules(layers, OUTPUT_PARTS).items()}
    return _with_attention_inputs(_swap(layers, OUTPUT_PARTS, new), layers, Int8Linear, fuse_query=True)


def _bf16_parts(layers: Sequence[LayerParts]) -> Tuple[LayerParts, ...]:
    new: Dict[int, nn.Module] = {key: BF16Linear(m) for key, m in _unique_modules(layers, OUTPUT_PARTS).items()}
    for key, module in _unique_modules(layers, NORM_PARTS).items():
        norm = copy.deepcopy(module).to(torch.bfloat16)
        norm.requires_grad_(False)
        new[key] = norm
    converted = _with_attention_inputs(_swap(layers, OUTPUT_PARTS + NORM_PARTS, new), layers, BF16Linear, fuse_query=False)
    return tuple(dataclasses.replace(parts, output_block=BF16OutputBlock.make(
        parts.attn_out, parts.attn_norm, parts.ffn_in, parts.ffn_out, parts.ffn_norm, activation_name(parts.ffn_act)))
        for parts in converted)


def _with_attention_inputs(
    converted: Sequence[LayerParts], originals: Sequence[LayerParts], make: Callable[[nn.Linear], Any], fuse_query: bool
) -> Tuple[LayerParts, ...]:
    """`converted` with query, key and value made by `make`, each layer's once
    (shared modules, as in ALBERT, stay shared).

    fuse_query (bool): True (int8): one [Q; K; V] projection, with query, key,
        value and [K; V] as its slices, so a layer quantizes its input once for
        all three. False (fp32, bf16): the query on its own and one [K; V]
        projection (key and value its slices): only the active pieces ask
        queries while every present piece gives keys and values, a packed
        bf16 weight cannot be sliced, and where every piece runs two calls
        cost what one fused call does (within 15% either way, in fp32).
    """
    made: Dict[Tuple[int, ...], Dict[str, Any]] = {}
    out = []
    for parts, original in zip(converted, originals):
        inputs = (original.query, original.key, original.value)
        key = tuple(id(m) for m in inputs)
        if key not in made:
            made[key] = _attention_entry(inputs, make, fuse_query)
        out.append(dataclasses.replace(parts, **made[key]))
    return tuple(out)


def _attention_entry(inputs: Tuple[nn.Linear, nn.Linear, nn.Linear], make: Callable[[nn.Linear], Any],
                     fuse_query: bool) -> Dict[str, Any]:
    """The LayerParts fields for one layer's query, key and value (see _with_attention_inputs)."""
    q_size, k_size, v_size = (m.out_features for m in inputs)
    # The layer splits a fused output into equal parts (every family here has them).
    if fuse_query:
        fused = make(concatenated(inputs))
        q, k = q_size, q_size + k_size
        entry = {"query": fused.output_slice(0, q), "key": fused.output_slice(q, k),
                 "value": fused.output_slice(k, fused.out_features)}
        if q_size == k_size == v_size:
            entry.update(query_key_value=fused, key_value=fused.output_slice(q, fused.out_features))
        return entry
    kv = make(concatenated(inputs[1:]))
    return {"query": make(inputs[0]), "key": kv.output_slice(0, k_size), "value": kv.output_slice(k_size, kv.out_features),
            "query_key_value": None, "key_value": kv if k_size == v_size else None}


def runnable_precision(precision: str, device: torch.device) -> str:
    """`precision`, or "fp32" where it cannot run at all; warns (once per
    process) where it cannot run, or will run slowly."""
    if precision in ORT_PRECISIONS:
        if device.type != "cpu":
            _warn_once(f"{precision}-device", f"precision '{precision}' runs on CPU only; on {device.type} the encoder runs in fp32")
            return "fp32"
        missing = onnxruntime_missing()
        if missing is None:
            return precision
        products = ORT_PRECISIONS[precision]
        _warn_once(f"{precision}-missing", f"precision '{precision}': {missing}; the torch {products} layers run instead")
        precision = products
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

