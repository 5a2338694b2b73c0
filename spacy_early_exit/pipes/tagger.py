"""tokee_tagger: part-of-speech tags (`token.tag_` or `token.pos_`), one class per tag."""
from typing import Any, Callable, Dict, Iterable, List, Literal, Optional

from spacy.attrs import POS, TAG
from spacy.language import Language
from spacy.parts_of_speech import IDS as POS_IDS
from spacy.tokens import Doc
from spacy.training import Example
from spacy.vocab import Vocab
from thinc.api import Model

from ..layers.listener import is_listener
from ..scorers import TAGGER_ATTRIBUTES
from .base import EarlyExitPipe, component_defaults, component_fields
from .head import TaskHead
from .listening import ListeningHead
from .settings import ExitMode, Precision, Temperature, Threshold, Window

# What `token.pos_` accepts: the 17 UD UPOS tags plus spaCy's own (SPACE,
# the legacy CONJ, EOL). "" is spaCy's "no tag", not a tag.
POS_NAMES = frozenset(name for name in POS_IDS if name)


class TaggerTask(TaskHead):
    """Tagging over early-exit off-ramps: the task half of `EarlyExitTagger`
    (own encoder) and `ListeningTagger` (a shared one).

    Each label is one off-ramp class. With ``attribute="tag"`` the component
    learns and writes `token.tag_`; when every label is also a valid
    `token.pos_` value (a UPOS tag set stored as tags), it writes `token.pos_`
    too. With ``attribute="pos"`` it learns and writes `token.pos_` only.

    Whitespace tokens (and other tokens the backbone gives no wordpiece, such
    as stripped control characters) are never predicted: their exit layer is 0
    and their tag is left as it was (empty on a fresh doc). spaCy's
    `Scorer.score_token_attr` skips predicted whitespace tokens, so they cost
    accuracy only where the reference itself tags a whitespace token (spaCy's
    "_SP"/"SPACE" convention). UD treebanks have no whitespace tokens (spaces
    are `SpaceAfter`), so there this costs nothing.

    attribute (str): "tag" (`token.tag_`) or "pos" (`token.pos_`, UPOS).
    """

    def __init__(self, vocab: Vocab, model: Model, name: str, *, attribute: str, **kwargs: Any) -> None:
        if attribute not in TAGGER_ATTRIBUTES:
            raise ValueError(f"'attribute' must be one of {list(TAGGER_ATTRIBUTES)}; got {attribute!r}")
        super().__init__(vocab, model, name, **kwargs)
        # In cfg, so it is saved with the labels and handed to the scorer
        # (spaCy passes a pipe's cfg to its scorer as keyword arguments).
        self.cfg["attribute"] = attribute

    @property
    def attribute(self) -> str:
        return self.cfg["attribute"]

    @property
    def class_names(self) -> List[str]:
        return list(self.labels)

    @property
    def writes_pos(self) -> bool:
        """Whether predictions also go to `token.pos_`."""
        return self.attribute == "pos" or (bool(self.labels) and all(label in POS_NAMES for label in self.labels))

    def add_label(self, label: str) -> int:
        if self.attribute == "pos" and label not in POS_NAMES:
            raise ValueError(
                f"Label {label!r} of '{self.name}' is not a valid token.pos_ value "
                f"(attribute 'pos' needs UPOS tags); use attribute 'tag' for other tag sets"
            )
        return super().add_label(label)

    def labels_in(self, example: Example) -> Iterable[str]:
        field = self.attribute + "_"
        return {getattr(token, field) for token in example.reference} - {""}

    def gold_classes(self, example: Example) -> List[Optional[str]]:
        # spaCy's alignment: a predicted token gets the tag of the one reference
        # token it lies in, None when it spans several. "" is a missing tag.
        values = example.get_aligned(self.attribute.upper(), as_string=True)
        return [value or None for value in values]

    def annotate(self, doc: Doc, classes: List[Optional[str]]) -> None:
        # One array write instead of a Token object per token; tokens with no
        # prediction keep the values read back here.
        scored = [i for i, cls in enumerate(classes) if cls is not None]
        if not scored:
            return
        values = doc.to_array([TAG, POS])
        if self.attribute == "tag":
            strings = doc.vocab.strings
            values[scored, 0] = [strings.add(classes[i]) for i in scored]
        if self.writes_pos:
            values[scored, 1] = [POS_IDS[classes[i]] for i in scored]
        doc.from_array([TAG, POS], values)

    def row_fields(self) -> Dict[str, Callable[[Doc], Any]]:
        # What `annotate` writes: tags with attribute "tag", POS when writes_pos.
        fields: Dict[str, Callable[[Doc], Any]] = {}
        if self.attribute == "tag":
            fields["tags"] = token_tags
        if self.writes_pos:
            fields["pos"] = token_pos
        return fields


class EarlyExitTagger(TaggerTask, EarlyExitPipe):
    """Tagger with its own early-exit encoder; see :class:`EarlyExitPipe`."""


class ListeningTagger(TaggerTask, ListeningHead):
    """Tagger on a shared `tokee_transformer`; see :class:`ListeningHead`."""


def token_tags(doc: Doc) -> List[str]:
    """`token.tag_` of each token."""
    return [token.tag_ for token in doc]


def token_pos(doc: Doc) -> List[str]:
    """`token.pos_` of each token."""
    return [token.pos_ for token in doc]


@Language.factory(
    "tokee_tagger",
    assigns=["token.tag", "token.pos", "doc._.early_exit"],
    default_config={
        **component_defaults(attribute="tag"),
        "scorer": {"@scorers": "spacy-early-exit.tagger_scorer.v1"},
    },
    # The scorer reports tag_acc or pos_acc, whichever `attribute` is; only
    # that one is present, so the training score is half of it (the ranking
    # of checkpoints is unchanged). Set [training.score_weights] to
    # {"tag_acc": 1.0, "pos_acc": null} (or the reverse) for the plain value.
    default_score_weights={"tag_acc": 0.5, "pos_acc": 0.5},
)
def make_tokee_tagger(
    nlp: Language,
    name: str,
    model: Model,
    attribute: Literal["tag", "pos"],
    exit_mode: ExitMode,
    threshold: Threshold,
    window: Window,
    thresholds: Optional[List[Threshold]],
    temperatures: Optional[List[Temperature]],
    precision: Precision,
    fine_tuning: Dict[str, Any],
    training: Dict[str, Any],
    memory: Dict[str, Any],
    scorer: Optional[Callable],
) -> TaggerTask:
    """Create a `tokee_tagger` component.

    attribute (str): "tag" (learn and write `token.tag_`) or "pos" (`token.pos_`).
    The other fields are the shared ones of `tokee_ner` (see README); a
    listening tagger (model `spacy-early-exit.EarlyExitListener.v1`) leaves
    them to its `tokee_transformer`.
    """
    fields = component_fields(locals())
    cls = ListeningTagger if is_listener(model) else EarlyExitTagger
    return cls(nlp.vocab, model, name, **fields)
