"""Memory over long streams: oneDNN off at inference, and heap trimming every N docs."""
import platform
import sys

import pytest
import torch

from spacy_early_exit import memory
from spacy_early_exit.memory import HeapTrimmer, native_kernels, release_free_heap
from spacy_early_exit.testing import make_ner_nlp


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
    # glibc provides malloc_trim; on musl or with another libc there is none,
    # and releasing says False instead of failing.
    available = memory._malloc_trim() is not None
    if platform.libc_ver()[0] == "glibc":
        assert available, "glibc without malloc_trim: the lookup in the running process failed"
    assert release_free_heap() is available


def test_release_trims_everything_free_and_reports_a_missing_trim(monkeypatch):
    pads = []
    monkeypatch.setattr(memory, "_malloc_trim", lambda: lambda pad: pads.append(pad) or 1)
    assert release_free_heap() is True
    assert pads == [0]  # pad 0: keep no free memory at the top of the heap
    monkeypatch.setattr(memory, "_malloc_trim", lambda: None)
    assert release_free_heap() is False


def test_component_counts_predicted_docs(monkeypatch, tiny_model_dir):
    calls = []
    monkeypatch.setattr(memory, "release_free_heap", lambda: calls.append(1) or True)
    nlp = make_ner_nlp(tiny_model_dir, memory={"heap_trim_interval": 5})
    pipe = nlp.get_pipe("tokee_ner")
    assert pipe.heap_trimmer.interval == 5
    list(nlp.pipe(["Ada Lovelace wrote it."] * 20, batch_size=4))
    assert len(calls) == 2  # after docs 8 and 16: counted per batch of 4, the count restarting at each trim


def test_config_rejects_a_bad_interval(tiny_model_dir):
    with pytest.raises(ValueError, match="heap_trim_interval"):
        make_ner_nlp(tiny_model_dir, memory={"heap_trim_interval": -5})


def test_native_kernels_switches_onednn_off_and_restores_it():
    assert torch.backends.mkldnn.enabled
    with native_kernels():
        assert not torch.backends.mkldnn.enabled
    assert torch.backends.mkldnn.enabled
    with pytest.raises(RuntimeError, match="boom"):
        with native_kernels():
            raise RuntimeError("boom")
    assert torch.backends.mkldnn.enabled, "an error inside the block left oneDNN off"


def test_native_kernels_leaves_a_user_choice_alone():
    torch.backends.mkldnn.enabled = False
    try:
        with native_kernels():
            assert not torch.backends.mkldnn.enabled
        assert not torch.backends.mkldnn.enabled
    finally:
        torch.backends.mkldnn.enabled = True


def test_prediction_runs_without_onednn_and_training_with_it(tiny_model_dir):
    # oneDNN's per-shape primitive cache is what made a long stream's heap grow.
    from spacy.training import Example

    from spacy_early_exit.layers.architecture import get_shim

    nlp = make_ner_nlp(tiny_model_dir)
    encoder = get_shim(nlp.get_pipe("tokee_ner").model).encoder
    seen = []
    encoder.register_forward_pre_hook(lambda module, args: seen.append(torch.backends.mkldnn.enabled))
    nlp("Ada Lovelace wrote it.")
    assert seen == [False] and torch.backends.mkldnn.enabled
    doc = nlp.make_doc("Ada Lovelace wrote it.")
    nlp.update([Example.from_dict(doc, {"entities": [(0, 12, "PER")]})])
    assert seen[1:] == [True]
