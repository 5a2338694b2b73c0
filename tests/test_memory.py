"""Heap trimming: the component hands freed memory back every N docs."""
import sys

import pytest

from conftest import make_ner_nlp
from spacy_early_exit import memory
from spacy_early_exit.memory import HeapTrimmer, release_free_heap


def test_trimmer_runs_every_interval_docs(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "release_free_heap", lambda: calls.append(1) or True)
    trimmer = HeapTrimmer(10)
    ran = [trimmer.count(4) for _ in range(6)]  # 4, 8, 12 -> trim, 4, 8, 12 -> trim
    assert ran == [False, False, True, False, False, True]
    assert len(calls) == 2 and trimmer.trims == 2


def test_interval_zero_never_trims(monkeypatch):
    monkeypatch.setattr(memory, "release_free_heap", lambda: pytest.fail("trimmed with interval 0"))
    trimmer = HeapTrimmer(0)
    assert not any(trimmer.count(10_000) for _ in range(5))


@pytest.mark.parametrize("bad", [-1, 1.5, "100", True, None])
def test_bad_interval_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="heap_trim_interval"):
        HeapTrimmer(bad)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_release_calls_the_c_library_on_linux():
    # glibc provides malloc_trim; on musl or with another libc this is False, never an error.
    assert release_free_heap() in (True, False)
    if memory._malloc_trim() is not None:
        assert release_free_heap() is True


def test_component_counts_predicted_docs(monkeypatch, tiny_model_dir):
    calls = []
    monkeypatch.setattr(memory, "release_free_heap", lambda: calls.append(1) or True)
    nlp = make_ner_nlp(tiny_model_dir, heap_trim_interval=5)
    pipe = nlp.get_pipe("tokee_ner")
    assert pipe.heap_trimmer.interval == 5
    list(nlp.pipe(["Ada Lovelace wrote it."] * 20, batch_size=4))
    assert len(calls) == 2  # after docs 8 and 16: counted per batch of 4, the count restarting at each trim


def test_config_rejects_a_bad_interval(tiny_model_dir):
    with pytest.raises(ValueError, match="heap_trim_interval"):
        make_ner_nlp(tiny_model_dir, heap_trim_interval=-5)
