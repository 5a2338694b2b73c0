"""benchmarks/paired_bootstrap.py: per-doc entity counts and the paired bootstrap."""
import importlib.util
from pathlib import Path

import numpy
import pytest
import spacy

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
