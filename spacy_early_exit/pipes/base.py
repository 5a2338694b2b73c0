"""EarlyExitPipe: the spaCy component shared by NER, tagging and segmentation.

Subclasses say only how labels map to output classes and how predicted classes
become annotations; the encoder, the exit settings (exit_fields.py), the
stage-1 loss and the ``doc._.early_exit`` record (record.py) live here once.
"""
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.tokens import Doc
from spacy.training import Example, validate_examples, validate_get_examples
from spacy.vocab import Vocab
from thinc.api import Model, Optimizer

from ..encoder.exits import ExitPolicy
from ..encoder.losses import ramp_loss
from ..encoder.planner import ExitPlanner, TrainingSettings
from ..layers.architecture import full_depth_logits, get_shim
from ..layers.shim import EarlyExitShim
from ..layers.types import DocPrediction, ModelInput, TrainingOutput
from ..memory import HeapTrimmer
from .exit_fields import ExitSettings
from .persistence import CheckedLoading
from .record import EXTENSION, write_record
from .settings import DEFAULT_MODEL_CONFIG, EXIT_DEFAULTS, FineTuning, MemorySettings, component_defaults, component_fields
from .targets import gold_targets, labeled_rows, unaligned_tokens

__all__ = ["EXTENSION", "DEFAULT_MODEL_CONFIG", "EXIT_DEFAULTS", "EarlyExitPipe", "component_defaults", "component_fields"]

# Above this share of predicted tokens that do not match exactly one gold
# token, initialize warns.
UNALIGNED_WARNING_SHARE = 0.5


class EarlyExitPipe(ExitSettings, CheckedLoading, TrainablePipe):
    """A trainable component whose model exits tokens early.

    vocab (Vocab): the shared vocab.
    model (Model): a `spacy-early-exit.EarlyExitTransformer.v1` model.
    name (str): the component name (also the key in ``doc._.early_exit``).
    exit_mode (str): "tokee", "sentee" or "off".
    threshold (float): exit when the (window) normalized entropy is below it.
    window (int): TOKEE's k: a token exits when the max uncertainty of the
        tokens within +-k is below the threshold.
    thresholds (Optional[List[float]]): one threshold per layer (overrides `threshold`).
    temperatures (Optional[List[float]]): one calibration temperature per layer.
    precision (str): what the encoder layers compute in at prediction: "fp32",
        "bf16" or "int8" (encoder/precision.py). Training and saved weights
        are fp32 whatever it is, so switching back is lossless.
    fine_tuning (Optional[Dict[str, Any]]): the `fine_tuning` block: learning
        rates, warm-up, vocabulary extension (see settings.FineTuning).
    training (Optional[Dict[str, Any]]): the `training` block: stage 1
        ("joint") or stage 2 ("self_sampling", "random"); see TrainingSettings.
    memory (Optional[Dict[str, Any]]): the `memory` block (settings.MemorySettings).
    scorer (Optional[Callable]): the scoring method.
    """

    def __init__(
        self,
        vocab: Vocab,
        model: Model,
        name: str,
        *,
        exit_mode: str = "tokee",
        threshold: float = 0.1,
        window: int = 2,
        thresholds: Optional[List[float]] = None,
        temperatures: Optional[List[float]] = None,
        precision: str = "fp32",
        fine_tuning: Optional[Dict[str, Any]] = None,
        training: Optional[Dict[str, Any]] = None,
        memory: Optional[Dict[str, Any]] = None,
        scorer: Optional[Callable] = None,
    ) -> None:
        self.vocab = vocab
        self.model = model
        self.name = name
        self.scorer = scorer
        self.cfg: Dict[str, Any] = {"labels": []}
        self._policy = ExitPolicy(
            mode=exit_mode,
            threshold=threshold,
            window=window,
            thresholds=thresholds,
            temperatures=temperatures,
            precision=precision,
        )
        self.fine_tuning = FineTuning.from_config(fine_tuning)
        self.training = TrainingSettings.from_config(training)
        self.memory = MemorySettings.from_config(memory)
        self._shim.rates = self.fine_tuning.rates
        self.heap_trimmer = HeapTrimmer(self.memory.heap_trim_interval)
        self._planner: Optional[ExitPlanner] = None  # stage 2: made at the first update

    @property
    def _shim(self) -> EarlyExitShim:
        return get_shim(self.model)

    @property
    def encoder_depth(self) -> Optional[int]:
        """The encoder's layer count; None before initialization."""
        encoder = self._shim.encoder
        return None if encoder is None else encoder.num_layers

    @property
    def num_layers(self) -> int:
        depth = self.encoder_depth
        if depth is None:
            raise ValueError(f"Component '{self.name}' is not initialized")
        return depth

    # -- labels: what subclasses define ---------------------------------------

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

    # -- the pipe API ----------------------------------------------------------

    def add_label(self, label: str) -> int:
        if not isinstance(label, str) or not label:
            raise ValueError(f"Labels must be non-empty strings; got {label!r}")
        if label in self.cfg["labels"]:
            return 0
        if self.encoder_depth is not None:
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
        for label in sorted(found):
            self.add_label(label)
        if not self.cfg["labels"]:
            raise ValueError(
                f"Component '{self.name}' found no labels in the training examples; "
                "pass labels=[...] or check the training data"
            )
        self._warn_if_unaligned(get_examples())
        self.model.attrs["n_classes"] = len(self.class_names)
        self.model.initialize()
        if self.fine_tuning.extend_vocab:
            added = self._shim.extend_vocabulary(eg.reference.text for eg in get_examples())
            print(
                f"[{self.name}] extend_vocab: added {len(added)} characters to the backbone's "
                "vocabulary; their embeddings are learned in fine-tuning"
            )
        self.set_policy(self._policy)
        self._planner = None

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

    def _initialize_from(self, path: str) -> None:
        import spacy

        source = spacy.load(path)
        candidates = [p for n, p in source.pipeline if isinstance(p, type(self)) and n == self.name]
        candidates = candidates or [p for _, p in source.pipeline if isinstance(p, type(self))]
        if len(candidates) != 1:
            raise ValueError(
                f"init_from {path!r}: expected one {type(self).__name__} component "
                f"(named '{self.name}' or the only one); found {source.pipe_names}"
            )
        self.from_bytes(candidates[0].to_bytes(exclude=["vocab"]), exclude=["vocab"])
        self._planner = None

    def predict(self, docs: Iterable[Doc]) -> List[DocPrediction]:
        docs = list(docs)
        if not docs:
            return []
        predictions = self.model.predict(ModelInput(docs, self._policy))
        self.heap_trimmer.count(len(docs))
        return predictions

    def set_annotations(self, docs: Iterable[Doc], predictions: List[DocPrediction]) -> None:
        names = self.class_names
        for doc, pred in zip(docs, predictions):
            best = pred.logits.argmax(axis=-1).tolist() if len(pred.logits) else []
            scored = (pred.exit_layers > 0).tolist()
            self.annotate(doc, [names[c] if ok else None for c, ok in zip(best, scored)])
            write_record(doc, self.name, pred)

    def update(
        self,
        examples: Iterable[Example],
        *,
        drop: float = 0.0,
        sgd: Optional[Optimizer] = None,
        losses: Optional[Dict[str, float]] = None,
    ) -> Dict[str, float]:
        """Stage-1 update: every off-ramp at once, layer l weighted by l."""
        if losses is None:
            losses = {}
        losses.setdefault(self.name, 0.0)
        examples = list(examples)
        validate_examples(examples, f"{type(self).__name__}.update")
        if not examples:
            return losses
        docs = [eg.predicted for eg in examples]
        output, backprop = self.model.begin_update(ModelInput(docs, planner=self._exit_planner()))
        loss, d_logits = self.get_loss(examples, output)
        if output.layer_logits.size:
            backprop(d_logits)
            if sgd is not None:
                self.finish_update(sgd)
        losses[self.name] += loss
        return losses

    def _exit_planner(self) -> Optional[ExitPlanner]:
        """Stage 2's planner, holding a frozen copy of the weights at its first update."""
        if self.training.mode == "joint":
            return None
        if self._planner is None or self._planner.settings != self.training:
            self._planner = ExitPlanner.from_current(self.training, self._shim.encoder)
        return self._planner

    def get_loss(self, examples: Iterable[Example], output: TrainingOutput) -> Tuple[float, Any]:
        """Weighted cross-entropy over all layers, sum_l l * CE_l / sum_l l (or
        stage 2's flooding), plus self-distillation when its weight is set
        (see encoder/losses.py)."""
        ops = self.model.ops
        logits = ops.to_numpy(output.layer_logits)
        n_words = logits.shape[1]
        class_ids = {name: i for i, name in enumerate(self.class_names)}
        targets, unknown = gold_targets(examples, output.token_index, n_words, class_ids, self.gold_classes)
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
            output = full_depth_logits(self.model, [eg.predicted for eg in chunk], precision or self.precision)
            logits, gold = labeled_rows(
                self.model.ops.to_numpy(output.layer_logits), chunk, output.token_index, class_ids, self.gold_classes
            )
            all_logits.extend(logits)
            all_gold.extend(gold)
        n_layers = self.num_layers
        if not all_logits:
            return numpy.zeros((n_layers, 0, len(self.class_names)), dtype="float32"), numpy.zeros(0, dtype="int64")
        return numpy.stack(all_logits, axis=1), numpy.asarray(all_gold, dtype="int64")
