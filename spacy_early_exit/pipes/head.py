"""TaskHead: the part of a component that is a sequence-labeling task.

Labels, gold classes, the loss, annotations: everything a task component does
with its off-ramps' logits, whether it owns its encoder (a standalone
component, base.EarlyExitPipe) or reads a shared `tokee_transformer`
(listening.ListeningHead). The two differ only in the hooks listed on the
class; the task subclasses (ner.py, tagger.py, segmenter.py) say how labels
map to classes and how classes become annotations.
"""
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy
from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import Example, validate_examples, validate_get_examples
from thinc.api import Model, Optimizer

from ..encoder.losses import ramp_loss
from ..encoder.planner import TrainingSettings
from ..layers.types import DocPrediction, TrainingOutput
from .record import write_record
from .targets import gold_targets, labeled_rows, unaligned_tokens

# Above this share of predicted tokens that do not match exactly one gold
# token, initialize warns.
UNALIGNED_WARNING_SHARE = 0.5


class TaskHead:
    """Mixin for a task component over early-exit off-ramps.

    The concrete class provides `name`, `model`, `cfg`, `owns_encoder`,
    `record_name`, `num_layers`, `training`, `precision`, `_training_input`
    (the model input of a training pass) and the hooks below.
    """

    name: str
    model: Model
    cfg: Dict[str, Any]
    owns_encoder: bool
    _sizing = False  # True while initialize reads the labels
    training: TrainingSettings
    precision: str

    # -- labels: what task subclasses define ----------------------------------

    @property
    def labels(self) -> Tuple[str, ...]:
        return tuple(self.cfg["labels"])

    @property
    def class_names(self) -> List[str]:
        """The off-ramps' output classes, derived from `labels`."""
        raise NotImplementedError

    def labels_in(self, example: Example) -> Iterable[str]:
        """The labels an example's reference annotation uses."""
        raise NotImplementedError

    def gold_classes(self, example: Example) -> List[Optional[str]]:
        """One class name per predicted token; None where the gold is missing."""
        raise NotImplementedError

    def annotate(self, doc: Doc, classes: List[Optional[str]]) -> None:
        """Write predicted classes (None: token not scored) onto the doc."""
        raise NotImplementedError

    def row_fields(self) -> Dict[str, Callable[[Doc], Any]]:
        """The fields this component fills in ``annotate``'s output rows, each
        with the function that reads its JSON-ready value off a processed doc.
        Named before any doc is seen, so an engine fixes its columns up front.

        RETURNS (Dict[str, Callable[[Doc], Any]]): field name -> reader; none here.
        """
        return {}

    # -- hooks: owning an encoder or listening to one ---------------------------

    def _heads_ready(self) -> bool:
        """Whether the off-ramps are sized for the labels already."""
        raise NotImplementedError

    def _attach_encoder(self, get_examples: Callable[[], Iterable[Example]]) -> None:
        """Give the labels off-ramps: build the own encoder, or add this head to the shared one."""
        raise NotImplementedError

    def _initialize_from(self, path: str) -> None:
        raise NotImplementedError

    def _predict_docs(self, docs: List[Doc]) -> List[DocPrediction]:
        raise NotImplementedError

    def _full_depth(self, docs: Sequence[Doc], precision: str) -> TrainingOutput:
        """Every off-ramp's logits for this head at full depth, in inference mode."""
        raise NotImplementedError

    # -- the pipe API ----------------------------------------------------------

    def add_label(self, label: str) -> int:
        if not isinstance(label, str) or not label:
            raise ValueError(f"Labels must be non-empty strings; got {label!r}")
        if label in self.cfg["labels"]:
            return 0
        if self._heads_ready() and not self._sizing:
            raise ValueError(
                f"Cannot add label {label!r} to '{self.name}' after initialization: "
                "the off-ramps are already sized. Re-initialize with the full label set."
            )
        self.cfg["labels"] = sorted(self.cfg["labels"] + [label])
        return 1

    def initialize(
        self,
        get_examples: Callable[[], Iterable[Example]],
        *,
        nlp: Optional[Language] = None,
        labels: Optional[Sequence[str]] = None,
        init_from: Optional[str] = None,
    ) -> None:
        """Set up labels and weights.

        labels (Optional[Sequence[str]]): the label set; None = read it from the examples.
        init_from (Optional[str]): a trained pipeline whose component of the
            same name (or only early-exit component) provides labels and
            weights: how stage 2 starts from stage 1. (A sourced component
            would keep its source's config, so stage 2's `training` switch
            could not be set on it.)
        """
        validate_get_examples(get_examples, f"{type(self).__name__}.initialize")
        if init_from is not None:
            self._initialize_from(init_from)
            return
        found = set(labels) if labels is not None else set()
        if labels is None:
            for example in get_examples():
                found.update(self.labels_in(example))
        self.cfg["labels"] = []
        # The off-ramps are sized (again) below, so the labels may change here.
        self._sizing = True
        try:
            for label in sorted(found):
                self.add_label(label)
        finally:
            self._sizing = False
        if not self.cfg["labels"]:
            raise ValueError(
                f"Component '{self.name}' found no labels in the training examples; "
                "pass labels=[...] or check the training data"
            )
        self._warn_if_unaligned(get_examples())
        self._attach_encoder(get_examples)

    def _warn_if_unaligned(self, examples: Iterable[Example]) -> None:
        """Warn when most predicted tokens do not match exactly one gold token:
        the pipeline's tokenizer does not fit the annotation (e.g. a corpus
        annotated per character, tokenized by spaCy's rule tokenizer into one
        token per unspaced sentence). spaCy then drops the gold spans that no
        longer align, and training would learn from almost nothing."""
        off, total = unaligned_tokens(examples)
        if total and off / total > UNALIGNED_WARNING_SHARE:
            warnings.warn(
                f"[{self.name}] {off} of {total} predicted tokens ({off / total:.0%}) do not match "
                "exactly one gold token, so their gold annotation is lost. For text annotated "
                "per character, use the character tokenizer "
                '([nlp.tokenizer] @tokenizers = "spacy-early-exit.CharacterTokenizer.v1").'
            )

    def predict(self, docs: Iterable[Doc]) -> List[DocPrediction]:
        docs = list(docs)
        if not docs:
            return []
        return self._predict_docs(docs)

    def set_annotations(self, docs: Iterable[Doc], predictions: List[DocPrediction]) -> None:
        names = self.class_names
        for doc, pred in zip(docs, predictions):
            best = pred.logits.argmax(axis=-1).tolist() if len(pred.logits) else []
            scored = (pred.exit_layers > 0).tolist()
            self.annotate(doc, [names[c] if ok else None for c, ok in zip(best, scored)])
            if self.owns_encoder:
                # A listening head's costs are in its upstream's record, once.
                write_record(doc, self.name, pred)

    def update(
        self,
        examples: Iterable[Example],
        *,
        drop: float = 0.0,
        sgd: Optional[Optimizer] = None,
        losses: Optional[Dict[str, float]] = None,
    ) -> Dict[str, float]:
        """Every off-ramp at once, layer l weighted by l (stage 2: at the planned exits)."""
        if losses is None:
            losses = {}
        losses.setdefault(self.name, 0.0)
        examples = list(examples)
        validate_examples(examples, f"{type(self).__name__}.update")
        if not examples:
            return losses
        docs = [eg.predicted for eg in examples]
        output, backprop = self.model.begin_update(self._training_input(docs))
        loss, d_logits = self.get_loss(examples, output)
        # A listening head always hands its gradient back, even an empty one:
        # the shared encoder's last listener runs the backward pass for all.
        if output.layer_logits.size or not self.owns_encoder:
            backprop(d_logits)
            if sgd is not None:
                self.finish_update(sgd)  # type: ignore[attr-defined]  # TrainablePipe's
        losses[self.name] += loss
        return losses

    def get_loss(self, examples: Iterable[Example], output: TrainingOutput) -> Tuple[float, Any]:
        """Weighted cross-entropy over all layers, sum_l l * CE_l / sum_l l (or
        stage 2's flooding), plus self-distillation when its weight is set
        (see encoder/losses.py)."""
        ops = self.model.ops
        logits = ops.to_numpy(output.layer_logits)
        n_words = logits.shape[1]
        class_ids = {name: i for i, name in enumerate(self.class_names)}
        targets, unknown = gold_targets(list(examples), output.token_index, n_words, class_ids, self.gold_classes)
        if unknown:
            warnings.warn(
                f"[{self.name}] training data uses classes the component was not "
                f"initialized with: {sorted(unknown)}; those tokens are ignored. "
                "Re-run initialize on data that contains every label."
            )
        valid = targets >= 0
        d_logits = numpy.zeros_like(logits)
        if n_words == 0 or not valid.any():
            return 0.0, ops.asarray(d_logits)
        settings = self.training
        reference = output.reference_logits[:, valid] if output.reference_logits is not None else None
        loss, d_valid = ramp_loss(
            logits[:, valid], targets[valid], settings.loss, reference,
            settings.distill_weight, settings.distill_temperature,
        )
        d_logits[:, valid] = d_valid
        return loss, ops.asarray(d_logits)

    def layer_logits(
        self, examples: Iterable[Example], batch_size: int = 64, precision: Optional[str] = None
    ) -> Tuple[numpy.ndarray, numpy.ndarray]:
        """Every off-ramp's logits at full depth for the gold-labeled tokens.

        The input of calibration (temperatures are fitted on these) and of
        threshold studies that need no re-run per setting.
        precision (Optional[str]): the layer stack's precision; None = the pipe's.
        RETURNS (Tuple[numpy.ndarray, numpy.ndarray]): logits
            ``[n_layers, n_tokens, n_classes]`` and gold class ids ``[n_tokens]``.
        """
        class_ids = {name: i for i, name in enumerate(self.class_names)}
        examples = list(examples)
        all_logits: List[numpy.ndarray] = []
        all_gold: List[int] = []
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            output = self._full_depth([eg.predicted for eg in chunk], precision or self.precision)
            logits, gold = labeled_rows(
                self.model.ops.to_numpy(output.layer_logits), chunk, output.token_index, class_ids, self.gold_classes
            )
            all_logits.extend(logits)
            all_gold.extend(gold)
        n_layers = self.num_layers  # type: ignore[attr-defined]
        if not all_logits:
            return numpy.zeros((n_layers, 0, len(self.class_names)), dtype="float32"), numpy.zeros(0, dtype="int64")
        return numpy.stack(all_logits, axis=1), numpy.asarray(all_gold, dtype="int64")
