"""Two tasks on one corpus (--task ner,tagger): convert, and train.py's shared-encoder stages."""
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest
import spacy
from spacy.tokens import Doc, DocBin

from spacy_early_exit.testing import shared_examples
from test_custom_corpus import PROJECT, flat, load_script, read, run_prepare

convert = load_script("convert")
ASSETS = PROJECT / "assets"
# Per split of the bundled two-task demo: UNER sentences, joined ones (3 per split
# are tokenized differently by UNER and UD: "can" vs "ca" in "can't", "#audiobooks").
DEMO_SENTENCES = {"dev": (2001, 1998), "test": (2077, 2074)}

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

"""


def write_conll2003(folder: Path) -> Path:
    """A tiny CoNLL-2003 folder: the same two sentences in each split."""
    (folder / "conll2003").mkdir(parents=True)
    for split in ("train", "dev", "test"):
        (folder / "conll2003" / f"{split}.txt").write_text(CONLL * 3, encoding="utf8")
    return folder


def meta_of(folder: Path) -> dict:
    return json.loads((folder / "meta.json").read_text())


# ---------------------------------------------------------------- convert


def test_conll2003_with_two_tasks_keeps_ptb_tags_and_entities(tmp_path):
    data = write_conll2003(tmp_path / "data")
    out = tmp_path / "both"
    result = run_prepare("conll2003", str(out), "--data-dir", str(data), "--task", "ner,tagger")
    assert result.exit_code == 0, result.output
    meta = meta_of(out)
    assert (meta["task"], meta["tasks"], meta["attribute"]) == ("ner,tagger", ["ner", "tagger"], "tag")
    assert meta["metrics"] == {"ner": "ents_f", "tagger": "tag_acc"} and meta["metric"] == "ents_f,tag_acc"
    docs = read(out / "train.spacy")
    assert len(docs) == 6 and [len(read(out / f"{s}.spacy")) for s in ("dev", "test")] == [6, 6]
    assert [t.tag_ for t in docs[0]] == ["NNP", "VBZ", "JJ", "NN", "."]
    assert [(e.text, e.label_) for e in docs[0].ents] == [("EU", "ORG"), ("German", "MISC")]
    assert [(e.text, e.label_) for e in docs[1].ents] == [("Peter Blackburn", "PER")]
    assert not docs[0].has_annotation("POS")  # PTB, not UPOS
    # One task: CoNLL-2003 stays the NER corpus it was, tags not kept.
    result = run_prepare("conll2003", str(tmp_path / "ner"), "--data-dir", str(data), "--task", "ner")
    assert result.exit_code == 0, result.output
    meta = meta_of(tmp_path / "ner")
    assert (meta["task"], meta["metric"], meta["tasks"]) == ("ner", "ents_f", ["ner"])
    assert not read(tmp_path / "ner" / "train.spacy")[0].has_annotation("TAG")


def test_the_bundled_two_task_demo_joins_uner_and_ud_by_sentence_id(tmp_path):
    out = tmp_path / "demo"
    result = run_prepare("uner_ud_en_ewt", str(out), "--assets-dir", str(ASSETS))
    assert result.exit_code == 0, result.output
    for split, (n_uner, n_joined) in DEMO_SENTENCES.items():
        assert f"en_ewt-ud-{split}.iob2 + en_ewt-ud-{split}.conllu: {n_joined} sentences joined, {n_uner - n_joined} left out" in result.output
    assert "the tokens differ at token 1 ('can' vs 'ca')" in result.output
    meta = meta_of(out)
    assert (meta["tasks"], meta["attribute"], meta["metrics"]) == (["ner", "tagger"], "pos", {"ner": "ents_f", "tagger": "pos_acc"})
    splits = {split: read(out / f"{split}.spacy") for split in ("train", "dev", "test")}
    assert {split: len(docs) for split, docs in splits.items()} == {"train": 1798, "dev": 200, "test": 2074}
    for docs in splits.values():
        assert all(doc.has_annotation("ENT_IOB") and doc.has_annotation("POS") for doc in docs)
    # The tokens and entities are UNER's, sentence for sentence; the UPOS are UD's.
    uner = convert.with_ids(ASSETS / "uner_en_ewt/en_ewt-ud-test.iob2", convert.read_iob2(ASSETS / "uner_en_ewt/en_ewt-ud-test.iob2"))
    ud_path = ASSETS / "ud_en_ewt/en_ewt-ud-test.conllu"
    ud = dict(convert.with_ids(ud_path, convert.read_conllu_pos(ud_path)))
    kept = [(sent_id, doc) for sent_id, doc in uner if [t.text for t in doc] == [t.text for t in ud[sent_id]]]
    assert len(kept) == len(splits["test"])
    for (sent_id, ner_doc), doc in zip(kept, splits["test"]):
        assert [t.text for t in doc] == [t.text for t in ner_doc]
        assert [(e.start, e.end, e.label_) for e in doc.ents] == [(e.start, e.end, e.label_) for e in ner_doc.ents]
        assert [t.pos_ for t in doc] == [t.pos_ for t in ud[sent_id]] and doc.text == ud[sent_id].text
    assert sum(len(doc.ents) for doc in splits["test"]) > 1000
    # uner_en_ewt with two tasks is the same corpus, under its own name.
    result = run_prepare("uner_en_ewt", str(tmp_path / "same"), "--assets-dir", str(ASSETS), "--task", "ner,tagger", "--limit", "5")
    assert result.exit_code == 0, result.output
    assert meta_of(tmp_path / "same")["dataset"] == "uner_en_ewt" and meta_of(tmp_path / "same")["task"] == "ner,tagger"
    assert [d.text for d in read(tmp_path / "same" / "test.spacy")] == [d.text for d in splits["test"][:5]]


def make_doc(words: List[str], pos: List[str]) -> Doc:
    return Doc(spacy.blank("en").vocab, words=words, pos=pos)


def test_join_skips_and_reports_what_does_not_join():
    ner_a = make_doc(["John", "left"], ["X", "X"])
    ner_a.ents = [ner_a.char_span(0, 4, label="PER")]
    ner_b, ner_c = make_doc(["can", "not"], ["X", "X"]), make_doc(["alone"], ["X"])
    pos: List[Tuple[str, Doc]] = [
        ("b", make_doc(["ca", "not"], ["AUX", "PART"])),
        ("a", make_doc(["John", "left"], ["PROPN", "VERB"])),
        ("d", make_doc(["only", "here"], ["ADV", "ADV"])),
    ]
    joined, skipped = convert.join_by_sentence_id([("a", ner_a), ("b", ner_b), ("c", ner_c)], pos)
    assert len(joined) == 1 and [t.pos_ for t in joined[0]] == ["PROPN", "VERB"]
    assert [(e.text, e.label_) for e in joined[0].ents] == [("John", "PER")] and joined[0][1].ent_iob_ == "O"
    assert skipped == [
        "b: the tokens differ at token 1 ('can' vs 'ca')",
        "c: not in the POS file",
        "d: not in the NER file",
    ]
    assert convert.join_report([str(i) for i in range(7)], limit=2) == ["  skipped 0", "  skipped 1", "  ... and 5 more"]


def shared_docbin(path: Path, entities: bool = True) -> Path:
    """shared_examples' sentences with Penn tags (and entities) as a DocBin."""
    nlp = spacy.blank("en")
    docs = [example.reference for example in shared_examples(nlp, entities=entities)]
    DocBin(docs=docs * 3).to_disk(path)
    return path


def test_your_own_docbins_with_both_annotations(tmp_path):
    train = shared_docbin(tmp_path / "train.spacy")
    result = run_prepare("mine", str(tmp_path / "out"), "--task", "tagger,ner", "--train", str(train), "--test", str(train))
    assert result.exit_code == 0, result.output
    meta = meta_of(tmp_path / "out")
    assert (meta["task"], meta["attribute"], meta["metrics"]) == ("ner,tagger", "tag", {"ner": "ents_f", "tagger": "tag_acc"})
    doc = read(tmp_path / "out" / "train.spacy")[0]
    assert doc.ents and doc[0].tag_ == "NNP"
    # CoNLL-2003 columns of your own, with the format named.
    columns = tmp_path / "mine.txt"
    columns.write_text(CONLL * 3, encoding="utf8")
    args = ["--task", "ner,tagger", "--format", "conll2003_tagged", "--train", str(columns), "--test", str(columns)]
    result = run_prepare("mine", str(tmp_path / "columns"), *args)
    assert result.exit_code == 0, result.output
    assert meta_of(tmp_path / "columns")["metrics"] == {"ner": "ents_f", "tagger": "tag_acc"}
    assert read(tmp_path / "columns" / "test.spacy")[1][0].tag_ == "NNP"
    # Tags without entities: the NER head would learn nothing from them.
    tags_only = shared_docbin(tmp_path / "tags.spacy", entities=False)
    result = run_prepare("mine", str(tmp_path / "x"), "--task", "ner,tagger", "--train", str(tags_only), "--test", str(train))
    assert result.exit_code != 0 and "docs without entity annotation" in flat(result.output)


@pytest.mark.parametrize(
    "args,message",
    [
        (["mine", "--train", "t.conll", "--test", "t.spacy", "--task", "ner,tagger"], "needs both annotations in one file"),
        (["mine", "--train", "t.txt", "--test", "t.txt", "--task", "ner,tagger", "--format", "conll2003"], "formats with both: spacy, conll2003_tagged"),
        (["ud_en_ewt", "--task", "ner,tagger"], "ud_en_ewt has no ner,tagger annotation"),
        (["mine", "--train", "t.spacy", "--test", "t.spacy", "--task", "ner,segmenter"], "or ner,tagger (one shared encoder, two heads)"),
    ],
)
def test_two_tasks_explain_what_they_need(args, message, tmp_path):
    result = run_prepare(args[0], str(tmp_path / "out"), *args[1:])
    assert result.exit_code != 0 and message in flat(result.output), result.output


# ---------------------------------------------------------------- train.py


@pytest.mark.parametrize("attribute", ["tag", "pos"])
def test_two_tasks_train_the_shared_config(attribute, tiny_model_dir):
    from spacy.util import load_config, load_model_from_config

    train = load_script("train")
    meta = {"task": "ner,tagger", "tasks": ["ner", "tagger"], "lang": "en", "attribute": attribute}
    assert train.config_name(meta) == "shared" and train.encoder_owner(meta) == "tokee_transformer"
    overrides = {**train.corpus_overrides(meta), "paths.backbone": str(tiny_model_dir)}
    config = load_config(PROJECT / "configs" / "shared.cfg", overrides=overrides)
    nlp = load_model_from_config(config, auto_fill=True)
    assert nlp.pipe_names == ["tokee_transformer", "tokee_ner", "tokee_tagger"]
    assert nlp.get_pipe("tokee_tagger").attribute == attribute
    assert nlp.get_pipe("tokee_transformer").listening_components == ["tokee_ner", "tokee_tagger"]
    other = "pos" if attribute == "tag" else "tag"
    weights = config["training"]["score_weights"]
    assert (weights["ents_f"], weights[f"{attribute}_acc"], weights[f"{other}_acc"]) == (0.5, 0.5, None)
    stage2 = train.stage_overrides(meta, 2, Path("s1"), "random", "ce", 100)
    assert {key for key in stage2 if key.startswith("initialize.")} == {
        f"initialize.components.{name}.init_from" for name in ("tokee_transformer", "tokee_ner", "tokee_tagger")
    }
    assert stage2["components.tokee_transformer.training.mode"] == "random"
    # One task keeps its own config and component.
    single = {"task": "ner", "lang": "en"}
    assert (train.config_name(single), train.encoder_owner(single)) == ("ner", "tokee_ner")
    assert "initialize.components.tokee_ner.init_from" in train.stage_overrides(single, 2, Path("s1"), "random", "ce", 100)


def run_train(corpus: Path, output: Path, model_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [
        sys.executable, str(PROJECT / "scripts" / "train.py"), str(corpus), str(output), "--backbone", str(model_dir),
        "--max-steps", "2", "--eval-frequency", "2", "--batch-size", "4", "--threads", "1",
        "--configs", str(PROJECT / "configs"), *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)


def full_depth(nlp: "spacy.Language", texts: List[str]) -> list:
    with nlp.get_pipe("tokee_transformer").using(exit_mode="off"):
        return [([(e.start, e.end, e.label_) for e in d.ents], [t.tag_ for t in d]) for d in nlp.pipe(texts)]


def test_train_runs_both_stages_on_a_shared_encoder(tiny_model_dir, tmp_path):
    from spacy.util import load_config, load_model_from_config

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split in ("train", "dev"):
        shared_docbin(corpus / f"{split}.spacy")
    meta = {"dataset": "tiny", "task": "ner,tagger", "tasks": ["ner", "tagger"], "lang": "en", "attribute": "tag"}
    (corpus / "meta.json").write_text(json.dumps(meta))
    stage1 = tmp_path / "stage1"
    result = run_train(corpus, stage1, tiny_model_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "tiny: stage 1, tokee_transformer + tokee_ner, tokee_tagger, 2 updates" in result.stdout
    first = spacy.load(stage1 / "model-best")
    assert first.pipe_names == ["tokee_transformer", "tokee_ner", "tokee_tagger"]
    assert first.get_pipe("tokee_tagger").attribute == "tag"
    result = run_train(corpus, tmp_path / "stage2", tiny_model_dir, "--stage", "2", "--init-from", str(stage1 / "model-best"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    second = spacy.load(tmp_path / "stage2" / "model-last")
    assert second.get_pipe("tokee_transformer").training.mode == "self_sampling"
    for name in ("tokee_ner", "tokee_tagger"):
        assert second.get_pipe(name).class_names == first.get_pipe(name).class_names
    # Stage 2's start, before any update: stage 1's encoder, off-ramps and labels.
    train = load_script("train")
    overrides = {
        **train.corpus_overrides(meta),
        **train.stage_overrides(meta, 2, stage1 / "model-best", "self_sampling", "ce", 2),
        "paths.backbone": str(tiny_model_dir),
    }
    config = load_config(PROJECT / "configs" / "shared.cfg", overrides=overrides, interpolate=True)
    nlp = load_model_from_config(config, auto_fill=True)
    nlp.initialize(lambda: shared_examples(nlp))
    texts = ["John Smith lives in London", "Mary said the company was new"]
    assert full_depth(nlp, texts) == full_depth(first, texts)
