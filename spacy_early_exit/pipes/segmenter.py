"""tokee_segmenter: word segmentation from boundary classes over characters.

The pipeline's tokenizer gives one token per character
(`spacy-early-exit.CharacterTokenizer.v1`); the off-ramps classify each
character as B/M/E/S (or B/I), and the component merges characters into
words, so every later component and the scorer see words.
"""
from typing import Any, Callable, Dict, Iterable, List, Optional

import numpy
from spacy.attrs import IDX, IS_SPACE, SPACY
from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import Example
from spacy.vocab import Vocab
from thinc.api import Model

from ..layers.listener import is_listener
from ..layers.types import DocPrediction
from .base import EarlyExitPipe, component_defaults, component_fields
from .head import TaskHead
from .listening import ListeningHead
from .settings import ExitMode, Precision, Temperature, Threshold, Window
from .record import read_record

# Per scheme: its classes, those that open a word and those that close one.
TAG_SCHEMES = {
    "BMES": (("B", "M", "E", "S"), {"B", "S"}, {"E", "S"}),
    "BI": (("B", "I"), {"B"}, set()),
}


class SegmenterTask(TaskHead):
    """Word segmentation over early-exit off-ramps: the task half of
    `EarlyExitSegmenter` (own encoder) and `ListeningSegmenter` (a shared one).

    Decoding: a word starts at a B (or S) and ends after an E (or S); the
    classes need not be consistent (an M after an E starts a new word). A token
    with no prediction (whitespace, a character with no wordpiece) is a word of
    its own, and a token followed by a space ends its word: a word never
    contains whitespace.

    Record: ``doc._.early_exit[name]["exit_layers"]`` has one entry per final
    token, i.e. per word; a word takes the deepest exit layer of its
    characters (the encoder ran until the last of them had exited). A
    listening segmenter rewrites its `tokee_transformer`'s record so, and must
    be the last component listening to it (the later ones would read
    characters that are gone).

    tag_scheme (str): "BMES" or "BI", the classes the off-ramps predict.
    """

    def __init__(self, vocab: Vocab, model: Model, name: str, *, tag_scheme: str, **kwargs: Any) -> None:
        if tag_scheme not in TAG_SCHEMES:
            raise ValueError(f"'tag_scheme' must be one of {list(TAG_SCHEMES)}; got {tag_scheme!r}")
        super().__init__(vocab, model, name, **kwargs)
        self.cfg["tag_scheme"] = tag_scheme

    @property
    def class_names(self) -> List[str]:
        # Fixed by the scheme, whatever subset of it the training data shows,
        # so the off-ramps' size never depends on the corpus.
        return list(TAG_SCHEMES[self.cfg["tag_scheme"]][0])

    def add_label(self, label: str) -> int:
        if label not in self.class_names:
            raise ValueError(
                f"Label {label!r} is not a class of tag_scheme {self.cfg['tag_scheme']!r}: "
                f"{self.class_names}"
            )
        return super().add_label(label)

    def labels_in(self, example: Example) -> Iterable[str]:
        return {cls for cls in self.gold_classes(example) if cls is not None}

    def gold_classes(self, example: Example) -> List[Optional[str]]:
        """Each predicted token's position in the reference word it lies in.

        A token aligned to no reference word, or to several, or to a whitespace
        word, has no gold (None).
        """
        align = example.alignment
        y2x = align.y2x
        word_lengths = y2x.lengths
        # Every (reference word, predicted token) pair, in order: the token,
        # its word, its position in that word and the word's length.
        tokens = y2x.data
        words = numpy.repeat(numpy.arange(len(word_lengths)), word_lengths)
        positions = numpy.arange(len(tokens)) - (numpy.cumsum(word_lengths) - word_lengths)[words]
        sizes = word_lengths[words]
        if self.cfg["tag_scheme"] == "BI":
            found = numpy.where(positions == 0, "B", "I")
        else:
            inner = numpy.where(positions == 0, "B", numpy.where(positions == sizes - 1, "E", "M"))
            found = numpy.where(sizes == 1, "S", inner)
        is_space = example.reference.to_array(IS_SPACE).astype(bool)
        keep = (align.x2y.lengths[tokens] == 1) & ~is_space[words]
        classes = numpy.full(len(example.predicted), None, dtype=object)
        classes[tokens[keep]] = found[keep]
        return classes.tolist()

    def annotate(self, doc: Doc, classes: List[Optional[str]]) -> None:
        """Merge the tokens into words (see the class docstring for decoding)."""
        if len(doc) < 2:
            return
        _, openers, closers = TAG_SCHEMES[self.cfg["tag_scheme"]]
        opens = numpy.asarray([cls is None or cls in openers for cls in classes], dtype=bool)
        closes = numpy.asarray([cls is None or cls in closers for cls in classes], dtype=bool)
        closes |= doc.to_array(SPACY).astype(bool)
        starts = numpy.flatnonzero(numpy.concatenate([[True], opens[1:] | closes[:-1]]))
        ends = numpy.append(starts[1:], len(doc))
        with doc.retokenize() as retokenizer:
            for start, end in zip(starts.tolist(), ends.tolist()):
                if end - start > 1:
                    retokenizer.merge(doc[start:end])

    def set_annotations(self, docs: Iterable[Doc], predictions: List[DocPrediction]) -> None:
        """The base writes annotations and the record; the record's per-character
        exit layers then become per-word ones: the max over each word."""
        docs = list(docs)
        char_starts = [doc.to_array(IDX) for doc in docs]
        super().set_annotations(docs, predictions)
        for doc, starts in zip(docs, char_starts):
            if len(doc) == 0:
                continue
            record = read_record(doc, self.record_name)
            # Each word starts where one of its characters did.
            first_char = numpy.searchsorted(starts, doc.to_array(IDX))
            record["exit_layers"] = numpy.maximum.reduceat(numpy.asarray(record["exit_layers"]), first_char).tolist()

    def row_fields(self) -> Dict[str, Callable[[Doc], Any]]:
        return {"words": word_texts}


class EarlyExitSegmenter(SegmenterTask, EarlyExitPipe):
    """Word segmenter with its own early-exit encoder; see :class:`EarlyExitPipe`."""


class ListeningSegmenter(SegmenterTask, ListeningHead):
    """Word segmenter on a shared `tokee_transformer`; see :class:`ListeningHead`."""


def word_texts(doc: Doc) -> List[str]:
    """The text of each word (a token, once the segmenter has merged characters)."""
    return [token.text for token in doc]


@Language.factory(
    "tokee_segmenter",
    assigns=["doc._.early_exit"],
    retokenizes=True,
    default_config={
        # Characters are the tokens: each gets its own wordpieces.
        **component_defaults({"pretokenized": True}, tag_scheme="BMES"),
        "scorer": {"@scorers": "spacy-early-exit.segmentation_scorer.v1"},
    },
    default_score_weights={"token_f": 1.0, "token_p": 0.0, "token_r": 0.0, "token_acc": None},
)
def make_tokee_segmenter(
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
) -> SegmenterTask:
    """Create a `tokee_segmenter` component. Use it with the character tokenizer
    (``[nlp.tokenizer] @tokenizers = "spacy-early-exit.CharacterTokenizer.v1"``).

    tag_scheme (str): "BMES" or "BI", the classes the off-ramps predict.
    The other fields are the shared ones of `tokee_ner` (see README); a
    listening segmenter (model `spacy-early-exit.EarlyExitListener.v1`) leaves
    them to its `tokee_transformer`, whose model then needs `pretokenized = true`.
    """
    fields = component_fields(locals())
    cls = ListeningSegmenter if is_listener(model) else EarlyExitSegmenter
    return cls(nlp.vocab, model, name, **fields)
