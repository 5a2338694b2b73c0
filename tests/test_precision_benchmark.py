"""benchmarks/precision.py end to end on a tiny project layout (the layout run.py reads)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import importlib.util

import pytest
from spacy.tokens import DocBin

from spacy_early_exit.testing import NER_DATA, make_ner_nlp

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "precision.py"
DATASET = "tinyner"
from spacy_early_exit.encoder.precision import PRECISIONS  # noqa: E402
# precision.py's default --outside adds the ORT rows where onnxruntime imports.
HAS_ORT = all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))
# Enough distinct docs for a dev and a test split; the tiny model has seen the first four.
EXTRA = [
    ("Smith said Google will be in Paris", [(0, 5, "PER"), (11, 17, "ORG"), (29, 34, "LOC")]),
    ("Apple has a company in New York", [(0, 5, "ORG"), (23, 31, "LOC")]),
    ("Mary and John were in London", [(0, 4, "PER"), (9, 13, "PER"), (22, 28, "LOC")]),
    ("The city of Paris is not London", [(12, 17, "LOC"), (25, 31, "LOC")]),
]


def write_split(nlp, data, path: Path) -> None:
    docs = []
    for text, spans in data:
        doc = nlp.make_doc(text)
        doc.ents = [doc.char_span(start, end, label=label) for start, end, label in spans]
        docs.append(doc)
    DocBin(docs=docs).to_disk(path)


def train_tiny_spacy_ner(path: Path, steps: int = 5) -> Path:
    """A spaCy `ner` pipeline (the default tok2vec CNN + transition-based
    parser) trained a few updates on the toy sentences, saved at `path`: a
    stand-in for benchmarks/train_spacy_cnn.sh's model-best.

    path (Path): the folder to write.
    steps (int): training updates.
    RETURNS (Path): the folder.
    """
    import spacy
    from spacy.training import Example

    nlp = spacy.blank("en")
    nlp.add_pipe("ner")
    examples = [Example.from_dict(nlp.make_doc(text), {"entities": spans}) for text, spans in NER_DATA + EXTRA]
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(steps):
        nlp.update(examples, sgd=optimizer)
    path.parent.mkdir(parents=True, exist_ok=True)
    nlp.to_disk(path)
    return path


def tiny_project(root: Path, model_dir: Path, spacy_cnn: bool = False) -> Path:
    """corpus/<dataset>/{dev,test}.spacy + meta.json and training/<dataset>/final;
    with `spacy_cnn`, a tiny spaCy NER pipeline where precision.py looks for
    the spacy-cnn row's (training/spacy_cnn_<dataset>/model-best)."""
    import spacy

    # Seeded: the tiny model is what several tests score, and 15 updates from
    # whatever random state earlier tests left can end with no entity right.
    spacy.util.fix_random_seed(0)
    nlp = make_ner_nlp(model_dir, steps=15, threshold=0.5, window=1, temperatures=[0.25] * 4)
    corpus = root / "corpus" / DATASET
    corpus.mkdir(parents=True)
    data = NER_DATA + EXTRA
    write_split(nlp, data[::2] + data[1::2], corpus / "dev.spacy")
    write_split(nlp, data[1::2] + data[::2], corpus / "test.spacy")
    # What project/scripts/prepare.py writes beside the splits.
    meta = {"dataset": DATASET, "task": "ner", "lang": "en", "metric": "ents_f",
            "files": {split: [DATASET, f"{DATASET}/{split}.txt"] for split in ("train", "dev", "test")},
            "in_assets": False, "hold_out": 0, "note": ""}
    (corpus / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf8")
    final = root / "training" / DATASET / "final"
    final.parent.mkdir(parents=True)
    nlp.to_disk(final)
    if spacy_cnn:
        train_tiny_spacy_ner(root / "training" / f"spacy_cnn_{DATASET}" / "model-best")
    return root


def run_phase(project: Path, output: Path, phase: str, *extra: str) -> dict:
    args = [
        sys.executable, str(SCRIPT), DATASET, "--phase", phase, "--project", str(project), "--output-dir", str(output),
        "--windows", "0,1", "--steps", "2", "--repeats", "1", "--timing-docs", "4", *extra,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((output / f"precision_{DATASET}.json").read_text(encoding="utf8"))


@pytest.mark.slow
def test_precision_benchmark_writes_every_row(tiny_model_dir, tmp_path):
    project = tiny_project(tmp_path / "project", tiny_model_dir, spacy_cnn=True)
    output = tmp_path / "results"
    # All precisions but the last, then the last added to the same report (--add).
    first = run_phase(project, output, "score", "--precisions", ",".join(PRECISIONS[:-1]))
    scored = run_phase(project, output, "score", "--precisions", PRECISIONS[-1], "--add")
    assert scored["precisions"] == list(PRECISIONS)
    assert set(scored["tuning"]) == set(first["tuning"]) | {PRECISIONS[-1], f"{PRECISIONS[-1]}/layers"}
    kept = [r for r in scored["rows"] if r["precision"] != PRECISIONS[-1] or r["method"].startswith(("hf", "ort"))]
    assert kept == first["rows"], "--add leaves the rows it does not score as they were"
    assert " && " in scored["score_command"] and scored["score_seconds"] >= first["score_seconds"]
    assert all(row["words_per_second"] is None and row["vs_hf_full"] is None for row in scored["rows"])
    assert scored["metric"] == "ents_f" and scored["test_docs"] == len(NER_DATA + EXTRA)
    report = run_phase(project, output, "time")

    rows = {(r["method"], r["precision"], r["target"]): r for r in report["rows"]}
    tokee = [(m, t) for m in ("tokee", "tokee-layers") for t in (2, 3)]
    expected = {(m, p, t) for p in PRECISIONS for m, t in [("full", 1)] + tokee}
    expected |= {("hf-full", "fp32", 1), ("hf-int8", "int8", 1), ("spacy-cnn", "fp32", 1)}
    if HAS_ORT:
        expected |= {("ort-fp32", "fp32", 1), ("ort-int8", "int8", 1)}
    assert set(rows) == expected, report["unreachable"]
    for (method, precision, target), row in rows.items():
        assert {"method", "precision", "target", "score", "flops_speedup", "words_per_second", "vs_hf_full", "fields"} <= set(row)
        assert set(row["words_per_second"]) == set(row["vs_hf_full"]) == {"1", "32"}
        assert all(v > 0 for v in row["words_per_second"].values())
        assert row["score"] is not None and 0.0 <= row["score"] <= 100.0  # ents_f in percent
        if method in ("full", "tokee", "tokee-layers"):
            assert row["fields"]["precision"] == precision
            assert row["fields"]["exit_mode"] == ("off" if method == "full" else "tokee")
        if not method.startswith("tokee"):
            assert row["flops_speedup"] == 1.0 and row["layer_speedup"] == 1.0
    # The layers-per-doc rows were tuned for that cost: on dev they reach it.
    for key, tuned in scored["tuning"].items():
        for entry in tuned["targets"]:
            speedup = entry["layer_speedup"] if key.endswith("/layers") else entry["flops_speedup"]
            assert entry["cost"] == ("layers" if key.endswith("/layers") else "flops")
            assert speedup >= entry["target"] * 1.02
    assert rows[("hf-full", "fp32", 1)]["vs_hf_full"] == {"1": 1.0, "32": 1.0}
    # The outside rows: what ran them, and how they were timed.
    cnn = rows[("spacy-cnn", "fp32", 1)]
    # Our rows and spacy-cnn: the largest column is the best from that batch size up.
    for key, row in rows.items():
        if key[0] in ("hf-full", "hf-int8", "ort-fp32", "ort-int8"):
            assert "words_per_second_by_batch" not in row  # they pad a whole batch: not timed at 1000
            continue
        assert set(row["words_per_second_by_batch"]) == {"1", "32", "128", "1000"}
        assert row["words_per_second"]["32"] == max(row["words_per_second_by_batch"][b] for b in ("32", "128", "1000"))
        assert row["words_per_second"]["32"] == row["words_per_second_by_batch"][str(row["batch_size_used"]["32"])]
    assert cnn["runtime"]["components"] == ["ner"] and cnn["mean_exit_layer"] is None
    if HAS_ORT:
        for method, precision in (("ort-fp32", "fp32"), ("ort-int8", "int8")):
            row = rows[(method, precision, 1)]
            assert set(row["words_per_second_by_order"]) == {"document", "length-sorted"}
            assert row["words_per_second"]["1"] == max(v["1"] for v in row["words_per_second_by_order"].values())
            assert row["runtime"]["fused_operators"]["Attention"] == 4 and row["runtime"]["intra_op_threads"] == 1
        assert all(set(r["vs_ort_int8"]) == {"1", "32"} for r in report["rows"])
        assert rows[("ort-int8", "int8", 1)]["vs_ort_int8"] == {"1": 1.0, "32": 1.0}
        # Same weights, same tokenization and decoding: the fp32 ONNX graph scores as hf-full.
        assert abs(rows[("ort-fp32", "fp32", 1)]["score"] - rows[("hf-full", "fp32", 1)]["score"]) <= 1.0
    # The same weights at full depth outside spaCy label the words identically.
    assert rows[("hf-full", "fp32", 1)]["score"] == rows[("full", "fp32", 1)]["score"]
    # The scores survive the timing phase unchanged.
    assert {(r["method"], r["precision"], r["target"]): r["score"] for r in scored["rows"]} == {k: r["score"] for k, r in rows.items()}
    assert report["threads"] == 1 and report["docs"]["timing"] == 4 and report["machine"]
    assert report["command"].startswith("python benchmarks/precision.py") and "--phase time" in report["command"]
    table = (output / f"precision_{DATASET}.md").read_text(encoding="utf8")
    assert table.count("\n|") == len(expected) + 2 and "hf-int8" in table  # head, rule, rows
    assert ("vs ort-int8 b32" in table) == HAS_ORT and "spacy-cnn" in table
