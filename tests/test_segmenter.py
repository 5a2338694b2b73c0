"""tokee_segmenter + the character tokenizer: Chinese characters in, words out."""
import inspect
import shutil
from importlib.metadata import entry_points
from pathlib import Path

import numpy
import pytest
import regex
import spacy
from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import Example
from thinc.api import fix_random_seed

from spacy_early_exit.layers.architecture import DocPrediction
from spacy_early_exit.pipes.base import EXIT_DEFAULTS
from spacy_early_exit.pipes.ner import make_tokee_ner
from spacy_early_exit.pipes.segmenter import make_tokee_segmenter
from spacy_early_exit.scorers import score_segmentation
from spacy_early_exit.testing import TINY_FINE_TUNING, tiny_backbone, write_vocab
from spacy_early_exit.tokenizers import CharacterTokenizer, create_character_tokenizer

SEG_DATA = ["我 爱 北京 天安门", "北京 是 中国 的 首都", "我 是 学生", "天安门 在 北京", "中国 人 爱 北京", "学生 在 天安门"]
CHAR_TOKENIZER = {"nlp": {"tokenizer": {"@tokenizers": "spacy-early-exit.CharacterTokenizer.v1"}}}
HOSTILE = [
    "",
    "   ",
    "我爱 北京\n\n天安门\t。",
    "我爱New York和iPhone 15。",
    "北京😀👍🏽🇨🇳天安门 e\u0301 \x07\x00\u200b控制",
    "\u3000中国 ",
    "北京是中国的首都。" * 30,  # longer than the tiny backbone's 64 positions
]


def save_cjk_backbone(directory: Path) -> Path:
    """The conftest tiny BERT, with the training texts' characters in its vocab
    (the conftest vocab maps every CJK character to [UNK])."""
    from transformers import BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = write_vocab(directory / "vocab.txt")
    chars = sorted(set("".join(SEG_DATA).replace(" ", "")))
    vocab.write_text(vocab.read_text(encoding="utf8") + "\n".join(chars) + "\n", encoding="utf8")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    tiny_backbone("bert", vocab_size=len(tokenizer)).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def cjk_model_dir(tmp_path_factory) -> Path:
    return save_cjk_backbone(tmp_path_factory.mktemp("tiny-cjk"))


def blank_zh() -> Language:
    return spacy.blank("zh", config=CHAR_TOKENIZER)


def seg_example(nlp: Language, line: str) -> Example:
    """Gold words from a space-separated line; the reference gets its spaces,
    or spaCy's tokenization scorer would skip it."""
    words = line.split()
    return Example(nlp.make_doc("".join(words)), Doc(nlp.vocab, words=words, spaces=[False] * len(words)))


def make_seg_nlp(model_dir, steps=0, **config) -> Language:
    fix_random_seed(0)
    nlp = blank_zh()
    model = {"name": str(model_dir), **config.pop("model", {})}
    fine_tuning = {**TINY_FINE_TUNING, "backbone_lr_factor": 1.0, **config.pop("fine_tuning", {})}
    nlp.add_pipe("tokee_segmenter", config={"model": model, "fine_tuning": fine_tuning, **config})
    examples = [seg_example(nlp, line) for line in SEG_DATA]
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(steps):
        nlp.update(examples, sgd=optimizer)
    return nlp


def record(doc):
    return doc._.early_exit["tokee_segmenter"]


def outputs(nlp, texts):
    return [([t.text_with_ws for t in doc], record(doc)) for doc in nlp.pipe(texts, batch_size=3)]


@pytest.fixture(scope="module")
def trained_seg(cjk_model_dir):
    # A loose threshold, so that on this tiny model some characters exit at
    # layer 1 and others run deeper (within one word, too).
    return make_seg_nlp(cjk_model_dir, steps=80, threshold=0.5, window=1)


# -- the character tokenizer -------------------------------------------------------


@pytest.mark.parametrize("text", HOSTILE + ["  a  b\n\n c ", "\r\n中"])
def test_character_tokenizer_keeps_every_character(text):
    doc = blank_zh()(text)
    assert doc.text == "".join(t.text_with_ws for t in doc) == text
    for token in doc:
        # One grapheme per token, or one whitespace run; a space follows only a character.
        assert token.is_space or len(regex.findall(r"\X", token.text)) == 1
        assert not (token.is_space and token.whitespace_)


def test_character_tokenizer_follows_spacys_whitespace_rules():
    text = "  a  b\n\n c "
    ours = blank_zh()(text)
    spacys = spacy.blank("en")(text)
    assert [(t.text, t.whitespace_) for t in ours] == [(t.text, t.whitespace_) for t in spacys]
    assert [t.text for t in blank_zh()("我爱e\u0301👍🏽")] == ["我", "爱", "e\u0301", "👍🏽"]


def test_character_tokenizer_entry_point():
    found = {ep.name: ep for ep in entry_points(group="spacy_tokenizers")}
    assert found["spacy-early-exit.CharacterTokenizer.v1"].load() is create_character_tokenizer
    assert isinstance(blank_zh().tokenizer, CharacterTokenizer)


# -- training, decoding, the record -----------------------------------------------


def test_update_lowers_the_loss(cjk_model_dir):
    nlp = make_seg_nlp(cjk_model_dir)
    examples = [seg_example(nlp, line) for line in SEG_DATA]
    optimizer = nlp.create_optimizer()
    first = nlp.update(examples, sgd=optimizer)["tokee_segmenter"]
    for _ in range(20):
        last = nlp.update(examples, sgd=optimizer)["tokee_segmenter"]
    assert last < first * 0.8


@pytest.mark.parametrize(
    "scheme, expected", [("BMES", ["S", "S", "B", "E", "B", "M", "E"]), ("BI", ["B", "B", "B", "I", "B", "I", "I"])]
)
def test_gold_classes_from_the_alignment(cjk_model_dir, scheme, expected):
    nlp = blank_zh()
    seg = nlp.add_pipe("tokee_segmenter", config={"model": {"name": str(cjk_model_dir)}, "tag_scheme": scheme})
    assert seg.gold_classes(seg_example(nlp, "我 爱 北京 天安门")) == expected
    # A predicted whitespace token aligns to no word; a character split across
    # two reference words has no single class.
    spaced = Example(nlp.make_doc("我爱\n北京"), Doc(nlp.vocab, words=["我爱", "北京"], spaces=[False, False]))
    assert seg.gold_classes(spaced)[2] is None
    split = Example(nlp.make_doc("e\u0301x"), Doc(nlp.vocab, words=["e", "\u0301x"], spaces=[False, False]))
    assert seg.gold_classes(split)[0] is None


def test_chinese_text_in_words_out(trained_seg):
    doc = trained_seg("我爱北京天安门")
    assert [t.text for t in doc] == ["我", "爱", "北京", "天安门"]
    assert len(record(doc)["exit_layers"]) == len(doc)
    scores = trained_seg.evaluate([seg_example(trained_seg, line) for line in SEG_DATA])
    assert scores["token_f"] == scores["token_p"] == scores["token_r"] == 1.0


def test_merged_word_takes_the_deepest_exit_of_its_characters():
    seg = blank_zh().add_pipe("tokee_segmenter")
    doc = Doc(seg.vocab, words=list("我爱北京天安门"), spaces=[False] * 7)
    classes = ["S", "S", "B", "E", "B", "M", "E"]
    logits = numpy.eye(4, dtype="float32")[[seg.class_names.index(c) for c in classes]]
    exits = numpy.asarray([1, 2, 3, 1, 2, 4, 1])
    seg.set_annotations([doc], [DocPrediction(logits, exits, 10, 20)])
    assert [t.text for t in doc] == ["我", "爱", "北京", "天安门"]
    assert record(doc) == {"exit_layers": [1, 2, 3, 4], "flops": 10, "full_flops": 20}


def test_pipeline_record_is_per_word_max_of_the_character_exits(trained_seg):
    seg = trained_seg.get_pipe("tokee_segmenter")
    text = "天安门在北京。我是学生"
    chars = trained_seg.make_doc(text)
    per_char = seg.predict([chars])[0].exit_layers
    char_at = {token.idx: i for i, token in enumerate(chars)}
    doc = trained_seg(text)
    expected = [int(per_char[char_at[t.idx]:char_at[t.idx] + len(t)].max()) for t in doc]
    assert record(doc)["exit_layers"] == expected
    assert len(set(per_char.tolist())) > 1, "exits should vary"
    assert any(len(set(per_char[char_at[t.idx]:char_at[t.idx] + len(t)].tolist())) > 1 for t in doc), "and within a word"


def test_decoding_never_crosses_whitespace_or_unscored_tokens():
    seg = blank_zh().add_pipe("tokee_segmenter")
    doc = blank_zh()("北京 天安\n门")  # 北 京(space) 天 安 \n 门
    seg.annotate(doc, ["B", "M", "M", "M", None, "E"])
    assert [t.text_with_ws for t in doc] == ["北京 ", "天安", "\n", "门"]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_keeps_every_character(trained_seg, text):
    doc = trained_seg(text)
    assert doc.text == "".join(t.text_with_ws for t in doc) == text
    layers = record(doc)["exit_layers"]
    assert len(layers) == len(doc)
    for token, layer in zip(doc, layers):
        assert token.is_space or not any(c.isspace() for c in token.text)
        if token.is_space:
            assert layer == 0


def test_scorer_is_spacys_tokenization_score(trained_seg):
    nlp = blank_zh()
    gold = Doc(nlp.vocab, words=["我", "爱", "北京", "天安门"], spaces=[False] * 4)
    predicted = Doc(nlp.vocab, words=["我爱", "北京", "天", "安门"], spaces=[False] * 4)
    scores = score_segmentation([Example(predicted, gold)])
    assert scores["token_p"] == 0.25 and scores["token_r"] == 0.25
    assert set(trained_seg.get_pipe("tokee_segmenter").score([Example(predicted, gold)])) == {"token_acc", "token_p", "token_r", "token_f"}


# -- serialization and config -------------------------------------------------------


def test_serialization_round_trip(cjk_model_dir, tmp_path):
    source = save_cjk_backbone(tmp_path / "backbone")
    nlp = make_seg_nlp(source, steps=10, threshold=0.5, window=1, temperatures=[0.25] * 4)
    texts = [line.replace(" ", "") for line in SEG_DATA] + HOSTILE[2:5]
    expected = outputs(nlp, texts)
    nlp.to_disk(tmp_path / "pipeline")
    data = nlp.to_bytes()
    shutil.rmtree(source)
    loaded = spacy.load(tmp_path / "pipeline")
    assert isinstance(loaded.tokenizer, CharacterTokenizer)
    assert outputs(loaded, texts) == expected
    blank = spacy.util.load_model_from_config(nlp.config)
    blank.from_bytes(data)
    assert outputs(blank, texts) == expected


@pytest.mark.parametrize("config, field", [({"tag_scheme": "BIO"}, "tag_scheme"), ({"threshold": 3}, "threshold"), ({"window": -1}, "window")])
def test_bad_config_fails_naming_the_field(cjk_model_dir, config, field):
    with pytest.raises(ValueError, match=field):
        blank_zh().add_pipe("tokee_segmenter", config={"model": {"name": str(cjk_model_dir)}, **config})


def test_labels_outside_the_scheme_are_refused():
    seg = blank_zh().add_pipe("tokee_segmenter", config={"tag_scheme": "BI"})
    with pytest.raises(ValueError, match="tag_scheme"):
        seg.add_label("E")


def test_factory_shares_the_ner_fields_and_defaults():
    assert set(inspect.signature(make_tokee_segmenter).parameters) == set(inspect.signature(make_tokee_ner).parameters)
    meta = Language.get_factory_meta("tokee_segmenter")
    assert meta.retokenizes and meta.default_config["tag_scheme"] == "BMES"
    assert {k: meta.default_config[k] for k in EXIT_DEFAULTS} == EXIT_DEFAULTS
