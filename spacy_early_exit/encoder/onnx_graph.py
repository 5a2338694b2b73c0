"""Building blocks of the in-memory ONNX graphs behind precision "int8-ort".

`GraphBuilder` collects the nodes and constant tensors of one graph and knows
the pieces every such graph repeats: the W8A8 product with per-token
activation scales (the "int8" precision's arithmetic), the LayerNorms, and a
layer's output block. One layer's graph (ort_layer.py) and one document's
whole exit loop (ort_document.py) are both made of them. numpy and onnx only.
"""
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from torch import nn

from .backbone import LayerParts
from .quantized_linear import concatenated, quantize_rows

# The ONNX opsets the graphs use (LayerNormalization needs 17; Gelu is
# ONNX Runtime's contrib operator, erf-based like BERT's).
ONNX_OPSET = 17
CONTRIB_DOMAIN = "com.microsoft"
# Shifts the symmetric int8 activation [-127, 127] into uint8 [1, 255].
UINT8_ZERO_POINT = 128


def onnx_type(name: str) -> int:
    """The TensorProto element type called `name` ("FLOAT", "INT64", "BOOL")."""
    from onnx import TensorProto

    return int(getattr(TensorProto, name))


class GraphBuilder:
    """Collects the nodes and constant tensors of one ONNX graph."""

    def __init__(self) -> None:
        self.nodes: List[Any] = []
        self.initializers: List[Any] = []
        self._count = 0
        # Weights already added, by the modules they came from: ALBERT runs
        # one layer's modules at every depth, and a graph of all the layers
        # holds them once.
        self._weights: Dict[Tuple[Any, ...], Tuple[str, ...]] = {}

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def const(self, value: np.ndarray, prefix: str = "const") -> str:
        from onnx import numpy_helper

        name = self._name(prefix)
        # np.array, not np.ascontiguousarray: that makes a scalar a [1] vector.
        self.initializers.append(numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def node(self, op: str, inputs: Sequence[str], domain: Optional[str] = None, n_out: int = 1, **attrs: Any) -> Any:
        """Add one node; its output's name (a list of `n_out` names when several)."""
        from onnx import helper

        outs = [self._name(op) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, domain=domain, **attrs))
        return outs[0] if n_out == 1 else outs

    @contextmanager
    def branch(self) -> Iterator[List[Any]]:
        """Collect the nodes added inside the block into their own list (an
        If node's branch); constants still go to the main graph, which a
        branch may read like any outer value."""
        outer, self.nodes = self.nodes, []
        try:
            yield self.nodes
        finally:
            self.nodes = outer

    def int8_linear(self, x: str, linears: Sequence[nn.Linear]) -> str:
        """The W8A8 product of `x` ``[rows, in]`` with the concatenated
        `linears` (see ort_layer's module docstring), bias added: ``[rows, out]``.

        Eight nodes: at a sentence's few rows each costs about as much as the
        product, so the quantization is as short as ONNX allows (the divided
        row rounds, shifts and saturates in one QuantizeLinear) and the
        product rescales by row and channel inside MatMulIntegerToFloat.
        """
        return self.int8_product(*self.quantize(x), linears)

    def quantize(self, x: str) -> Tuple[str, str]:
        """`x` ``[rows, in]`` quantized per row: the shifted uint8 values and
        each row's scale ``[rows, 1]``. A row's values and scale depend on
        that row only, so gathering rows of them equals quantizing the
        gathered rows."""
        # One scale per row: max |row| / 127, floored so a zero row stays zeros.
        row_max = self.node("ReduceMax", [self.node("Abs", [x])], axes=[1], keepdims=1)
        row_scale = self.node("Max", [self.node("Div", [row_max, self.const(np.array(127, np.float32))]),
                                      self.const(np.array(1e-30 / 127, np.float32))])
        values = self.node("QuantizeLinear", [self.node("Div", [x, row_scale]), self.const(np.array(1.0, np.float32)),
                                              self.const(np.array(UINT8_ZERO_POINT, np.uint8))])
        return values, row_scale

    def int8_product(self, values: str, row_scale: str, linears: Sequence[nn.Linear]) -> str:
        """The product of rows quantized by `quantize` with the concatenated
        `linears`, bias added. MatMulIntegerToFloat scales each output by its
        row's times its channel's scale (a ``[rows, 1]`` by ``[out]``
        broadcast); its own bias input is not used: with a per-row scale,
        ONNX Runtime 1.32 leaves the bias out of the result."""
        weight, col_scale, bias = self._int8_weights(linears)
        product = self.node("MatMulIntegerToFloat", [
            values, weight, row_scale, col_scale, self.const(np.array(UINT8_ZERO_POINT, np.uint8)),
        ], domain=CONTRIB_DOMAIN)
        return self.node("Add", [product, bias])

    def _int8_weights(self, linears: Sequence[nn.Linear]) -> Tuple[str, ...]:
        key = ("int8",) + tuple(id(linear) for linear in linears)
        if key not in self._weights:
            # Quantized as Int8Linear quantizes: the same scales, the same integers.
            fused = concatenated(linears) if len(linears) > 1 else linears[0]
            values_t, scale = quantize_rows(fused.weight.detach().float())
            bias = fused.bias.detach().float().numpy() if fused.bias is not None else np.zeros(fused.out_features, np.float32)
            self._weights[key] = (self.const(values_t.t().contiguous().numpy(), "weight"),
                                  self.const(scale.squeeze(-1).numpy(), "scale"), self.const(bias, "bias"))
        return self._weights[key]

    def layer_norm(self, x: str, norm: nn.LayerNorm) -> str:
        key = ("norm", id(norm))
        if key not in self._weights:
            self._weights[key] = (self.const(norm.weight.detach().float().numpy(), "gamma"),
                                  self.const(norm.bias.detach().float().numpy(), "beta"))
        gamma, beta = self._weights[key]
        return self.node("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=float(norm.eps))

    def output_block(self, parts: LayerParts, context: str, residual: str, activation: str) -> str:
        """The attention output projection, residual and norm, then the
        feed-forward block with its residual and norm (int8 products)."""
        attn = self.layer_norm(self.node("Add", [self.int8_linear(context, [parts.attn_out]), residual]), parts.attn_norm)
        inner = self.node(activation, [self.int8_linear(attn, [parts.ffn_in])], domain=CONTRIB_DOMAIN)
        return self.layer_norm(self.node("Add", [self.int8_linear(inner, [parts.ffn_out]), attn]), parts.ffn_norm)

    def embeddings(self, ids: str, backbone: nn.Module, offset: int) -> str:
        """The embedding block of a BERT-family `backbone` for one unpadded
        sequence of piece ids ``[pieces]``: word + token type 0 + position
        (from `offset`: 0 for BERT, padding index + 1 for RoBERTa), summed
        in the order transformers sums them, the LayerNorm, and ALBERT's
        projection up to the hidden size. Callers check it against the
        torch block on a probe (other families differ)."""
        block = backbone.embeddings
        words = self.node("Gather", [self.const(block.word_embeddings.weight.detach().float().numpy(), "words"), ids],
                          axis=0)
        types = getattr(block, "token_type_embeddings", None)
        if types is not None:
            words = self.node("Add", [words, self.const(types.weight.detach().float()[0].numpy(), "type")])
        start = self.const(np.array([offset], np.int64))
        positions = self.node("Slice", [self.const(block.position_embeddings.weight.detach().float().numpy(), "positions"),
                                        start, self.node("Add", [self.node("Shape", [ids]), start])])
        hidden = self.layer_norm(self.node("Add", [words, positions]), block.LayerNorm)
        mapping = getattr(backbone.encoder, "embedding_hidden_mapping_in", None)
        if mapping is not None:
            hidden = self.node("Gemm", [hidden, self.const(mapping.weight.detach().float().numpy(), "mapping"),
                                        self.const(mapping.bias.detach().float().numpy(), "mapping_bias")], transB=1)
        return hidden

    def model(self, name: str, inputs: Sequence[Any], outputs: Sequence[Any]) -> bytes:
        """The serialized model of the collected graph.

        inputs, outputs (Sequence[Any]): onnx ValueInfoProtos.
        """
        from onnx import helper

        graph = helper.make_graph(self.nodes, name, list(inputs), list(outputs), self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET),
                                                        helper.make_opsetid(CONTRIB_DOMAIN, 1)])
        return model.SerializeToString()
