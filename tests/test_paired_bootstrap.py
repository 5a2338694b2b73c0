"""The paired bootstrap: spacy_early_exit/tools/paired_bootstrap.py (per-doc counts as
spaCy's scorers count them, the resampling) and benchmarks/paired_bootstrap.py on it."""
import importlib.util
from pathlib import Path

import numpy
import pytest
import spacy
from spacy.scorer import get_ner_prf
from spacy.tokens import Doc
from spacy.training import Example

from spacy_early_exit.scorers import score_segmentation, score_tagging
from spacy_early_exit.testing import ner_examples
from spacy_early_exit.tools import paired_bootstrap
from spacy_early_exit.tools.data import load_examples
from spacy_early_exit.tools.measure import measure
from test_precision_benchmark import DATASET, tiny_project

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "paired_bootstrap.py"


@pytest.fixture(scope="module")
def bootstrap_module():
    spec = importlib.util.spec_from_file_location("paired_bootstrap", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_f1_of_counts(bootstrap_module):
    # 3 of 4 predicted right, 5 gold: P 0.75, R 0.6, F1 2*3/(4+5).
    assert bootstrap_module.f1(numpy.array([3, 4, 5])) == pytest.approx(200 * 3 / 9)
    assert bootstrap_module.f1(numpy.array([0, 0, 0])) == 0.0


def test_bootstrap_identical_and_dominating(bootstrap_module):
    rng = numpy.random.default_rng(1)
    gold = rng.integers(1, 5, 50)
    b = numpy.stack([gold // 2, gold, gold], axis=1)
    same = bootstrap_module.bootstrap(b, b, resamples=200, seed=0)
    assert same["delta"] == 0 and same["ci95"] == [0, 0] and same["share_a_not_better"] == 1.0
    # a finds every entity b finds and more, in every doc: better in every resample.
    a = numpy.stack([gold, gold, gold], axis=1)
    better = bootstrap_module.bootstrap(a, b, resamples=200, seed=0)
    assert better["delta"] > 0 and better["ci95"][0] > 0 and better["share_a_not_better"] == 0.0
    flipped = bootstrap_module.bootstrap(b, a, resamples=200, seed=0)
    assert flipped["delta"] == pytest.approx(-better["delta"]) and flipped["ci95"][1] < 0


def test_counts_agree_with_spacy_scorer(bootstrap_module, tiny_model_dir, tmp_path):
    root = tiny_project(tmp_path / "project", tiny_model_dir)
    nlp = spacy.load(root / "training" / DATASET / "final")
    examples = load_examples(nlp, root / "corpus" / DATASET / "test.spacy")
    for fields in ({"exit_mode": "off"}, {"exit_mode": "tokee", "window": 0, "threshold": 0.9}):
        counts = bootstrap_module.entity_counts(nlp, examples, fields)
        assert counts.shape == (len(examples), 3)
        assert counts[:, 2].sum() == sum(len(eg.reference.ents) for eg in examples)
        assert counts[:, 1].sum() > 0 and counts[:, 0].sum() > 0  # something predicted and right: not 0 == 0
        expected = 100 * (measure(nlp, examples, fields, "ents_f").score or 0.0)
        assert float(bootstrap_module.f1(counts.sum(0))) == pytest.approx(expected, abs=1e-6)


# The package module: counts as spaCy's scorers count, and the bootstrap.


def counts_of(rows):
    return numpy.array(rows, dtype=numpy.int64).reshape(-1, 3)


def test_a_clear_winner_is_significant_and_a_coin_flip_is_not():
    rng = numpy.random.default_rng(3)
    gold = rng.integers(1, 6, 200)
    # a finds each entity with probability 0.9, b with 0.6: a clear gap.
    strong = counts_of(numpy.stack([rng.binomial(gold, 0.9), gold, gold], axis=1))
    weak = counts_of(numpy.stack([rng.binomial(gold, 0.6), gold, gold], axis=1))
    clear = paired_bootstrap.bootstrap(strong, weak, resamples=1000, seed=0)
    assert clear["delta"] > 20 and clear["ci"][0] > 0 and clear["share_a_not_better"] < 0.025
    # Two draws of the same system: the interval straddles 0.
    again = counts_of(numpy.stack([rng.binomial(gold, 0.6), gold, gold], axis=1))
    flip = paired_bootstrap.bootstrap(again, weak, resamples=1000, seed=0)
    assert flip["ci"][0] < 0 < flip["ci"][1] and 0.025 < flip["share_a_not_better"] < 0.975


def test_bootstrap_is_seeded_and_does_not_depend_on_the_chunk(monkeypatch):
    rng = numpy.random.default_rng(5)
    gold = rng.integers(1, 4, 30)
    a = counts_of(numpy.stack([rng.binomial(gold, 0.7), gold, gold], axis=1))
    b = counts_of(numpy.stack([rng.binomial(gold, 0.6), gold, gold], axis=1))
    first = paired_bootstrap.bootstrap(a, b, resamples=300, seed=7)
    assert paired_bootstrap.bootstrap(a, b, resamples=300, seed=7) == first
    monkeypatch.setattr(paired_bootstrap, "CHUNK_ENTRIES", 31)  # one resample per chunk
    assert paired_bootstrap.bootstrap(a, b, resamples=300, seed=7) == first
    narrow = paired_bootstrap.bootstrap(a, b, resamples=300, seed=7, confidence=0.5)
    assert first["ci"][0] <= narrow["ci"][0] <= narrow["ci"][1] <= first["ci"][1]
    with pytest.raises(ValueError, match="shape"):
        paired_bootstrap.bootstrap(a, b[:-1])


def test_score_of_counts_matches_spacys_none_and_scale():
    assert paired_bootstrap.score_of_counts(counts_of([[0, 0, 0], [0, 0, 0]])) is None
    assert paired_bootstrap.score_of_counts(counts_of([[1, 2, 2], [2, 2, 4]])) == pytest.approx(2 * 3 / 10)
    with pytest.raises(ValueError, match="No per-doc counts"):
        paired_bootstrap.doc_counts([], "ents_p")


def doc(nlp, words, spaces, **annotations):
    return Doc(nlp.vocab, words=words, spaces=spaces, **annotations)


def hand_examples():
    """Predictions against gold with other tokenizations, missing gold values,
    space tokens and a doc without entity annotation: the corners where the
    scorers skip or align."""
    nlp = spacy.blank("en")
    gold_words = ["John", "Smith", "lives", "in", "New", "York", "."]
    gold_spaces = [True, True, True, True, True, False, False]
    first = Example(
        doc(nlp, ["John", "Smith", "lives", "in", "New", "York."], [True, True, True, True, True, False],
            ents=["B-PER", "I-PER", "O", "O", "B-ORG", "I-ORG"], tags=["NNP", "NNP", "VBZ", "IN", "NNP", "NNP"],
            pos=["PROPN", "PROPN", "VERB", "ADP", "PROPN", "PROPN"]),
        doc(nlp, gold_words, gold_spaces, ents=["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "O"],
            tags=["NNP", "NNP", "VBZ", "IN", "NNP", "NNP", "."], pos=["PROPN", "PROPN", "VERB", "ADP", "PROPN", "PROPN", "PUNCT"]),
    )
    second = Example(
        doc(nlp, ["Google", " ", "is", "in", "Lon", "don"], [True, False, True, True, False, False],
            ents=["B-ORG", "O", "O", "O", "B-LOC", "I-LOC"], tags=["NNP", "_SP", "VBZ", "IN", "NNP", "NNP"],
            pos=["PROPN", "SPACE", "AUX", "ADP", "PROPN", "PROPN"]),
        doc(nlp, ["Google", " ", "is", "in", "London"], [True, False, True, True, False],
            ents=["B-ORG", "O", "O", "O", "B-LOC"], tags=["NNP", "_SP", "VBZ", "", "NNP"], pos=["PROPN", "SPACE", "AUX", "ADP", "PROPN"]),
    )
    # A missing entity annotation ("-") on "Mary": a prediction there is not counted.
    third = Example(
        doc(nlp, ["Mary", "said", "so"], [True, True, False], ents=["B-PER", "O", "B-ORG"], tags=["NNP", "VBD", "RB"], pos=["PROPN", "VERB", "ADV"]),
        Example.from_dict(nlp.make_doc("Mary said so"), {"entities": ["-", "O", "O"], "tags": ["NNP", "VBD", "RB"]}).reference,
    )
    # No entity annotation at all, and unknown spaces: skipped for NER and tokens.
    fourth = Example(
        doc(nlp, ["they", "left"], [True, False], ents=["B-PER", "O"], tags=["PRP", "VBD"]),
        Doc(nlp.vocab, words=["they", "left"], tags=["PRP", "VBN"]),
    )
    return [first, second, third, fourth]


@pytest.mark.parametrize("metric, score", [
    ("ents_f", lambda egs: get_ner_prf(egs)["ents_f"]),
    ("tag_acc", lambda egs: score_tagging(egs, attribute="tag")["tag_acc"]),
    ("pos_acc", lambda egs: score_tagging(egs, attribute="pos")["pos_acc"]),
    ("token_f", lambda egs: score_segmentation(egs)["token_f"]),
])
def test_counts_match_spacys_scorers_on_hand_made_corners(metric, score):
    examples = hand_examples()
    counts = paired_bootstrap.doc_counts(examples, metric)
    assert counts.shape == (len(examples), 3)
    # Every subset of docs, not only the whole set: the bootstrap scores subsets.
    for subset in ([0], [1], [2], [3], [0, 1], [1, 2, 3], [0, 1, 2, 3], [1, 1, 0]):
        expected = score([examples[i] for i in subset])
        got = paired_bootstrap.score_of_counts(counts[subset])
        assert (got is None) == (expected is None), (subset, got, expected)
        if got is not None:
            assert got == pytest.approx(expected, abs=1e-6), subset


def test_counts_match_the_scorer_on_a_tiny_ner_model(trained_ner):
    examples = ner_examples(trained_ner) * 3
    for fields in ({"exit_mode": "off"}, {"exit_mode": "tokee", "window": 1, "threshold": 0.5}):
        counts = paired_bootstrap.setting_counts(trained_ner, examples, fields, "ents_f")
        assert counts[:, 1].sum() > 0 and counts[:, 2].sum() == sum(len(eg.reference.ents) for eg in examples)
        expected = measure(trained_ner, examples, fields, "ents_f").score
        assert paired_bootstrap.score_of_counts(counts) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("gold", ["tags", "pos"])
def test_counts_match_the_scorer_on_a_tiny_tagger(tiny_model_dir, gold):
    from test_tagger import make_tagger_nlp, tag_examples

    attribute = "tag" if gold == "tags" else "pos"
    nlp = make_tagger_nlp(tiny_model_dir, steps=20, gold=gold, attribute=attribute, threshold=0.5, window=1)
    examples = tag_examples(nlp, gold)
    metric = f"{attribute}_acc"
    for fields in ({"exit_mode": "off"}, {"exit_mode": "tokee", "window": 0, "threshold": 0.9}):
        counts = paired_bootstrap.setting_counts(nlp, examples, fields, metric)
        assert counts[:, 2].sum() > 0 and counts[:, 0].sum() > 0
        expected = measure(nlp, examples, fields, metric).score
        assert paired_bootstrap.score_of_counts(counts) == pytest.approx(expected, abs=1e-6)
