"""EarlyExitPipe: a standalone task component, which owns its encoder.

It is both halves of the design: an `EncoderOwner` (owner.py: the encoder,
the exit settings, the training blocks) and a `TaskHead` (head.py: labels,
loss, annotations). `tokee_transformer` (transformer.py) is an owner only,
and a component that listens to it is a head only (listening.py). Task
subclasses say only how labels map to output classes and how predicted
classes become annotations.
"""
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from spacy.pipeline import TrainablePipe
from spacy.tokens import Doc
from spacy.training import Example
from spacy.vocab import Vocab
from thinc.api import Model

from ..layers.architecture import full_depth_logits
from ..layers.types import DocPrediction, TrainingOutput
from .head import TaskHead
from .owner import EncoderOwner
from .persistence import CheckedLoading
from .record import EXTENSION
from .settings import DEFAULT_MODEL_CONFIG, EXIT_DEFAULTS, component_defaults, component_fields

__all__ = [
    "EXTENSION", "DEFAULT_MODEL_CONFIG", "EXIT_DEFAULTS", "EarlyExitPipe", "EncoderOwner", "TaskHead",
    "component_defaults", "component_fields",
]


class EarlyExitPipe(TaskHead, EncoderOwner, CheckedLoading, TrainablePipe):
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
        "bf16", "int8" or "int8-ort" (encoder/precision.py). Training and saved weights
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
        self._init_owner(
            exit_mode=exit_mode, threshold=threshold, window=window, thresholds=thresholds,
            temperatures=temperatures, precision=precision,
            fine_tuning=fine_tuning, training=training, memory=memory,
        )

    # -- TaskHead's hooks: the head's off-ramps are the own encoder's ---------

    def _heads_ready(self) -> bool:
        return self.encoder_depth is not None

    def _attach_encoder(self, get_examples: Callable[[], Iterable[Example]]) -> None:
        self.model.attrs["n_classes"] = len(self.class_names)
        self._build_encoder(get_examples)

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

    def _predict_docs(self, docs: List[Doc]) -> List[DocPrediction]:
        return self._run_encoder(docs)

    def _full_depth(self, docs: Sequence[Doc], precision: str) -> TrainingOutput:
        return full_depth_logits(self.model, docs, precision)
