"""tokee_tagger: tags or UPOS on the shared early-exit encoder."""
import inspect
import shutil

import pytest
import spacy
from spacy.training import Example
from spacy.util import registry
from thinc.api import fix_random_seed

from spacy_early_exit.pipes.base import EXIT_DEFAULTS
from spacy_early_exit.pipes.ner import make_tokee_ner
from spacy_early_exit.pipes.tagger import make_tokee_tagger
from spacy_early_exit.scorers import score_tagging
from spacy_early_exit.testing import TINY_FINE_TUNING, save_tiny_backbone

# (text, Penn tags, UPOS)
TAG_DATA = [
    ("John lives in London .", "NNP VBZ IN NNP .", "PROPN VERB ADP PROPN PUNCT"),
    ("Mary said the company was new", "NNP VBD DT NN VBD JJ", "PROPN VERB DET NOUN AUX ADJ"),
    ("they were in Paris with John", "PRP VBD IN NNP IN NNP", "PRON AUX ADP PROPN ADP PROPN"),
    ("she has a new city", "PRP VBZ DT JJ NN", "PRON VERB DET ADJ NOUN"),
]
TEXTS = [text for text, _, _ in TAG_DATA] + ["London", "the city said one two three", "John  and\n\nMary ."]


def tag_examples(nlp, gold="tags"):
    """gold: "tags" (Penn tags as tag_), "pos" (UPOS as pos_) or "upos_tags" (UPOS as tag_)."""
    examples = []
    for text, tags, upos in TAG_DATA:
        annotation = {"tags": tags.split()} if gold == "tags" else {"pos": upos.split()} if gold == "pos" else {"tags": upos.split()}
        examples.append(Example.from_dict(nlp.make_doc(text), annotation))
    return examples


def make_tagger_nlp(model_dir, steps=0, gold="tags", **config):
    fix_random_seed(0)
    nlp = spacy.blank("en")
    model = {"name": str(model_dir), **config.pop("model", {})}
    fine_tuning = {**TINY_FINE_TUNING, "backbone_lr_factor": 1.0, **config.pop("fine_tuning", {})}
    nlp.add_pipe("tokee_tagger", config={"model": model, "fine_tuning": fine_tuning, **config})
    examples = tag_examples(nlp, gold)
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(steps):
        nlp.update(examples, sgd=optimizer)
    return nlp


def outputs(nlp, texts):
    return [
        ([(t.tag_, t.pos_) for t in doc], doc._.early_exit["tokee_tagger"])
        for doc in nlp.pipe(texts, batch_size=4)
    ]


@pytest.fixture(scope="module")
def trained_tagger(tiny_model_dir):
    return make_tagger_nlp(tiny_model_dir, steps=60, threshold=0.5, window=1, temperatures=[0.25] * 4)


def test_update_lowers_the_loss(tiny_model_dir):
    nlp = make_tagger_nlp(tiny_model_dir)
    examples = tag_examples(nlp)
    optimizer = nlp.create_optimizer()
    first = nlp.update(examples, sgd=optimizer)["tokee_tagger"]
    for _ in range(20):
        last = nlp.update(examples, sgd=optimizer)["tokee_tagger"]
    assert last < first * 0.8


def test_tag_attribute_writes_tag_and_not_pos_for_penn_tags(trained_tagger):
    tagger = trained_tagger.get_pipe("tokee_tagger")
    assert not tagger.writes_pos
    doc = trained_tagger("John lives in London .")
    assert [t.tag_ for t in doc] == "NNP VBZ IN NNP .".split()
    assert all(t.pos_ == "" for t in doc)
    record = doc._.early_exit["tokee_tagger"]
    assert len(record["exit_layers"]) == len(doc) and all(1 <= x <= 4 for x in record["exit_layers"])


def test_upos_labels_stored_as_tags_also_write_pos(tiny_model_dir):
    nlp = make_tagger_nlp(tiny_model_dir, steps=40, gold="upos_tags")
    assert nlp.get_pipe("tokee_tagger").writes_pos
    doc = nlp("John lives in London .")
    assert [t.tag_ for t in doc] == [t.pos_ for t in doc] == "PROPN VERB ADP PROPN PUNCT".split()


def test_pos_attribute_writes_pos_only(tiny_model_dir):
    nlp = make_tagger_nlp(tiny_model_dir, steps=40, gold="pos", attribute="pos")
    doc = nlp("John lives in London .")
    assert [t.pos_ for t in doc] == "PROPN VERB ADP PROPN PUNCT".split()
    assert all(t.tag_ == "" for t in doc)
    scores = nlp.evaluate(tag_examples(nlp, "pos"))
    assert scores["pos_acc"] == 1.0 and "tag_acc" not in scores


def test_whitespace_tokens_get_no_tag(trained_tagger):
    doc = trained_tagger("John  and\n\nMary .")
    layers = doc._.early_exit["tokee_tagger"]["exit_layers"]
    for token, layer in zip(doc, layers):
        assert (layer == 0) == token.is_space
        assert (token.tag_ == "") == token.is_space


def test_scoring_uses_spacys_token_attr_scorer(trained_tagger):
    examples = tag_examples(trained_tagger)
    scores = trained_tagger.evaluate(examples)
    assert scores["tag_acc"] == 1.0 and "pos_acc" not in scores
    # A whitespace token the reference lacks is not counted (spaCy skips
    # predicted whitespace), so extra spaces in the text cost nothing.
    spaced = Example.from_dict(trained_tagger.make_doc("John lives  in London ."), {"words": "John lives in London .".split(), "spaces": [True, True, True, True, False], "tags": "NNP VBZ IN NNP .".split()})
    assert trained_tagger.evaluate([spaced])["tag_acc"] == 1.0
    scorer = registry.scorers.get("spacy-early-exit.tagger_scorer.v1")()
    with pytest.raises(ValueError, match="attribute"):
        scorer(examples, attribute="lemma")
    assert score_tagging(examples, attribute="pos") == {"pos_acc": None}  # no gold UPOS here


def test_serialization_round_trip(trained_tagger, tmp_path):
    source = save_tiny_backbone(tmp_path / "backbone")
    nlp = make_tagger_nlp(source, steps=10, threshold=0.5, window=1, temperatures=[0.25] * 4)
    expected = outputs(nlp, TEXTS)
    nlp.to_disk(tmp_path / "pipeline")
    shutil.rmtree(source)
    loaded = spacy.load(tmp_path / "pipeline")
    assert outputs(loaded, TEXTS) == expected
    assert loaded.get_pipe("tokee_tagger").labels == nlp.get_pipe("tokee_tagger").labels


@pytest.mark.parametrize(
    "config, field",
    [({"attribute": "lemma"}, "attribute"), ({"threshold": 3}, "threshold"), ({"window": -1}, "window"), ({"exit_mode": "x"}, "exit_mode")],
)
def test_bad_config_fails_naming_the_field(tiny_model_dir, config, field):
    nlp = spacy.blank("en")
    with pytest.raises(ValueError, match=field):
        nlp.add_pipe("tokee_tagger", config={"model": {"name": str(tiny_model_dir)}, **config})


def test_pos_attribute_rejects_labels_that_are_not_upos(tiny_model_dir):
    nlp = spacy.blank("en")
    tagger = nlp.add_pipe("tokee_tagger", config={"model": {"name": str(tiny_model_dir)}, "attribute": "pos"})
    with pytest.raises(ValueError, match="NNP"):
        tagger.add_label("NNP")


def test_factory_shares_the_ner_fields_and_defaults():
    shared = set(inspect.signature(make_tokee_ner).parameters) - {"tag_scheme"}
    assert set(inspect.signature(make_tokee_tagger).parameters) == shared | {"attribute"}
    defaults = spacy.blank("en").add_pipe("tokee_tagger").cfg
    assert defaults["attribute"] == "tag"
    config = spacy.Language.get_factory_meta("tokee_tagger").default_config
    assert {k: config[k] for k in EXIT_DEFAULTS} == EXIT_DEFAULTS
