"""benchmarks/shared_diagnostics.py: the joint-rule replay, who holds tokens back, and the real pipeline's agreement."""
import importlib.util
from pathlib import Path

import numpy
import pytest
import torch
from thinc.api import fix_random_seed

from spacy_early_exit.encoder.exits import ExitPolicy
from spacy_early_exit.testing import make_shared_nlp, shared_examples

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "shared_diagnostics.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("shared_diagnostics", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hand_made_pass(script):
    """Three layers, one row of three words; head A (3 classes) is always sure,
    head B (4 classes) is uniform except on word 0 from layer 2 on."""
    sure_a, sure_b, uniform_b = [20.0, 0, 0], [20.0, 0, 0, 0], [0.0] * 4
    logits = torch.tensor([
        [[sure_a + uniform_b] * 3],
        [[sure_a + sure_b] + [sure_a + uniform_b] * 2],
        [[sure_a + sure_b] * 3],
    ])  # [layers, rows, words, classes]
    gold_a = torch.tensor([[0, 0, 1]])  # word 2 is wrong for A at every layer
    gold_b = torch.tensor([[0, 0, 0]])
    heads = [
        script.HeadSide("a", 0, (0, 3), gold_a, outside=None),
        script.HeadSide("b", 1, (3, 7), gold_b, outside=None),
    ]
    mask = torch.ones(1, 3, dtype=torch.bool)
    return script.FullPass(logits, mask, (3, 4), heads, [numpy.array([0, 0, 0])], [numpy.array([0, 1, 2])])


def test_replay_and_hold_back_on_known_logits(script):
    full = hand_made_pass(script)
    policy = ExitPolicy(mode="tokee", threshold=0.5, window=0)
    found = script.setting_report(full, policy)
    assert found["exits"].tolist() == [[2, 3, 3]]
    assert found["mean_exit_layer"] == {"joint": pytest.approx(8 / 3, abs=1e-3), "a alone": 1.0, "b alone": pytest.approx(8 / 3, abs=1e-3)}
    first, second = found["hold_back"]
    # Layer 1: every token is kept, and only by head B (A alone would let it go).
    assert first == {"layer": 1, "threshold": 0.5, "active": 3, "held": 1.0, "max:a": 0.0, "alone:a": 0.0,
                     "max:b": 1.0, "alone:b": 1.0, "several": 0.0}
    assert second["active"] == 3 and second["held"] == pytest.approx(2 / 3, abs=1e-3)
    assert second["alone:b"] == second["held"]
    assert found["accuracy"]["a"]["joint"]["accuracy"] == pytest.approx(2 / 3, abs=1e-3)
    # With a window of 1, word 0 is held at layer 2 by its uncertain neighbour.
    windowed = script.setting_report(full, ExitPolicy(mode="tokee", threshold=0.5, window=1))
    assert windowed["exits"].tolist() == [[3, 3, 3]]
    rows = script.layer_rows(full, policy)
    assert [r["accuracy"] for r in rows["a"]] == [0.6667] * 3
    assert [r["entropy"] for r in rows["b"]] == [1.0, pytest.approx(2 / 3, abs=1e-3), pytest.approx(0.0, abs=1e-3)]


def test_diagnose_a_tiny_shared_pipeline(script, tiny_model_dir):
    fix_random_seed(0)
    nlp = make_shared_nlp(tiny_model_dir, steps=4, threshold=0.5, window=1, temperatures=[0.25] * 4)
    examples = shared_examples(nlp)
    settings = [("cut", {"threshold": 1.0}, nlp), ("tokee", {"threshold": 0.5, "window": 1}, nlp)]
    report = script.diagnose(nlp, examples, settings, batch_size=2)
    assert set(report["layers"]) == {"tokee_ner", "tokee_tagger"}
    assert len(report["layers"]["tokee_ner"]) == 4 and "entity_accuracy" in report["layers"]["tokee_ner"][0]
    assert "entity_accuracy" not in report["layers"]["tokee_tagger"][0]
    assert all(r["agree_last"] == 1.0 for r in (report["layers"]["tokee_ner"][-1], report["layers"]["tokee_tagger"][-1]))
    cut, tokee = report["settings"]
    # A threshold of 1 sends every token out at layer 1, in the replay and for real.
    assert cut["real"]["agreement"] == 1.0 and cut["real"]["earliest_mismatch_layer"] is None
    assert cut["mean_exit_layer"]["joint"] == 1.0
    assert cut["real"]["real_mean_exit_layer"] == 1.0 and cut["hold_back"][0]["held"] == 0.0
    assert tokee["real"]["tokens"] == sum(len(eg.predicted) for eg in examples)
    assert tokee["real"]["agreement"] >= 0.8
    # The joint rule exits no earlier than either head alone.
    exits = tokee["mean_exit_layer"]
    assert exits["joint"] >= max(exits["tokee_ner alone"], exits["tokee_tagger alone"])
    for row in tokee["hold_back"]:
        assert row["max:tokee_ner"] + row["max:tokee_tagger"] == pytest.approx(row["held"], abs=1e-3)
        assert row["alone:tokee_ner"] + row["alone:tokee_tagger"] + row["several"] == pytest.approx(row["held"], abs=1e-3)
    report.update(docs=len(examples), split="tiny")
    assert "| layer |" in script.format_report(report)
