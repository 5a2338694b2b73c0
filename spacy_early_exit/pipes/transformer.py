"""tokee_transformer: one early-exit encoder shared by several task heads.

Like spaCy's `tok2vec` with its listeners: the task components (`tokee_ner`,
`tokee_tagger`, `tokee_segmenter`) take
``model = {"@architectures": "spacy-early-exit.EarlyExitListener.v1"}`` and
read this component instead of owning an encoder. It holds the backbone, the
exit setting and the per-layer off-ramps of every head (one fused Linear per
layer; each head owns a slice of its columns, added when the head learns its
labels at initialize). A token halts when every head is confident (the max
over heads of the temperature-scaled uncertainty, encoder/exits.py). The
component writes one ``doc._.early_exit[name]`` record for the shared
encoder; the heads write none. spaCy's own components (parser, ner, ...) can
listen too, through `spacy-early-exit.EarlyExitTok2VecListener.v1`: they read
each token's hidden state at its exit layer (in `doc.tensor` at prediction)
and add no off-ramps, so the exits stay the heads' decision.
"""
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.tokens import Doc
from spacy.training import Example, validate_examples, validate_get_examples
from spacy.vocab import Vocab
from thinc.api import Model, Optimizer

from ..layers.architecture import full_depth_logits
from ..layers.listener import EarlyExitListener, hand_over, head_predictions, slice_output
from ..layers.tok2vec_listener import is_tok2vec_listener
from ..layers.types import DocPrediction, TrainingOutput
from .head_temperatures import HeadTemperatures, split_temperatures
from .owner import EncoderOwner
from .persistence import CheckedLoading
from .record import write_record
from .settings import ExitMode, Precision, Temperature, Threshold, Window, component_defaults, component_fields


class EarlyExitTransformer(HeadTemperatures, EncoderOwner, CheckedLoading, TrainablePipe):
    """The shared early-exit encoder; the exit fields are those of `EarlyExitPipe`,
    except `temperatures`: per head, ``{head_name: [T_1..T_L]}``, or one
    per-layer list for every head, or None.
    """

    def __init__(self, vocab: Vocab, model: Model, name: str, *, temperatures: Any = None, **fields: Any) -> None:
        self.vocab = vocab
        self.model = model
        self.name = name
        # (head name, its class names) in the fused off-ramps' column order.
        self.cfg: Dict[str, Any] = {"heads": []}
        self.listener_map: Dict[str, List[EarlyExitListener]] = {}
        # A training batch waiting for its heads' gradients: what completes it,
        # and the optimizer nlp.update handed over in the meantime.
        self._pending: Optional[Callable[[], None]] = None
        self._deferred_sgd: Optional[Optimizer] = None
        flat, per_head = split_temperatures(temperatures)
        self._init_owner(temperatures=flat, **fields)
        self._head_temperatures = per_head

    # -- listeners, the spaCy way (see spacy/pipeline/tok2vec.py) --------------

    @property
    def listeners(self) -> List[EarlyExitListener]:
        return [m for c in self.listening_components for m in self.listener_map[c]]

    @property
    def listening_components(self) -> List[str]:
        return list(self.listener_map.keys())

    def add_listener(self, listener: EarlyExitListener, component_name: str) -> None:
        previous = listener.upstream
        if previous is not None and previous is not self and listener.upstream_name == "*":
            # "*" means the nearest upstream: pipelines link in order, so a
            # later tokee_transformer takes the listener over.
            previous.remove_listener(listener, component_name)
        self.listener_map.setdefault(component_name, [])
        if listener not in self.listener_map[component_name]:
            self.listener_map[component_name].append(listener)
        listener.upstream = self
        listener.head_name = component_name

    def remove_listener(self, listener: EarlyExitListener, component_name: str) -> bool:
        if listener in self.listener_map.get(component_name, []):
            self.listener_map[component_name].remove(listener)
            if not self.listener_map[component_name]:
                del self.listener_map[component_name]
            return True
        return False

    def find_listeners(self, component: Any) -> None:
        """Register the listener layers of a later component that name this one (or "*")."""
        names = ("*", self.name)
        if isinstance(getattr(component, "model", None), Model):
            for node in component.model.walk():
                if isinstance(node, EarlyExitListener) and node.upstream_name in names:
                    self.add_listener(node, component.name)

    @property
    def feature_listeners(self) -> List[EarlyExitListener]:
        """The listeners that read hidden states (spaCy's own components), not off-ramps."""
        return [m for m in self.listeners if is_tok2vec_listener(m)]

    # -- heads -----------------------------------------------------------------

    @property
    def head_names(self) -> List[str]:
        return [name for name, _ in self.cfg["heads"]]

    def head_columns(self, name: str) -> Tuple[int, int]:
        """The (start, stop) columns of head `name` in the fused off-ramps."""
        if name not in self.head_names:
            raise ValueError(f"'{name}' is not a head of '{self.name}' (heads: {self.head_names}); initialize it")
        return self._shim.encoder.head_columns(self.head_names.index(name))

    def add_head(self, name: str, class_names: Sequence[str]) -> None:
        """Give head `name` off-ramp columns for `class_names`: kept when the
        head already has exactly these classes (stage 2 from stage 1's
        weights), fresh otherwise; other heads keep theirs."""
        encoder = self._shim.encoder
        if encoder is None:
            raise ValueError(
                f"'{name}' cannot add its off-ramps: '{self.name}' is not initialized "
                "(it must come before its listeners in the pipeline)"
            )
        classes = list(class_names)
        names = self.head_names
        index = names.index(name) if name in names else len(names)
        if index < len(names) and list(self.cfg["heads"][index][1]) == classes:
            return
        encoder.set_head(index, len(classes))
        self.cfg["heads"][index:index + 1] = [[name, classes]]
        self._planner = None
        self.set_policy(self._policy)

    def _drop_heads_not_listening(self) -> None:
        """After `init_from`: heads of the source pipeline not in this one go."""
        for name in [n for n in self.head_names if n not in self.listener_map]:
            index = self.head_names.index(name)
            self._shim.encoder.remove_head(index)
            del self.cfg["heads"][index]

    def head_logits(self, name: str, docs: Sequence[Doc], precision: str) -> TrainingOutput:
        """Head `name`'s columns of every off-ramp at full depth (calibration's input)."""
        start, stop = self.head_columns(name)
        return slice_output(full_depth_logits(self.model, docs, precision), start, stop)

    # -- the pipe API ----------------------------------------------------------

    def initialize(
        self,
        get_examples: Callable[[], Iterable[Example]],
        *,
        nlp: Optional[Language] = None,
        init_from: Optional[str] = None,
    ) -> None:
        """Load the backbone with no heads yet: each listening component adds
        its off-ramps in its own initialize, once it knows its labels.

        init_from (Optional[str]): a trained pipeline whose tokee_transformer
            (of this name, or the only one) provides the backbone and the
            heads' off-ramps: how stage 2 starts from stage 1.
        """
        validate_get_examples(get_examples, f"{type(self).__name__}.initialize")
        if init_from is not None:
            self._initialize_from(init_from)
            return
        self.cfg["heads"] = []
        self.model.attrs["head_sizes"] = []
        self._build_encoder(get_examples)

    def _initialize_from(self, path: str) -> None:
        import spacy

        source = spacy.load(path)
        found = [p for n, p in source.pipeline if isinstance(p, EarlyExitTransformer) and n == self.name]
        found = found or [p for _, p in source.pipeline if isinstance(p, EarlyExitTransformer)]
        if len(found) != 1:
            raise ValueError(
                f"init_from {path!r}: expected one tokee_transformer (named '{self.name}' or the only one); "
                f"found {source.pipe_names}"
            )
        self.from_bytes(found[0].to_bytes(exclude=["vocab"]), exclude=["vocab"])
        self._drop_heads_not_listening()
        self._planner = None

    def predict(self, docs: Iterable[Doc]) -> List[DocPrediction]:
        docs = list(docs)
        if not docs:
            return []
        self.check_temperature_names()
        self._check_has_heads()
        return self._run_encoder(docs, word_states=bool(self.feature_listeners))

    def _check_has_heads(self) -> None:
        """The exits are the heads' decision: features alone cannot make one."""
        if not self.head_names and self.feature_listeners:
            raise ValueError(
                f"Component '{self.name}' has no early-exit head to decide when tokens exit: "
                f"{self.listening_components} only read its features. Add a tokee_ner, tokee_tagger or "
                "tokee_segmenter with model spacy-early-exit.EarlyExitListener.v1"
            )

    def set_annotations(self, docs: Iterable[Doc], predictions: List[DocPrediction]) -> None:
        heads = [(name, *self.head_columns(name)) for name in self.head_names if name in self.listener_map]
        for doc, pred in zip(docs, predictions):
            write_record(doc, self.name, pred)
            hand_over(doc, head_predictions(pred, heads))
            if pred.states is not None:
                # Where spaCy's tok2vec leaves its output for its listeners.
                doc.tensor = pred.states

    def update(
        self,
        examples: Iterable[Example],
        *,
        drop: float = 0.0,
        sgd: Optional[Optimizer] = None,
        losses: Optional[Dict[str, float]] = None,
    ) -> Dict[str, float]:
        """One forward pass for every head; each listening head's `update`
        then takes its slice and hands its gradient back (`_send`)."""
        if losses is None:
            losses = {}
        losses.setdefault(self.name, 0.0)
        examples = list(examples)
        validate_examples(examples, f"{type(self).__name__}.update")
        self._flush()
        if not examples or not self.listener_map:
            return losses
        self._check_has_heads()
        docs = [eg.predicted for eg in examples]
        features = bool(self.feature_listeners)
        training_input = self._training_input(docs)._replace(word_states=features)
        output, backprop = self.model.begin_update(training_input)
        self._send(docs, output, backprop, sgd)
        return losses

    def _send(self, docs: List[Doc], output: TrainingOutput, backprop: Callable, sgd: Optional[Optimizer]) -> None:
        """Hand each head listener its columns, and each feature listener the
        word states, with a callback that adds its gradient to the shared one;
        the last listener's callback runs the backward pass and the optimizer
        step (as spaCy's Tok2Vec)."""
        ops = self.model.ops
        d_total = ops.xp.zeros_like(output.layer_logits)
        states = output.word_states
        d_states = ops.xp.zeros_like(states) if states is not None else None
        batch_id = EarlyExitListener.get_batch_id(docs)
        receivers = [(name, listener) for name in self.listening_components for listener in self.listener_map[name]]

        def complete() -> None:
            self._pending = None
            step, self._deferred_sgd = (sgd if sgd is not None else self._deferred_sgd), None
            if d_states is not None:
                backprop((d_total, d_states))
            elif d_total.size:
                backprop(d_total)
            if step is not None:
                TrainablePipe.finish_update(self, step)

        def callback(target: Any, last: bool) -> Callable[[Any], None]:
            # target: the listener's part of the shared gradient (a view).
            def accumulate(d_part: Any) -> None:
                target[...] += ops.asarray(d_part)
                if last:
                    complete()

            return accumulate

        self._pending = complete
        for i, (name, listener) in enumerate(receivers):
            last = i == len(receivers) - 1
            if is_tok2vec_listener(listener):
                listener.receive(batch_id, output, callback(d_states, last))
                continue
            start, stop = self.head_columns(name)
            listener.receive(batch_id, slice_output(output, start, stop), callback(d_total[..., start:stop], last))

    def finish_update(self, sgd: Optimizer) -> None:
        """Step the shared weights. `nlp.update` calls this right after this
        component's `update`, before its heads have handed their gradients
        back: the step then waits for the last head, so that it applies this
        batch's gradients (spaCy's Tok2Vec would apply them a batch late)."""
        if self._pending is not None:
            self._deferred_sgd = sgd
            return
        super().finish_update(sgd)

    def _flush(self) -> None:
        """Finish a batch whose last listener never handed its gradient back
        (its component was left out of the update): step on what came."""
        if self._pending is not None:
            self._pending()

    def _check_loaded(self) -> None:
        encoder = self._shim.encoder
        if encoder is None:
            return
        saved = tuple(len(classes) for _, classes in self.cfg["heads"])
        if encoder.head_sizes != saved:
            raise ValueError(
                f"Component '{self.name}': the saved off-ramps have head sizes {encoder.head_sizes} but "
                f"its heads {self.cfg['heads']} need {saved}; the pipeline folder is inconsistent"
            )
        self.set_policy(self._policy)


@Language.factory(
    "tokee_transformer",
    assigns=["doc._.early_exit"],
    default_config=component_defaults(),
)
def make_tokee_transformer(
    nlp: Language,
    name: str,
    model: Model,
    exit_mode: ExitMode,
    threshold: Threshold,
    window: Window,
    thresholds: Optional[List[Threshold]],
    temperatures: Optional[Union[Dict[str, List[Temperature]], List[Temperature]]],
    precision: Precision,
    fine_tuning: Dict[str, Any],
    training: Dict[str, Any],
    memory: Dict[str, Any],
) -> EarlyExitTransformer:
    """Create a `tokee_transformer` component: the shared encoder of the task
    components whose model is `spacy-early-exit.EarlyExitListener.v1`.

    temperatures: per head ``{head_name: [T_1..T_L]}``, or one list for every head.
    The other fields are the exit fields and blocks of `tokee_ner` (see docs/configuration.md).
    """
    return EarlyExitTransformer(nlp.vocab, model, name, **component_fields(locals()))
