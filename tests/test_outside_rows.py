"""benchmarks/outside_rows.py and table_harness.py: the ORT rows label like
hf-full, spacy-cnn scores, and the harness times run orders and batch sizes."""
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

from spacy_early_exit.testing import NER_DATA
from spacy_early_exit.tools.data import load_examples
from test_precision_benchmark import EXTRA, train_tiny_spacy_ner, write_split

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from hf_full import HFFullDepth  # noqa: E402
from outside_rows import LENGTH_SORTED, ORT_METHODS, SpacyCnnRow, outside_rows  # noqa: E402
from table_harness import DOCUMENT_ORDER, Row, Timing, one_order, time_rows  # noqa: E402

WORDS = [text.split() for text, _ in NER_DATA + EXTRA]


def test_ort_rows_label_like_hf_full(trained_ner, tmp_path, monkeypatch):
    missing = [name for name in ("onnxruntime", "onnx") if importlib.util.find_spec(name) is None]
    if missing:
        # scripts/install.sh installs them (the `ort` extra): CI must not pass by skipping.
        if os.environ.get("CI"):
            pytest.fail(f"{missing} not installed: scripts/install.sh installs the `ort` extra")
        pytest.skip(f"{missing} not installed (pip install -e '.[ort]')")
    # Everything the export writes goes to the temporary folder, and is gone after.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rows = outside_rows(trained_ner, ORT_METHODS, threads=1, spacy_cnn=None)
    assert list(rows) == list(ORT_METHODS) and not list(tmp_path.iterdir())
    expected = HFFullDepth(trained_ner).label_ids(WORDS)
    n_words = sum(len(w) for w in WORDS)
    for method, row in rows.items():
        runtime = row.runtime
        assert runtime["intra_op_threads"] == 1 and runtime["inter_op_threads"] == 1
        # The optimizer fused the tiny BERT's 4 layers as it fuses MiniLM's 6.
        assert runtime["fused_operators"]["Attention"] == 4 and runtime["fused_operators"]["SkipLayerNormalization"] == 8
        got = row.labeller.label_ids(WORDS)
        assert [len(r) for r in got] == [len(r) for r in expected]
        same = sum(a == b for g, e in zip(got, expected) for a, b in zip(g, e)) / n_words
        if method == "ort-fp32":
            assert same >= 0.99, same
        else:
            assert row.precision == "int8" and runtime["quantized_operators"]
        # Both run orders label every word.
        timing = row.timing([" ".join(w) for w in WORDS], WORDS, [1, 32])
        assert set(timing.runs) == {DOCUMENT_ORDER, LENGTH_SORTED}
        assert timing.runs[LENGTH_SORTED](slice(None), 32) == n_words


def test_spacy_cnn_row_scores_on_the_test_examples(trained_ner, tmp_path):
    path = train_tiny_spacy_ner(tmp_path / "model-best")
    write_split(trained_ner, NER_DATA + EXTRA, tmp_path / "test.spacy")
    test = load_examples(trained_ner, tmp_path / "test.spacy")
    row = SpacyCnnRow(path)
    result = row.result(trained_ner, test, "ents_f")
    assert result["score"] is not None and 0.0 <= result["score"] <= 100.0
    assert result["flops_speedup"] == 1.0 and result["layer_speedup"] == 1.0
    assert row.runtime["components"] == ["ner"] and row.precision == "fp32"
    timing = row.timing([eg.reference.text for eg in test], [], [1, 32])
    assert timing.extra_batch_sizes == (128, 1000) and list(timing.runs) == [DOCUMENT_ORDER]
    # With both orders, the length-sorted run sees the texts shortest first.
    texts = [eg.reference.text for eg in test]
    words = [text.split() for text in texts]
    seen = []
    both = SpacyCnnRow(path, (DOCUMENT_ORDER, LENGTH_SORTED))
    tokenize = both.nlp.tokenizer

    def recording(text):
        seen.append(len(text.split()))
        return tokenize(text)

    both.nlp.tokenizer = recording
    both.timing(texts, words, [1, 32]).runs[LENGTH_SORTED](slice(None), 32)
    assert seen == sorted(len(w) for w in words)


def sleeper(per_batch: float):
    """A runner that sleeps `per_batch` seconds per batch: no CPU, a known speed."""
    def run(part: slice, batch_size: int) -> None:
        n = len(range(*part.indices(200)))
        time.sleep(per_batch * -(-n // batch_size))

    return run


def test_time_rows_reports_the_faster_order_and_the_best_batch_size():
    rows = [Row("a"), Row("b"), Row("c")]
    timings = {
        rows[0].key: one_order(sleeper(0.002)),
        rows[1].key: Timing({DOCUMENT_ORDER: sleeper(0.004), LENGTH_SORTED: sleeper(0.001)}),
        rows[2].key: Timing({DOCUMENT_ORDER: sleeper(0.002)}, extra_batch_sizes=(128, 1000)),
    }
    speeds = time_rows(rows, timings, 200, 1000, [1, 32], 1, {"vs_a": rows[0].key, "vs_missing": "x@1/fp32"})
    a, b, c = (row.result for row in rows)
    assert list(a) == ["words_per_second", "vs_a", "seconds"] and a["vs_a"] == {"1": 1.0, "32": 1.0}
    assert set(b["words_per_second_by_order"]) == {DOCUMENT_ORDER, LENGTH_SORTED}
    assert b["words_per_second"] == b["words_per_second_by_order"][LENGTH_SORTED]
    assert b["vs_a"]["1"] > 1.5
    # 200 items in one pass: 128 -> 2 batches, 1000 -> 1 batch, 32 -> 7 batches in chunks of 64.
    assert set(c["words_per_second_by_batch"]) == {"1", "32", "128", "1000"}
    assert c["batch_size_used"] == {"1": 1, "32": 1000}
    assert c["words_per_second"]["32"] == c["words_per_second_by_batch"]["1000"]
    assert speeds[rows[2].key][32] > speeds[rows[0].key][32] * 3



def test_time_rows_drops_timing_keys_it_does_not_write_again():
    # A row read back from a report timed under other rules keeps no stale timing.
    row = Row("a", result={"score": 1.0, "words_per_second_by_batch": {"1000": 5.0}, "batch_size_used": {"32": 1000},
                           "words_per_second_by_order": {"old": {}}})
    time_rows([row], {row.key: one_order(sleeper(0.001))}, 10, 100, [1], 1, {})
    assert row.result["score"] == 1.0 and list(row.result) == ["score", "words_per_second", "seconds"]
