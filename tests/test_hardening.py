"""Hardening: hostile text, any batch, long documents, processes, memory, determinism.

Property-based tests (hypothesis) run tiny random models through random
Unicode, random batches and random exit settings; the other tests pin down
documents far beyond the position limit, `nlp.pipe(n_process=2)`, streaming
memory and run-to-run determinism.
"""
import gc
import json
import os
import signal
import subprocess
import sys
import tracemalloc
import weakref
from pathlib import Path
from typing import List

import numpy
import pytest
import spacy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spacy.tokens import Doc

from spacy_early_exit.layers.alignment import Aligner, DocLayout, SequenceRow
from spacy_early_exit.layers.architecture import get_aligner, get_shim
from spacy_early_exit.testing import NER_DATA, bert_tokenizer, make_ner_nlp
from spacy_early_exit.tools.evaluate import exit_settings

TESTS = Path(__file__).parent
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    database=None,  # no .hypothesis folder in the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- strategies ----------------------------------------------------------------

HOSTILE = [
    "John", "Smith", "New York", "London", "Google", "Paris", "the", "said", ".", ",", "'s",
    "😀", "🎉", "👨\u200d👩\u200d👧\u200d👦", "🇺🇸", "e\u0301", "\u0301\u0301", "a\u0308\u0323",
    "مرحبا", "שלום", "\u202e", "\u202d", "\u200b", "\u200c", "\u200d", "\u200e", "\u2060", "\ufeff",
    "\x00", "\x07", "\x1b[31m", "\x7f", "\x85", "\u2028", "\u2029", "\u00a0", "\u3000",
    "北京", "東京タワー", "한국어", "ﬁ", "İ", "ß", "ǅ", "\U000e0001", "ﷺ", "\ufffd", "http://x.co/a?b=c&d",
]
WHITESPACE = " \t\n\r\u00a0\u2028\u3000\x0b\x0c"

long_word = st.builds(lambda piece, n: piece * n, st.sampled_from(["a", "x9", "é", "😀", "ab-", "北"]), st.integers(20, 400))
fragment = st.one_of(st.sampled_from(HOSTILE), st.text(min_size=1, max_size=12), long_word)
separator = st.sampled_from(["", " ", " ", "  ", "\n", "\t", "\n\n "])
composed = st.lists(st.tuples(fragment, separator), max_size=25).map(lambda parts: "".join(f + s for f, s in parts))
texts = st.one_of(composed, st.text(max_size=60), st.text(alphabet=WHITESPACE, max_size=20))
batches = st.lists(texts, min_size=1, max_size=8)
levels = st.integers(0, 100).map(lambda i: i / 100)
exit_fields = st.fixed_dictionaries(
    {
        "exit_mode": st.sampled_from(["tokee", "sentee", "off"]),
        "threshold": levels,
        "window": st.integers(0, 4),
        "thresholds": st.none() | st.lists(levels, min_size=4, max_size=4),
        "temperatures": st.sampled_from([None, [0.25] * 4, [0.1, 0.5, 1.0, 2.0]]),
    }
)

# -- pipelines -----------------------------------------------------------------


@pytest.fixture(scope="module")
def pipelines(trained_ner, tiny_model_dir):
    """Default windows (64 positions), short windows, and pretokenized short windows."""
    sharp = dict(steps=15, threshold=0.5, window=1, temperatures=[0.25] * 4)
    return {
        "default": trained_ner,
        "windows": make_ner_nlp(tiny_model_dir, model={"max_length": 12}, **sharp),
        "pretokenized": make_ner_nlp(tiny_model_dir, model={"max_length": 12, "pretokenized": True}, **sharp),
    }


def signature(doc: Doc, name: str = "tokee_ner"):
    record = doc._.early_exit[name]
    ents = [(e.start, e.end, e.label_) for e in doc.ents]
    return ents, record["exit_layers"], record["flops"], record["full_flops"]


def check_doc(nlp, doc: Doc) -> None:
    """Every invariant one processed doc must satisfy."""
    ner = nlp.get_pipe("tokee_ner")
    encoder = get_shim(ner.model).encoder
    n_layers = encoder.num_layers
    record = doc._.early_exit["tokee_ner"]
    layers = record["exit_layers"]
    assert len(layers) == len(doc)
    assert all(isinstance(layer, int) and 0 <= layer <= n_layers for layer in layers)
    rows, (layout,) = get_aligner(ner.model).layout([doc])
    # 0 exactly for the tokens that have no wordpiece.
    assert [layer == 0 for layer in layers] == (layout.token_rows < 0).tolist()
    # Entities: valid, sorted, non-overlapping spans over labeled tokens.
    end = 0
    for ent in doc.ents:
        assert end <= ent.start < ent.end <= len(doc) and ent.label_ in ner.labels
        assert all(layers[i] > 0 for i in range(ent.start, ent.end))
        end = ent.end
    # FLOPs. The layers never cost more than at full depth; the only extra
    # cost is the off-ramps run before the last layer, which a full-depth
    # model does not have (README: "With exits on but nothing exiting, flops
    # is slightly higher than full_flops"). So `flops <= full_flops` holds
    # exactly at full depth, and up to that ramp cost with exits on.
    words_in_rows = sum(len(row.word_cols) for row in rows)
    policy = ner.policy
    if policy.mode == "off":
        assert record["flops"] == record["full_flops"]
        assert set(layers) <= {0, n_layers}
    else:
        ramp_layers = sum(1 for layer in range(1, n_layers) if policy.layer_threshold(layer) > 0)
        assert record["flops"] <= record["full_flops"] + ramp_layers * encoder.cost.ramp_flops(words_in_rows)
    if not words_in_rows:
        assert record["flops"] == record["full_flops"] == 0
    if policy.mode == "sentee":
        # A whole encoder row leaves together.
        for row in layout.rows:
            assert len({layers[i] for i in numpy.flatnonzero(layout.token_rows == row)}) <= 1


# -- properties ------------------------------------------------------------------


@pytest.mark.parametrize("which", ["default", "windows", "pretokenized"])
@PROPERTY
@given(batch=batches, batch_size=st.integers(1, 8), fields=exit_fields)
def test_any_text_any_batch_any_setting(pipelines, which, batch, batch_size, fields):
    nlp = pipelines[which]
    with exit_settings(nlp, fields):
        docs = list(nlp.pipe(batch, batch_size=batch_size))
        assert [doc.text for doc in docs] == batch
        for doc in docs:
            check_doc(nlp, doc)
        alone = [signature(next(iter(nlp.pipe([text])))) for text in batch]
    assert [signature(doc) for doc in docs] == alone


def test_every_token_exiting_at_layer_one_costs_less_than_full_depth(trained_ner):
    with exit_settings(trained_ner, {"thresholds": [1.0, 0.0, 0.0, 0.0], "exit_mode": "tokee"}):
        for text, _ in NER_DATA:
            record = trained_ner(text)._.early_exit["tokee_ner"]
            assert set(record["exit_layers"]) == {1}
            assert record["flops"] < record["full_flops"] / 3


def test_pretokenized_docs_with_empty_and_space_tokens(pipelines):
    # Docs built from words, as a corpus reader would: empty strings, spaces
    # and control characters as tokens of their own.
    for which in ("default", "pretokenized"):
        nlp = pipelines[which]
        vocab = nlp.vocab
        words = ["John", " ", "\x00", "\u200b", "lives", "\n", "in", "London", "😀"]
        doc = Doc(vocab, words=words, spaces=[True] * len(words))
        (doc,) = list(nlp.pipe([doc]))
        check_doc(nlp, doc)


# -- the linear windowing against the former quadratic one ----------------------


class QuadraticAligner(Aligner):
    """The windowing as it was before it was made linear (a windows x words
    table), kept as the reference the faster code must match exactly."""

    def _windowed_rows(self, doc, rows):
        # The base class finds each token's first piece; from there on, both
        # the single-row and the windowed layout are replaced by this one.
        ids, first, words, pairs, token_rows, token_slots = doc.unpack()
        n_tokens = len(token_rows)
        pair_token, pair_piece = pairs
        starts = self._window_starts(len(ids))
        word_first = first[words]
        s = starts[:, None]
        e = s + self.content
        inside = (word_first[None, :] >= s) & (word_first[None, :] < e)
        left = numpy.where(s > 0, word_first[None, :] - s, len(ids))
        right = numpy.where(e < len(ids), e - 1 - word_first[None, :], len(ids))
        owner = numpy.where(inside, numpy.minimum(left, right), -1).argmax(axis=0)
        offset = len(self.prefix)
        doc_rows = []
        for w_index, start in enumerate(starts.tolist()):
            end = min(start + self.content, len(ids))
            in_window = words[inside[w_index]]
            if len(in_window) == 0:
                continue
            slot_of_token = numpy.full(n_tokens, -1, dtype="int64")
            slot_of_token[in_window] = numpy.arange(len(in_window))
            keep = (pair_piece >= start) & (pair_piece < end) & (slot_of_token[pair_token] >= 0)
            rows.append(
                SequenceRow(
                    ids=numpy.concatenate([self.prefix, ids[start:end], self.suffix]),
                    word_cols=first[in_window] - start + offset,
                    pair_cols=pair_piece[keep] - start + offset,
                    pair_words=slot_of_token[pair_token[keep]],
                )
            )
            owned = words[(owner == w_index) & inside[w_index]]
            token_rows[owned] = len(rows) - 1
            token_slots[owned] = slot_of_token[owned]
            doc_rows.append(len(rows) - 1)
        return DocLayout(token_rows, token_slots, doc_rows)

    _single_row = _windowed_rows


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return bert_tokenizer(tmp_path_factory.mktemp("hardening-tok"))


def layout_arrays(aligner: Aligner, docs: List[Doc]):
    rows, layouts = aligner.layout(docs)
    row_data = [tuple(getattr(row, f).tolist() for f in ("ids", "word_cols", "pair_cols", "pair_words")) for row in rows]
    layout_data = [(lay.token_rows.tolist(), lay.token_slots.tolist(), lay.rows) for lay in layouts]
    return row_data, layout_data


@PROPERTY
@given(
    batch=st.lists(st.one_of(texts, st.lists(st.sampled_from(HOSTILE + ["a" * 30]), max_size=200).map(" ".join)), min_size=1, max_size=4),
    max_length=st.integers(5, 40),
    pretokenized=st.booleans(),
)
def test_linear_windowing_matches_the_reference(tokenizer, batch, max_length, pretokenized):
    nlp = spacy.blank("en")
    docs = [nlp.make_doc(text) for text in batch]
    fast = Aligner(tokenizer, max_length, pretokenized=pretokenized)
    slow = QuadraticAligner(tokenizer, max_length, pretokenized=pretokenized)
    assert layout_arrays(fast, docs) == layout_arrays(slow, docs)


def test_windowing_memory_is_linear_in_document_length(tokenizer):
    # 20,000 tokens in 12-piece windows: about 2,600 windows. A windows x
    # words table would take 0.4 GB of temporaries here (and terabytes at a
    # million tokens with a 512-position backbone).
    doc = spacy.blank("en").make_doc(" ".join(["John Smith lives in New York ."] * 2860))
    aligner = Aligner(tokenizer, 12)
    tracemalloc.start()
    try:
        rows, (layout,) = aligner.layout([doc])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(rows) > 2000 and (layout.token_rows >= 0).all()
    assert peak < 40 * 2**20, f"peak {peak / 2**20:.0f} MiB"


# -- huge documents ----------------------------------------------------------------


def test_document_far_beyond_the_position_limit(trained_ner):
    # 5,000 tokens against a 64-position backbone: about 180 windows.
    sentence = "John Smith lives in New York and works for Google in London ."
    text = " ".join([sentence] * 385)
    doc = trained_ner(text)
    assert len(doc) >= 5000
    check_doc(trained_ner, doc)
    layers = doc._.early_exit["tokee_ner"]["exit_layers"]
    assert 0 not in layers and len(set(layers)) > 1
    rows, _ = get_aligner(trained_ner.get_pipe("tokee_ner").model).layout([doc])
    assert len(rows) > 100
    # The same inside a batch of short docs, and at batch size 1.
    docs = list(trained_ner.pipe([NER_DATA[0][0], text, "", NER_DATA[1][0]], batch_size=4))
    assert signature(docs[1]) == signature(doc)


# -- multiprocessing ---------------------------------------------------------------

MULTIPROCESS_SCRIPT = """
import os, sys
sys.path.insert(0, {root!r})  # this working tree's package, whatever is installed
import torch
from pathlib import Path
from spacy_early_exit.testing import NER_DATA, make_ner_nlp, save_tiny_backbone

# The parent runs torch on two threads and tokenizes in parallel before
# spaCy forks its workers: what deadlocked a forked child.
torch.set_num_threads(2)
nlp = make_ner_nlp(save_tiny_backbone(Path({tmp!r})), steps=5, threshold=0.5, window=1, temperatures=[0.25] * 4)
texts = [t for t, _ in NER_DATA] * 25 + ["", "   ", " ".join(["John lives in London ."] * 40)]

def out(docs):
    return [(d.text, [(e.start, e.end, e.label_) for e in d.ents], d._.early_exit) for d in docs]

one = out(nlp.pipe(texts, batch_size=8))
two = out(nlp.pipe(texts, batch_size=8, n_process=2))
assert one == two, "n_process=2 differs from one process"
assert "TOKENIZERS_PARALLELISM" not in os.environ, os.environ["TOKENIZERS_PARALLELISM"]
assert torch.get_num_threads() == 2
print("OK", len(two))
"""


def run_script(code: str, timeout: float) -> subprocess.CompletedProcess:
    """Run code in a new session; on timeout kill its whole process group
    (spaCy's workers included), so a deadlock fails the test instead of hanging."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("TOKENIZERS_PARALLELISM", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"timed out after {timeout}s (deadlock?)\n{stdout[-2000:]}\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.slow
def test_n_process_2_matches_one_process_without_deadlock(tmp_path):
    result = run_script(MULTIPROCESS_SCRIPT.format(root=str(TESTS.parent), tmp=str(tmp_path / "bb")), timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "OK 103" in result.stdout
    # The tokenizers library's fork warning is not printed.
    assert "huggingface/tokenizers" not in result.stderr, result.stderr[-2000:]


def test_forked_child_gets_one_torch_thread_and_serial_tokenizers():
    import torch

    import spacy_early_exit.layers.shim  # noqa: F401  (registers the fork hooks)

    previous = torch.get_num_threads()
    saved = os.environ.pop("TOKENIZERS_PARALLELISM", None)
    read, write = os.pipe()
    try:
        torch.set_num_threads(2)
        pid = os.fork()
        if pid == 0:  # the child reports and leaves at once
            os.write(write, f"{torch.get_num_threads()} {os.environ.get('TOKENIZERS_PARALLELISM')}".encode())
            os._exit(0)
        os.close(write)
        report = os.read(read, 100).decode()
        os.waitpid(pid, 0)
        assert report == "1 false"
        assert torch.get_num_threads() == 2 and "TOKENIZERS_PARALLELISM" not in os.environ
    finally:
        os.close(read)
        torch.set_num_threads(previous)
        if saved is not None:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


@pytest.mark.slow
def test_stress_script_smoke(tmp_path):
    output = tmp_path / "stress.json"
    script = TESTS.parent / "benchmarks" / "stress.py"
    args = ["--tiny", "--docs", "300", "--batch-size", "16", "--long-sizes", "600", "--repeats", "1", "--mp-docs", "64", "--output", str(output)]
    code = f"import runpy, sys; sys.argv = {[str(script)] + args!r}; runpy.run_path({str(script)!r}, run_name='__main__')"
    result = run_script(code, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["ok"] and report["stream"]["docs_out"] == 300
    assert report["stream"]["errors"] == 0 and report["stream"]["tokens_lost"] == 0
    assert report["long_documents"][0]["tokens"] == 600 and report["long_documents"][0]["tokens_lost"] == 0
    assert report["package"] == str(TESTS.parent / "spacy_early_exit")


@pytest.mark.slow
def test_package_imports_where_processes_cannot_fork():
    code = "import os, torch, transformers; del os.register_at_fork; import spacy_early_exit.layers.shim; print('imported')"
    result = run_script(code, timeout=120)
    assert result.returncode == 0 and "imported" in result.stdout, result.stderr[-2000:]


# -- memory ----------------------------------------------------------------------


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def stream(nlp, n_docs: int, batch_size: int = 64):
    pool = [t for t, _ in NER_DATA] + ["", "emoji 😀 \u200b", " ".join(["John lives in London ."] * 30)]
    texts = (pool[i % len(pool)] for i in range(n_docs))
    tokens = labeled = 0
    for doc in nlp.pipe(texts, batch_size=batch_size):
        tokens += len(doc)
        labeled += len(doc._.early_exit["tokee_ner"]["exit_layers"])
    return tokens, labeled


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc")
def test_streaming_keeps_memory_flat(trained_ner):
    stream(trained_ner, 2000)  # warm-up: allocator pools, vocab, caches
    gc.collect()
    before = rss_mib()
    tokens, labeled = stream(trained_ner, 10000)
    gc.collect()
    grown = rss_mib() - before
    assert tokens == labeled
    assert grown < 15, f"RSS grew {grown:.1f} MiB over 10,000 docs"


def test_no_per_doc_state_is_left_on_the_component(trained_ner):
    ner = trained_ner.get_pipe("tokee_ner")
    shim = get_shim(ner.model)
    trained_ner("warm up")
    aligner = get_aligner(ner.model)
    state = {key: id(value) for key, value in vars(ner).items()}
    shim_state = {key: id(value) for key, value in vars(shim).items()}
    docs = list(trained_ner.pipe([t for t, _ in NER_DATA] * 3 + ["x" * 500]))
    refs = [weakref.ref(doc) for doc in docs]
    del docs
    gc.collect()
    assert all(ref() is None for ref in refs), "a processed doc is still referenced"
    assert {key: id(value) for key, value in vars(ner).items()} == state
    assert {key: id(value) for key, value in vars(shim).items()} == shim_state
    assert get_aligner(ner.model) is aligner and ner._planner is None


# -- determinism ----------------------------------------------------------------


def outputs_and_logits(nlp, texts: List[str], batch_size: int):
    docs = list(nlp.pipe(texts, batch_size=batch_size))
    predictions = nlp.get_pipe("tokee_ner").predict([nlp.make_doc(t) for t in texts])
    return [signature(doc) for doc in docs], [p.logits for p in predictions]


DETERMINISM_TEXTS = [t for t, _ in NER_DATA] + [
    "", "London", "emoji 😀 and מילים", " ".join(["John Smith lives in New York ."] * 20), "x" * 300,
]


def test_same_seed_same_training_same_output(tiny_model_dir):
    def build():
        spacy.util.fix_random_seed(7)
        return make_ner_nlp(tiny_model_dir, steps=6, threshold=0.5, window=1, temperatures=[0.25] * 4)

    first, second = build(), build()
    out_1, logits_1 = outputs_and_logits(first, DETERMINISM_TEXTS, 4)
    out_2, logits_2 = outputs_and_logits(second, DETERMINISM_TEXTS, 4)
    assert out_1 == out_2
    assert all(numpy.array_equal(a, b) for a, b in zip(logits_1, logits_2))


@pytest.mark.parametrize("mode", ["tokee", "sentee", "off"])
def test_same_output_across_runs_and_batch_sizes(pipelines, mode):
    nlp = pipelines["windows"]
    with exit_settings(nlp, {"exit_mode": mode}):
        reference, ref_logits = outputs_and_logits(nlp, DETERMINISM_TEXTS, 64)
        again, again_logits = outputs_and_logits(nlp, DETERMINISM_TEXTS, 64)
        assert again == reference
        assert all(numpy.array_equal(a, b) for a, b in zip(again_logits, ref_logits))
        for batch_size in (1, 2, 3, 7):
            assert outputs_and_logits(nlp, DETERMINISM_TEXTS, batch_size)[0] == reference
        shuffled = DETERMINISM_TEXTS[::-1]
        assert outputs_and_logits(nlp, shuffled, 5)[0] == reference[::-1]
