"""Timing harness: every runner covers every item once per repetition, interleaved."""
import pytest

from spacy_early_exit.tools.evaluate import interleaved_seconds


def test_interleaving_covers_every_item_in_rotating_order():
    calls = []
    runners = {name: (lambda part, bs, name=name: calls.append((name, part.start, part.stop, bs))) for name in "abc"}
    times = interleaved_seconds(runners, n_items=10, batch_sizes=(1, 4), repeats=2, progress=False, chunk=4)
    assert set(times) == {"a", "b", "c"}
    assert all(len(times[n][bs]) == 2 for n in times for bs in (1, 4))
    for name in "abc":
        for bs in (1, 4):
            covered = [i for n, lo, hi, b in calls if n == name and b == bs for i in range(lo, min(hi, 10))]
            assert sorted(covered) == sorted(list(range(10)) * 2)
    # Within a repetition and batch size, consecutive chunks change who goes first.
    firsts = [calls[i][0] for i in range(0, 9, 3)]
    assert firsts == ["a", "b", "c"]


def test_interleaving_rejects_an_empty_chunk():
    with pytest.raises(ValueError, match="chunk"):
        interleaved_seconds({"a": lambda part, bs: None}, 3, chunk=0, progress=False)
