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
    """

    docs: Sequence[Doc]
    policy: Optional[ExitPolicy] = None
    planner: Optional[Callable[[EncoderInput], ExitPlan]] = None


@dataclass
class DocPrediction:
    """What the encoder says about one doc.

    logits (numpy.ndarray): ``[n_tokens, n_classes]`` at each token's exit layer
        (zeros for tokens without wordpieces).
    exit_layers (numpy.ndarray): ``[n_tokens]``, 1-based; 0 = no wordpieces.
    flops, full_flops (int): FLOPs spent, and what full depth would cost.
    """

    logits: numpy.ndarray
    exit_layers: numpy.ndarray
    flops: int
    full_flops: int


@dataclass
class TrainingOutput:
    """Every off-ramp's logits for a batch, as training and calibration read them.

    layer_logits (Any): ``[n_layers, n_words, n_classes]`` for every word of every row.
    token_index (List[numpy.ndarray]): per doc, each token's row in `n_words` (-1: not scored).
    reference_logits (Optional[numpy.ndarray]): stage 2 only, the frozen
        stage-1 model's logits, same shape.
    exit_layers (Optional[numpy.ndarray]): stage 2 only, ``[n_words]`` forced exit layers.
    """

    layer_logits: Any
    token_index: List[numpy.ndarray]
    reference_logits: Optional[numpy.ndarray] = None
    exit_layers: Optional[numpy.ndarray] = None
