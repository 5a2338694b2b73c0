"""Registered scorers for the tagger and the segmenter: thin names over spaCy's Scorer.

Both reuse spaCy's own scoring code, so the numbers are comparable with
spaCy's `tagger`, `morphologizer` and tokenizer scores.
"""
from typing import Any, Callable, Dict, Iterable

from spacy.scorer import Scorer
from spacy.training import Example
from spacy.util import registry

TAGGER_ATTRIBUTES = ("tag", "pos")


def score_tagging(examples: Iterable[Example], *, attribute: str = "tag", **kwargs: Any) -> Dict[str, Any]:
    """Accuracy of `token.tag_` ("tag_acc") or `token.pos_` ("pos_acc").

    A spaCy pipe passes its ``cfg`` to its scorer as keyword arguments, and
    `tokee_tagger` keeps its `attribute` there: the score follows what the
    component learns, with nothing to keep in sync in the config.

    examples (Iterable[Example]): the examples to score.
    attribute (str): "tag" or "pos".
    RETURNS (Dict[str, Any]): ``{"tag_acc": float}`` or ``{"pos_acc": float}``
        (None when no reference token has the attribute).
    """
    if attribute not in TAGGER_ATTRIBUTES:
        raise ValueError(f"'attribute' must be one of {list(TAGGER_ATTRIBUTES)}; got {attribute!r}")
    return Scorer.score_token_attr(examples, attribute, **kwargs)


def score_segmentation(examples: Iterable[Example], **kwargs: Any) -> Dict[str, Any]:
    """Word-level precision, recall and F of the predicted tokens against the
    reference words (``token_p/r/f``, and ``token_acc``), by character spans.

    spaCy skips an example whose reference has unknown spaces (a Doc built
    from words without ``spaces``): give the reference its spaces.

    examples (Iterable[Example]): the examples to score.
    RETURNS (Dict[str, Any]): token_acc, token_p, token_r, token_f.
    """
    return Scorer.score_tokenization(examples)


@registry.scorers("spacy-early-exit.tagger_scorer.v1")
def make_tagger_scorer() -> Callable[..., Dict[str, Any]]:
    """RETURNS the tagging scorer (see :func:`score_tagging`)."""
    return score_tagging


@registry.scorers("spacy-early-exit.segmentation_scorer.v1")
def make_segmentation_scorer() -> Callable[..., Dict[str, Any]]:
    """RETURNS the word segmentation scorer (see :func:`score_segmentation`)."""
    return score_segmentation
