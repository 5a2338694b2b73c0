"""Tests for project/scripts/convert.py: tiny fixtures, malformed input, real-corpus counts."""
import importlib.util
import sys
import warnings
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import List, Tuple

import pytest
import spacy
from spacy.tokens import Doc, DocBin
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "data" / "converters"
# The public corpora (shared/ next to or inside the checkout); absent on most machines.
DATA = next((p for p in (ROOT / "shared" / "data", ROOT.parent / "shared" / "data") if p.exists()), ROOT / "shared")
# The files that ship with the project (the UNER English-EWT demo), at the same relative paths.
SHIPPED = ROOT / "project" / "assets"


def load_convert() -> ModuleType:
    """Import project/scripts/convert.py, which is a script, not a package module."""
    spec = importlib.util.spec_from_file_location("convert_corpora", ROOT / "project" / "scripts" / "convert.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


convert = load_convert()


def ents(doc: Doc) -> List[Tuple[str, str]]:
    return [(ent.text, ent.label_) for ent in doc.ents]


# ---------------------------------------------------------------- CoNLL-2003


def test_conll2003_iob2():
    docs = convert.read_conll2003(FIXTURES / "conll2003_iob2.txt")
    assert len(docs) == 3  # -DOCSTART- lines are not sentences; last sentence unterminated
    assert [len(doc) for doc in docs] == [5, 2, 6]
    assert docs[0].text == "EU rejects German call ."
    assert ents(docs[0]) == [("EU", "ORG"), ("German", "MISC")]
    assert ents(docs[1]) == [("Peter Blackburn", "PER")]
    assert ents(docs[2]) == [("John", "PER"), ("Mary Smith", "PER"), ("New York", "LOC")]
    assert docs[0][1].ent_iob_ == "O"
    assert docs[0].lang_ == "en"


def test_conll2003_iob1_equals_iob2():
    with pytest.warns(UserWarning, match="start with an I- tag"):
        iob1 = convert.read_conll2003(FIXTURES / "conll2003_iob1.txt")
    iob2 = convert.read_conll2003(FIXTURES / "conll2003_iob2.txt")
    assert [ents(doc) for doc in iob1] == [ents(doc) for doc in iob2]
    assert [doc.text for doc in iob1] == [doc.text for doc in iob2]


# ---------------------------------------------------------------- UNER .iob2


def test_iob2():
    docs = convert.read_iob2(FIXTURES / "uner.iob2")
    assert [doc.text for doc in docs] == ["join # audiobooks in Tampa Bay", "Google hired Ben"]
    assert ents(docs[0]) == [("Tampa Bay", "LOC")]
    assert ents(docs[1]) == [("Google", "ORG"), ("Ben", "PER")]


# ---------------------------------------------------------------- CoNLL-U


def test_conllu_pos_skips_multiword_and_empty_nodes():
    docs = convert.read_conllu_pos(FIXTURES / "ud_en.conllu")
    assert len(docs) == 2
    assert [t.text for t in docs[0]] == ["I", "do", "n't", "like", "it", "!"]
    assert docs[0].text == "I don't like it!"
    assert docs[1].text == "Gonna go."
    assert [t.pos_ for t in docs[0]] == ["PRON", "AUX", "PART", "VERB", "PRON", "PUNCT"]
    assert [t.tag_ for t in docs[0]] == ["PRP", "VBP", "RB", "VB", "PRP", "."]
    assert docs[1][-1].tag_ == ""  # XPOS "_"


def test_conllu_seg_conllu_and_uner_layouts():
    docs = convert.read_conllu_seg(FIXTURES / "ud_zh.conllu")
    assert [[t.text for t in doc] for doc in docs] == [["我", "爱", "New", "York", "。"], ["看", "书"]]
    assert all(not t.whitespace_ for doc in docs for t in doc)
    assert docs[0].text == "我爱NewYork。" and docs[0].lang_ == "zh"
    assert not docs[0].has_annotation("POS")
    docs = convert.read_conllu_seg(FIXTURES / "uner_zh.iob2")
    assert [[t.text for t in doc] for doc in docs] == [["看似", "简单", "，", "却是", "了不起"], ["北京"]]


# ---------------------------------------------------------------- Weibo


def test_weibo_strips_position_digits():
    with pytest.warns(UserWarning, match="1 entities start with an I- tag"):
        docs = convert.read_weibo(FIXTURES / "weibo.txt")
    assert [t.text for t in docs[0]] == ["科", "技", "2", "1", "\ufffd\ufffd", "小", "王"]
    assert docs[0].text == "科技21\ufffd\ufffd小王" and docs[0].lang_ == "zh"
    assert ents(docs[0]) == [("科技", "ORG.NAM"), ("小王", "PER.NAM")]
    assert ents(docs[1]) == [("女主", "PER.NOM")]


# ---------------------------------------------------------------- CLUENER


def test_cluener_inclusive_offsets_and_overlaps():
    with pytest.warns(UserWarning, match="1 overlapping spans"):
        docs = convert.read_cluener(FIXTURES / "cluener.json")
    assert len(docs) == 4
    assert all(len(doc) == len(doc.text) and not doc[0].whitespace_ for doc in docs)
    assert ents(docs[0]) == [("浙商银行", "company"), ("叶老桂", "name")]
    assert ents(docs[1]) == [("桑普", "organization"), ("热那亚", "organization"), ("桑普", "organization")]
    # 北京 [0, 1] overlaps 北京大学 [0, 3]: all spans in doc.spans, the longest in doc.ents
    assert ents(docs[2]) == [("北京大学", "organization"), ("北京", "address")]
    assert len(docs[2].spans["sc"]) == 3
    # no "label" (unlabeled test set): no entities, annotation left missing
    assert docs[3].text == "尼日利亚 海军" and len(docs[3]) == 7
    assert not docs[3].ents and not docs[3].has_annotation("ENT_IOB")


# ---------------------------------------------------------------- malformed input


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


MALFORMED = [
    ("conll2003", "x.txt", "EU NNP B-NP B-ORG\nrejects VBZ B-VP\n", 2, "columns"),
    ("conll2003", "x.txt", "EU NNP B-NP B-ORG\n\nrejects VBZ B-VP X-PER\n", 3, "bad IOB tag"),
    ("conll2003", "x.txt", "EU NNP B-NP B-ORG\n-DOCSTART- -X- -X- O\n", 2, "DOCSTART"),
    ("iob2", "x.iob2", "# c\n1\tA\tB-PER\t-\t-\n2\tB\tI-ORG\t-\t-\n", 3, "IOB2 tag 'I-ORG'"),
    ("iob2", "x.iob2", "1\tA\tO\t-\t-\n\n1\tA\tI-PER\t-\t-\n", 3, "IOB2 tag 'I-PER' follows 'O'"),
    ("iob2", "x.iob2", "1\tA\tO\t-\n", 1, "columns"),
    ("weibo", "x.txt", "科0\tO\n技\tO\n", 2, "position digits"),
    ("weibo", "x.txt", "科0\tB-PER.NAM\n技1\tBI-PER.NAM\n", 2, "bad IOB tag"),
    ("conllu_pos", "x.conllu", "1\ta\t_\tDET\tDT\t_\t_\t_\t_\t_\n3\tb\t_\tNOUN\tNN\t_\t_\t_\t_\t_\n", 2, "ID '3'"),
    ("conllu_pos", "x.conllu", "# t\n1\ta\t_\tDT\tDT\t_\t_\t_\t_\t_\n", 2, "UPOS"),
    ("conllu_pos", "x.conllu", "1\ta\t_\tDET\tDT\t_\t_\t_\t_\n", 1, "columns"),
    ("conllu_seg", "x.conllu", "1\ta\t_\tDET\tDT\t_\t_\t_\t_\t_\n\n1\tb\tO\t-\t-\n", 3, "expected 10 columns"),
    ("conllu_seg", "x.iob2", "1\ta\tO\t-\t-\nx\tb\tO\t-\t-\n", 2, "ID 'x'"),
    ("conllu_seg", "x.conllu", "# c\n1\ta\t_\t_\t_\t_\t_\t_\t_\t_\n\n1.1\tb\t_\t_\t_\t_\t_\t_\t_\t_\n", 4, "no word"),
    ("cluener", "x.json", '{"text": "abc"}\n{"text": "abc", "label": {"name": {"bc": [[1, 1]]}}}\n', 2, "'bc'"),
    ("cluener", "x.json", '{"text": "abc"}\n\n{"txt": "abc"}\n', 3, "'text'"),
    ("cluener", "x.json", '{"text": "abc", "label": {"name": ["bc"]}}\n', 1, "'label'"),
    ("conll", "x.conll", "Ada B-PER\nLovelace I-PER O\n", 2, "expected 2 columns"),
    ("conll", "x.conll", "Ada\n", 1, "at least 2 columns"),
    ("conll", "x.conll", "Ada B-PER\nwrote X\n", 2, "bad IOB tag"),
    ("jsonl", "x.jsonl", '{"text": "Ada wrote"}\n\n{"txt": "a"}\n', 3, "'text'"),
    ("jsonl", "x.jsonl", '{"text": "Ada wrote", "spans": [[0, 3]]}\n', 1, "[start, end, label]"),
    ("jsonl", "x.jsonl", '{"text": "Ada wrote", "spans": [[4, 20, "X"]]}\n', 1, "outside the text"),
    ("jsonl", "x.jsonl", '{"text": "Ada wrote", "spans": {"a": 1}}\n', 1, "must be a list"),
]


@pytest.mark.parametrize("fmt,name,text,lineno,message", MALFORMED)
def test_malformed_lines_raise_with_file_and_line(tmp_path, fmt, name, text, lineno, message):
    path = write(tmp_path, name, text)
    reader = convert.READERS[fmt][0]
    with pytest.raises(ValueError) as err:
        reader(path)
    assert str(err.value).startswith(f"{path}:{lineno}: ")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes("科0\tO\n".encode() + b"\xed\xa0\xbd0\tO\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2: not valid UTF-8"):
        convert.read_weibo(path)


def test_unterminated_last_sentence_is_kept(tmp_path):
    path = write(tmp_path, "x.iob2", "1\tA\tO\t-\t-\n\n\n1\tB\tB-PER\t-\t-")
    docs = convert.read_iob2(path)
    assert [doc.text for doc in docs] == ["A", "B"]
    assert ents(docs[1]) == [("B", "PER")]


# ---------------------------------------------------------------- your own corpus: CoNLL columns, JSONL


def test_conll_columns_word_first_tag_last(tmp_path):
    two = write(tmp_path, "two.conll", "Ada B-PER\nLovelace I-PER\nwrote O\n\nin O\nLondon B-LOC\n")
    docs = convert.read_conll(two)
    assert [doc.text for doc in docs] == ["Ada Lovelace wrote", "in London"]
    assert ents(docs[0]) == [("Ada Lovelace", "PER")] and ents(docs[1]) == [("London", "LOC")]
    # Four columns (CoNLL-2003) read the same as the conll2003 reader.
    fixture = FIXTURES / "conll2003_iob2.txt"
    assert [ents(d) for d in convert.read_conll(fixture)] == [ents(d) for d in convert.read_conll2003(fixture)]
    assert convert.read_conll(write(tmp_path, "empty.conll", "\n\n")) == []


# ---------------------------------------------------------------- messy input: tabs, odd tokens, bad lines


def test_tab_separated_conll_keeps_tokens_with_spaces(tmp_path):
    # A real Twitter NER corpus has a token that is a non-breaking space.
    path = write(tmp_path, "tweets.conll", "RT\tO\n@user\tO\n\xa0\tO\nNew York\tB-LOC\n\nhi\tO\n")
    docs = convert.read_conll(path)
    assert [[t.text for t in doc] for doc in docs] == [["RT", "@user", "\xa0", "New York"], ["hi"]]
    assert ents(docs[0]) == [("New York", "LOC")]
    # A trailing space after a tag is no part of it.
    assert ents(convert.read_conll(write(tmp_path, "t.conll", "Ada\tB-PER \n"))[0]) == [("Ada", "PER")]


def test_space_separated_conll_still_splits_on_whitespace(tmp_path):
    path = write(tmp_path, "s.conll", "Ada  B-PER\nLovelace I-PER\n")
    assert ents(convert.read_conll(path)[0]) == [("Ada Lovelace", "PER")]
    assert convert.detect_separator(path) is None and convert.detect_separator(FIXTURES / "uner.iob2") == "\t"


@pytest.mark.parametrize(
    "text,lineno,message",
    [
        ("Ada\tB-PER\nwrote\n", 2, "expected 2 tab-separated columns, got 1: 'wrote'"),
        ("Ada\tB-PER\n\tO\n", 2, "expected a token in column 1, got an empty column"),
        ("Ada\tB-PER\nwrote\tX\n", 2, "bad IOB tag 'X' in column 2 (expected O, B-TYPE or I-TYPE)"),
        ("\nAda\n\nwrote O\n", 2, "expected at least 2 columns (token ... IOB tag), got 1"),
    ],
)
def test_an_unreadable_line_is_one_line_naming_file_and_line(tmp_path, text, lineno, message):
    path = write(tmp_path, "x.conll", text)
    with pytest.raises(convert.BadLine) as err:
        convert.read_conll(path)
    assert str(err.value) == f"{path}:{lineno}: {message}"


def test_skip_bad_lines_counts_them_per_file(tmp_path):
    bad_lines = convert.BadLines(skip=True)
    one = write(tmp_path, "one.conll", "Ada\tB-PER\nwrote\nit\tX\n\nin\tO\nLondon\tB-LOC\n")
    two = write(tmp_path, "two.jsonl", '{"text": "Ada"}\nnot json\n')
    docs = convert.read_conll(one, bad_lines=bad_lines)
    assert [doc.text for doc in docs] == ["Ada", "in London"]
    assert len(convert.read_jsonl(two, bad_lines=bad_lines)) == 1
    assert bad_lines.summary() == [f"{one}: skipped 2 bad lines", f"{two}: skipped 1 bad line"]
    # A sentence-level error is no line to skip: it still raises.
    with pytest.raises(convert.BadLine, match="IOB2 tag 'I-ORG'"):
        convert.read_iob2(write(tmp_path, "x.iob2", "1\tA\tB-PER\t-\t-\n2\tB\tI-ORG\t-\t-\n"), bad_lines=bad_lines)


def test_cli_fails_in_one_line_with_status_2_or_skips(tmp_path):
    source = write(tmp_path, "x.conll", "Ada\tB-PER\nwrote\n\nin\tO\n")
    result = CliRunner().invoke(convert.app, ["conll", str(source), str(tmp_path / "x.spacy")])
    assert result.exit_code == 2 and not (tmp_path / "x.spacy").exists()
    assert result.stderr.strip().splitlines() == [
        f"{source}:2: expected 2 tab-separated columns, got 1: 'wrote' (skip such lines with --skip-bad-lines)"
    ]
    result = CliRunner().invoke(convert.app, ["conll", str(source), str(tmp_path / "x.spacy"), "--skip-bad-lines"])
    assert result.exit_code == 0 and f"{source}: skipped 1 bad line" in result.output
    assert len(list(DocBin().from_disk(tmp_path / "x.spacy").get_docs(spacy.blank("en").vocab))) == 2


def test_conll_tag_reads_any_tag_set(tmp_path):
    ark = write(tmp_path, "ark.conll", "@bob\t@\nlol\t!\n\xa0\t,\n\nok\tN\n")
    docs = convert.read_conll_tag(ark)
    assert [[(t.text, t.tag_, t.pos_) for t in doc] for doc in docs] == [
        [("@bob", "@", ""), ("lol", "!", ""), ("\xa0", ",", "")], [("ok", "N", "")]
    ]
    # UPOS tags go to token.pos_ too; space-separated columns as in read_conll.
    upos = convert.read_conll_tag(write(tmp_path, "u.txt", "I PRON\nsee VERB\n"))
    assert [(t.tag_, t.pos_) for t in upos[0]] == [("PRON", "PRON"), ("VERB", "VERB")]
    with pytest.raises(convert.BadLine, match=r"u2\.txt:2: bad tag '' in column 2 \(expected a tag without spaces\)"):
        convert.read_conll_tag(write(tmp_path, "u2.txt", "I\tPRON\nsee\t\n"))


def test_jsonl_spans_entities_and_dict_spans(tmp_path):
    lines = [
        '{"text": "Ada Lovelace lived in London.", "spans": [[0, 12, "PER"], [22, 28, "LOC"]]}',
        '{"text": "Google hired Ben", "entities": [{"start": 0, "end": 6, "label": "ORG"}, [13, 16, "PER"]]}',
        '{"text": "Nothing here"}',
    ]
    docs = convert.read_jsonl(write(tmp_path, "x.jsonl", "\n".join(lines) + "\n"))
    assert [ents(doc) for doc in docs] == [[("Ada Lovelace", "PER"), ("London", "LOC")], [("Google", "ORG"), ("Ben", "PER")], []]
    assert docs[0].text == "Ada Lovelace lived in London."
    assert docs[2].has_annotation("ENT_IOB")  # no entities is an annotation too: all O


def test_jsonl_widens_misaligned_spans_and_keeps_overlaps(tmp_path):
    text = '{"text": "New Yorkers love it", "spans": [[0, 8, "LOC"], [0, 3, "MISC"]]}\n'
    with pytest.warns(UserWarning) as caught:
        (doc,) = convert.read_jsonl(write(tmp_path, "x.jsonl", text))
    messages = " ".join(str(w.message) for w in caught)
    assert "widened to whole tokens" in messages and "overlapping" in messages
    assert ents(doc) == [("New Yorkers", "LOC")]
    assert sorted((s.text, s.label_) for s in doc.spans["sc"]) == [("New", "MISC"), ("New Yorkers", "LOC")]


def test_jsonl_chinese_is_one_token_per_character(tmp_path):
    text = '{"text": "张三在北京", "spans": [[0, 2, "PER"], [3, 5, "LOC"]]}\n'
    (doc,) = convert.read_jsonl(write(tmp_path, "x.jsonl", text), "zh")
    assert [t.text for t in doc] == list("张三在北京")
    assert ents(doc) == [("张三", "PER"), ("北京", "LOC")]


# ---------------------------------------------------------------- CLI


def test_cli_writes_docbin_and_prints_counts(tmp_path):
    output = tmp_path / "out" / "uner.spacy"
    args = ["iob2", str(FIXTURES / "uner.iob2"), str(output)]
    result = CliRunner().invoke(convert.app, args)
    assert result.exit_code == 0, result.output
    assert "docs 2, tokens 9" in result.output
    assert "entities (total 3): " in result.output and "LOC 1" in result.output
    docs = list(DocBin().from_disk(output).get_docs(spacy.blank("en").vocab))
    assert [ents(doc) for doc in docs] == [[("Tampa Bay", "LOC")], [("Google", "ORG"), ("Ben", "PER")]]


def test_cli_chinese_default_lang(tmp_path):
    output = tmp_path / "weibo.spacy"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CliRunner().invoke(convert.app, ["weibo", str(FIXTURES / "weibo.txt"), str(output)])
    assert result.exit_code == 0, result.output
    assert "PER.NAM 1" in result.output
    docs = list(DocBin().from_disk(output).get_docs(spacy.blank("zh").vocab))
    assert docs[0].text == "科技21\ufffd\ufffd小王"


# ---------------------------------------------------------------- real corpora (skipped without the data)

# (reader, file relative to shared/data, sentences, tokens) as stated in each SOURCES.md
REAL_COUNTS = [
    ("conll2003", "conll2003/train.txt", 14041, 203621),
    ("conll2003", "conll2003/dev.txt", 3250, 51362),
    ("conll2003", "conll2003/test.txt", 3453, 46435),
    ("iob2", "uner_en_ewt/en_ewt-ud-dev.iob2", 2001, 25149),
    ("iob2", "uner_en_ewt/en_ewt-ud-test.iob2", 2077, 25097),
    ("conllu_pos", "ud_en_ewt/en_ewt-ud-train.conllu", 12544, 204577),
    ("conllu_pos", "ud_en_ewt/en_ewt-ud-dev.conllu", 2001, 25147),
    ("conllu_pos", "ud_en_ewt/en_ewt-ud-test.conllu", 2077, 25094),
    ("conllu_seg", "ud_zh_gsd/zh_gsdsimp-ud-dev.conllu", 500, 12663),
    ("conllu_seg", "ud_zh_gsd/zh_gsdsimp-ud-test.conllu", 500, 12012),
    ("conllu_seg", "ud_zh_gsd/train_segmentation_from_UNER/zh_gsdsimp-ud-train.iob2", 3997, 98616),
    ("conllu_seg", "ud_zh_gsd/train_segmentation_from_UNER/zh_gsdsimp-ud-dev.iob2", 500, 12663),
    ("conllu_seg", "ud_zh_gsd/train_segmentation_from_UNER/zh_gsdsimp-ud-test.iob2", 500, 12012),
    ("weibo", "weibo_ner/train.txt", 1350, 73778),
    ("weibo", "weibo_ner/dev.txt", 270, 14509),
    ("weibo", "weibo_ner/test.txt", 270, 14842),
    ("cluener", "cluener/train.json", 10748, 401764),
    ("cluener", "cluener/dev.json", 1343, 50260),
    ("cluener", "cluener/test.json", 1345, 50972),
]


def locate(relative: str) -> Path:
    """A corpus file: the shipped copy when the project has one, else the one in shared/data."""
    shipped = SHIPPED / relative
    return shipped if shipped.exists() else DATA / relative


def read_real(fmt: str, relative: str) -> List[Doc]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert.READERS[fmt][0](locate(relative))


def needs(relative: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not locate(relative).exists(), reason=f"{relative} not available")


def test_shipped_corpora_never_skip():
    for relative in ("uner_en_ewt/en_ewt-ud-dev.iob2", "uner_en_ewt/en_ewt-ud-test.iob2"):
        assert locate(relative).is_file(), relative


@pytest.mark.parametrize(
    "fmt,relative,n_sents,n_tokens", [pytest.param(*row, marks=needs(row[1]), id=row[1]) for row in REAL_COUNTS]
)
def test_real_counts(fmt, relative, n_sents, n_tokens):
    docs = read_real(fmt, relative)
    assert len(docs) == n_sents
    assert sum(len(doc) for doc in docs) == n_tokens


@needs("conll2003/train.txt")
def test_real_conll2003_entity_types():
    docs = read_real("conll2003", "conll2003/train.txt")
    counts = Counter(ent.label_ for doc in docs for ent in doc.ents)
    assert counts == {"LOC": 7140, "PER": 6600, "ORG": 6321, "MISC": 3438}  # = B- tag counts (IOB2)


@needs("cluener/train.json")
def test_real_cluener_span_counts():
    docs = read_real("cluener", "cluener/train.json")
    spans = Counter(span.label_ for doc in docs for span in doc.spans["sc"])
    assert spans == {
        "name": 3755, "organization": 3210, "position": 3141, "company": 2980, "address": 2891,
        "game": 2376, "government": 1835, "scene": 1521, "book": 1139, "movie": 1123,
    }  # fmt: skip
    assert sum(len(doc.ents) for doc in docs) == 23971 - 2  # the 2 overlapping pairs


@needs("ud_en_ewt/en_ewt-ud-dev.conllu")
def test_real_conllu_text_is_faithful():
    path = DATA / "ud_en_ewt/en_ewt-ud-dev.conllu"
    lines = path.read_text(encoding="utf-8").splitlines()
    texts = [line[len("# text = ") :] for line in lines if line.startswith("# text = ")]
    docs = read_real("conllu_pos", "ud_en_ewt/en_ewt-ud-dev.conllu")
    assert [doc.text for doc in docs] == texts
    assert {token.pos_ for doc in docs for token in doc} == convert.UD_UPOS
