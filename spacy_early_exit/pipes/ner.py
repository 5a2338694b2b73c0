"""tokee_ner: named entities from BIO (or BILUO) classes over tokens."""
from typing import Any, Callable, Dict, Iterable, List, Optional

from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.training import Example
from thinc.api import Model

from ..layers.listener import is_listener
from .base import EarlyExitPipe, component_defaults, component_fields
from .head import TaskHead
from .listening import ListeningHead
from .settings import ExitMode, Precision, Temperature, Threshold, Window

TAG_SCHEMES = {"BIO": ("B", "I"), "BILUO": ("B", "I", "L", "U")}


class NERTask(TaskHead):
    """Entity recognition over early-exit off-ramps: the task half of
    `EarlyExitNER` (own encoder) and `ListeningNER` (a shared one).

    tag_scheme (str): "BIO" or "BILUO", the classes the off-ramps predict.
    """

    def __init__(self, vocab: Any, model: Model, name: str, *, tag_scheme: str, **kwargs: Any) -> None:
        if tag_scheme not in TAG_SCHEMES:
            raise ValueError(f"'tag_scheme' must be one of {list(TAG_SCHEMES)}; got {tag_scheme!r}")
        super().__init__(vocab, model, name, **kwargs)
        self.cfg["tag_scheme"] = tag_scheme

    @property
    def class_names(self) -> List[str]:
        prefixes = TAG_SCHEMES[self.cfg["tag_scheme"]]
        return ["O"] + [f"{p}-{label}" for label in self.labels for p in prefixes]

    def labels_in(self, example: Example) -> Iterable[str]:
        return {ent.label_ for ent in example.reference.ents}

    def gold_classes(self, example: Example) -> List[Optional[str]]:
        tags = example.get_aligned_ner()
        if tags is None:
            return [None] * len(example.predicted)
        return [self._from_biluo(tag) for tag in tags]

    def _from_biluo(self, tag: Optional[str]) -> Optional[str]:
        if tag is None or tag == "-" or tag == "":
            return None  # missing or misaligned gold: no loss on this token
        if tag == "O" or self.cfg["tag_scheme"] == "BILUO":
            return tag
        prefix, label = tag.split("-", 1)
        return {"U": "B", "L": "I"}.get(prefix, prefix) + "-" + label

    def annotate(self, doc: Doc, classes: List[Optional[str]]) -> None:
        """Decode classes into valid, non-overlapping entity spans.

        An I (or L) that does not continue an entity of the same label opens
        one; U and L close the entity they belong to.
        """
        spans = []
        start, label = -1, None
        for i, cls in enumerate(classes + ["O"]):
            prefix, _, kind = (cls or "O").partition("-")
            continues = label is not None and kind == label and prefix in ("I", "L")
            if label is not None and not continues:
                spans.append(Span(doc, start, i, label=label))
                label = None
            if prefix in ("B", "U") or (prefix in ("I", "L") and not continues):
                start, label = i, kind
            if label is not None and prefix in ("U", "L"):
                spans.append(Span(doc, start, i + 1, label=label))
                label = None
        # What `doc.ents = spans` does, without its rebuilding every span first.
        doc.set_ents(spans, default="outside")

    def row_fields(self) -> Dict[str, Callable[[Doc], Any]]:
        return {"ents": entity_offsets}


class EarlyExitNER(NERTask, EarlyExitPipe):
    """Entity recognizer with its own early-exit encoder; see :class:`EarlyExitPipe`."""


class ListeningNER(NERTask, ListeningHead):
    """Entity recognizer on a shared `tokee_transformer`; see :class:`ListeningHead`."""


def entity_offsets(doc: Doc) -> List[List[Any]]:
    """Each entity as [start_char, end_char, label]: a row's form, since JSON has no tuples."""
    return [[ent.start_char, ent.end_char, ent.label_] for ent in doc.ents]


@Language.factory(
    "tokee_ner",
    assigns=["doc.ents", "token.ent_iob", "token.ent_type", "doc._.early_exit"],
    default_config={
        **component_defaults(tag_scheme="BIO"),
        "scorer": {"@scorers": "spacy.ner_scorer.v1"},
    },
    default_score_weights={"ents_f": 1.0, "ents_p": 0.0, "ents_r": 0.0, "ents_per_type": None},
)
def make_tokee_ner(
    nlp: Language,
    name: str,
    model: Model,
    tag_scheme: str,
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
) -> NERTask:
    """Create a `tokee_ner` component (see README for every field); with
    `spacy-early-exit.EarlyExitListener.v1` as its model it listens to a
    `tokee_transformer`, which then holds the exit fields and blocks."""
    fields = component_fields(locals())
    cls = ListeningNER if is_listener(model) else EarlyExitNER
    return cls(nlp.vocab, model, name, **fields)
