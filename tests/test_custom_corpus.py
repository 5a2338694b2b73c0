"""Bring your own corpus: prepare.py's custom datasets, publish.py, and the whole workflow on one."""
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import List, Tuple

import pytest
import spacy
import typer
from spacy.tokens import Doc, DocBin, Span
from typer.testing import CliRunner

PROJECT = Path(__file__).parent.parent / "project"
SCRIPTS = PROJECT / "scripts"
# Words the tiny test backbone knows (conftest.WORDS), so no text is all [UNK].
PEOPLE = ["john", "mary", "smith"]
PLACES = ["london", "paris", "york"]
FILLER = ["the", "company", "said", "it", "was", "in", "with", "a", "new", "city"]


def load_script(name: str) -> ModuleType:
    """Import a project script (they import each other as top-level modules)."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(f"project_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sentences(n: int, seed: int) -> List[Tuple[List[str], List[str]]]:
    """n sentences as (words, IOB2 tags), with a person and a place each."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(PEOPLE), "was", "in", rng.choice(PLACES)] + rng.sample(FILLER, 3)
        out.append((words, ["B-PER", "O", "O", "B-LOC", "O", "O", "O"]))
    return out


def write_jsonl(path: Path, rows: List[Tuple[List[str], List[str]]]) -> Path:
    with path.open("w", encoding="utf8") as file:
        for words, tags in rows:
            text, spans, offset = " ".join(words), [], 0
            for word, tag in zip(words, tags):
                if tag != "O":
                    spans.append([offset, offset + len(word), tag[2:]])
                offset += len(word) + 1
            file.write(json.dumps({"text": text, "spans": spans}) + "\n")
    return path


def write_conll(path: Path, rows: List[Tuple[List[str], List[str]]]) -> Path:
    blocks = ["\n".join(f"{w} {t}" for w, t in zip(words, tags)) for words, tags in rows]
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf8")
    return path


def write_docbin(path: Path, rows: List[Tuple[List[str], List[str]]]) -> Path:
    vocab = spacy.blank("en").vocab
    docs = []
    for words, tags in rows:
        doc = Doc(vocab, words=words)
        doc.ents = [Span(doc, i, i + 1, tag[2:]) for i, tag in enumerate(tags) if tag != "O"]
        docs.append(doc)
    DocBin(docs=docs).to_disk(path)
    return path


@pytest.fixture
def corpus(tmp_path) -> dict:
    folder = tmp_path / "mine"
    folder.mkdir()
    return {
        "train": write_jsonl(folder / "train.jsonl", sentences(40, 0)),
        "dev": write_conll(folder / "dev.conll", sentences(10, 1)),
        "test": write_docbin(folder / "test.spacy", sentences(12, 2)),
    }


def run_prepare(*args: str) -> "typer.testing.Result":
    app = typer.Typer()
    app.command()(load_script("prepare").main)
    return CliRunner().invoke(app, list(args))


def read(path: Path) -> List[Doc]:
    return list(DocBin().from_disk(path).get_docs(spacy.blank("en").vocab))


def test_prepare_reads_each_file_by_its_extension(corpus, tmp_path):
    out = tmp_path / "corpus"
    args = ["custom", str(out), "--train", str(corpus["train"]), "--dev", str(corpus["dev"]), "--test", str(corpus["test"])]
    result = run_prepare(*args, "--task", "ner", "--lang", "en")
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dataset"] == "custom" and meta["task"] == "ner" and meta["lang"] == "en" and meta["metric"] == "ents_f"
    assert {split: fmt for split, (fmt, _) in meta["files"].items()} == {"train": "jsonl", "dev": "conll", "test": "spacy"}
    sizes = {split: len(read(out / f"{split}.spacy")) for split in ("train", "dev", "test")}
    assert sizes == {"train": 40, "dev": 10, "test": 12}
    # The same sentences, whichever format they came in.
    first = read(out / "dev.spacy")[0]
    assert [(e.text, e.label_) for e in first.ents] == [(first[0].text, "PER"), (first[3].text, "LOC")]


def test_prepare_holds_out_dev_when_there_is_none(corpus, tmp_path):
    out = tmp_path / "corpus"
    result = run_prepare("mine", str(out), "--train", str(corpus["train"]), "--test", str(corpus["test"]))
    assert result.exit_code == 0, result.output
    assert len(read(out / "train.spacy")) == 36 and len(read(out / "dev.spacy")) == 4
    assert "last 10% of train" in json.loads((out / "meta.json").read_text())["note"]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--test", "x.spacy", "--train", "t.parquet"], "cannot tell the format from '.parquet'"),
        (["--train", "t.jsonl"], "needs --test"),
        (["--train", "t.jsonl", "--test", "x.spacy", "--task", "tagger"], "has no tagger annotation"),
        (["--train", "t.jsonl", "--test", "x.spacy", "--format", "conllu_pos"], "holds tagger annotation, not ner"),
        (["--train", "t.jsonl", "--test", "x.spacy", "--lang", "xx-nope"], "not a spaCy language code"),
        (["--train", "nowhere.jsonl", "--test", "x.spacy"], "Missing nowhere.jsonl"),
    ],
)
def test_prepare_explains_a_bad_custom_corpus(extra, message, tmp_path):
    result = run_prepare("custom", str(tmp_path / "out"), *extra)
    assert result.exit_code != 0
    assert message in result.output, result.output


def test_a_bundled_dataset_refuses_your_files(corpus, tmp_path):
    result = run_prepare("uner_en_ewt", str(tmp_path / "out"), "--train", str(corpus["train"]))
    assert result.exit_code != 0 and "bundled dataset" in result.output


def test_publish_moves_reachable_copies_and_drops_stale_ones(tmp_path):
    publish = load_script("publish")
    tuned = tmp_path / "tuned"
    (tuned / "2x").mkdir(parents=True)
    (tuned / "2x" / "config.cfg").write_text("[nlp]\n")
    stale = tmp_path / "final-3x"
    stale.mkdir()
    report = {
        "targets": [
            {"target": 2.0, "reachable": True, "pipeline_path": str(tuned / "2x"), "window": 1, "threshold": 0.2},
            {"target": 3.0, "reachable": False, "reason": "too slow"},
        ]
    }
    assert publish.publish(report, tmp_path) == [tmp_path / "final-2x"]
    assert (tmp_path / "final-2x" / "config.cfg").exists() and not (tuned / "2x").exists()
    assert not stale.exists()


@pytest.mark.slow
def test_workflow_all_on_your_own_corpus(tiny_model_dir, corpus, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns("corpus", "training", "metrics", "logs"))
    overrides = {
        "dataset": "custom", "task": "ner", "lang": "en",
        "train": corpus["train"], "dev": corpus["dev"], "test": corpus["test"],
        "backbone": tiny_model_dir, "threads": 1,
        "stage1_steps": 6, "stage2_steps": 4, "eval_frequency": 3, "tune_limit": 10, "sweep_limit": 10,
        "timing_docs": 6, "repeats": 1, "targets": "1.2,2", "windows": "0,1",
    }
    args = [f"--vars.{key}={value}" for key, value in overrides.items()]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "spacy", "project", "run", "all", str(project), *args],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Both stages trained with the ProgressLogger (it prints every 25 updates; these runs are shorter).
    stage1 = (project / "training" / "custom" / "stage1" / "model-best" / "config.cfg").read_text()
    assert '@loggers = "spacy-early-exit.ProgressLogger.v1"' in stage1
    meta = json.loads((project / "corpus" / "custom" / "meta.json").read_text())
    assert meta["task"] == "ner" and [meta["files"][s][0] for s in ("train", "dev", "test")] == ["jsonl", "conll", "spacy"]
    metrics = project / "metrics" / "custom"
    evaluation = json.loads((metrics / "evaluate.json").read_text())
    assert evaluation["rows"][0]["method"] == "full" and evaluation["threads"] == 1
    assert (metrics / "sweep" / "sweep.png").stat().st_size > 0
    training = project / "training" / "custom"
    assert (training / "final" / "config.cfg").exists() and not (training / "tuned").exists()
    tune = json.loads((metrics / "tune.json").read_text())
    for entry in tune["targets"]:
        published = training / f"final-{entry['target']:g}x"
        assert published.exists() == entry["reachable"], entry
        if entry["reachable"]:
            overrides = json.loads((metrics / "configs" / f"{entry['target']:g}x.json").read_text())
            pipe = spacy.load(published).get_pipe("tokee_ner")
            for dotted, value in overrides.items():
                assert getattr(pipe, dotted.rsplit(".", 1)[1]) == value, dotted


# ---------------------------------------------------------------- any tag set, messy lines


def write_columns(path: Path, rows: List[Tuple[List[str], List[str]]], sep: str = "\t") -> Path:
    blocks = ["\n".join(f"{w}{sep}{t}" for w, t in zip(words, tags)) for words, tags in rows]
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf8")
    return path


PTB = [(["john", "was", "in", "london", "\xa0"], ["NNP", "VBD", "IN", "NNP", ","]), (["it", "said"], ["PRP", "VBD"])]
UPOS = [(["john", "was", "in", "london"], ["PROPN", "AUX", "ADP", "PROPN"]), (["it", "said"], ["PRON", "VERB"])]


def flat(output: str) -> str:
    """A message that typer wrapped in a box, on one line."""
    return " ".join(output.replace("\u2502", " ").split())


def prepared_meta(out: Path) -> dict:
    return json.loads((out / "meta.json").read_text())


def test_a_tagger_corpus_with_its_own_tags_trains_token_tag(tmp_path):
    train = write_columns(tmp_path / "train.conll", PTB * 5)
    test = write_columns(tmp_path / "test.tsv", PTB)
    result = run_prepare("mine", str(tmp_path / "out"), "--task", "tagger", "--train", str(train), "--test", str(test))
    assert result.exit_code == 0, result.output
    meta = prepared_meta(tmp_path / "out")
    assert (meta["attribute"], meta["metric"]) == ("tag", "tag_acc")
    assert [meta["files"][s][0] for s in ("train", "test")] == ["conll_tag", "conll_tag"]
    doc = read(tmp_path / "out" / "test.spacy")[0]
    assert [t.tag_ for t in doc] == PTB[0][1] and doc[4].text == "\xa0" and not doc.has_annotation("POS")


def test_upos_columns_and_docbins_keep_pos(tmp_path):
    # UPOS as CoNLL columns (space separated): token.pos_, scored as pos_acc.
    train = write_columns(tmp_path / "train.txt", UPOS * 5, sep=" ")
    result = run_prepare("mine", str(tmp_path / "a"), "--task", "tagger", "--train", str(train), "--test", str(train))
    assert result.exit_code == 0, result.output
    assert (prepared_meta(tmp_path / "a")["attribute"], prepared_meta(tmp_path / "a")["metric"]) == ("pos", "pos_acc")
    assert [t.pos_ for t in read(tmp_path / "a" / "train.spacy")[0]] == UPOS[0][1]
    # A DocBin with token.tag_ only: UPOS values become pos, others stay tags.
    vocab = spacy.blank("en").vocab
    for name, rows, attribute in (("upos", UPOS, "pos"), ("ptb", PTB, "tag")):
        path = tmp_path / f"{name}.spacy"
        DocBin(docs=[Doc(vocab, words=w, tags=t) for w, t in rows * 5]).to_disk(path)
        result = run_prepare("mine", str(tmp_path / name), "--task", "tagger", "--train", str(path), "--test", str(path))
        assert result.exit_code == 0, result.output
        assert prepared_meta(tmp_path / name)["attribute"] == attribute
        first = read(tmp_path / name / "train.spacy")[0]
        assert [t.pos_ for t in first] == (UPOS[0][1] if attribute == "pos" else [""] * 5)


def test_a_tagger_corpus_without_tags_is_refused(corpus, tmp_path):
    result = run_prepare("mine", str(tmp_path / "out"), "--task", "tagger", "--train", str(corpus["test"]), "--test", str(corpus["test"]))
    text = flat(result.output)
    assert result.exit_code != 0 and "needs token.tag_ (any tag set) or token.pos_ (UPOS)" in text


def test_a_conllu_file_for_ner_names_the_task_var(tmp_path):
    result = run_prepare("mine", str(tmp_path / "out"), "--train", "t.conllu", "--test", "x.spacy", "--task", "ner")
    assert result.exit_code != 0
    text = flat(result.output)
    assert "set --vars.task tagger or segmenter" in text and "--format" not in text


def test_a_bad_line_stops_prepare_in_one_line_or_is_skipped(tmp_path):
    train = tmp_path / "train.conll"
    train.write_text("john\tB-PER\nwas\n\nin\tO\nlondon\tB-LOC\n\nit\tO\n", encoding="utf8")
    test = tmp_path / "test.conll"
    test.write_text("it\tO\n", encoding="utf8")
    args = ["mine", str(tmp_path / "out"), "--train", str(train), "--test", str(test)]
    result = run_prepare(*args)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"{train}:2: expected 2 tab-separated columns, got 1: 'was' "
        "(skip such lines with --vars.skip_bad_lines true, or prepare.py --skip-bad-lines true)"
    ]
    result = run_prepare(*args, "--skip-bad-lines", "true")
    assert result.exit_code == 0, result.output
    assert f"{train}: skipped 1 bad line\n" in result.output and str(test) not in result.output
    assert len(read(tmp_path / "out" / "train.spacy")) == 2 and len(read(tmp_path / "out" / "dev.spacy")) == 1
    assert run_prepare(*args, "--skip-bad-lines", "maybe").exit_code != 0


def test_project_passes_skip_bad_lines_to_prepare():
    import srsly

    project = srsly.read_yaml(PROJECT / "project.yml")
    assert project["vars"]["skip_bad_lines"] is False
    convert_step = next(c for c in project["commands"] if c["name"] == "convert")
    assert "--skip-bad-lines ${vars.skip_bad_lines}" in convert_step["script"][0]


@pytest.mark.parametrize("attribute,weights", [("tag", (1.0, None)), ("pos", (None, 1.0)), (None, (None, 1.0))])
def test_train_follows_the_corpus_attribute(attribute, weights):
    from spacy.util import load_config

    train = load_script("train")
    meta = {"task": "tagger", "lang": "en", **({"attribute": attribute} if attribute else {})}
    config = load_config(PROJECT / "configs" / "tagger.cfg", overrides=train.corpus_overrides(meta), interpolate=False)
    assert config["components"]["tokee_tagger"]["attribute"] == (attribute or "pos")
    assert (config["training"]["score_weights"]["tag_acc"], config["training"]["score_weights"]["pos_acc"]) == weights
