"""EncoderOwner: the part of a component that owns an early-exit encoder.

A standalone task component (tokee_ner, tokee_tagger, tokee_segmenter) owns
its encoder and is a task head at once; `tokee_transformer` owns one encoder
and serves the heads that listen to it. What owning means is the same for
both and lives here once: the exit settings (exit_fields.py), the
`fine_tuning`, `training` and `memory` blocks, the learning rates handed to
the shim, the stage-2 planner and running the encoder at prediction.
"""
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from spacy.training import Example
from thinc.api import Model

from ..encoder.exits import ExitPolicy
from ..encoder.planner import ExitPlanner, TrainingSettings
from ..layers.architecture import get_shim
from ..layers.shim import EarlyExitShim
from ..layers.types import DocPrediction, ModelInput
from ..memory import HeapTrimmer
from .exit_fields import ExitSettings
from .settings import FineTuning, MemorySettings


class EncoderOwner(ExitSettings):
    """Mixin for a component whose `model` is a
    `spacy-early-exit.EarlyExitTransformer.v1` it owns.

    Subclasses provide `name` and `model`, and call `_init_owner` from their
    ``__init__``. Its arguments are the exit fields and blocks (see
    `EarlyExitPipe` for each).
    """

    name: str
    model: Model
    #: Whether the component writes ``doc._.early_exit[name]``, the record of
    #: what its encoder spent; a listening head does not.
    owns_encoder = True

    def _init_owner(
        self,
        *,
        exit_mode: str = "tokee",
        threshold: float = 0.1,
        window: int = 2,
        thresholds: Optional[Sequence[float]] = None,
        temperatures: Optional[Sequence[float]] = None,
        precision: str = "fp32",
        fine_tuning: Optional[Dict[str, Any]] = None,
        training: Optional[Dict[str, Any]] = None,
        memory: Optional[Dict[str, Any]] = None,
    ) -> None:
        self._policy = ExitPolicy(
            mode=exit_mode,
            threshold=threshold,
            window=window,
            thresholds=thresholds,  # type: ignore[arg-type]  # the policy makes them tuples
            temperatures=temperatures,  # type: ignore[arg-type]
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
    def record_name(self) -> str:
        """The key of the ``doc._.early_exit`` record that holds this encoder's costs."""
        return self.name

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

    def _exit_planner(self) -> Optional[ExitPlanner]:
        """Stage 2's planner, holding a frozen copy of the weights at its first update."""
        if self.training.mode == "joint":
            return None
        if self._planner is None or self._planner.settings != self.training:
            self._planner = ExitPlanner.from_current(self.training, self._shim.encoder)
        return self._planner

    def _training_input(self, docs: List[Any]) -> ModelInput:
        """The model input of a training pass: stage 2 adds the planner."""
        return ModelInput(docs, planner=self._exit_planner())

    def _run_encoder(self, docs: List[Any], word_states: bool = False) -> List[DocPrediction]:
        """The encoder's predictions for a batch under the pipe's exit setting.

        word_states (bool): also each token's hidden state at its exit layer.
        """
        predictions = self.model.predict(ModelInput(docs, self.policy, word_states=word_states))
        self.heap_trimmer.count(len(docs))
        return predictions

    def _build_encoder(self, get_examples: Callable[[], Iterable[Example]]) -> None:
        """Load the backbone with fresh off-ramps (sized by `model.attrs`), then
        extend the vocabulary if asked; the exit setting is re-checked."""
        self.model.initialize()
        if self.fine_tuning.extend_vocab:
            added = self._shim.extend_vocabulary(eg.reference.text for eg in get_examples())
            print(
                f"[{self.name}] extend_vocab: added {len(added)} characters to the backbone's "
                "vocabulary; their embeddings are learned in fine-tuning"
            )
        self.set_policy(self._policy)
        self._planner = None
