"""`annotate` with the local engine: formats, order, carried fields, errors, .spacy shards, overrides."""
import json
import sys
import types
from pathlib import Path

import pytest
import spacy
from spacy.tokens import DocBin
from spacy.vocab import Vocab
from typer.testing import CliRunner

from annotate_helpers import LONG_TEXT, mixed_texts, save_ner_pipeline, write_lines
from spacy_early_exit.annotate import (
    AnnotateError,
    InputError,
    RowSpec,
    annotate_corpus,
    count_records,
    parse_overrides,
    read_records,
)
from spacy_early_exit.cli import app


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    return save_ner_pipeline(tmp_path_factory.mktemp("annotate"))


@pytest.fixture(scope="module")
def nlp(pipeline):
    return spacy.load(pipeline)


def run(pipeline, source, output, **kwargs):
    return annotate_corpus(pipeline, source, output, quiet=True, batch_size=kwargs.pop("batch_size", 4), **kwargs)


def read_rows(path: Path):
    lines = path.read_text(encoding="utf8").split("\n")
    assert lines[-1] == ""  # every row ends in a newline, and nothing follows
    return [json.loads(line) for line in lines[:-1]]


def test_txt_rows_answer_lines_in_order(pipeline, nlp, tmp_path):
    texts = mixed_texts(40)
    source = write_lines(tmp_path / "in.txt", texts)
    summary = run(pipeline, source, tmp_path / "out.jsonl")
    rows = read_rows(tmp_path / "out.jsonl")
    assert [row["text"] for row in rows] == texts  # empty lines, emoji and \u2028 included
    for row, doc in zip(rows, nlp.pipe(texts)):
        record = doc._.early_exit["tokee_ner"]
        assert list(row) == ["text", "ents", "exit_layers", "flops", "full_flops"]
        assert row["ents"] == [[e.start_char, e.end_char, e.label_] for e in doc.ents]
        assert (row["exit_layers"], row["flops"], row["full_flops"]) == (record["exit_layers"], record["flops"], record["full_flops"])
    long_row = rows[texts.index(LONG_TEXT)]
    assert len(long_row["exit_layers"]) > 64 and 0 not in long_row["exit_layers"]  # past the position limit, nothing lost
    assert rows[texts.index("")] == {"text": "", "ents": [], "exit_layers": [], "flops": 0, "full_flops": 0}
    assert summary["docs"] == 40 and summary["words"] == sum(len(r["exit_layers"]) for r in rows)
    assert summary["speedup"] == pytest.approx(sum(r["full_flops"] for r in rows) / sum(r["flops"] for r in rows), rel=1e-3)


def test_output_is_one_physical_line_per_document(pipeline, tmp_path):
    texts = ["a\u2028b", "c\u2029d\x85e", "😀"]
    source = write_lines(tmp_path / "in.txt", texts)
    run(pipeline, source, tmp_path / "out.jsonl")
    raw = (tmp_path / "out.jsonl").read_text(encoding="utf8")
    assert len(raw.splitlines()) == 3 and "😀" in raw  # separators escaped, emoji kept as is
    assert [json.loads(line)["text"] for line in raw.splitlines()] == texts


def test_crlf_and_bom_are_line_endings_not_text(pipeline, tmp_path):
    source = tmp_path / "in.txt"
    source.write_bytes(b"\xef\xbb\xbfLondon\r\n\r\nParis")
    assert [r.text for r in read_records(source)] == ["London", "", "Paris"]


def test_jsonl_fields_are_carried_in_order(pipeline, tmp_path):
    lines = [
        json.dumps({"id": 7, "text": "John lives in London", "meta": {"src": ["a", 1]}}),
        "",
        json.dumps({"text": "Paris 😀", "ents": "old value", "z": None}, ensure_ascii=False),
    ]
    source = write_lines(tmp_path / "in.jsonl", lines)
    run(pipeline, source, tmp_path / "out.jsonl")
    rows = read_rows(tmp_path / "out.jsonl")
    assert list(rows[0])[:3] == ["id", "meta", "text"] and rows[0]["meta"] == {"src": ["a", 1]}
    assert rows[1]["text"] == "" and rows[1]["exit_layers"] == []
    assert list(rows[2])[:2] == ["z", "text"] and isinstance(rows[2]["ents"], list)  # the output's "ents" wins


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"text": "ok"}', '{"text": "broken"'], "in.jsonl line 2: not valid JSON"),
        (['{"text": "ok"}', "", '{"id": 3}'], "in.jsonl line 3: no \"text\" field"),
        (['{"text": 5}'], "in.jsonl line 1: \"text\" must be a string, got a number"),
        (['["text"]'], "in.jsonl line 1: expected a JSON object"),
        (['{"text": "\\ud83d alone"}'], "in.jsonl line 1: a \\u escape makes a lone surrogate"),
    ],
)
def test_malformed_jsonl_names_the_line_before_any_work(pipeline, tmp_path, lines, message):
    source = write_lines(tmp_path / "in.jsonl", lines)
    with pytest.raises(InputError, match="line") as caught:
        run(pipeline, source, tmp_path / "out.jsonl")
    assert message in str(caught.value)
    assert not list(tmp_path.glob("*out*"))  # nothing written, not even a partial file


def test_invalid_utf8_names_the_line(tmp_path):
    source = tmp_path / "in.txt"
    source.write_bytes(b"fine\nbad \xff byte\n")
    with pytest.raises(InputError, match=r"in.txt line 2: not valid UTF-8"):
        count_records(source)


def test_folder_input_reads_every_format_in_order(pipeline, nlp, tmp_path):
    folder = tmp_path / "corpus"
    (folder / "b").mkdir(parents=True)
    write_lines(folder / "a.txt", ["London", ""])
    write_lines(folder / "b" / "c.jsonl", [json.dumps({"text": "Paris", "n": 1})])
    docbin = DocBin(docs=[nlp.make_doc("New York"), nlp.make_doc("Google")])
    docbin.to_disk(folder / "d.spacy")
    (folder / "notes.md").write_text("ignored", encoding="utf8")
    (folder / ".hidden.txt").write_text("ignored", encoding="utf8")
    records = list(read_records(folder))
    assert [r.text for r in records] == ["London", "", "Paris", "New York", "Google"]
    assert [r.index for r in records] == list(range(5))
    assert str(records[4].where).endswith("d.spacy doc 2") and records[2].fields == {"n": 1}
    run(pipeline, folder, tmp_path / "out.jsonl")
    assert [row["text"] for row in read_rows(tmp_path / "out.jsonl")] == [r.text for r in records]


def test_spacy_output_keeps_records_and_fields_in_shards(pipeline, tmp_path):
    lines = [json.dumps({"id": i, "text": t}, ensure_ascii=False) for i, t in enumerate(mixed_texts(7))]
    source = write_lines(tmp_path / "in.jsonl", lines)
    run(pipeline, source, tmp_path / "out.jsonl")
    run(pipeline, source, tmp_path / "out.spacy", shard_size=3)
    shards = sorted((tmp_path / "out.spacy").iterdir())
    assert [p.name for p in shards] == ["000000.spacy", "000001.spacy", "000002.spacy"]
    docs = [doc for shard in shards for doc in DocBin().from_disk(shard).get_docs(Vocab())]
    for doc, row in zip(docs, read_rows(tmp_path / "out.jsonl")):
        record = doc.user_data[("._.", "early_exit", None, None)]["tokee_ner"]
        # DocBin reads user data back with tuples for arrays.
        assert list(record["exit_layers"]) == row["exit_layers"] and record["flops"] == row["flops"]
        assert [[e.start_char, e.end_char, e.label_] for e in doc.ents] == row["ents"]
        assert doc.text == row["text"] and doc.user_data["fields"] == {"id": row["id"]}
    assert len(docs) == 7
    # The shards are themselves input: the texts and fields come back in order.
    assert [(r.text, r.fields) for r in read_records(tmp_path / "out.spacy")] == [
        (row["text"], {"id": row["id"]}) for row in read_rows(tmp_path / "out.jsonl")
    ]
    run(pipeline, source, tmp_path / "out.spacy", shard_size=10)  # a rerun replaces the shards
    assert [p.name for p in (tmp_path / "out.spacy").iterdir()] == ["000000.spacy"]


def test_config_overrides_apply_at_load(pipeline, tmp_path):
    source = write_lines(tmp_path / "in.txt", mixed_texts(12))
    costs = {}
    for value in ("0.0", "1.0"):
        run(pipeline, source, tmp_path / f"{value}.jsonl", overrides=parse_overrides([f"components.tokee_ner.threshold={value}"]))
        costs[value] = sum(row["flops"] for row in read_rows(tmp_path / f"{value}.jsonl"))
    assert costs["0.0"] > costs["1.0"]
    run(pipeline, source, tmp_path / "off.jsonl", overrides=parse_overrides(["components.tokee_ner.exit_mode=off"]))
    assert all(row["flops"] == row["full_flops"] for row in read_rows(tmp_path / "off.jsonl"))


def test_parse_overrides_uses_config_values():
    parsed = parse_overrides(["components.a.threshold=0.3", "components.a.thresholds=null", "components.a.exit_mode=sentee", "x.y=[1, 2]", "x.s=a=b"])
    assert parsed == {"components.a.threshold": 0.3, "components.a.thresholds": None, "components.a.exit_mode": "sentee", "x.y": [1, 2], "x.s": "a=b"}
    for bad in ("threshold", "=3", "threshold=0.3", "components..x=1"):
        with pytest.raises(AnnotateError, match="--config"):
            parse_overrides([bad])


def test_cli_prints_a_summary_and_fails_cleanly(pipeline, tmp_path):
    source = write_lines(tmp_path / "in.txt", ["John lives in London", ""])
    runner = CliRunner()
    overrides = ["--config", "components.tokee_ner.exit_mode=off", "--config", "components.tokee_ner.window=0"]
    result = runner.invoke(app, ["annotate", str(pipeline), str(source), str(tmp_path / "out.jsonl"), "--batch-size", "2", *overrides])
    assert result.exit_code == 0, result.output
    assert "annotate: done: 2 docs" in result.output and "FLOPs speed-up 1.00x" in result.output
    rows = read_rows(tmp_path / "out.jsonl")
    assert len(rows) == 2 and rows[0]["flops"] == rows[0]["full_flops"] > 0
    result = runner.invoke(app, ["annotate", str(pipeline), str(source), str(tmp_path / "bad.jsonl"), "--config", "components.nope.x=1"])
    assert result.exit_code == 1 and "annotate: error: Could not load the pipeline" in result.output
    assert "components -> nope -> x" in result.output
    result = runner.invoke(app, ["annotate", str(pipeline), str(source), str(tmp_path / "out.csv")])
    assert result.exit_code == 1 and "must end in .jsonl or .spacy" in result.output


def test_a_failing_batch_names_its_lines(pipeline, tmp_path):
    texts = mixed_texts(12)
    texts[5] = "x" * 1_000_001  # over spaCy's nlp.max_length: make_doc raises E088
    source = write_lines(tmp_path / "in.txt", texts)
    with pytest.raises(AnnotateError, match=r"in.txt lines 5-8 failed: ValueError: \[E088\]"):
        run(pipeline, source, tmp_path / "out.jsonl", batch_size=4)
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.slow
def test_forked_workers_give_the_same_rows(pipeline, tmp_path):
    texts = mixed_texts(24)
    source = write_lines(tmp_path / "in.txt", texts)
    run(pipeline, source, tmp_path / "one.jsonl")
    run(pipeline, source, tmp_path / "two.jsonl", workers=2, threads_per_worker=1)
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()
    texts[13] = "x" * 1_000_001
    write_lines(source, texts)
    with pytest.raises(AnnotateError, match=r"in.txt lines 13-16 failed: ValueError: \[E088\]"):
        run(pipeline, source, tmp_path / "bad.jsonl", workers=2, threads_per_worker=1)
    with pytest.raises(AnnotateError, match="forked worker runs one torch thread"):
        run(pipeline, source, tmp_path / "bad.jsonl", workers=2, threads_per_worker=2)


def test_row_keys_follow_the_components(tiny_model_dir):
    from test_tagger import make_tagger_nlp

    tagger = make_tagger_nlp(tiny_model_dir, gold="upos_tags")
    spec = RowSpec.from_nlp(tagger)
    assert (spec.components, spec.annotations) == (("tokee_tagger",), ("tags", "pos"))
    row = spec.annotate(tagger("John lives in London ."))
    assert list(row) == ["tags", "pos", "exit_layers", "flops", "full_flops"] and len(row["tags"]) == 5
    with pytest.raises(AnnotateError, match="no early-exit component"):
        RowSpec.from_nlp(spacy.blank("en"))


def test_rows_hold_what_the_pipe_says_it_fills(tiny_model_dir, monkeypatch):
    from test_tagger import make_tagger_nlp

    nlp = make_tagger_nlp(tiny_model_dir, gold="upos_tags")
    pipe = nlp.get_pipe("tokee_tagger")
    # annotate asks the pipe, not its class: a pipe that fills only POS gives rows with only POS.
    monkeypatch.setattr(pipe, "row_fields", lambda: {"pos": lambda doc: ["X"] * len(doc)})
    row = RowSpec.from_nlp(nlp).annotate(nlp("John lives here"))
    assert list(row) == ["pos", "exit_layers", "flops", "full_flops"] and row["pos"] == ["X", "X", "X"]
    monkeypatch.setattr(pipe, "row_fields", lambda: {"lemmas": lambda doc: []})
    with pytest.raises(AnnotateError, match="'tokee_tagger' fills the row field 'lemmas'"):
        RowSpec.from_nlp(nlp)


def test_segmenter_rows_list_words(tmp_path):
    from test_segmenter import make_seg_nlp, save_cjk_backbone

    nlp = make_seg_nlp(save_cjk_backbone(tmp_path / "cjk"), steps=0)
    spec = RowSpec.from_nlp(nlp)
    doc = nlp("我爱北京天安门")
    row = spec.annotate(doc)
    assert spec.annotations == ("words",) and row["words"] == [t.text for t in doc]
    assert "".join(row["words"]) == "我爱北京天安门" and len(row["exit_layers"]) == len(row["words"])


def test_ray_engine_without_ray_names_the_install_command(pipeline, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    result = CliRunner().invoke(app, ["annotate", str(pipeline), str(tmp_path / "missing.txt"), str(tmp_path / "o.jsonl"), "--engine", "ray"])
    assert result.exit_code == 1
    assert 'pip install "spacy-early-exit[ray]"' in result.output


class FakeRay(types.SimpleNamespace):
    """Enough of ray for ray_session: records what it was asked to do."""

    def __init__(self, running_cluster: bool, initialized: bool = False) -> None:
        super().__init__(calls=[], running=running_cluster, initialized=initialized, data=types.ModuleType("ray.data"))

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, address=None, **kwargs) -> None:
        self.calls.append(("init", address, kwargs.get("num_cpus")))
        if address == "auto" and not self.running:
            raise ConnectionError("Could not find any running Ray instance")

    def shutdown(self) -> None:
        self.calls.append(("shutdown",))


@pytest.mark.parametrize(
    "running, initialized, expected",
    [
        (False, False, [("init", "auto", None), ("init", None, 3), ("shutdown",)]),  # starts a local one, stops it
        (True, False, [("init", "auto", None), ("shutdown",)]),  # connects, then disconnects (the cluster stays)
        (True, True, []),  # the caller's Ray: used as it is, left running
    ],
)
def test_ray_session_connects_or_starts(monkeypatch, running, initialized, expected):
    from spacy_early_exit.annotate.ray_engine import ray_session

    fake = FakeRay(running, initialized)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setitem(sys.modules, "ray.data", fake.data)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with ray_session(3) as ray:
        assert ray is fake
    assert fake.calls == expected
