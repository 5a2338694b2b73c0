"""What goes into and comes out of the Thinc layer, in one place."""
from dataclasses import dataclass
from typing import Any, Callable, List, NamedTuple, Optional, Sequence

import numpy
from spacy.tokens import Doc

from ..encoder.exits import ExitPolicy
from ..encoder.model import EncoderInput
from ..encoder.planner import ExitPlan


class ModelInput(NamedTuple):
    """The layer's input.

    docs (Sequence[Doc]): the batch.
    policy (Optional[ExitPolicy]): prediction: when tokens exit.
    planner (Optional[Callable[[EncoderInput], ExitPlan]]): stage-2 training:
        decides each row's forced exit layers (None in stage 1 and at prediction).
    word_states (bool): also return each token's hidden state at its exit
        layer (a shared encoder with feature listeners asks for them).
    """

    docs: Sequence[Doc]
    policy: Optional[ExitPolicy] = None
    planner: Optional[Callable[[EncoderInput], ExitPlan]] = None
    word_states: bool = False


@dataclass
class DocPrediction:
    """What the encoder says about one doc.

    logits (numpy.ndarray): ``[n_tokens, n_classes]`` at each token's exit layer
        (zeros for tokens without wordpieces).
    exit_layers (numpy.ndarray): ``[n_tokens]``, 1-based; 0 = no wordpieces.
    flops, full_flops (int): FLOPs spent, and what full depth would cost.
    states (Optional[numpy.ndarray]): when asked, float32 ``[n_tokens, width]``,
        each token's hidden state at its exit layer (zeros without wordpieces).
    """

    logits: numpy.ndarray
    exit_layers: numpy.ndarray
    flops: int
    full_flops: int
    states: Optional[numpy.ndarray] = None


@dataclass
class TrainingOutput:
    """Every off-ramp's logits for a batch, as training and calibration read them.

    layer_logits (Any): ``[n_layers, n_words, n_classes]`` for every word of every row.
    token_index (List[numpy.ndarray]): per doc, each token's row in `n_words` (-1: not scored).
    reference_logits (Optional[numpy.ndarray]): stage 2 only, the frozen
        stage-1 model's logits, same shape.
    exit_layers (Optional[numpy.ndarray]): stage 2 only, ``[n_words]`` forced exit layers.
    word_states (Any): when asked, ``[n_words, width]``: each word's hidden
        state at its exit layer (the last layer in stage 1, the forced one in
        stage 2); its gradient goes back with the logits' (`backprop` takes
        ``(d_layer_logits, d_word_states)`` then).
    """

    layer_logits: Any
    token_index: List[numpy.ndarray]
    reference_logits: Optional[numpy.ndarray] = None
    exit_layers: Optional[numpy.ndarray] = None
    word_states: Any = None
