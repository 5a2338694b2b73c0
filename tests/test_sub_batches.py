"""Length-sorted sub-batches: every row once, the budget kept, padding traded against passes."""
import itertools
import random

import pytest

from spacy_early_exit.layers import architecture, sub_batches
from spacy_early_exit.layers.sub_batches import SUB_BATCH_OVERHEAD, length_sub_batches
from spacy_early_exit.testing import make_ner_nlp


def _cost(lengths, batches, overhead):
    return sum(len(b) * max(lengths[i] for i in b) for b in batches) + overhead * len(batches)


def _best_cost(lengths, overhead):
    """Brute force over every cut of the length-sorted rows (no budget)."""
    ordered = sorted(lengths, reverse=True)
    best = None
    for n_cuts in range(len(ordered)):
        for cuts in itertools.combinations(range(1, len(ordered)), n_cuts):
            bounds = (0, *cuts, len(ordered))
            cost = sum((b - a) * ordered[a] + overhead for a, b in zip(bounds, bounds[1:]))
            best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_every_row_once_longest_first_within_the_budget(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(3, 120) for _ in range(rng.randint(2, 300))]
    budget = rng.choice([200, 1000, 8192])
    batches = length_sub_batches(lengths, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        own = [lengths[i] for i in batch]
        assert own == sorted(own, reverse=True)
        assert len(batch) == 1 or len(batch) * own[0] <= budget


@pytest.mark.parametrize("seed", range(8))
def test_the_cut_is_the_cheapest_one(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([4, 5, 9, 20, 21, 40, 80]) for _ in range(rng.randint(2, 9))]
    overhead = rng.choice([10, 50, 200])
    batches = length_sub_batches(lengths, budget=10**6, overhead=overhead)
    assert _cost(lengths, batches, overhead) == _best_cost(lengths, overhead)


def test_mixed_lengths_are_cut_and_similar_ones_kept_together():
    mixed = [100] * 20 + [10] * 200  # one pass would pad 200 rows by 90 pieces
    batches = length_sub_batches(mixed, budget=10**6)
    assert [len(b) for b in batches] == [20, 200]
    similar = list(range(20, 40)) * 3
    assert len(length_sub_batches(similar, budget=10**6)) == 1


def test_without_overhead_limit_only_the_budget_cuts():
    lengths = [100] * 20 + [10] * 200
    batches = length_sub_batches(lengths, budget=1000, overhead=float("inf"))
    assert [len(b) for b in batches] == [10, 10, 100, 100]  # 1,000 pieces each
    assert length_sub_batches([], 10) == [] and length_sub_batches([7], 3) == [[0]]
    with pytest.raises(ValueError, match="budget"):
        length_sub_batches([3, 4], 0)
    assert SUB_BATCH_OVERHEAD > 0


def test_predictions_do_not_depend_on_the_cut(tiny_model_dir, monkeypatch):
    nlp = make_ner_nlp(tiny_model_dir, steps=2)
    texts = [" ".join(["Alice visited Paris"] * n) for n in (1, 1, 2, 9, 9, 1, 20, 3, 14, 1)]
    passes = []
    collate = architecture.collate
    monkeypatch.setattr(architecture, "collate", lambda rows, *a, **k: passes.append(len(rows)) or collate(rows, *a, **k))

    def annotate():
        passes.clear()
        return [([(t.ent_iob_, t.ent_type_) for t in doc], list(doc._.early_exit["tokee_ner"]["exit_layers"]),
                 doc._.early_exit["tokee_ner"]["flops"]) for doc in nlp.pipe(texts, batch_size=len(texts))]

    saved = sub_batches.SUB_BATCH_OVERHEAD
    try:
        sub_batches.SUB_BATCH_OVERHEAD = float("inf")  # one pass
        whole = annotate()
        assert len(passes) == 1
        n_rows = passes[0]  # the long docs are windowed into several rows
        sub_batches.SUB_BATCH_OVERHEAD = 0  # a pass per distinct length
        cut = annotate()
        assert len(passes) >= 4 and sum(passes) == n_rows
    finally:
        sub_batches.SUB_BATCH_OVERHEAD = saved
    assert cut == whole
