"""benchmarks/profile_layer_step.py end to end on a tiny random pipeline and corpus."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from test_precision_benchmark import DATASET, tiny_project

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from profile_layer_step import CATEGORIES, INT8, ORT_CALLS, OUTSIDE, PRECISIONS, main  # noqa: E402

HAS_ORT = all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))
DEPTH = 4  # the tiny backbone's layers


def test_profile_covers_every_setting_and_batch_size(tiny_model_dir, tmp_path):
    project = tiny_project(tmp_path / "project", tiny_model_dir)
    path = main(dataset=DATASET, docs=6, threads=1, pipeline=None, project=project, tuned=None, target=2.0,
                batch_sizes="1,32", repeats=1, ort=True, output_dir=tmp_path / "results")
    report = json.loads(path.read_text(encoding="utf8"))
    expected = {f"{m}/{p}" for m in ("full", "tokee") for p in PRECISIONS} | ({"ort-fp32/fp32", "ort-int8/int8"} if HAS_ORT else set())
    rows = {row["setting"]: row for row in report["settings"]}
    assert set(rows) == expected, report["ort_skipped"]
    assert report["threads"] == 1 and report["docs"] == 6 and report["depth"] == DEPTH
    assert ("onnxruntime" in report["versions"]) == HAS_ORT and report["command"].startswith("python benchmarks/")
    for name, row in rows.items():
        assert set(row["by_batch"]) == {"1", "32"}
        for batch, entry in row["by_batch"].items():
            assert entry["wall_ms_per_doc"] > 0 and entry["words_per_second"] > 0 and entry["ops_per_doc"] > 0
            parts = entry["categories"]
            assert list(parts) == list(CATEGORIES)
            assert all(0.0 <= p["share"] <= 1.0 and p["ms_per_doc"] >= 0 for p in parts.values()), parts
            assert sum(p["share"] for p in parts.values()) == pytest.approx(1.0, abs=2e-3)
            # int8-ort and fp32-ort at batch 1 run a sequence's layers and off-ramps in one session call.
            assert (parts["products"]["share"] > 0) == (batch != "1" or not name.endswith("-ort")), (name, batch)
            # Only our int8 layer stack has quantize/rescale ops (ORT's are DynamicQuantizeLinear nodes).
            assert (parts[INT8]["share"] > 0) == name.endswith("int8"), (name, parts[INT8])
            # int8-ort's and fp32-ort's layers are session calls, which no aten op accounts for.
            assert (parts[ORT_CALLS]["share"] > 0) == name.endswith("-ort"), (name, parts[ORT_CALLS])
            if name.startswith(("full", "ort")):
                assert entry["layers_run_per_batch"] == entry["mean_exit_layer"] == DEPTH
            else:
                assert 1 <= entry["mean_exit_layer"] <= entry["layers_run_per_batch"] <= DEPTH
            if name.startswith("ort"):
                assert 0 < entry["session_run_ms_per_doc"] <= entry["profiled_wall_ms_per_doc"]
                # Timed and profiled in its faster order, as outside_rows reports it.
                assert entry["words_per_second"] == entry["words_per_second_by_order"][entry["order"]]
                assert entry["words_per_second"] == max(entry["words_per_second_by_order"].values())
            else:
                assert parts[OUTSIDE]["share"] > 0
    assert rows["full/fp32"]["fields"] == {"exit_mode": "off", "precision": "fp32"}
    assert rows["tokee/int8"]["fields"]["exit_mode"] == "tokee" and rows["tokee/int8"]["fields"]["window"] == 1
    table = path.with_suffix(".md").read_text(encoding="utf8")
    assert table.count("\n|") == 2 * len(expected) + 2  # head, rule, one line per setting and batch size
