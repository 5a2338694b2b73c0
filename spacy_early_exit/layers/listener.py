"""The listener layer: a task head's view of a shared early-exit encoder.

`spacy-early-exit.EarlyExitListener.v1` is the `model` of a task component
(tokee_ner, tokee_tagger, tokee_segmenter) that reads a `tokee_transformer`
earlier in the pipeline instead of owning an encoder, the way spaCy's
`Tok2VecListener` reads a `tok2vec`:

- in training, the upstream's `update` runs the forward pass once and hands
  each listener its head's slice of every off-ramp's logits (`receive`) with a
  callback that adds the head's gradient to the shared one; the last
  listener's callback runs the backward pass;
- at prediction, the upstream leaves each head's logits (read at the joint
  exit layer) and the exit layers on the doc (`hand_over`), and the listener
  takes its own (`take_over`). Docs, not batches, carry them, since each
  component may batch the docs differently.

Nothing here owns weights: the heads' off-ramps are columns of the upstream's
fused off-ramps (encoder/model.py).
"""
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Model

from .types import DocPrediction, ModelInput, TrainingOutput

# doc.user_data key of the per-head predictions the upstream leaves for its
# listeners; each head pops its own, so a fully processed doc carries none.
HEADS_KEY = ("spacy_early_exit", "heads")


class EarlyExitListener(Model):
    """A layer fed by an upstream `tokee_transformer`.

    upstream_name (str): the upstream component's name, or "*" for the
        nearest `tokee_transformer` before the listening component.
    """

    name = "early-exit-listener"

    def __init__(
        self, upstream_name: str, forward: Optional[Callable] = None, init: Optional[Callable] = None,
        dims: Optional[Dict[str, Optional[int]]] = None,
    ) -> None:
        # forward/init/dims: a subclass's own (the feature listener's).
        Model.__init__(self, name=self.name, forward=forward or head_forward, init=init, dims=dims or {})
        self.upstream_name = upstream_name
        # Set by the upstream when the pipeline links its components
        # (spaCy's Language._link_components calls its find_listeners).
        self.upstream: Any = None
        self.head_name: Optional[str] = None
        self._batch_id: Optional[int] = None
        self._outputs: Any = None
        self._backprop: Optional[Callable] = None

    @classmethod
    def get_batch_id(cls, inputs: Sequence[Doc]) -> int:
        """A content hash of a batch: which docs the received outputs belong to."""
        return sum(sum(token.orth for token in doc) for doc in inputs)

    def receive(self, batch_id: int, outputs: Any, backprop: Callable) -> None:
        """Store the upstream's training outputs for this head and the callback
        that takes this head's gradient back."""
        self._batch_id = batch_id
        self._outputs = outputs
        self._backprop = backprop

    def verify_inputs(self, inputs: Sequence[Doc]) -> bool:
        """Check that the received outputs are for this batch of docs."""
        if self._batch_id is None:
            raise ValueError(
                f"{self._who()} got no training outputs from its upstream tokee_transformer: it must "
                "be updated in the same nlp.update, before this component (not frozen)"
            )
        batch_id = self.get_batch_id(inputs)
        if batch_id != self._batch_id:
            raise ValueError(
                f"{self._who()} received outputs for another batch ({self._batch_id}) than the one "
                f"it is updated on ({batch_id}): update the upstream on the same examples first"
            )
        return True

    def _who(self) -> str:
        return f"Component '{self.head_name}'" if self.head_name else "An early-exit listener"


@registry.architectures("spacy-early-exit.EarlyExitListener.v1")
def build_early_exit_listener(upstream: str = "*") -> Model[ModelInput, Any]:
    """A task component's model that reads a shared `tokee_transformer`.

    upstream (str): the `tokee_transformer` component's name; "*" = the
        nearest one before the listening component.
    """
    if not isinstance(upstream, str) or not upstream:
        raise ValueError(f"'upstream' must be a component name or '*'; got {upstream!r}")
    return EarlyExitListener(upstream)


def is_listener(model: Any) -> bool:
    """Whether a component's model listens to a shared encoder."""
    return isinstance(model, EarlyExitListener)


def head_forward(model: EarlyExitListener, inputs: ModelInput, is_train: bool) -> Tuple[Any, Callable]:
    docs = ModelInput(*inputs).docs
    if is_train:
        model.verify_inputs(docs)
        return model._outputs, model._backprop
    return [take_over(doc, model) for doc in docs], _no_backprop


def _no_backprop(d_output: Any) -> None:
    raise ValueError("Prediction output has no backward pass")


def hand_over(doc: Doc, heads: Dict[str, Tuple[numpy.ndarray, numpy.ndarray]]) -> None:
    """Leave each head's prediction on the doc for its listener.

    heads (Dict[str, Tuple[numpy.ndarray, numpy.ndarray]]): head name ->
        (logits ``[n_tokens, n_classes]`` at each token's exit layer, exit
        layers ``[n_tokens]``). Plain arrays, so a doc with a head left
        unread (a disabled component) still serializes.
    """
    doc.user_data[HEADS_KEY] = dict(heads)


def take_over(doc: Doc, listener: EarlyExitListener) -> DocPrediction:
    """The listener's head's prediction for `doc`, taken off the doc.

    RETURNS (DocPrediction): logits and exit layers; FLOPs 0, since the
        upstream records what the shared encoder spent, once.
    """
    pending: Dict[str, Any] = doc.user_data.get(HEADS_KEY) or {}
    head = listener.head_name
    if head not in pending:
        upstream = listener.upstream.name if listener.upstream is not None else listener.upstream_name
        raise ValueError(
            f"Component '{head}' listens to '{upstream}', which has not processed this doc "
            f"({doc.text[:30]!r}): run the pipeline with '{upstream}' enabled, before '{head}'"
        )
    logits, exit_layers = pending.pop(head)
    if not pending:
        del doc.user_data[HEADS_KEY]
    if len(exit_layers) != len(doc):
        raise ValueError(
            f"Component '{head}': the doc was retokenized after the shared encoder ran "
            f"({len(exit_layers)} tokens then, {len(doc)} now); a listening segmenter must be the "
            "last component that listens to the tokee_transformer"
        )
    return DocPrediction(numpy.asarray(logits), numpy.asarray(exit_layers), 0, 0)


def head_predictions(
    prediction: DocPrediction, heads: List[Tuple[str, int, int]]
) -> Dict[str, Tuple[numpy.ndarray, numpy.ndarray]]:
    """Cut one doc's fused prediction into its heads' columns.

    heads (List[Tuple[str, int, int]]): (head name, start, stop) columns.
    """
    return {name: (prediction.logits[:, start:stop], prediction.exit_layers) for name, start, stop in heads}


def slice_output(output: TrainingOutput, start: int, stop: int) -> TrainingOutput:
    """One head's columns of a training pass's outputs (the rows stay shared)."""
    reference = output.reference_logits
    return TrainingOutput(
        output.layer_logits[..., start:stop],
        output.token_index,
        reference_logits=reference[..., start:stop] if reference is not None else None,
        exit_layers=output.exit_layers,
    )
