"""One encoder layer's dense work as an ONNX Runtime session ("int8-ort", "fp32-ort").

At batch size 1 a layer of eager PyTorch dispatches dozens of small ops, and
the int8 products each add their own quantize and rescale ops; ONNX Runtime
runs the same graph as one call with MLAS's int8 (or fp32) kernels. A batch
of several sequences runs a layer at a time through these sessions; a single
sequence runs its whole exit loop as one call (ort_document.py). This module builds,
for one layer, the ONNX graph of everything between the gather of the active
pieces and the scatter of their new states. Its inputs:

- kv_rows ``[keys, hidden]``: every present piece, packed (keys and values,
  halted pieces included), and q_in_kv ``[queries]``: the active pieces'
  rows in it (the queries, and the residual);
- for each of `ort_grids.ATTENTION_GROUPS` sets of the live rows, q_grid_g
  ``[rows_g, query_slots_g]`` and kv_grid_g ``[rows_g, key_slots_g]``: which
  packed row sits in each slot of that set's attention grid, and add_mask_g
  ``[rows_g, 1, key_slots_g]``, 0 on real keys and a large negative number
  on padding; q_back ``[queries]``: each query's slot in all the sets'
  grids one after the other (`ort_grids.grouped_feed` makes them).

Each set is padded to its own most active and longest row: after exits the
active counts of a batch spread widely, and one grid padded to the batch's
widest row ran 2.4 times the query x key slots the rows need on
CoNLL-2003 at batch 32 (TOKEE 2x, length-sorted).
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
from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np
import torch

from .backbone import LayerParts
from .ort_grids import ATTENTION_GROUPS, grouped_feed
from .onnx_graph import CONTRIB_DOMAIN, GraphBuilder, onnx_type



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


def layer_graph(parts: LayerParts, num_heads: int, activation: str, products: str = "int8",
                groups: int = ATTENTION_GROUPS) -> bytes:
    """The serialized ONNX model of one layer's dense work (module docstring).

    parts (LayerParts): the layer's fp32 modules (left unchanged).
    num_heads (int): attention heads.
    activation (str): "Gelu" or "FastGelu" (see `activation_name`).
    products (str): "int8" or "fp32" (onnx_graph.GraphBuilder).
    groups (int): attention groups of rows, each its own grid (module docstring).
    RETURNS (bytes): the model, for `onnxruntime.InferenceSession`.
    """
    from onnx import helper

    width = parts.query.in_features
    head_dim = width // num_heads
    g = GraphBuilder(products)
    # Every present piece is quantized once; the queries' rows are gathered
    # from it (the active pieces are among the present ones).
    prepared = g.prepare("kv_rows")
    queries = g.product(g.gather(prepared, "q_in_kv"), [parts.query])
    residual = g.node("Gather", ["kv_rows", "q_in_kv"], axis=0)
    # No key bias: it adds the same q . bias to every score of a query, which
    # the softmax takes out. The value bias is added once per query after
    # attention (the probabilities sum to 1). Two products on the same
    # quantized rows cost less than one and a Split of its [keys, 2 x hidden]
    # result.
    keys = g.product(prepared, [parts.key], bias=False)
    values = g.product(prepared, [parts.value], bias=False)
    split_heads = g.const(np.array([0, num_heads, head_dim], np.int64))

    def heads(rows: str) -> str:
        # [pieces, hidden] into [heads, pieces, head_dim], on the packed
        # pieces: the transposes never touch padding.
        return g.node("Transpose", [g.node("Reshape", [rows, split_heads])], perm=[1, 0, 2])

    queries, keys, values = heads(queries), heads(keys), heads(values)
    flat_slots = g.const(np.array([num_heads, -1, head_dim], np.int64))
    contexts = []
    for group in range(groups):
        q_grid, kv_grid = g.node("Gather", [queries, f"q_grid_{group}"], axis=1), f"kv_grid_{group}"
        # [heads, rows, slots, head_dim] grids; the keys transposed inside
        # the product (transB), the scale folded into it.
        scores = g.node("FusedMatMul", [q_grid, g.node("Gather", [keys, kv_grid], axis=1)], domain=CONTRIB_DOMAIN,
                        alpha=float(head_dim ** -0.5), transA=0, transB=1)
        probs = g.node("Softmax", [g.node("Add", [scores, f"add_mask_{group}"])], axis=-1)
        context = g.node("MatMul", [probs, g.node("Gather", [values, kv_grid], axis=1)])
        contexts.append(g.node("Reshape", [context, flat_slots]))
    # Every group's slots one after the other, each query's slot picked, heads last again.
    context = contexts[0] if groups == 1 else g.node("Concat", contexts, axis=1)
    context = g.node("Transpose", [g.node("Gather", [context, "q_back"], axis=1)], perm=[1, 0, 2])
    context = g.node("Reshape", [context, g.const(np.array([-1, width], np.int64))])
    context = g.node("Add", [context, g.bias_of_one(parts.value)])
    out = g.output_block(parts, context, residual, activation)
    g.nodes.append(helper.make_node("Identity", [out], ["out"]))
    floats, longs = onnx_type("FLOAT"), onnx_type("INT64")
    inputs = [helper.make_tensor_value_info("kv_rows", floats, ["keys", width]),
              helper.make_tensor_value_info("q_in_kv", longs, ["queries"]),
              helper.make_tensor_value_info("q_back", longs, ["queries"])]
    for group in range(groups):
        inputs += [helper.make_tensor_value_info(f"q_grid_{group}", longs, [f"rows_{group}", f"query_slots_{group}"]),
                   helper.make_tensor_value_info(f"kv_grid_{group}", longs, [f"rows_{group}", f"key_slots_{group}"]),
                   helper.make_tensor_value_info(f"add_mask_{group}", floats, [f"rows_{group}", 1, f"key_slots_{group}"])]
    return g.model("early_exit_layer", inputs, [helper.make_tensor_value_info("out", floats, ["queries", width])])


def session_options() -> Any:
    """The options of every layer's session: one thread, the caller's.

    Each session would have its own thread pool, and the six layers' pools
    fight torch's threads for the cores. Measured on 2 cores (CoNLL-2003,
    TOKEE 2x, torch at 2 threads): pools of 2 spinning threads ran batch 1 at
    a tenth of the speed of 1 thread; pools whose idle threads sleep, at
    3,757 words/s against 4,545 for sessions without pools, since waking a
    thread costs more than a sentence's small products gain. So a session
    runs on the calling thread; torch's own ops still use its threads, and
    with two threads torch's bf16 and int8 run batches faster than
    "int8-ort" (on one thread, without AMX, "int8-ort" is the fastest).

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
    products (str): "int8" or "fp32".
    groups (Optional[int]): attention groups; None = ATTENTION_GROUPS.
    """

    def __init__(self, parts: LayerParts, num_heads: int, products: str = "int8",
                 groups: Optional[int] = None) -> None:
        import onnxruntime

        activation = activation_name(parts.ffn_act)
        if activation is None:
            raise ValueError("the feed-forward activation is neither erf nor tanh GELU")
        options = session_options()
        self.groups = ATTENTION_GROUPS if groups is None else groups
        self.session = onnxruntime.InferenceSession(
            layer_graph(parts, num_heads, activation, products, self.groups), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, kv_rows: torch.Tensor, q_in_kv: torch.Tensor, q_row: torch.Tensor, q_slot: torch.Tensor,
                 kv_grid: torch.Tensor, query_counts: Sequence[int], key_counts: Sequence[int]) -> torch.Tensor:
        """The layer's new states for the active pieces.

        kv_rows (torch.Tensor): float ``[keys, hidden]``, the present pieces.
        q_in_kv (torch.Tensor): long ``[queries]``, the active pieces' rows
            in kv_rows.
        q_row, q_slot (torch.Tensor): long ``[queries]``, each active piece's
            live row and its slot among that row's active pieces.
        kv_grid (torch.Tensor): long ``[rows, key_slots]``, each key slot's
            row in kv_rows (any valid row on padding).
        query_counts, key_counts (Sequence[int]): each live row's active and
            present pieces.
        RETURNS (torch.Tensor): float ``[queries, hidden]``, in q_in_kv's order.
        """
        feed = grouped_feed(q_row.numpy(), q_slot.numpy(), query_counts, key_counts, kv_grid.numpy(), self.groups)
        feed["kv_rows"], feed["q_in_kv"] = _as_array(kv_rows), q_in_kv.numpy()
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
