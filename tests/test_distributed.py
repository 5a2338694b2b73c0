"""`annotate --engine ray` and annotate_dataset on a local 2-CPU Ray cluster.

Ray is an optional extra: without it these tests skip, except under CI (the
CI variable set), where scripts/install.sh must have installed it.
"""
import json
import os
from pathlib import Path

import pytest
from spacy.tokens import DocBin
from spacy.vocab import Vocab

from annotate_helpers import mixed_texts, save_ner_pipeline, write_lines
from spacy_early_exit.annotate import AnnotateError, annotate_corpus

try:
    import ray
    import ray.data
except ImportError:
    ray = None

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    if ray is None:
        if os.environ.get("CI"):
            pytest.fail('Ray is not installed; CI installs it with scripts/install.sh (pip install -e ".[ray]")')
        pytest.skip("Ray is not installed (pip install \"spacy-early-exit[ray]\")")
    # Two CPUs, like the machine; the engine uses this instance and leaves it running.
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    return save_ner_pipeline(tmp_path_factory.mktemp("distributed"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """300 mixed documents (empty lines, emoji, one longer than the position limit
    every 12 lines) as .txt and as .jsonl with an id, and the local engine's output."""
    folder = tmp_path_factory.mktemp("corpus")
    texts = mixed_texts(300)
    write_lines(folder / "in.txt", texts)
    write_lines(folder / "in.jsonl", [json.dumps({"id": f"doc-{i}", "text": t}, ensure_ascii=False) for i, t in enumerate(texts)])
    return folder, texts


def run(pipeline, source, output, engine, **kwargs):
    return annotate_corpus(pipeline, source, output, engine=engine, batch_size=16, quiet=True, **kwargs)


def test_ray_and_local_write_identical_jsonl(cluster, pipeline, corpus, tmp_path):
    folder, texts = corpus
    run(pipeline, folder / "in.jsonl", tmp_path / "local.jsonl", "local", threads_per_worker=2)
    summary = run(pipeline, folder / "in.jsonl", tmp_path / "ray.jsonl", "ray", workers=2, threads_per_worker=1)
    local, remote = (tmp_path / "local.jsonl").read_bytes(), (tmp_path / "ray.jsonl").read_bytes()
    assert local == remote
    rows = [json.loads(line) for line in remote.decode("utf8").splitlines()]
    assert [(row["id"], row["text"]) for row in rows] == [(f"doc-{i}", t) for i, t in enumerate(texts)]
    assert summary["docs"] == 300 and summary["speedup"] > 1.0
    assert cluster.is_initialized()  # the caller's cluster is left running


def test_ray_spacy_output_carries_the_records(cluster, pipeline, corpus, tmp_path):
    folder, texts = corpus
    run(pipeline, folder / "in.txt", tmp_path / "local.jsonl", "local")
    run(pipeline, folder / "in.txt", tmp_path / "ray.spacy", "ray", workers=2, shard_size=128)
    shards = sorted((tmp_path / "ray.spacy").glob("*.spacy"))
    assert len(shards) == 3
    docs = [doc for shard in shards for doc in DocBin().from_disk(shard).get_docs(Vocab())]
    rows = [json.loads(line) for line in (tmp_path / "local.jsonl").read_text(encoding="utf8").splitlines()]
    assert [doc.text for doc in docs] == texts
    for doc, row in zip(docs, rows):
        record = doc.user_data[("._.", "early_exit", None, None)]["tokee_ner"]
        assert (list(record["exit_layers"]), record["flops"], record["full_flops"]) == (row["exit_layers"], row["flops"], row["full_flops"])
        assert [[e.start_char, e.end_char, e.label_] for e in doc.ents] == row["ents"]


def test_a_failing_worker_batch_names_the_input_lines(cluster, pipeline, tmp_path):
    texts = mixed_texts(64)
    texts[40] = "x" * 1_000_001  # over nlp.max_length: the worker's make_doc raises E088
    source = write_lines(tmp_path / "in.txt", texts)
    with pytest.raises(AnnotateError, match=r"in.txt lines 33-48 failed on a Ray worker: ValueError: \[E088\]"):
        run(pipeline, source, tmp_path / "out.jsonl", "ray", workers=2)
    assert not (tmp_path / "out.jsonl").exists()


def test_annotate_dataset_adds_plain_columns(cluster, pipeline):
    from spacy_early_exit.annotate.ray_engine import annotate_dataset

    texts = mixed_texts(40)
    ds = ray.data.from_items([{"id": i, "text": t, "source": "web"} for i, t in enumerate(texts)], override_num_blocks=4)
    out = annotate_dataset(ds, str(pipeline), workers=2, threads_per_worker=1, batch_size=8)
    rows = sorted(out.take_all(), key=lambda row: row["id"])  # order is Ray's unless preserve_order is set
    assert [row["text"] for row in rows] == texts and {row["source"] for row in rows} == {"web"}
    assert set(rows[0]) == {"id", "text", "source", "ents", "exit_layers", "flops", "full_flops"}
    with_ents = next(row for row in rows if len(row["ents"]))
    entity = with_ents["ents"][0]
    assert set(entity) == {"start", "end", "label"} and with_ents["text"][entity["start"]:entity["end"]]
    assert all(len(row["exit_layers"]) or not row["text"].strip() for row in rows)
