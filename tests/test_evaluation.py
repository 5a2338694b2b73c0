"""Timing harness: every runner covers every item once per repetition, interleaved."""
import pytest

from spacy_early_exit.tools.evaluate import interleaved_seconds


def test_interleaving_covers_every_item_in_rotating_order():
    calls = []
    runners = {name: (lambda part, bs, name=name: calls.append((name, part.start, part.stop, bs))) for name in "abc"}
    times = interleaved_seconds(runners, n_items=10, batch_sizes=(1, 4), repeats=2, progress=False, chunk=4)
    assert set(times) == {"a", "b", "c"}
    assert all(len(times[n][bs]) == 2 for n in times for bs in (1, 4))
    for name in "abc":
        for bs in (1, 4):
            covered = [i for n, lo, hi, b in calls if n == name and b == bs for i in range(lo, min(hi, 10))]
            assert sorted(covered) == sorted(list(range(10)) * 2)
    # Within a repetition and batch size, consecutive chunks change who goes first.
    firsts = [calls[i][0] for i in range(0, 9, 3)]
    assert firsts == ["a", "b", "c"]


def test_a_chunk_never_cuts_a_batch_short():
    calls = []
    runners = {name: (lambda part, bs, name=name: calls.append((part.stop - part.start, bs))) for name in "ab"}
    interleaved_seconds(runners, n_items=300, batch_sizes=(1, 128), repeats=1, progress=False, chunk=64)
    assert {size for size, bs in calls if bs == 1} == {64}
    assert {size for size, bs in calls if bs == 128} == {128}  # 0-128, 128-256, 256-300 (a slice past the end)


def test_interleaving_rejects_an_empty_chunk():
    with pytest.raises(ValueError, match="chunk"):
        interleaved_seconds({"a": lambda part, bs: None}, 3, chunk=0, progress=False)


import json  # noqa: E402

from spacy.tokens import DocBin  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from spacy_early_exit.cli import app  # noqa: E402
from spacy_early_exit.testing import ner_examples  # noqa: E402
from spacy_early_exit.tools.evaluation_rows import bracketing_layers, by_speedup, static_runs  # noqa: E402

STATICS = [{"layer": 1, "flops_speedup": 5.4}, {"layer": 2, "flops_speedup": 2.9}, {"layer": 3, "flops_speedup": 1.97},
           {"layer": 4, "flops_speedup": 1.49}, {"layer": 5, "flops_speedup": 1.19}]


def test_static_cuts_bracket_each_target():
    assert bracketing_layers(STATICS, [2.04]) == [3, 2]
    assert bracketing_layers(STATICS, [2.04, 3.06, 4.08]) == [3, 2, 1]
    assert bracketing_layers(STATICS, [2.9]) == [2]  # an exact tie is its own bracket
    assert bracketing_layers(STATICS, [9.0]) == [1] and bracketing_layers(STATICS, [1.1]) == [5]
    assert bracketing_layers(STATICS, []) == []


def test_rows_run_from_slowest_to_fastest_after_the_reference():
    rows = [{"method": "full", "flops_speedup": 1.0}, {"method": "a", "flops_speedup": 3.0}, {"method": "b", "flops_speedup": 2.0}]
    assert [r["method"] for r in by_speedup(rows)] == ["full", "b", "a"]


@pytest.fixture(scope="module")
def saved(trained_ner, tmp_path_factory):
    """The tiny pipeline on disk, its examples as test data, and a tune report."""
    from spacy_early_exit.tools.tune import tune

    folder = tmp_path_factory.mktemp("evaluate")
    trained_ner.to_disk(folder / "pipeline")
    DocBin(docs=[eg.reference for eg in ner_examples(trained_ner)]).to_disk(folder / "test.spacy")
    report = tune(trained_ner, ner_examples(trained_ner), [2.0, 50.0], [0], steps=3, keep=1)
    (folder / "tune.json").write_text(json.dumps(report), encoding="utf8")
    return folder


def run_evaluate(folder, report_path):
    args = ["evaluate", str(folder / "pipeline"), str(folder / "test.spacy"), "--tuned", str(report_path),
            "--batch-sizes", "4", "--repeats", "1", "--output", str(folder / "evaluate.json")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads((folder / "evaluate.json").read_text(encoding="utf8")), result.output


def test_evaluate_scores_the_static_cuts_that_bracket_each_target(saved):
    report = json.loads((saved / "tune.json").read_text(encoding="utf8"))
    statics = static_runs(report)
    assert [row["layer"] for row in statics] == [1, 2, 3]  # every cut of the 4-layer model, from the runs
    evaluation, output = run_evaluate(saved, saved / "tune.json")
    rows = evaluation["rows"]
    methods = [row["method"] for row in rows]
    assert methods[0] == "full" and "tokee-2x" in methods and "tokee-50x" not in methods
    tuned = next(row for row in rows if row["method"] == "tokee-2x")
    target = next(e for e in report["targets"] if e["target"] == 2.0)
    expected = bracketing_layers(statics, [target["flops_speedup"]])
    assert sorted(m for m in methods if m.startswith("static-")) == sorted(f"static-{k}" for k in expected)
    for row in rows:
        # Every row says which model it ran on: the tiny model is trained jointly (stage 1).
        assert row["stage"] == 1 and row["pipeline"] == str(saved / "pipeline")
        assert set(row["words_per_second"]) == {"4"}
        if row["method"].startswith("static-"):
            assert row["window"] is None and row["threshold"] is None
            assert row["mean_exit_layer"] == row["layer"] == int(row["method"].split("-")[1])
    assert tuned["target"] == 2.0 and tuned["window"] == target["window"]
    speedups = [row["flops_speedup"] for row in rows[1:]]
    assert speedups == sorted(speedups)
    assert "| method | stage | ents_f |" in output


def test_evaluate_runs_each_row_on_the_pipeline_the_report_names(saved, trained_ner, tmp_path):
    report = json.loads((saved / "tune.json").read_text(encoding="utf8"))
    other = tmp_path / "other"
    trained_ner.to_disk(other)
    # As choose_stage.py writes it: per row the pipeline of the stage kept on dev.
    report["targets"][0]["pipeline"] = str(other)
    report["full"]["pipeline"] = str(other)
    report["static"] = [{**row, "pipeline": str(other) if row["layer"] == 1 else None} for row in static_runs(report)]
    (tmp_path / "chosen.json").write_text(json.dumps(report), encoding="utf8")
    (tmp_path / "test.spacy").write_bytes((saved / "test.spacy").read_bytes())
    (tmp_path / "pipeline").symlink_to(saved / "pipeline")
    evaluation, _ = run_evaluate(tmp_path, tmp_path / "chosen.json")
    paths = {row["method"]: row["pipeline"] for row in evaluation["rows"]}
    assert paths["full"] == paths["tokee-2x"] == str(other)
    for method, path in paths.items():
        if method.startswith("static-"):
            assert path == (str(other) if method == "static-1" else str(tmp_path / "pipeline"))
