"""Is one exit setting really better than another? A paired bootstrap over docs.

Every main score of the project is an F-score of sets (spaCy's tagging
"accuracy" too: `Scorer.score_token_attr` scores predicted against gold
(token, value) pairs), so three counts per doc are enough to rebuild it for
any subset of docs: true positives, predicted and gold items. `doc_counts`
keeps them per doc, counted as spaCy's scorer counts; resampling the docs with
replacement, the same docs for both settings, gives the spread of the score
difference that a data set of this size allows (`bootstrap`).

Used by benchmarks/paired_bootstrap.py (two rows of a test table) and
project/scripts/choose_stage.py (the two training stages' tuned settings on dev).
"""
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy
from spacy.language import Language
from spacy.scorer import MISSING_VALUES
from spacy.training import Example

from .evaluate import exit_settings

Counts = Tuple[int, int, int]
# Index entries one resampling chunk may hold: bounds the memory of a large
# test split (resamples x docs) without changing the random stream.
CHUNK_ENTRIES = 2_000_000


def entity_counts(example: Example) -> Counts:
    """(true positives, predicted, gold) entities of one doc, as spaCy's
    `get_ner_prf` (`spacy.ner_scorer.v1`) counts them.

    A predicted entity is mapped onto the gold tokens; one that maps onto
    nothing, or onto gold tokens with missing entity annotation, is neither
    right nor wrong and is not counted. A doc whose reference has no entity
    annotation at all counts nothing.

    example (Example): predicted doc and gold reference.
    RETURNS (Counts): the three counts.
    """
    reference = example.reference
    if not reference.has_annotation("ENT_IOB"):
        return 0, 0, 0
    golds = {(ent.label_, ent.start, ent.end) for ent in reference.ents}
    gold = len(golds)
    x2y = example.alignment.x2y
    right = predicted = 0
    for ent in example.predicted.ents:
        indices = x2y[ent.start : ent.end]
        if not len(indices):
            continue
        first, last = int(indices[0]), int(indices[-1])
        if not all(token.ent_iob != 0 for token in reference[first : last + 1]):
            continue
        predicted += 1
        key = (ent.label_, first, last + 1)
        if key in golds:
            right += 1
            golds.remove(key)
    return right, predicted, gold


def attribute_counts(example: Example, attribute: str) -> Counts:
    """(right, predicted, gold) token values of one doc for `attribute` ("tag"
    or "pos"), as `Scorer.score_token_attr` (our tagger scorer) counts them.

    A predicted token counts when it aligns to exactly one gold token whose
    value is not missing; space tokens are not scored.

    example (Example): predicted doc and gold reference.
    attribute (str): the token attribute, e.g. "tag".
    RETURNS (Counts): the three counts.
    """
    gold_values = set()
    missing = set()
    for i, token in enumerate(example.reference):
        value = getattr(token, attribute)
        if value in MISSING_VALUES:
            missing.add(i)
        else:
            gold_values.add((i, value))
    x2y = example.alignment.x2y
    predicted_values = set()
    for token in example.predicted:
        if token.orth_.isspace() or x2y.lengths[token.i] != 1:
            continue
        gold_i = int(x2y[token.i][0])
        if gold_i not in missing:
            predicted_values.add((gold_i, getattr(token, attribute)))
    return len(predicted_values & gold_values), len(predicted_values), len(gold_values)


def token_counts(example: Example) -> Counts:
    """(right, predicted, gold) words of one doc by character span, as
    `Scorer.score_tokenization` (our segmentation scorer) counts them for token_f.

    spaCy skips a doc whose reference has unknown spaces: it counts nothing.

    example (Example): predicted doc and gold reference.
    RETURNS (Counts): the three counts.
    """
    if example.reference.has_unknown_spaces:
        return 0, 0, 0

    def spans(doc: Any) -> set:
        return {(token.idx, token.idx + len(token)) for token in doc if not token.orth_.isspace()}

    gold, predicted = spans(example.reference), spans(example.predicted)
    return len(predicted & gold), len(predicted), len(gold)


COUNTERS: Dict[str, Callable[[Example], Counts]] = {
    "ents_f": entity_counts,
    "tag_acc": partial(attribute_counts, attribute="tag"),
    "pos_acc": partial(attribute_counts, attribute="pos"),
    "token_f": token_counts,
}


def doc_counts(examples: Sequence[Example], metric: str) -> numpy.ndarray:
    """Per-doc counts of one metric.

    examples (Sequence[Example]): predicted docs with their gold references.
    metric (str): one of COUNTERS ("ents_f", "tag_acc", "pos_acc", "token_f").
    RETURNS (numpy.ndarray): int64, shape (n_docs, 3): right, predicted, gold.
    """
    if metric not in COUNTERS:
        raise ValueError(f"No per-doc counts for the metric {metric!r}; supported: {sorted(COUNTERS)}")
    count = COUNTERS[metric]
    return numpy.array([count(eg) for eg in examples], dtype=numpy.int64).reshape(len(examples), 3)


def predict(nlp: Language, examples: Sequence[Example], fields: Dict[str, Any], batch_size: int = 64) -> List[Example]:
    """The examples' texts annotated by `nlp` under the exit `fields`, paired
    with their references (as `evaluate.score` and so the tuner run them).

    nlp (Language): the pipeline (its own settings come back afterwards).
    examples (Sequence[Example]): gold examples.
    fields (Dict[str, Any]): exit fields, as for `evaluate.exit_settings`.
    batch_size (int): `nlp.pipe` batch size.
    RETURNS (List[Example]): one scored example per input, in order.
    """
    with exit_settings(nlp, fields):
        docs = list(nlp.pipe((eg.reference.text for eg in examples), batch_size=batch_size))
    return [Example(doc, eg.reference) for doc, eg in zip(docs, examples)]


def setting_counts(
    nlp: Language, examples: Sequence[Example], fields: Dict[str, Any], metric: str, batch_size: int = 64
) -> numpy.ndarray:
    """Per-doc counts (see `doc_counts`) of `nlp` run under the exit `fields`.

    RETURNS (numpy.ndarray): shape (n_docs, 3).
    """
    return doc_counts(predict(nlp, examples, fields, batch_size), metric)


def f_score(counts: numpy.ndarray) -> numpy.ndarray:
    """F-score in percent of (right, predicted, gold) totals on the last axis;
    0 where there is nothing to score. Vectorized over the leading axes."""
    right, predicted, gold = counts[..., 0], counts[..., 1], counts[..., 2]
    denominator = predicted + gold
    return numpy.where(denominator > 0, 200.0 * right / numpy.maximum(denominator, 1), 0.0)


def score_of_counts(counts: numpy.ndarray) -> Optional[float]:
    """The metric over all docs from per-doc counts, on spaCy's 0-1 scale.

    counts (numpy.ndarray): shape (n_docs, 3).
    RETURNS (Optional[float]): 2 * right / (predicted + gold); None when
        nothing was predicted or gold (spaCy's scorer gives None then too).
    """
    right, predicted, gold = (int(value) for value in numpy.asarray(counts).reshape(-1, 3).sum(0))
    if predicted + gold == 0:
        return None
    return 2.0 * right / (predicted + gold)


def resampled_deltas(a: numpy.ndarray, b: numpy.ndarray, resamples: int, seed: int) -> numpy.ndarray:
    """F(a) - F(b) in percent on `resamples` resamplings of the docs (with
    replacement, the same docs for both), seeded.

    RETURNS (numpy.ndarray): shape (resamples,).
    """
    n = len(a)
    rng = numpy.random.default_rng(seed)
    # Drawn in chunks of whole resamples: numpy's generator gives the same
    # stream as one resample per call, so results do not depend on the chunk.
    per_chunk = max(1, CHUNK_ENTRIES // n)
    deltas = []
    for start in range(0, resamples, per_chunk):
        picked = rng.integers(0, n, (min(per_chunk, resamples - start), n))
        deltas.append(f_score(a[picked].sum(1)) - f_score(b[picked].sum(1)))
    return numpy.concatenate(deltas) if deltas else numpy.zeros(0)


def bootstrap(
    a: numpy.ndarray, b: numpy.ndarray, resamples: int = 2000, seed: int = 0, confidence: float = 0.95
) -> Dict[str, Any]:
    """Paired bootstrap of F(a) - F(b) over docs.

    a (numpy.ndarray), b (numpy.ndarray): per-doc counts of two settings on
        the same docs, shape (n_docs, 3) each.
    resamples (int): bootstrap resamples.
    seed (int): resampling seed.
    confidence (float): level of the two-sided interval, in [0, 1).
    RETURNS (Dict[str, Any]): delta (F(a) - F(b) on all docs, percent points),
        ci (the central `confidence` interval of the resampled deltas),
        share_a_not_better (share of resamples where a does not beat b), std.
    """
    a, b = numpy.asarray(a), numpy.asarray(b)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 3 or not len(a):
        raise ValueError(f"Expected two count arrays of the same docs, shape (n_docs, 3); got {a.shape} and {b.shape}")
    if resamples < 1 or not 0.0 <= confidence < 1.0:
        raise ValueError(f"Need resamples >= 1 and confidence in [0, 1); got {resamples}, {confidence}")
    deltas = resampled_deltas(a, b, resamples, seed)
    low, high = numpy.percentile(deltas, [50.0 * (1.0 - confidence), 50.0 * (1.0 + confidence)])
    return {
        "delta": round(float(f_score(a.sum(0)) - f_score(b.sum(0))), 3),
        "ci": [round(float(low), 3), round(float(high), 3)],
        "share_a_not_better": round(float((deltas <= 0).mean()), 4),
        "std": round(float(deltas.std()), 3),
    }


__all__ = [
    "COUNTERS", "attribute_counts", "bootstrap", "doc_counts", "entity_counts", "f_score", "predict",
    "resampled_deltas", "score_of_counts", "setting_counts", "token_counts",
]
