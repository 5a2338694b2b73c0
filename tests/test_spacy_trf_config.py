"""benchmarks/spacy_trf_config.py: the spacy-transformers baseline for UPOS and for a corpus's own tag set."""
import sys
from pathlib import Path

import pytest
import spacy
from spacy.training import Example

from spacy_early_exit.testing import NER_DATA, save_tiny_backbone

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import spacy_trf_config  # noqa: E402


def load_script():
    return spacy_trf_config


def build(config, model_dir: Path):
    config = config.merge({"paths": {"backbone": str(model_dir)}})
    return spacy.util.load_model_from_config(config, auto_fill=True, validate=True)


def test_upos_config_is_the_file_as_it_is():
    module = load_script()
    config = module.trf_config("pos_acc")
    assert config["nlp"]["pipeline"] == ["transformer", "ner", "morphologizer"]
    assert config["training"]["score_weights"]["pos_acc"] == 0.5


def test_own_tag_set_trains_spacys_tagger_into_tag_(tmp_path):
    module = load_script()
    config = module.trf_config("tag_acc")
    assert config["nlp"]["pipeline"] == ["transformer", "ner", "tagger"]
    assert "morphologizer" not in config["components"]
    weights = config["training"]["score_weights"]
    assert weights["tag_acc"] == 0.5 and weights["ents_f"] == 0.5 and "pos_acc" not in weights
    # The config loads, trains and writes token.tag_ (PTB-like tags), not pos_.
    nlp = build(config, save_tiny_backbone(tmp_path / "tiny"))
    examples = []
    for text, ents in NER_DATA:
        doc = nlp.make_doc(text)
        tags = ["NNP" if token.is_title else "NN" for token in doc]
        examples.append(Example.from_dict(doc, {"entities": ents, "tags": tags}))
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(3):
        nlp.update(examples, sgd=optimizer)
    doc = nlp(NER_DATA[0][0])
    assert all(token.tag_ in {"NNP", "NN"} for token in doc)
    assert set(nlp.get_pipe("tagger").labels) == {"NNP", "NN"}
    scores = nlp.evaluate(examples)
    assert "tag_acc" in scores and "ents_f" in scores


def test_unknown_metric_is_one_clear_error():
    with pytest.raises(ValueError, match="pos_acc.*tag_acc"):
        load_script().trf_config("lemma_acc")
