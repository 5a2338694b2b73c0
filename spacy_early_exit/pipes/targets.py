"""Gold class ids for the rows of a batch: what the losses and calibration compare against."""
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy
from spacy.training import Example

GoldClasses = Callable[[Example], List[Optional[str]]]


def gold_targets(
    examples: Sequence[Example],
    token_index: Sequence[numpy.ndarray],
    n_words: int,
    class_ids: Dict[str, int],
    gold_classes: GoldClasses,
) -> Tuple[numpy.ndarray, Set[str]]:
    """Each encoder word's gold class id.

    examples (Sequence[Example]): the batch, in row order.
    token_index (Sequence[numpy.ndarray]): per example, each token's word
        position in the batch (-1: the token has no wordpieces).
    n_words (int): words in the batch.
    class_ids (Dict[str, int]): class name -> off-ramp output index.
    gold_classes (GoldClasses): the pipe's per-token gold class names (None: missing).
    RETURNS (Tuple[numpy.ndarray, Set[str]]): int64 ids ``[n_words]`` (-1: no
        gold, no loss) and the gold classes the pipe does not know.
    """
    targets = numpy.full(n_words, -1, dtype="int64")
    unknown: Set[str] = set()
    for example, index in zip(examples, token_index):
        for position, gold in zip(index.tolist(), gold_classes(example)):
            if position < 0 or gold is None:
                continue
            if gold not in class_ids:
                unknown.add(gold)
                continue
            targets[position] = class_ids[gold]
    return targets, unknown


def labeled_rows(
    layer_logits: numpy.ndarray,
    examples: Sequence[Example],
    token_index: Sequence[numpy.ndarray],
    class_ids: Dict[str, int],
    gold_classes: GoldClasses,
) -> Tuple[List[numpy.ndarray], List[int]]:
    """The per-layer logits and gold id of every gold-labeled token of a batch.

    layer_logits (numpy.ndarray): ``[n_layers, n_words, n_classes]``.
    RETURNS (Tuple[List[numpy.ndarray], List[int]]): per token ``[n_layers,
        n_classes]`` and its gold class id, in token order.
    """
    logits: List[numpy.ndarray] = []
    gold_ids: List[int] = []
    for example, index in zip(examples, token_index):
        for position, gold in zip(index.tolist(), gold_classes(example)):
            if position >= 0 and gold in class_ids:
                logits.append(layer_logits[:, position])
                gold_ids.append(class_ids[gold])
    return logits, gold_ids


def unaligned_tokens(examples: Iterable[Example]) -> Tuple[int, int]:
    """Predicted tokens that do not match exactly one gold token, and all predicted tokens.

    Many such tokens mean the pipeline's tokenizer does not fit the annotation;
    spaCy then drops the gold that no longer aligns.
    """
    total = off = 0
    for example in examples:
        lengths = numpy.asarray(example.alignment.x2y.lengths)
        total += len(lengths)
        off += int((lengths != 1).sum())
    return off, total
