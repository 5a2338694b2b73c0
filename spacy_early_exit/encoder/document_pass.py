"""One sequence's forward pass through a `ort_document.DocumentGraph`.

The host side of the one-call path: which sequences it takes (one row, each
piece of at most one word), the graph's inputs from an `EncoderInput`, the
graphs kept per encoder, and the FLOPs the eager loop would have counted
(from the exit layers: a word runs every layer up to its exit). Plain
PyTorch and numpy: nothing here knows about spaCy.
"""
from collections import OrderedDict
from functools import lru_cache
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from .backbone import embed
from .ort_document import DocumentGraph, embedding_offset
from .ort_layer import build_errors
from .precision import ORT_PRECISIONS
from .quantized_linear import warn_once

# Graphs kept per encoder: one per arithmetic, window, mode and set of
# layers that may let words out (the benchmarks alternate up to ten; a
# pipeline in use runs one or two). Each holds the layers' weights once more
# (int8: a quarter of the fp32 size; fp32-ort: the fp32 size).
MAX_GRAPHS = 12


def document_inputs(piece_cols: np.ndarray, piece_words: np.ndarray, n_pieces: int, first_piece: np.ndarray,
                    words: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """`DocumentGraph`'s piece map and first pieces for one sequence; None
    where a piece belongs to two words (the eager loop handles those).

    piece_cols, piece_words (np.ndarray): the sequence's (piece, word) pairs.
    n_pieces (int): the sequence's real pieces.
    first_piece (np.ndarray): each word's first piece (-1: a word with none).
    words (np.ndarray): bool, the words with pieces.
    RETURNS (Optional[Tuple[np.ndarray, np.ndarray]]): ``piece_word`` and
        ``first_piece`` as the graph takes them.
    """
    n_words = int(first_piece.shape[0])
    piece_word = np.full(n_pieces, n_words, np.int64)
    piece_word[piece_cols] = piece_words
    # A piece named twice was written once: fewer pieces own a word than pairs.
    if np.count_nonzero(piece_word < n_words) != len(piece_cols):
        return None
    return piece_word, np.where(words, first_piece, 0).astype(np.int64)


def spent_flops(cost: Any, exits: np.ndarray, piece_word: np.ndarray, decide: Sequence[bool]) -> int:
    """The FLOPs the eager loop would have counted for this sequence, from
    its exit layers (a word is active at every layer up to its exit).

    cost (CostModel): the encoder's cost model.
    exits (np.ndarray): int64 ``[words]``, 0 for a word without pieces.
    piece_word (np.ndarray): as `DocumentGraph` takes it.
    decide (Sequence[bool]): per layer, whether it may let words out.
    """
    deepest = int(exits.max(initial=0))
    n_pieces = int(piece_word.shape[0])
    # A layer's FLOPs are linear in its active pieces, so the sum over layers
    # needs only the layers run and the pieces' summed exits (a special runs
    # to the deepest exit); an off-ramp's, in the words it scores: a word is
    # scored at every ramp layer up to its exit.
    piece_layers = int(np.append(exits, deepest)[piece_word].sum())
    base = cost.layer_flops(n_pieces, 0)
    scored = int(_ramps_upto(tuple(decide))[exits].sum())
    return int(deepest * base + (cost.layer_flops(n_pieces, 1) - base) * piece_layers + cost.ramp_flops(scored))


@lru_cache(maxsize=64)
def _ramps_upto(decide: Tuple[bool, ...]) -> np.ndarray:
    """Per exit layer (0 to the last), the off-ramps run up to it: those of
    the layers that may let words out, and the last layer's."""
    last = len(decide)
    return np.cumsum([0] + [decide[layer - 1] or layer == last for layer in range(1, last + 1)])


def one_call_products(encoder: Any, precision: str) -> Optional[str]:
    """The layers' arithmetic ("int8" or "fp32") where `encoder` runs a
    single sequence at `precision` (its layer stack's, the one that runs) as
    one call; None where it runs the eager loop (another precision, training
    mode, `one_call_documents` off). The one test for both entries,
    `EarlyExitEncoder.forward` and `predict_sequence`."""
    if encoder.training or not encoder.one_call_documents:
        return None
    return ORT_PRECISIONS.get(precision)


def predict_sequence(encoder: Any, ids: np.ndarray, first: np.ndarray, piece_cols: np.ndarray,
                     piece_words: np.ndarray, policy: Any) -> Optional[Tuple[np.ndarray, np.ndarray, int, int]]:
    """One sequence's prediction through its one-call graph, numpy in and
    out: what `EarlyExitEncoder.forward` returns for a one-row batch at
    "int8-ort" or "fp32-ort", without the torch tensors and module calls
    around it (0.3 ms of a 2.4 ms CoNLL-2003 sentence at batch size 1); None where
    the encoder would run the eager loop (another precision, training mode,
    a piece of two words, `one_call_documents` off). Arguments as
    `DocumentCache.run_sequence`'s; policy (Optional[ExitPolicy]): None = full depth.
    RAISES (ValueError): a policy that does not fit the encoder, as forward does.
    """
    policy = encoder.checked_policy(policy)
    products = one_call_products(encoder, encoder.layer_stack(policy.precision).precision)
    if products is None:
        return None
    return encoder.document_cache.run_sequence(encoder, ids, first, piece_cols, piece_words, policy,
                                               policy.mode != "off", products)


class DocumentCache:
    """One encoder's `DocumentGraph`s, made on first use and dropped when
    the weights change; like precision.PrecisionCache, never pickled or
    deep-copied (sessions cannot be)."""

    def __init__(self) -> None:
        self._graphs: "OrderedDict[Tuple[Any, ...], Optional[DocumentGraph]]" = OrderedDict()
        # (weights version, embedding_offset's answer) for the current weights.
        self._offset: Optional[Tuple[int, Optional[int]]] = None
        # (the last policy's key, its per-layer graph inputs): see _policy_inputs.
        self._policy: Optional[Tuple[Any, Any]] = None

    def run(self, encoder: Any, batch: Any, policy: Any, exits_on: bool,
            products: str = "int8") -> Optional[Tuple[torch.Tensor, ...]]:
        """The forward pass of a one-sequence `batch` in one call: logits,
        exit layers, FLOPs and full-depth FLOPs as EncoderOutput holds them;
        None where this path does not apply (the caller runs the eager loop).

        encoder (EarlyExitEncoder): the encoder (weights, ramps, cost model).
        batch (EncoderInput): one row.
        policy (ExitPolicy): the exit settings.
        exits_on (bool): whether words may exit before the last layer.
        products (str): the layers' arithmetic, "int8" or "fp32".
        """
        length = int(batch.lengths.cpu().numpy()[0])
        found = self.run_sequence(
            encoder, batch.input_ids[0, :length].cpu().numpy(), batch.word_pieces[0].cpu().numpy(),
            batch.piece_cols.cpu().numpy(), batch.piece_words.cpu().numpy(), policy, exits_on, products,
        )
        if found is None:
            return None
        logits, exits, flops, full = found
        return (torch.from_numpy(logits)[None], torch.from_numpy(exits)[None],
                torch.tensor([flops], dtype=torch.long), torch.tensor([full], dtype=torch.long))

    def run_sequence(self, encoder: Any, ids: np.ndarray, first: np.ndarray, piece_cols: np.ndarray,
                     piece_words: np.ndarray, policy: Any, exits_on: bool,
                     products: str = "int8") -> Optional[Tuple[np.ndarray, np.ndarray, int, int]]:
        """`run` for one sequence given as numpy arrays (`SequenceRow`'s):
        word logits, exit layers, FLOPs and full-depth FLOPs; None where this
        path does not apply.

        ids (np.ndarray): int64 ``[pieces]``, the sequence's piece ids, specials included.
        first (np.ndarray): int64 ``[words]``, each word's first piece (-1: none).
        piece_cols, piece_words (np.ndarray): the (piece, word) pairs.
        """
        length = int(ids.shape[0])
        words = first >= 0
        inputs = document_inputs(piece_cols, piece_words, length, first, words)
        if inputs is None or not words.any():
            return None
        piece_word, first_piece = inputs
        last = encoder.num_layers
        decide, thresholds, temperatures = self._policy_inputs(policy, exits_on, last, encoder.n_heads)
        window = (None if policy.mode == "sentee" else policy.window) if exits_on else 0
        graph = self._graph(encoder, window, decide, products)
        if graph is None:
            return None
        if graph.embeds:
            # The word vectors by numpy indexing into the table (no copy of it).
            pieces = encoder.backbone.embeddings.word_embeddings.weight.detach().numpy()[ids]
        else:
            with torch.inference_mode():
                tensor = torch.from_numpy(ids)[None]
                pieces = embed(encoder.backbone, tensor, torch.zeros_like(tensor))[0].float().contiguous().numpy()
        logits, exits = graph(pieces, piece_word, first_piece, words, thresholds, temperatures)
        cost = encoder.cost
        full = last * cost.layer_flops(length, length) + cost.ramp_flops(int(words.sum()))
        return logits, exits, spent_flops(cost, exits, piece_word, decide), int(full)

    def _policy_inputs(self, policy: Any, exits_on: bool, last: int,
                       n_heads: int) -> Tuple[Tuple[bool, ...], np.ndarray, np.ndarray]:
        """Per layer whether it may let words out, the thresholds and the
        temperatures, as the graph takes them; kept for the last policy (a
        pipeline runs one for many sentences, each a few microseconds of
        Python per layer)."""
        key = (policy, exits_on, last, n_heads)
        if self._policy is None or self._policy[0] != key:
            layers = range(1, last + 1)
            decide = tuple(exits_on and layer < last and policy.layer_threshold(layer) > 0.0 for layer in layers)
            thresholds = np.array([policy.layer_threshold(layer) for layer in layers], np.float32)
            temperatures = np.array([policy.layer_temperatures(layer, n_heads) for layer in layers], np.float32)
            self._policy = (key, (decide, thresholds, temperatures))
        return self._policy[1]

    def _graph(self, encoder: Any, window: Optional[int], decide: Tuple[bool, ...],
               products: str) -> Optional[DocumentGraph]:
        key = (encoder.weights_version, encoder.head_sizes, window, decide, products)
        if key in self._graphs:
            self._graphs.move_to_end(key)
            return self._graphs[key]
        # A weights change makes every graph stale.
        for stale in [k for k in self._graphs if k[0] != encoder.weights_version]:
            del self._graphs[stale]
        try:
            made: Optional[DocumentGraph] = DocumentGraph(
                encoder.layers, [ramp[-1] for ramp in encoder.ramps], encoder.head_sizes,
                encoder.spec.num_heads, window, decide, self._embedding(encoder), products,
            )
        except build_errors() as err:
            lines = str(err).strip().splitlines()
            warn_once(f"{products}-ort-document", f"precision '{products}-ort': the one-call sequence graph failed "
                      f"({type(err).__name__}: {lines[0] if lines else ''}); each layer runs as its own call")
            made = None
        self._graphs[key] = made
        while len(self._graphs) > MAX_GRAPHS:
            self._graphs.popitem(last=False)
        return made

    def _embedding(self, encoder: Any) -> Optional[Tuple[Any, int]]:
        """The backbone and the offset at which the graphs reproduce its
        embedding block, probed once per weights version (None: the graphs
        take the torch block's embeddings)."""
        if self._offset is None or self._offset[0] != encoder.weights_version:
            self._offset = (encoder.weights_version, embedding_offset(encoder.backbone))
        offset = self._offset[1]
        return (encoder.backbone, offset) if offset is not None else None

    def clear(self) -> None:
        self._graphs = OrderedDict()
        self._offset = None
        self._policy = None

    def __deepcopy__(self, memo: Dict[int, Any]) -> "DocumentCache":
        return DocumentCache()

    def __getstate__(self) -> Dict[str, Any]:
        return {}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.clear()
