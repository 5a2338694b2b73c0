"""Building blocks of the in-memory ONNX graphs behind "int8-ort" and "fp32-ort".

`GraphBuilder` collects the nodes and constant tensors of one graph and knows
the pieces every such graph repeats: the matrix products (W8A8 with per-token
activation scales, the "int8" precision's arithmetic, or fp32), the
LayerNorms, a layer's output block and the embeddings. One layer's graph (ort_layer.py) and one document's
whole exit loop (ort_document.py) are both made of them. numpy and onnx only.
"""
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from torch import nn

from .backbone import LayerParts
from .quantized_linear import INT8_MAX, SCALE_FLOOR, concatenated, quantize_rows

# The ONNX opsets the graphs use (LayerNormalization needs 17; Gelu is
# ONNX Runtime's contrib operator, erf-based like BERT's).
ONNX_OPSET = 17
CONTRIB_DOMAIN = "com.microsoft"
# Shifts the symmetric int8 activation [-127, 127] into uint8 [1, 255].
UINT8_ZERO_POINT = 128
# The arithmetic of the graphs' matrix products: "int8-ort" and "fp32-ort".
PRODUCTS = ("int8", "fp32")


def onnx_type(name: str) -> int:
    """The TensorProto element type called `name` ("FLOAT", "INT64", "BOOL")."""
    from onnx import TensorProto

    return int(getattr(TensorProto, name))


class GraphBuilder:
    """Collects the nodes and constant tensors of one ONNX graph.

    products (str): what the layers' matrix products compute in: "int8"
        (the "int8" precision's W8A8 arithmetic) or "fp32".
    """

    def __init__(self, products: str = "int8") -> None:
        if products not in PRODUCTS:
            raise ValueError(f"products must be one of {PRODUCTS}; got {products!r}")
        self.products = products
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

    def linear(self, x: str, linears: Sequence[nn.Linear]) -> str:
        """The product of `x` ``[rows, in]`` with the concatenated `linears`,
        bias added: ``[rows, out]``, in the builder's `products` arithmetic."""
        return self.product(self.prepare(x), linears)

    def prepare(self, x: str) -> Tuple[str, Optional[str]]:
        """`x` ``[rows, in]`` as the products take it: for int8, quantized
        per row as `quantize_rows` quantizes (the shifted uint8 values and
        each row's scale ``[rows, 1]``, max |value| / 127 with its floor);
        for fp32, as it is (and no scale). A row's values and scale depend
        on that row only, so gathering rows of them equals preparing the
        gathered rows (`gather`)."""
        if self.products == "fp32":
            return x, None
        row_max = self.node("Max", [self.node("ReduceMax", [self.node("Abs", [x])], axes=[1], keepdims=1),
                                    self.const(np.array(SCALE_FLOOR, np.float32))])
        row_scale = self.node("Div", [row_max, self.const(np.array(INT8_MAX, np.float32))])
        # One QuantizeLinear with a scale per row (axis 0) divides, rounds and
        # shifts to uint8 in one pass over x: 40% less time than dividing x
        # by its row's max first and quantizing with one scale (1/127) after
        # (540 x 1,536 rows: 254 against 412 us, 1 thread).
        scales = self.node("Squeeze", [row_scale, self.const(np.array([1], np.int64))])
        zero_points = self.node("Expand", [self.const(np.array([UINT8_ZERO_POINT], np.uint8)),
                                           self.node("Shape", [scales])])
        values = self.node("QuantizeLinear", [x, scales, zero_points], axis=0)
        return values, row_scale

    def gather(self, prepared: Tuple[str, Optional[str]], rows: str) -> Tuple[str, Optional[str]]:
        """The `rows` ``[n]`` of prepared rows (and of their scales)."""
        return tuple(self.node("Gather", [part, rows], axis=0) if part else part for part in prepared)  # type: ignore[return-value]

    def product(self, prepared: Tuple[str, Optional[str]], linears: Sequence[nn.Linear], bias: bool = True) -> str:
        """The product of `prepare`d rows with the concatenated `linears`,
        their bias added unless `bias` is False (a fused node after it adds
        `bias_of` instead).

        int8: MatMulIntegerToFloat scales each output by its row's times its
        channel's scale (a ``[rows, 1]`` by ``[out]`` broadcast). Its own
        bias input is not used: with a per-row scale, ONNX Runtime 1.32
        leaves the bias out of the result. fp32: MatMul against the
        transposed weight.
        """
        values, row_scale = prepared
        if self.products == "fp32":
            product = self.node("MatMul", [values, self._fp32_weights(linears)[0]])
        else:
            weight, col_scale, _ = self._int8_weights(linears)
            product = self.node("MatMulIntegerToFloat", [
                values, weight, row_scale, col_scale, self.const(np.array(UINT8_ZERO_POINT, np.uint8)),
            ], domain=CONTRIB_DOMAIN)
        return self.node("Add", [product, self.bias_of(linears)]) if bias else product

    def bias_of(self, linears: Sequence[nn.Linear]) -> str:
        """The concatenated `linears`' bias (zeros where they have none)."""
        return (self._fp32_weights(linears) if self.products == "fp32" else self._int8_weights(linears))[-1]

    def bias_of_one(self, linear: nn.Linear) -> str:
        """`linear`'s own bias (zeros where it has none), in fp32 whatever the
        products: for an Add outside a product."""
        key = ("bias", id(linear))
        if key not in self._weights:
            bias = linear.bias.detach().float().numpy() if linear.bias is not None else np.zeros(linear.out_features, np.float32)
            self._weights[key] = (self.const(bias, "bias"),)
        return self._weights[key][0]

    def _fp32_weights(self, linears: Sequence[nn.Linear]) -> Tuple[str, ...]:
        key = ("fp32",) + tuple(id(linear) for linear in linears)
        if key not in self._weights:
            fused = concatenated(linears) if len(linears) > 1 else linears[0]
            bias = fused.bias.detach().float().numpy() if fused.bias is not None else np.zeros(fused.out_features, np.float32)
            self._weights[key] = (self.const(fused.weight.detach().float().t().contiguous().numpy(), "weight"),
                                  self.const(bias, "bias"))
        return self._weights[key]

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
        feed-forward block with its residual and norm. The feed-forward bias
        rides in the activation's node (BiasGelu or FastGelu: ONNX Runtime's
        optimizer fuses an Add before Gelu so anyway, but not after an fp32
        MatMul it has already fused with its Add into a Gemm). The norms stay
        LayerNormalization after two Adds: on CoNLL-2003 sentences ONNX
        Runtime's SkipLayerNormalization over 2-D rows made a six-layer call
        a quarter slower (2.54 against 2.01 ms)."""
        attn = self.layer_norm(self.node("Add", [self.linear(context, [parts.attn_out]), residual]), parts.attn_norm)
        fused_act = "BiasGelu" if activation == "Gelu" else activation
        inner = self.node(fused_act, [self.product(self.prepare(attn), [parts.ffn_in], bias=False),
                                      self.bias_of([parts.ffn_in])], domain=CONTRIB_DOMAIN)
        return self.layer_norm(self.node("Add", [self.linear(inner, [parts.ffn_out]), attn]), parts.ffn_norm)

    def embeddings(self, word_vectors: str, backbone: nn.Module, offset: int) -> str:
        """The rest of a BERT-family `backbone`'s embedding block for one
        unpadded sequence, given its pieces' rows of the word embedding
        table ``[pieces, width]`` (looked up by the caller: the table is the
        largest weight of a small model, and a graph need not hold a copy):
        + token type 0 + position (from `offset`: 0 for BERT, padding index +
        1 for RoBERTa), summed in the order transformers sums them, the
        LayerNorm, and ALBERT's projection up to the hidden size. Callers
        check it against the torch block on a probe (other families differ)."""
        block = backbone.embeddings
        words = word_vectors
        types = getattr(block, "token_type_embeddings", None)
        if types is not None:
            words = self.node("Add", [words, self.const(types.weight.detach().float()[0].numpy(), "type")])
        start = self.const(np.array([offset], np.int64))
        stop = self.node("Add", [self.node("Shape", [word_vectors], start=0, end=1), start])
        positions = self.node("Slice", [self.const(block.position_embeddings.weight.detach().float().numpy(), "positions"),
                                        start, stop])
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
