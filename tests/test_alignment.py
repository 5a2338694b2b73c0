"""Tokens <-> wordpieces, and windows over long documents."""
import numpy
import pytest
import spacy
from spacy_transformers.align import get_alignment_via_offset_mapping

from spacy_early_exit.layers.alignment import Aligner, align_pieces, collate
from spacy_early_exit.testing import bert_tokenizer

TEXTS = [
    "John Smith's car-sharing co-op (in New York) isn't cheap!!",
    "  leading and trailing  spaces \n\n and new lines  ",
    "emoji 😀🎉 café naïve ﬁne \u200b zero width \x07 bell",
    "mixed 中文字符 and العربية text",
    "",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return bert_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.mark.parametrize("text", TEXTS)
def test_pairs_agree_with_spacy_transformers(tokenizer, text):
    doc = spacy.blank("en")(text)
    if not len(doc):
        return
    enc = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
    offsets = numpy.asarray(enc.offsets, dtype="int64").reshape(-1, 2)
    tokens, pieces = align_pieces(doc, offsets)
    ours = {(int(t), int(p)) for t, p in zip(tokens, pieces)}
    ragged = get_alignment_via_offset_mapping([doc[:]], [offsets])
    theirs = set()
    start = 0
    for token_i, length in enumerate(ragged.lengths.tolist()):
        for piece in ragged.dataXd[start : start + length].tolist():
            theirs.add((token_i, piece))
        start += length
    # spacy-transformers also maps a piece to the token whose trailing space it
    # touches; with BERT's trimmed offsets no piece does, so the sets agree.
    assert ours == theirs


def test_every_token_is_owned_once_in_long_documents(tokenizer):
    nlp = spacy.blank("en")
    doc = nlp(" ".join(f"word{i % 10} the city of london ." for i in range(200)))
    aligner = Aligner(tokenizer, max_length=32)
    rows, (layout,) = aligner.layout([doc])
    assert len(rows) > 10 and len(layout.rows) == len(rows)
    assert (layout.token_rows >= 0).all()
    for row in rows:
        assert len(row.ids) <= 32
        assert row.ids[0] == tokenizer.cls_token_id and row.ids[-1] == tokenizer.sep_token_id
    # A token is read from a window where its first piece is not at a cut
    # (except at the document's own ends).
    for token_i in range(5, len(doc) - 5):
        row = rows[layout.token_rows[token_i]]
        col = row.word_cols[layout.token_slots[token_i]]
        assert 1 < col < len(row.ids) - 2
    batch = collate(rows, tokenizer.pad_token_id)
    assert batch.input_ids.shape[0] == len(rows)


def test_tokens_without_pieces_are_marked(tokenizer):
    doc = spacy.blank("en")("a \n\n b \x07 c")
    rows, (layout,) = Aligner(tokenizer, 64).layout([doc])
    unread = [doc[i].text for i in numpy.flatnonzero(layout.token_rows < 0)]
    assert [t.text for t in doc] == ["a", "\n\n ", "b", "\x07", "c"]
    assert unread == ["\n\n ", "\x07"]


def test_truncation_set_elsewhere_is_ignored(tokenizer):
    tokenizer.backend_tokenizer.enable_truncation(max_length=4)
    doc = spacy.blank("en")("one two three four five six seven eight")
    rows, (layout,) = Aligner(tokenizer, 64).layout([doc])
    assert (layout.token_rows >= 0).all()


def test_pretokenized_gives_every_token_its_own_pieces(tokenizer):
    from spacy.tokens import Doc

    words = list("张三the")  # "the" is one wordpiece of the test vocabulary
    doc = Doc(spacy.blank("zh").vocab, words=words, spaces=[False] * len(words))
    rows, (layout,) = Aligner(tokenizer, 64, pretokenized=True).layout([doc])
    cols = [rows[0].word_cols[s] for s in layout.token_slots]
    assert len(set(cols)) == len(doc)  # no two tokens read the same piece
    shared_rows, (shared,) = Aligner(tokenizer, 64).layout([doc])
    shared_cols = [shared_rows[0].word_cols[s] for s in shared.token_slots]
    assert len(set(shared_cols)) == 3  # by text, t, h and e share the piece "the"


def test_windows_without_words_are_not_encoded(tokenizer):
    # One token of 90 wordpieces (under BERT's 100-character word limit).
    doc = spacy.blank("en")("see " + "abcdefghij" * 9 + " now")
    assert len(doc) == 3
    rows, (layout,) = Aligner(tokenizer, 32).layout([doc])
    assert all(len(row.word_cols) > 0 for row in rows)
    assert (layout.token_rows >= 0).all() and len(layout.rows) == len(rows)


@pytest.mark.parametrize("pretokenized", [False, True])
def test_single_row_layout_equals_the_windowed_one(tokenizer, pretokenized, monkeypatch):
    # Docs that fit one row take a shortcut; the general windowing code must
    # give exactly the same rows and layout for them.
    nlp = spacy.blank("en")
    docs = [nlp(text) for text in TEXTS + ["a b c", "John Smith lives in New York ."]]
    aligner = Aligner(tokenizer, 64, pretokenized=pretokenized)
    fast_rows, fast_layouts = aligner.layout(docs)
    assert len(fast_rows) == sum(1 for doc in docs if len(doc) and doc.text.strip())
    monkeypatch.setattr(aligner, "_single_row", aligner._windowed_rows)
    slow_rows, slow_layouts = aligner.layout(docs)
    assert len(fast_rows) == len(slow_rows)
    for fast, slow in zip(fast_rows, slow_rows):
        for field in ("ids", "word_cols", "pair_cols", "pair_words"):
            numpy.testing.assert_array_equal(getattr(fast, field), getattr(slow, field))
    for fast, slow in zip(fast_layouts, slow_layouts):
        numpy.testing.assert_array_equal(fast.token_rows, slow.token_rows)
        numpy.testing.assert_array_equal(fast.token_slots, slow.token_slots)
        assert fast.rows == slow.rows
