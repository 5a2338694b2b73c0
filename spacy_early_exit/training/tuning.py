"""Choose exit thresholds on held-out data for a target FLOPs speed-up.

The FLOPs speed-up grows with the threshold (a higher threshold lets tokens
leave sooner), so the smallest threshold that reaches a target, the most
accurate one that is fast enough, is found by bisection.
"""
from typing import Optional, Sequence

from spacy.language import Language
from spacy.tokens import Doc

from ..evaluation import cost_summary, exit_settings


def flops_speedup(nlp: Language, texts: Sequence[str], fields: dict, batch_size: int = 64) -> float:
    """Corpus FLOPs speed-up of `nlp` on `texts` with the given exit fields."""
    with exit_settings(nlp, fields):
        docs = list(nlp.pipe(texts, batch_size=batch_size))
    return cost_summary(docs, nlp)["flops_speedup"]


def threshold_for_speedup(
    nlp: Language,
    texts: Sequence[str],
    target: float,
    exit_mode: str = "tokee",
    window: int = 2,
    steps: int = 12,
) -> Optional[float]:
    """The smallest threshold whose FLOPs speed-up on `texts` reaches `target`.

    RETURNS (Optional[float]): the threshold (rounded up to 4 decimals), or
        None when even threshold 1.0 does not reach the target.
    """
    fields = {"exit_mode": exit_mode, "window": window}
    if flops_speedup(nlp, texts, {**fields, "threshold": 1.0}) < target:
        return None
    low, high = 0.0, 1.0
    for _ in range(steps):
        middle = (low + high) / 2
        if flops_speedup(nlp, texts, {**fields, "threshold": middle}) >= target:
            high = middle
        else:
            low = middle
    return round(high + 5e-5, 4) if high < 1.0 else 1.0


def texts_of(docs: Sequence[Doc]) -> list:
    return [doc.text for doc in docs]
