"""One encoder layer's dense work as an ONNX Runtime session ("int8-ort", "fp32-ort").

At batch size 1 a layer of eager PyTorch dispatches dozens of small ops, and
the int8 products each add their own quantize and rescale ops; ONNX Runtime
runs the same graph as one call with MLAS's int8 (or fp32) kernels. A batch
of several sequences runs a layer at a time through these sessions; a single
sequence runs its whole exit loop as one call (ort_document.py). This module builds,
for one layer, the ONNX graph of everything between the gather of the active
pieces and the scatter of their new states. Its inputs:

- q_rows ``[queries, hidden]``: the active pieces, packed (the queries, and
  the residual);
- kv_rows ``[keys, hidden]``: every present piece, packed (keys and values,
  halted pieces included);
- q_grid ``[rows, query_slots]`` and kv_grid ``[rows, key_slots]``: which
  packed row sits in each slot of the attention grid, q_back ``[queries]``
  each query's slot, add_mask ``[rows, 1, 1, key_slots]`` 0 on real keys and
  a large negative number on padding.

The products and norms run on the packed rows, so padding costs only inside
attention. Which pieces are active, the exit decisions and the off-ramps stay
in PyTorch (`layer_step.py`), so halt-and-copy, any mix of lengths and batch
invariance are unchanged.

For "int8-ort" ("fp32-ort" multiplies in plain fp32) the arithmetic is the "int8" precision's (`Int8Linear`):
int8 weights with one scale per output channel; activations quantized per
row (a token) with one symmetric scale, max |x| / 127; the integer product
exact in int32; rescaled by the row's and the channel's scale. ONNX Runtime's
fast kernels multiply unsigned by signed int8, so the activation is shifted
by 128 and the product told its zero point is 128: the same integers.
(ONNX Runtime's own `quantize_dynamic` uses one activation scale per product
instead, which lets a token's result depend on its neighbours and, on the
demo corpus, costs 3 F1.) LayerNorms, softmax and GELU stay fp32.

The graph is built in memory from the layer's fp32 weights, once per process
and weights version (precision.PrecisionCache), and nothing is written to
disk. Plain PyTorch, numpy and onnx/onnxruntime: nothing here knows about spaCy.
"""
import dataclasses
from functools import lru_cache
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .backbone import LayerParts
from .onnx_graph import GraphBuilder, onnx_type

# Added to the attention scores of padding keys: exp() of it is 0 in fp32,
# and a finite value keeps a (never occurring) all-padding row from NaNs.
MASK_VALUE = -1e9
# Added to the attention scores of padding keys: exp() of it is 0 in fp32,
# and a finite value keeps a (never occurring) all-padding row from NaNs.
MASK_VALUE = -1e9


@lru_cache(maxsize=None)
def onnxruntime_missing() -> Optional[str]:
    """Why "int8-ort" cannot run here (a missing package), or None. Asked
    before every int8-ort forward pass: answered once per process."""
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            return f"the {module} package is not installed (pip install 'spacy-early-exit[ort]')"
    return None


@lru_cache(maxsize=None)
def build_errors() -> Tuple[type, ...]:
    """What making or running a session may raise: ONNX Runtime's own error
    classes derive from Exception, not RuntimeError."""
    errors: Tuple[type, ...] = (RuntimeError, ValueError, ImportError)
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as state
    except ImportError:
        return errors
    names = ("Fail", "InvalidArgument", "RuntimeException", "InvalidGraph", "NotImplemented", "NoSuchFile", "EPFail")
    return errors + tuple(getattr(state, name) for name in names if hasattr(state, name))


def activation_name(act: Callable[[torch.Tensor], torch.Tensor]) -> Optional[str]:
    """The contrib operator computing the feed-forward activation `act`, or
    None when it is not one this graph knows (the layer then stays in torch).

    BERT, RoBERTa and ELECTRA use erf GELU ("Gelu"); ALBERT's default is the
    tanh approximation ("FastGelu"). Checked by value, not by class name, on a
    few points spread over the range a hidden state takes.
    """
    probe = torch.linspace(-6.0, 6.0, 97)
    with torch.no_grad():
        got = act(probe)
    exact = torch.nn.functional.gelu(probe)
    tanh = torch.nn.functional.gelu(probe, approximate="tanh")
    if torch.allclose(got, exact, atol=1e-6):
        return "Gelu"
    if torch.allclose(got, tanh, atol=1e-6):
        return "FastGelu"
    return None


def layer_graph(parts: LayerParts, num_heads: int, activation: str, products: str = "int8") -> bytes:
    """The serialized ONNX model of one layer's dense work (module docstring).

    parts (LayerParts): the layer's fp32 modules (left unchanged).
    num_heads (int): attention heads.
    activation (str): "Gelu" or "FastGelu" (see `activation_name`).
    RETURNS (bytes): the model, for `onnxruntime.InferenceSession`.
    """
    from onnx import helper

    width = parts.query.in_features
    head_dim = width // num_heads
    g = GraphBuilder(products)
    queries = g.linear("q_rows", [parts.query])
    # Keys and values in one product: kv_rows is quantized once for both.
    keys_values = g.linear("kv_rows", [parts.key, parts.value])
    split = g.const(np.array([parts.key.out_features, parts.value.out_features], np.int64))
    keys, values = g.node("Split", [keys_values, split], axis=1, n_out=2)

    def heads(rows: str, grid: str, perm: List[int]) -> str:
        # [pieces, hidden] rows into the [rows, slots, heads, head_dim] grid.
        laid_out = g.node("Reshape", [g.node("Gather", [rows, grid], axis=0),
                                      g.const(np.array([0, 0, num_heads, head_dim], np.int64))])
        return g.node("Transpose", [laid_out], perm=perm)

    scores = g.node("MatMul", [heads(queries, "q_grid", [0, 2, 1, 3]), heads(keys, "kv_grid", [0, 2, 3, 1])])
    scores = g.node("Add", [g.node("Mul", [scores, g.const(np.array(head_dim ** -0.5, np.float32))]), "add_mask"])
    context = g.node("MatMul", [g.node("Softmax", [scores], axis=-1), heads(values, "kv_grid", [0, 2, 1, 3])])
    # Back from the grid to the query rows.
    context = g.node("Reshape", [g.node("Transpose", [context], perm=[0, 2, 1, 3]),
                                 g.const(np.array([-1, width], np.int64))])
    context = g.node("Gather", [context, "q_back"], axis=0)
    out = g.output_block(parts, context, "q_rows", activation)
    g.nodes.append(helper.make_node("Identity", [out], ["out"]))
    floats, longs = onnx_type("FLOAT"), onnx_type("INT64")
    return g.model(
        "early_exit_layer",
        [helper.make_tensor_value_info("q_rows", floats, ["queries", width]),
         helper.make_tensor_value_info("kv_rows", floats, ["keys", width]),
         helper.make_tensor_value_info("q_grid", longs, ["rows", "query_slots"]),
         helper.make_tensor_value_info("kv_grid", longs, ["rows", "key_slots"]),
         helper.make_tensor_value_info("q_back", longs, ["queries"]),
         helper.make_tensor_value_info("add_mask", floats, ["rows", 1, 1, "key_slots"])],
        [helper.make_tensor_value_info("out", floats, ["queries", width])],
    )


def session_options() -> Any:
    """The options of every layer's session: one thread, the caller's.

    Each session would have its own thread pool, and the six layers' pools
    fight torch's threads for the cores. Measured on 2 cores (CoNLL-2003,
    TOKEE 2x, torch at 2 threads): pools of 2 spinning threads ran batch 1 at
    a tenth of the speed of 1 thread; pools whose idle threads sleep, at
    3,757 words/s against 4,545 for sessions without pools, since waking a
    thread costs more than a sentence's small products gain. So a session
    runs on the calling thread; torch's own ops still use its threads, and
    "int8-ort" is the setting for one sentence at a time (batches run faster
    in bf16).

    The same holds for a whole sequence's call (ort_document.py): with a
    2-thread pool whose idle thread sleeps, TOKEE 2x at batch 1 ran 5,444
    words/s against 6,749 on the calling thread alone (CoNLL-2003, torch at
    2 threads).

    RETURNS (onnxruntime.SessionOptions): the options.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    # Shapes change with every sentence: no per-shape memory plans to keep.
    options.enable_mem_pattern = False
    options.log_severity_level = 3
    return options


class OrtLayer:
    """One layer's dense work in an ONNX Runtime session (module docstring).

    parts (LayerParts): the layer's fp32 modules.
    num_heads (int): attention heads.
    """

    def __init__(self, parts: LayerParts, num_heads: int, products: str = "int8") -> None:
        import onnxruntime

        activation = activation_name(parts.ffn_act)
        if activation is None:
            raise ValueError("the feed-forward activation is neither erf nor tanh GELU")
        options = session_options()
        self.session = onnxruntime.InferenceSession(
            layer_graph(parts, num_heads, activation, products), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, q_rows: torch.Tensor, kv_rows: torch.Tensor, q_grid: torch.Tensor, kv_grid: torch.Tensor,
                 q_back: torch.Tensor, key_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """The layer's new states for the query rows.

        q_rows (torch.Tensor): float ``[queries, hidden]``, the active pieces.
        kv_rows (torch.Tensor): float ``[keys, hidden]``, the present pieces.
        q_grid (torch.Tensor): long ``[rows, query_slots]``, the query row in
            each slot of the attention grid (any valid row on padding).
        kv_grid (torch.Tensor): long ``[rows, key_slots]``, the same for keys.
        q_back (torch.Tensor): long ``[queries]``, each query row's slot in
            the flattened q_grid.
        key_mask (Optional[torch.Tensor]): bool ``[rows, key_slots]``, True on
            real keys; None when every slot is one.
        RETURNS (torch.Tensor): float ``[queries, hidden]``.
        """
        rows, slots = kv_grid.shape
        if key_mask is None:
            add_mask = np.zeros((rows, 1, 1, slots), np.float32)
        else:
            add_mask = np.where(key_mask.reshape(rows, 1, 1, slots).numpy(), np.float32(0), np.float32(MASK_VALUE))
        feed = {"q_rows": _as_array(q_rows), "kv_rows": _as_array(kv_rows), "q_grid": q_grid.numpy(),
                "kv_grid": kv_grid.numpy(), "q_back": q_back.numpy(), "add_mask": add_mask}
        return torch.from_numpy(self.session.run(["out"], feed)[0])


def _as_array(t: torch.Tensor) -> np.ndarray:
    """A contiguous fp32 numpy view (a copy only where needed)."""
    return t.detach().to(torch.float32).contiguous().numpy()


class OrtUnavailable(Exception):
    """Why the "int8-ort" stack cannot be made here (one line)."""


# How far the ONNX Runtime layer may stand from the torch int8 layer on the
# probe: both compute the same integers, but float rounding in between can
# flip an activation's rounding (about one quantization step of one input);
# a saturating int8 kernel is off by whole units.
PROBE_TOLERANCE = 0.05


def with_sessions(torch_parts: Sequence[LayerParts], layers: Sequence[LayerParts],
                  num_heads: int, products: str = "int8") -> Tuple[LayerParts, ...]:
    """`torch_parts` (the torch stack of the same arithmetic), each with its
    layer's session as `dense_step`; ALBERT's shared layers share one
    session. The torch modules stay in the parts: the same arithmetic, for
    anything that reads them.

    torch_parts (Sequence[LayerParts]): the torch int8 (or fp32) copies of `layers`.
    layers (Sequence[LayerParts]): the fp32 originals (the graphs' weights).
    num_heads (int): attention heads.
    products (str): "int8" ("int8-ort") or "fp32" ("fp32-ort").
    RAISES (OrtUnavailable): no graph for this layer, a session that fails,
        or a first layer that does not reproduce the torch layer on a probe
        (as an int8 kernel that saturates would not).
    """
    try:
        made = {}
        sessions = []
        for parts in layers:
            if id(parts.query) not in made:
                made[id(parts.query)] = OrtLayer(parts, num_heads, products)
            sessions.append(made[id(parts.query)])
        out = tuple(dataclasses.replace(p, dense_step=s) for p, s in zip(torch_parts, sessions))
        gap = _probe_gap(torch_parts[0], out[0], num_heads) if out else 0.0
    except build_errors() as err:
        lines = str(err).strip().splitlines()
        raise OrtUnavailable(f"{type(err).__name__}: {lines[0] if lines else ''}") from err
    if not gap <= PROBE_TOLERANCE:
        raise OrtUnavailable(f"its layer differs from the torch {products} layer by {gap:.3g} on a probe "
                             "(an int8 kernel that saturates?)")
    return out


def _probe_gap(torch_layer: LayerParts, one_call: LayerParts, num_heads: int) -> float:
    """The largest difference between the two layers' outputs on a probe:
    two rows of different lengths, half the pieces halted, large entries (a
    kernel that saturates its int16 pair sums shows there)."""
    from .layer_step import PackedRows, halt_and_copy_layer

    width = torch_layer.attn_norm.normalized_shape[0]
    hidden = torch.randn(2, 9, width, generator=torch.Generator().manual_seed(0)) * 4
    present = torch.ones(2, 9, dtype=torch.bool)
    present[1, 6:] = False
    active = PackedRows(present & (torch.arange(9) % 2 == 0))
    want = halt_and_copy_layer(torch_layer, hidden.clone(), present, active, num_heads)
    got = halt_and_copy_layer(one_call, hidden.clone(), present, active, num_heads)
    return float((want - got).abs().max())
