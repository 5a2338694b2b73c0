"""The feature listener: spaCy's own components on the shared early-exit encoder.

`spacy-early-exit.EarlyExitTok2VecListener.v1` is a `List[Doc] ->
List[Floats2d]` layer, the shape of spaCy's `Tok2VecListener`, so it can be the
`tok2vec` of spaCy's `parser`, `ner`, `spancat`, `textcat` or `tagger`. It
gives each token the hidden state of its first wordpiece at the token's exit
layer in a `tokee_transformer` earlier in the pipeline. The exits are decided
by the sequence-labeling heads that listen to the same encoder (a feature
listener has no off-ramps, so it cannot say when a token is done); what a
token's features are worth to, say, a parser after an early exit is for the
user to measure (benchmarks/parser_on_exits.py).

- Training: the upstream's `update` runs the forward pass once and hands this
  layer the word states (`receive`); its backprop adds the component's
  gradient to the shared encoder's (the last receiver runs the backward pass).
- Prediction: the upstream writes the states to `doc.tensor`, as spaCy's
  `tok2vec` does, since each component may batch the docs differently.
"""
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Model
from thinc.types import Floats2d

from .listener import EarlyExitListener
from .types import TrainingOutput


class EarlyExitTok2VecListener(EarlyExitListener):
    """A feature layer fed by an upstream `tokee_transformer`.

    upstream_name (str): the upstream component's name, or "*" for the
        nearest `tokee_transformer` before the listening component.
    width (Optional[int]): the features' width; None = the upstream
        backbone's hidden size, known once the upstream is initialized.
    """

    name = "early-exit-tok2vec-listener"

    def __init__(self, upstream_name: str, width: Optional[int] = None) -> None:
        EarlyExitListener.__init__(self, upstream_name, forward=tok2vec_forward, init=tok2vec_init, dims={"nO": width})
        # The batch that thinc's chain is sizing the next layer with (see tok2vec_init).
        self._sizing_batch: Optional[int] = None

    def _who(self) -> str:
        # head_name: the listening component's name, set when the pipeline links it.
        return f"Component '{self.head_name}'" if self.head_name else "An early-exit tok2vec listener"


@registry.architectures("spacy-early-exit.EarlyExitTok2VecListener.v1")
def build_early_exit_tok2vec_listener(upstream: str = "*", width: Optional[int] = None) -> Model[List[Doc], List[Floats2d]]:
    """Token features from a shared `tokee_transformer`: each token's hidden
    state at its exit layer, for spaCy's own components.

    upstream (str): the `tokee_transformer` component's name; "*" = the
        nearest one before the listening component.
    width (Optional[int]): the hidden size; None = the upstream backbone's.
    """
    if not isinstance(upstream, str) or not upstream:
        raise ValueError(f"'upstream' must be a component name or '*'; got {upstream!r}")
    if width is not None and (not isinstance(width, int) or width < 1):
        raise ValueError(f"'width' must be a positive integer or null; got {width!r}")
    return EarlyExitTok2VecListener(upstream, width)


def is_tok2vec_listener(model: Any) -> bool:
    """Whether a layer reads features (not off-ramps) from a shared encoder."""
    return isinstance(model, EarlyExitTok2VecListener)


def tok2vec_init(model: EarlyExitTok2VecListener, X: Optional[Sequence[Doc]] = None, Y: Any = None) -> None:
    if not model.has_dim("nO"):
        width = _upstream_width(model)
        if width is None:
            raise ValueError(
                f"{model._who()}: the width of its features is unknown: initialize the upstream "
                "tokee_transformer first (it must come earlier in the pipeline), or set 'width'"
            )
        model.set_dim("nO", width)
    # Thinc's chain sizes the next layer by predicting on the sample right
    # after this init: those docs have not been through the upstream yet.
    model._sizing_batch = id(X) if X is not None else None


def _upstream_width(model: EarlyExitTok2VecListener) -> Optional[int]:
    encoder = model.upstream._shim.encoder if model.upstream is not None else None
    return None if encoder is None else int(encoder.spec.hidden_size)


def tok2vec_forward(model: EarlyExitTok2VecListener, docs: List[Doc], is_train: bool) -> Tuple[List[Floats2d], Callable]:
    if is_train:
        model.verify_inputs(docs)
        output: TrainingOutput = model._outputs
        return _doc_states(model, docs, output), _backprop_states(model, output)
    width = model.get_dim("nO")
    if model._sizing_batch == id(docs):
        model._sizing_batch = None
        return [model.ops.alloc2f(len(doc), width) for doc in docs], _no_backprop
    return [_doc_tensor(model, doc, width) for doc in docs], _no_backprop


def _doc_states(model: EarlyExitTok2VecListener, docs: Sequence[Doc], output: TrainingOutput) -> List[Floats2d]:
    """Each doc's token states from the batch's word states (zeros for a token without wordpieces)."""
    states = output.word_states
    xp = model.ops.xp
    result = []
    for doc, index in zip(docs, output.token_index):
        scored = index >= 0
        features = model.ops.alloc2f(len(doc), states.shape[1])
        features[xp.asarray(scored)] = states[xp.asarray(index[scored])]
        result.append(features)
    return result


def _backprop_states(model: EarlyExitTok2VecListener, output: TrainingOutput) -> Callable[[List[Floats2d]], List[Doc]]:
    def backprop(d_features: List[Floats2d]) -> List[Doc]:
        d_states = model.ops.alloc2f(*output.word_states.shape)
        for d_doc, index in zip(d_features, output.token_index):
            scored = index >= 0
            # A piece shared by two tokens is one row: its gradients add up.
            model.ops.xp.add.at(d_states, model.ops.xp.asarray(index[scored]), d_doc[scored])
        assert model._backprop is not None
        model._backprop(d_states)
        return []

    return backprop


def _doc_tensor(model: EarlyExitTok2VecListener, doc: Doc, width: int) -> Floats2d:
    tensor = doc.tensor
    if tensor is None or tensor.size == 0:
        if len(doc) == 0:
            return model.ops.alloc2f(0, width)
        upstream = model.upstream.name if model.upstream is not None else model.upstream_name
        raise ValueError(
            f"{model._who()} listens to '{upstream}', which has not processed this doc "
            f"({doc.text[:30]!r}): run the pipeline with '{upstream}' enabled, before it"
        )
    if tensor.shape != (len(doc), width):
        raise ValueError(
            f"{model._who()}: doc.tensor has shape {tuple(tensor.shape)}, expected ({len(doc)}, {width}): "
            "a component between the tokee_transformer and this one changed the tokens or doc.tensor"
        )
    return model.ops.asarray2f(numpy.asarray(tensor, dtype="float32"))


def _no_backprop(d_output: Any) -> None:
    raise ValueError("Prediction output has no backward pass")
