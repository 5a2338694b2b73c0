"""benchmarks/ort_layer_profile.py on a tiny project: calls recorded, replayed per grid count, profiled."""
import json
import sys
from pathlib import Path

import pytest
import typer

from spacy_early_exit.encoder import ort_layer, precision

pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import ort_layer_profile  # noqa: E402
import shared  # noqa: E402


def table(path: Path) -> Path:
    fields = {"exit_mode": "tokee", "window": 1, "threshold": 0.3, "thresholds": None, "precision": "int8-ort"}
    path.write_text(json.dumps({"rows": [{"method": "tokee", "precision": "int8-ort", "target": 2, "fields": fields}]}))
    return path


def test_the_calls_are_replayed_for_every_grid_count_and_profiled(tmp_path):
    shared.tiny_project(tmp_path / "project", "tiny")
    output = tmp_path / "profile.json"
    restored = (ort_layer.OrtLayer.__call__, precision.with_sessions, ort_layer.session_options)
    ort_layer_profile.main("tiny", setting="tokee:2", docs=8, batch_size=4, repeats=1, threads=1,
                           project=tmp_path / "project", table=table(tmp_path / "table.json"), output=output)
    assert (ort_layer.OrtLayer.__call__, precision.with_sessions, ort_layer.session_options) == restored
    report = json.loads(output.read_text(encoding="utf8"))
    assert report["layer_calls"] > 0 and 0 < report["share_of_pass_in_layer_calls"] < 1
    slots = report["attention_slots"]
    assert slots["one grid"] == 1.0 and slots["each row alone"] <= slots["4 sets"] <= slots["2 sets"] <= 1.0
    assert list(report["replay_by_grids"]["ms"]) == ["1", "2", "3", "4"]
    shares = report["node_time_shares"]
    assert shares["int8 products"] > 0 and abs(sum(shares.values()) - 1) < 0.01


def test_a_setting_missing_from_the_table_is_one_clear_error(tmp_path):
    with pytest.raises(typer.BadParameter, match="no int8-ort row"):
        ort_layer_profile.setting_fields(table(tmp_path / "table.json"), "tokee:3")
