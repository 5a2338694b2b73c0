"""The whole exit loop of one sequence as one ONNX Runtime call ("int8-ort", "fp32-ort").

At batch size 1 a sentence costs the layers it runs plus everything between
them: per layer a few dozen small torch ops (piece selection, the off-ramp,
the entropy, the window rule, the scatter of new states), each of which also
runs on caches the layer's weights have just flushed. Profiled on CoNLL-2003
(TOKEE 2x, per-layer ONNX Runtime calls), that was 40% of a sentence. This
module builds one graph that runs every layer, off-ramp and exit decision of
one sequence, so a sentence is one call:

- layer l runs only while a word of the sequence is active (an If node: the
  layers after the last exit are skipped, as in the eager loop);
- inside it, the active pieces (those of active words, and the specials
  while any word is) issue queries and get the output and feed-forward
  blocks; every piece gives keys and values (halt-and-copy), and the new
  states are scattered back into the sequence;
- the off-ramp scores the active words; where the layer may let words out,
  the uncertainty (normalized entropy at the layer's temperature, the max
  over heads), the window max over words (halted words count as settled)
  and the threshold decide who leaves.

The arithmetic is `ort_layer`'s (the "int8" or "fp32" precision's), the
rule is `exits.exit_decisions`', and the thresholds and temperatures are
inputs, so one graph serves every threshold; the window, the mode, and
which layers may let words out are fixed per graph (a layer after one that
let nobody out needs no If). The embeddings run in the graph too where they
reproduce the torch block on a probe (`embedding_offset`), from the word
vectors the caller looks up. `model.EarlyExitEncoder.forward` takes this
path for a single sequence at "int8-ort" or "fp32-ort" in prediction, where
each piece belongs to at most one word (document_pass.py); anything else
runs the eager loop. PyTorch, numpy and onnx/onnxruntime: nothing here knows
about spaCy.
"""
import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .backbone import LayerParts, embed
from .onnx_graph import GraphBuilder, onnx_type
from .ort_layer import activation_name, session_options

# How far the graph's embeddings may stand from the torch block's on the
# probe: the same sums, only the LayerNorm's float reduction order differs.
EMBEDDING_TOLERANCE = 1e-5


class DocumentGraph:
    """One session running a sequence's layers, off-ramps and exits.

    layers (Sequence[LayerParts]): the fp32 layers (the graph's weights).
    ramps (Sequence[nn.Linear]): each layer's fused off-ramp.
    head_sizes (Sequence[int]): each head's classes, in column order.
    num_heads (int): attention heads.
    window (Optional[int]): TOKEE's k; None for SENTEE (the whole sequence).
    decide (Sequence[bool]): per layer, whether words may exit after it.
    embedding (Optional[Tuple[nn.Module, int]]): the transformers model and
        the position offset at which the graph reproduces its embedding
        block (`embedding_offset`): the graph then embeds too; None: the
        caller feeds the embeddings.
    products (str): the layers' arithmetic, "int8" ("int8-ort") or "fp32" ("fp32-ort").
    RAISES (ValueError): a feed-forward activation the graph does not know.
    """

    def __init__(self, layers: Sequence[LayerParts], ramps: Sequence[nn.Linear], head_sizes: Sequence[int],
                 num_heads: int, window: Optional[int], decide: Sequence[bool],
                 embedding: Optional[Tuple[nn.Module, int]] = None, products: str = "int8") -> None:
        import onnxruntime

        self.decide = tuple(decide)
        # Where the graph embeds, it takes the pieces' word vectors; else the embeddings.
        self.embeds = embedding is not None
        graph = document_graph(layers, ramps, head_sizes, num_heads, window, self.decide, embedding, products)
        self.session = onnxruntime.InferenceSession(graph, session_options(), providers=["CPUExecutionProvider"])

    def __call__(self, pieces: np.ndarray, piece_word: np.ndarray, first_piece: np.ndarray, words: np.ndarray,
                 thresholds: np.ndarray, temperatures: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """One sequence's word logits and exit layers.

        pieces (np.ndarray): float32 ``[pieces, width]``, the pieces' rows of
            the word embedding table where the graph embeds (`embeds`), else
            the embeddings ``[pieces, hidden]``.
        piece_word (np.ndarray): int64 ``[pieces]``, each piece's word, or the
            word count for a piece of no word (a special).
        first_piece (np.ndarray): int64 ``[words]``, each word's first piece.
        words (np.ndarray): bool ``[words]``, the words that have pieces.
        thresholds (np.ndarray): float32 ``[layers]``.
        temperatures (np.ndarray): float32 ``[layers, heads]``.
        RETURNS (Tuple[np.ndarray, np.ndarray]): float32 ``[words, classes]``
            logits at each word's exit layer, int64 ``[words]`` exit layers
            (1-based, 0 for a word without pieces).
        """
        feed = {"word_vectors" if self.embeds else "hidden": pieces, "piece_word": piece_word, "first_piece": first_piece, "words": words,
                "thresholds": thresholds, "temperatures": temperatures}
        logits, exits = self.session.run(["logits", "exits"], feed)
        return logits, exits


def document_graph(layers: Sequence[LayerParts], ramps: Sequence[nn.Linear], head_sizes: Sequence[int],
                   num_heads: int, window: Optional[int], decide: Sequence[bool],
                   embedding: Optional[Tuple[nn.Module, int]] = None, products: str = "int8") -> bytes:
    """The serialized ONNX model behind `DocumentGraph` (its arguments;
    `embedding`: the backbone and position offset where the graph embeds)."""
    from onnx import helper

    width = layers[0].query.in_features
    n_classes = sum(head_sizes)
    g = GraphBuilder(products)
    floats, longs, bools = onnx_type("FLOAT"), onnx_type("INT64"), onnx_type("BOOL")
    if embedding is not None:
        table = embedding[0].embeddings.word_embeddings.embedding_dim
        first_input = helper.make_tensor_value_info("word_vectors", floats, ["pieces", table])
        hidden = g.embeddings("word_vectors", *embedding)
    else:
        first_input = helper.make_tensor_value_info("hidden", floats, ["pieces", width])
        hidden = "hidden"
    state = {"hidden": hidden, "logits": g.node("ConstantOfShape", [g.node("Concat", [
        g.node("Shape", ["first_piece"]), g.const(np.array([n_classes], np.int64))], axis=0)]),
        "exits": g.node("ConstantOfShape", [g.node("Shape", ["first_piece"])],
                        value=helper.make_tensor("zero", longs, [1], [0])),
        "active": "words"}
    order = ("hidden", "logits", "exits", "active")
    types = {"hidden": floats, "logits": floats, "exits": longs, "active": bools}
    last = len(layers)
    for index, (parts, ramp) in enumerate(zip(layers, ramps)):
        layer = index + 1
        activation = activation_name(parts.ffn_act)
        if activation is None:
            raise ValueError("the feed-forward activation is neither erf nor tanh GELU")
        # The first layer always runs (the caller sends only sequences with
        # words), and so does one after a layer that let nobody out: an If
        # costs ~30 us, a twentieth of a layer.
        branched = layer > 1 and decide[index - 1]
        with g.branch() as body:
            new = _layer_body(g, dict(state), parts, ramp, head_sizes, num_heads, width, activation, layer,
                              scored=decide[index] or layer == last, decides=decide[index] and layer < last,
                              window=window, dense=not any(decide[:index]))
            if branched:
                # A branch's outputs are made inside it, also where they do not change.
                new = {k: g.node("Identity", [v]) if v == state[k] else v for k, v in new.items()}
        if not branched:
            g.nodes.extend(body)
            state = new
            continue
        # Later layers run only while a word is active.
        live = g.node("Cast", [g.node("ReduceMax", [g.node("Cast", [state["active"]], to=onnx_type("INT32"))],
                                      keepdims=0)], to=bools)
        then_out = [helper.make_tensor_value_info(new[k], types[k], None) for k in order]
        with g.branch() as skip:
            kept = {k: g.node("Identity", [state[k]]) for k in order}
        else_out = [helper.make_tensor_value_info(kept[k], types[k], None) for k in order]
        outs = g.node("If", [live], n_out=len(order),
                      then_branch=helper.make_graph(body, f"layer_{layer}", [], then_out),
                      else_branch=helper.make_graph(skip, f"skip_{layer}", [], else_out))
        state = dict(zip(order, outs))
    # Words still active after the last layer exit there.
    exits = g.node("Where", [state["active"], g.const(np.array(last, np.int64)), state["exits"]])
    g.nodes.append(helper.make_node("Identity", [state["logits"]], ["logits"]))
    g.nodes.append(helper.make_node("Identity", [exits], ["exits"]))
    return g.model(
        "early_exit_document",
        [first_input,
         helper.make_tensor_value_info("piece_word", longs, ["pieces"]),
         helper.make_tensor_value_info("first_piece", longs, ["words"]),
         helper.make_tensor_value_info("words", bools, ["words"]),
         helper.make_tensor_value_info("thresholds", floats, [last]),
         helper.make_tensor_value_info("temperatures", floats, [last, len(head_sizes)])],
        [helper.make_tensor_value_info("logits", floats, ["words", n_classes]),
         helper.make_tensor_value_info("exits", longs, ["words"])],
    )


def _layer_body(g: GraphBuilder, state: dict, parts: LayerParts, ramp: nn.Linear, head_sizes: Sequence[int],
                num_heads: int, width: int, activation: str, layer: int, scored: bool, decides: bool,
                window: Optional[int], dense: bool = False) -> dict:
    """Add one layer (and its off-ramp and exit rule where it has them);
    the new state's names. `dense`: every piece is active (no earlier layer
    may have let a word out)."""
    head_dim = width // num_heads
    hidden, active = state["hidden"], state["active"]
    flat = g.const(np.array([-1], np.int64))
    # Every piece is quantized once (int8) for the keys and values.
    prepared = g.prepare(hidden)
    if dense:
        # Every piece is active: its queries come out of the keys' product,
        # and there are no rows to pick or scatter back.
        x, projections = hidden, [parts.query, parts.key, parts.value]
    else:
        # A piece runs while its word does; a special while any word does.
        flags = g.node("Concat", [active, g.const(np.array([True]))], axis=0)
        queries_at = g.node("Reshape", [g.node("NonZero", [g.node("Gather", [flags, "piece_word"], axis=0)]), flat])
        x = g.node("Gather", [hidden, queries_at], axis=0)
        # The queries' rows are gathered from the quantized pieces.
        queries = g.product(g.gather(prepared, queries_at), [parts.query])
        projections = [parts.key, parts.value]
    sizes = g.const(np.array([p.out_features for p in projections], np.int64))
    projected = g.node("Split", [g.product(prepared, projections), sizes], axis=1, n_out=len(projections))
    if dense:
        queries, keys, values = projected
    else:
        keys, values = projected
    split_heads = g.const(np.array([0, num_heads, head_dim], np.int64))

    def heads(rows: str, perm: Sequence[int]) -> str:
        return g.node("Transpose", [g.node("Reshape", [rows, split_heads])], perm=list(perm))

    scores = g.node("MatMul", [heads(queries, (1, 0, 2)), heads(keys, (1, 2, 0))])
    scores = g.node("Mul", [scores, g.const(np.array(head_dim ** -0.5, np.float32))])
    context = g.node("MatMul", [g.node("Softmax", [scores], axis=-1), heads(values, (1, 0, 2))])
    context = g.node("Reshape", [g.node("Transpose", [context], perm=[1, 0, 2]),
                                 g.const(np.array([-1, width], np.int64))])
    out = g.output_block(parts, context, x, activation)
    new = dict(state)
    new["hidden"] = out if dense else g.node(
        "ScatterND", [hidden, g.node("Unsqueeze", [queries_at, g.const(np.array([1], np.int64))]), out])
    if not scored:
        return new
    words_at = g.node("Reshape", [g.node("NonZero", [active]), flat])
    words_col = g.node("Unsqueeze", [words_at, g.const(np.array([1], np.int64))])
    states = g.node("Gather", [new["hidden"], g.node("Gather", ["first_piece", words_at], axis=0)], axis=0)
    logits = g.node("Gemm", [states, g.const(ramp.weight.detach().float().numpy(), "ramp"),
                             g.const(ramp.bias.detach().float().numpy(), "ramp_bias")], transB=1)
    new["logits"] = g.node("ScatterND", [state["logits"], words_col, logits])
    if not decides:
        return new
    uncertainty = _uncertainty(g, logits, head_sizes, layer)
    settled = g.node("ScatterND", [g.node("ConstantOfShape", [g.node("Shape", [active])]), words_col, uncertainty])
    if window is None:
        peak = g.node("ReduceMax", [settled], keepdims=1)
    elif window == 0:
        peak = settled
    else:
        pooled = g.node("MaxPool", [g.node("Reshape", [settled, g.const(np.array([1, 1, -1], np.int64))])],
                        kernel_shape=[2 * window + 1], pads=[window, window], strides=[1])
        peak = g.node("Reshape", [pooled, flat])
    threshold = g.node("Gather", ["thresholds", g.const(np.array(layer - 1, np.int64))], axis=0)
    # A threshold of 1 lets every active word out (a uniform distribution's
    # entropy is exactly 1); below, the strict comparison of exit_decisions.
    below = g.node("Or", [g.node("Less", [peak, threshold]),
                          g.node("GreaterOrEqual", [threshold, g.const(np.array(1.0, np.float32))])])
    leaving = g.node("And", [active, below])
    new["exits"] = g.node("Where", [leaving, g.const(np.array(layer, np.int64)), state["exits"]])
    new["active"] = g.node("And", [active, g.node("Not", [leaving])])
    return new


def _uncertainty(g: GraphBuilder, logits: str, head_sizes: Sequence[int], layer: int) -> str:
    """Per scored word, the max over heads of the normalized entropy of
    softmax(head logits / the head's temperature at `layer`)."""
    temperatures = g.node("Gather", ["temperatures", g.const(np.array(layer - 1, np.int64))], axis=0)
    per_head = []
    start = 0
    for head, size in enumerate(head_sizes):
        stop = start + size
        if size < 2:
            # One class: nothing to be unsure about (normalized_entropy's zeros).
            per_head.append(g.node("ReduceSum", [g.node("Mul", [logits, g.const(np.zeros((), np.float32))]),
                                                 g.const(np.array([1], np.int64))], keepdims=0))
        else:
            part = g.node("Slice", [logits, g.const(np.array([start], np.int64)), g.const(np.array([stop], np.int64)),
                                    g.const(np.array([1], np.int64))])
            temperature = g.node("Gather", [temperatures, g.const(np.array(head, np.int64))], axis=0)
            log_p = g.node("LogSoftmax", [g.node("Div", [part, temperature])], axis=-1)
            entropy = g.node("ReduceSum", [g.node("Mul", [g.node("Exp", [log_p]), log_p]),
                                           g.const(np.array([1], np.int64))], keepdims=0)
            normalized = g.node("Div", [g.node("Neg", [entropy]), g.const(np.array(math.log(size), np.float32))])
            per_head.append(g.node("Clip", [normalized, g.const(np.array(0.0, np.float32)),
                                            g.const(np.array(1.0, np.float32))]))
        start = stop
    return per_head[0] if len(per_head) == 1 else g.node("Max", per_head)


def embedding_offset(backbone: nn.Module) -> Optional[int]:
    """The position offset at which `GraphBuilder.embeddings` reproduces
    the backbone's own embedding block on a probe (0, or RoBERTa's padding
    index + 1), or None where neither does (the caller embeds in torch)."""
    import onnxruntime
    from onnx import helper

    block = backbone.embeddings
    padding = getattr(block, "padding_idx", None)
    n_ids = block.word_embeddings.num_embeddings
    ids = (torch.arange(12) * 7 + 3) % n_ids
    if padding is not None:
        ids = torch.where(ids == padding, (ids + 1) % n_ids, ids)
    # The reference without dropout, whatever mode the caller left it in.
    mode = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            want = embed(backbone, ids[None], torch.zeros_like(ids)[None])[0].float().numpy()
    finally:
        backbone.train(mode)
    floats = onnx_type("FLOAT")
    vectors = block.word_embeddings.weight.detach().float()[ids].numpy()
    for offset in [0] + ([padding + 1] if padding is not None else []):
        if block.position_embeddings.num_embeddings < offset + len(ids):
            continue
        g = GraphBuilder()
        g.nodes.append(helper.make_node("Identity", [g.embeddings("word_vectors", backbone, offset)], ["out"]))
        graph = g.model("embeddings", [helper.make_tensor_value_info("word_vectors", floats, ["pieces", vectors.shape[1]])],
                        [helper.make_tensor_value_info("out", floats, ["pieces", want.shape[1]])])
        session = onnxruntime.InferenceSession(graph, session_options(), providers=["CPUExecutionProvider"])
        got = session.run(["out"], {"word_vectors": vectors})[0]
        if np.abs(got - want).max() <= EMBEDDING_TOLERANCE:
            return offset
    return None
