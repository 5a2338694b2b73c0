"""ListeningHead: a task component that reads a shared `tokee_transformer`.

Its `model` is `spacy-early-exit.EarlyExitListener.v1`. It owns no encoder
and no exit setting: the exit fields and the `fine_tuning`, `training` and
`memory` blocks live on the upstream `tokee_transformer`, which runs one
forward pass for all its heads and decides every exit jointly. Reading one of
them here gives the upstream's value; setting one (in the config or as an
attribute) fails with a one-line message that says where it lives now.
"""
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Sequence

from spacy.pipeline import TrainablePipe
from spacy.tokens import Doc
from spacy.training import Example
from spacy.vocab import Vocab
from thinc.api import Model

from ..encoder.planner import DEFAULT_TRAINING
from ..layers.listener import EarlyExitListener
from ..layers.types import DocPrediction, ModelInput, TrainingOutput
from .exit_fields import POLICY_FIELDS
from .head import TaskHead
from .persistence import CheckedLoading
from .settings import EXIT_DEFAULTS, FineTuning, MemorySettings

if TYPE_CHECKING:  # the upstream pipe's module imports nothing from here
    from .transformer import EarlyExitTransformer

# What a listening head's config may hold for each moved field: the factory
# default, which spaCy fills in whether or not the user wrote it.
MOVED_DEFAULTS: Dict[str, Any] = {
    **EXIT_DEFAULTS,
    "fine_tuning": asdict(FineTuning()),
    "training": dict(DEFAULT_TRAINING),
    "memory": asdict(MemorySettings()),
}


def moved_message(head: str, field: str, upstream: str) -> str:
    """The one-line error for an exit field set on a listening head."""
    return (
        f"'{field}' of '{head}' lives on the '{upstream}' component now ('{head}' listens to it): "
        f"set components.{upstream}.{field} (or nlp.get_pipe('{upstream}').{field}) instead"
    )


class MovedField:
    """An exit field or block of a listening head: read from the upstream, never set here."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, pipe: Any, owner: Optional[type] = None) -> Any:
        if pipe is None:
            return self
        return getattr(pipe.upstream, self.name)

    def __set__(self, pipe: Any, value: Any) -> None:
        raise ValueError(moved_message(pipe.name, self.name, pipe.upstream_label))


class ListeningHead(TaskHead, CheckedLoading, TrainablePipe):
    """A task component over a shared encoder's off-ramps.

    vocab (Vocab): the shared vocab.
    model (Model): a `spacy-early-exit.EarlyExitListener.v1` layer.
    name (str): the component name (its head's name in the upstream).
    scorer (Optional[Callable]): the scoring method.
    moved (Any): the exit fields and blocks the factory passes; each must be
        its default (they belong to the upstream).
    """

    owns_encoder = False

    exit_mode = MovedField()
    threshold = MovedField()
    window = MovedField()
    thresholds = MovedField()
    temperatures = MovedField()
    precision = MovedField()
    fine_tuning = MovedField()
    training = MovedField()
    memory = MovedField()

    def __init__(
        self, vocab: Vocab, model: Model, name: str, *, scorer: Optional[Callable] = None, **moved: Any
    ) -> None:
        if not isinstance(model, EarlyExitListener):
            raise ValueError(f"Component '{name}': a listening head's model must be spacy-early-exit.EarlyExitListener.v1")
        self.vocab = vocab
        self.model = model
        self.name = name
        self.scorer = scorer
        self.cfg: Dict[str, Any] = {"labels": []}
        for field, value in moved.items():
            if field not in MOVED_DEFAULTS:
                raise TypeError(f"Unexpected argument {field!r} for component '{name}'")
            if value != MOVED_DEFAULTS[field]:
                raise ValueError(moved_message(name, field, self.upstream_label))

    # -- the upstream ----------------------------------------------------------

    @property
    def upstream(self) -> "EarlyExitTransformer":
        """The `tokee_transformer` this head listens to (linked by the pipeline)."""
        listener: EarlyExitListener = self.model  # type: ignore[assignment]
        upstream = listener.upstream
        if upstream is None or listener not in upstream.listener_map.get(self.name, []):
            raise ValueError(
                f"Component '{self.name}' listens to a tokee_transformer ({listener.upstream_name!r}), but "
                f"none comes before it in the pipeline: add one before '{self.name}'"
            )
        return upstream

    @property
    def upstream_label(self) -> str:
        """The upstream's name for messages, also before the pipeline links it."""
        listener: EarlyExitListener = self.model  # type: ignore[assignment]
        if listener.upstream is not None:
            return listener.upstream.name
        return listener.upstream_name if listener.upstream_name != "*" else "tokee_transformer"

    @property
    def record_name(self) -> str:
        return self.upstream.record_name

    @property
    def encoder_depth(self) -> Optional[int]:
        return self.upstream.encoder_depth

    @property
    def num_layers(self) -> int:
        return self.upstream.num_layers

    @property
    def policy(self) -> Any:
        return self.upstream.policy

    def set_policy(self, policy: Any) -> None:
        raise ValueError(moved_message(self.name, "exit setting", self.upstream_label))

    def using(self, policy: Any = None, **changes: Any) -> Any:
        field = next(iter(changes), "exit setting")
        raise ValueError(moved_message(self.name, field if field in POLICY_FIELDS else "exit setting", self.upstream_label))

    # -- TaskHead's hooks: the head's off-ramps are columns of the upstream's ---

    def _heads_ready(self) -> bool:
        listener: EarlyExitListener = self.model  # type: ignore[assignment]
        return listener.upstream is not None and self.name in self.upstream.head_names

    def _attach_encoder(self, get_examples: Callable[[], Iterable[Example]]) -> None:
        self.upstream.add_head(self.name, self.class_names)

    def _initialize_from(self, path: str) -> None:
        """Labels from the same-named component of a trained pipeline; the
        weights come with its tokee_transformer's `init_from`."""
        import spacy

        source = spacy.load(path)
        if self.name not in source.pipe_names or not isinstance(source.get_pipe(self.name), TaskHead):
            raise ValueError(f"init_from {path!r}: no early-exit task component named '{self.name}'; found {source.pipe_names}")
        self.cfg.update({k: v for k, v in source.get_pipe(self.name).cfg.items()})
        self._attach_encoder(lambda: [])

    def _training_input(self, docs: List[Doc]) -> ModelInput:
        return ModelInput(docs)

    def _predict_docs(self, docs: List[Doc]) -> List[DocPrediction]:
        return self.model.predict(ModelInput(docs))

    def _full_depth(self, docs: Sequence[Doc], precision: str) -> TrainingOutput:
        return self.upstream.head_logits(self.name, docs, precision)

    def _check_loaded(self) -> None:
        # Nothing to check against: the off-ramps are the upstream's, which
        # the pipeline links only after every component has loaded.
        return None
