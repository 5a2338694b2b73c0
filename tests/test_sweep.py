"""sweep: score vs FLOPs speed-up for SENTEE/TOKEE, full depth and static-k; CSV, JSON, PNG."""
import csv
import json

import pytest
from spacy.tokens import DocBin
from typer.testing import CliRunner

from spacy_early_exit.cli import app
from spacy_early_exit.testing import ner_examples
from spacy_early_exit.tools.plotting import plot_sweep
from spacy_early_exit.tools.sweep import COLUMNS, run_sweep, write_sweep

THRESHOLDS = [0.1, 0.5, 1.0]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def rows(trained_ner):
    policy = trained_ner.get_pipe("tokee_ner").policy
    result = run_sweep(trained_ner, ner_examples(trained_ner), THRESHOLDS, window=1, progress=False)
    assert trained_ner.get_pipe("tokee_ner").policy == policy  # settings restored
    return result


def by_method(rows, method):
    return [r for r in rows if r["method"] == method]


def test_rows_cover_every_method_and_layer(rows):
    assert all(set(r) == set(COLUMNS) for r in rows)
    assert [r["threshold"] for r in by_method(rows, "sentee")] == THRESHOLDS
    assert [r["threshold"] for r in by_method(rows, "tokee")] == THRESHOLDS
    assert all(r["window"] == 1 for r in by_method(rows, "tokee"))
    static = [r for r in rows if r["method"].startswith("static-")]
    assert [r["method"] for r in static] == ["static-1", "static-2", "static-3", "static-4"]
    (full,) = by_method(rows, "full")
    assert full["flops_speedup"] == 1.0 and full["mean_exit_layer"] == 4.0


def test_static_k_exits_at_layer_k(rows):
    static = [r for r in rows if r["method"].startswith("static-")]
    assert [r["mean_exit_layer"] for r in static] == [1.0, 2.0, 3.0, 4.0]
    assert [r["layer"] for r in static] == [1, 2, 3, 4]
    # Every doc runs k of the 4 layers.
    assert [r["layer_speedup"] for r in static] == [4.0, 2.0, round(4 / 3, 3), 1.0]
    speedups = [r["flops_speedup"] for r in static]
    assert speedups == sorted(speedups, reverse=True)
    # Threshold 1.0 sends every token out after layer 1, whatever the rule.
    assert by_method(rows, "tokee")[-1]["flops_speedup"] == speedups[0]
    assert by_method(rows, "sentee")[-1]["mean_exit_layer"] == 1.0


def test_write_sweep_files(rows, tmp_path):
    paths = write_sweep(rows, tmp_path / "out", "ents_f", {"data": "dev.spacy"})
    with paths["csv"].open(encoding="utf8") as file:
        table = list(csv.DictReader(file))
    assert list(table[0]) == list(COLUMNS) and len(table) == len(rows)
    assert table[0]["method"] == "full" and float(table[0]["flops_speedup"]) == 1.0 and table[0]["layer"] == ""
    report = json.loads(paths["json"].read_text(encoding="utf8"))
    assert report["metric"] == "ents_f" and report["data"] == "dev.spacy" and report["rows"] == rows
    assert paths["png"].read_bytes()[:8] == PNG_MAGIC


def test_plot_skips_rows_without_a_score(tmp_path):
    rows = [
        {"method": "full", "layer": None, "score": None, "flops_speedup": 1.0},
        {"method": "tokee", "layer": None, "score": 50.0, "flops_speedup": 2.0},
    ]
    assert plot_sweep(rows, tmp_path / "p.png", "ents_f").read_bytes()[:8] == PNG_MAGIC


def test_cli_sweep(trained_ner, tmp_path):
    trained_ner.to_disk(tmp_path / "pipeline")
    data = tmp_path / "dev.spacy"
    DocBin(docs=[eg.reference for eg in ner_examples(trained_ner)]).to_disk(data)
    out = tmp_path / "sweep"
    args = ["sweep", str(tmp_path / "pipeline"), str(data), "--output-dir", str(out), "--thresholds", "0.2,1.0", "--window", "0", "--limit", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["sweep.csv", "sweep.json", "sweep.png"]
    report = json.loads((out / "sweep.json").read_text(encoding="utf8"))
    assert report["n_docs"] == 2 and report["window"] == 0 and report["metric"] == "ents_f"
    assert len(report["rows"]) == 1 + 2 + 2 + 4


def test_sweep_points_follow_an_exit_schedule():
    from spacy_early_exit.tools.sweep import sweep_points

    points = [p for p in sweep_points(4, [0.1, 0.4], window=1, min_layer=2, slope=2.0) if p.method == "tokee"]
    assert [p.fields["thresholds"] for p in points] == [[0.0, 0.1, 0.2, 0.4], [0.0, 0.4, 0.8, 1.0]]
    assert all(p.fields["window"] == 1 and p.window == 1 for p in points)
    flat = [p for p in sweep_points(4, [0.1], window=1) if p.method == "tokee"]
    assert flat[0].fields["thresholds"] is None and flat[0].fields["threshold"] == 0.1


@pytest.fixture(scope="module")
def tuned_report(trained_ner):
    from spacy_early_exit.tools.tune import tune

    return tune(trained_ner, ner_examples(trained_ner), [1.5, 2.0, 50.0], [0, 1], steps=3, keep=1)


def test_a_tune_report_sweeps_the_tuned_families(trained_ner, tuned_report):
    from spacy_early_exit.tools.sweep import describe_families, tuned_families

    reachable = [e for e in tuned_report["targets"] if e["reachable"]]
    assert [e["target"] for e in reachable] == [1.5, 2.0]
    rows = run_sweep(trained_ner, ner_examples(trained_ner), THRESHOLDS, metric="ents_f", progress=False, tuned=tuned_report)
    families = tuned_families(tuned_report)
    assert sorted(t for f in families for t in f["targets"]) == [1.5, 2.0]
    assert not by_method(rows, "tokee")  # no untuned curve
    for family in families:
        curve = by_method(rows, family["method"])
        assert [r["threshold"] for r in curve] == THRESHOLDS
        assert all(r["window"] == family["schedule"].window for r in curve)
    for entry in reachable:
        (point,) = by_method(rows, f"tuned-{entry['target']:g}x")
        assert point["target"] == entry["target"] and point["threshold"] == entry["threshold"]
        # The same docs as the tune run: the dev-chosen point scores as tune said.
        assert point["score"] == entry["score"] and point["flops_speedup"] == entry["flops_speedup"]
    assert {r["method"] for r in rows} >= {"full", "sentee", "static-1", "static-4"}
    assert all(r["stage"] == 1 for r in rows)  # the tiny model is trained jointly
    described = describe_families(tuned_report)
    assert [d["method"] for d in described] == [f["method"] for f in families]
    assert set(described[0]) == {"method", "targets", "window", "min_layer", "slope", "max_layer", "pipeline", "stage"}


def test_tuned_families_share_a_curve_and_follow_the_named_pipeline():
    from spacy_early_exit.tools.plotting import family_label, family_of
    from spacy_early_exit.tools.sweep import tuned_families, tuned_sweep_points

    entry = {"reachable": True, "window": 1, "min_layer": 2, "slope": 2.0, "max_layer": None, "threshold": 0.1}
    report = {"targets": [
        {**entry, "target": 2.0, "pipeline": "stage1-final", "stage": 1},
        {**entry, "target": 3.0, "pipeline": "stage1-final", "stage": 1},
        {**entry, "target": 4.0, "pipeline": "final", "stage": 2},
        {"target": 5.0, "reachable": False},
    ]}
    families = tuned_families(report)
    assert [(f["method"], f["pipeline"]) for f in families] == [("tokee-2x/3x", "stage1-final"), ("tokee-4x", "final")]
    points = tuned_sweep_points(report, 4, [0.1, 0.4])
    family = [p for p in points if p.method == "tokee-2x/3x"]
    assert [p.fields["thresholds"] for p in family] == [[0.0, 0.1, 0.2, 0.4], [0.0, 0.4, 0.8, 1.0]]
    assert all(p.pipeline == "stage1-final" for p in family)
    tuned = [p for p in points if p.method.startswith("tuned-")]
    assert [(p.method, p.pipeline) for p in tuned] == [("tuned-2x", "stage1-final"), ("tuned-3x", "stage1-final"), ("tuned-4x", "final")]
    assert family_of("tuned-3x", ["tokee-2x/3x", "tokee-4x"]) == "tokee-2x/3x"
    meta = {"families": [{"method": "tokee-4x", "window": 1, "min_layer": 2, "slope": 2.0, "max_layer": None, "stage": 2}]}
    assert family_label("tokee-4x", meta) == "TOKEE 4x schedule (w1, from layer 2, slope 2, stage 2)"


def test_cli_sweep_with_a_tune_report(trained_ner, tuned_report, tmp_path):
    trained_ner.to_disk(tmp_path / "pipeline")
    data = tmp_path / "test.spacy"
    DocBin(docs=[eg.reference for eg in ner_examples(trained_ner)]).to_disk(data)
    report_path = tmp_path / "tune.json"
    report = json.loads(json.dumps(tuned_report))
    report["targets"][0]["pipeline"] = str(tmp_path / "pipeline")  # as choose_stage.py names it
    report_path.write_text(json.dumps(report), encoding="utf8")
    out = tmp_path / "sweep"
    args = ["sweep", str(tmp_path / "pipeline"), str(data), "--output-dir", str(out), "--thresholds", "0.2,1.0", "--tuned", str(report_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    written = json.loads((out / "sweep.json").read_text(encoding="utf8"))
    assert written["tuned"] == str(report_path) and "window" not in written
    assert {f["method"] for f in written["families"]} == {r["method"] for r in written["rows"] if r["method"].startswith("tokee-")}
    assert {r["method"] for r in written["rows"] if r["method"].startswith("tuned-")} == {"tuned-1.5x", "tuned-2x"}
    assert (out / "sweep.png").read_bytes()[:8] == PNG_MAGIC
    missing = CliRunner().invoke(app, args[:-1] + [str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "No such tune report" in missing.output
