"""tune: the (window, threshold) per target FLOPs speed-up, chosen on dev, written as configs."""
import json
from pathlib import Path
from typing import Dict

import pytest
import spacy
from spacy.tokens import DocBin
from typer.testing import CliRunner

from spacy_early_exit.cli import app
from spacy_early_exit.encoder.exit_schedule import ExitSchedule
from spacy_early_exit.testing import ner_examples
from spacy_early_exit.tools.tune import (
    GRID,
    Measurement,
    apply_overrides,
    bracket,
    grid_threshold,
    main_metric,
    measure,
    search_schedule,
    tune,
    write_tuned,
)
from spacy_early_exit.tools.options import parse_numbers

TARGETS = [2.0, 50.0]  # the tiny 4-layer model tops out near 4x: 50x is unreachable
WINDOWS = [0, 2]


def save_data(nlp, path: Path) -> Path:
    """The NER examples' gold docs as a .spacy file."""
    DocBin(docs=[eg.reference for eg in ner_examples(nlp)]).to_disk(path)
    return path


@pytest.fixture(scope="module")
def tuned(trained_ner):
    policy = trained_ner.get_pipe("tokee_ner").policy
    report = tune(trained_ner, ner_examples(trained_ner), TARGETS, WINDOWS, steps=8, keep=2)
    assert trained_ner.get_pipe("tokee_ner").policy == policy  # settings restored
    return report


def entry(report, target):
    return next(e for e in report["targets"] if e["target"] == target)


def test_tune_reaches_the_reachable_target(trained_ner, tuned):
    chosen = entry(tuned, 2.0)
    assert chosen["reachable"] and chosen["exit_mode"] == "tokee"
    assert chosen["goal"] == 2.04  # the default 2% margin
    assert chosen["window"] in WINDOWS + [0] and 0.0 < chosen["threshold"] <= 1.0
    assert chosen["flops_speedup"] >= 2.04
    fields = chosen["fields"]
    assert fields["thresholds"] == chosen["thresholds"] and len(fields["thresholds"]) == 4
    assert all(t == 0.0 for t in fields["thresholds"][: chosen["min_layer"] - 1])
    # A fresh run at the chosen point reproduces what the report says.
    again = measure(trained_ner, ner_examples(trained_ner), fields, "ents_f")
    assert again.flops_speedup >= 2.04
    assert round(100 * again.score, 2) == chosen["score"]
    # The choice is the best-scoring measured candidate that reaches the goal,
    # static cuts included.
    reached = [c for c in chosen["candidates"] if c["reached"]]
    assert chosen["score"] == max(c["score"] for c in reached)
    assert {c["source"] for c in chosen["candidates"]} == {"screen", "static"}
    assert [c["min_layer"] for c in chosen["candidates"] if c["source"] == "static"] == [1, 2, 3]
    assert 1 <= len(chosen["screen"]) <= 2
    assert chosen["overrides"]["components.tokee_ner.threshold"] == chosen["threshold"]
    assert chosen["overrides"]["components.tokee_ner.thresholds"] == chosen["thresholds"]


def test_tune_reports_unreachable_targets(tuned):
    missed = entry(tuned, 50.0)
    assert not missed["reachable"]
    assert missed["window"] is None and missed["threshold"] is None and "overrides" not in missed
    assert "50x" in missed["reason"] and "fastest gives" in missed["reason"]
    assert all(not c["reached"] and c["max_flops_speedup"] < 50 for c in missed["candidates"])
    assert missed["screen"] == []  # the simulation already knew
    assert tuned["metric"] == "ents_f" and tuned["full"]["flops_speedup"] == 1.0
    assert "w0-m1-s1" in tuned["runs"]  # the static cut after layer 1


class FakeProber:
    """A prober over a known speed-up curve, to check the search itself."""

    def __init__(self, speedup) -> None:
        self.speedup = speedup
        self.cache: Dict[int, Measurement] = {}

    def __call__(self, schedule, step: int) -> Measurement:
        self.cache.setdefault(step, Measurement(0.5, self.speedup(grid_threshold(step)), 1.0))
        return self.cache[step]

    def probed(self, schedule) -> Dict[int, Measurement]:
        return self.cache


def test_bisection_finds_the_smallest_grid_threshold_and_reuses_runs():
    flat = ExitSchedule(window=0)
    prober = FakeProber(lambda t: 1.0 + 4.0 * t)  # 2x at 0.25, 3x at 0.5
    first = search_schedule(prober, prober.probed, flat, 2.0, steps=14)
    assert first.threshold == 0.25 and first.reached
    runs = len(prober.cache)
    second = search_schedule(prober, prober.probed, flat, 3.0, steps=14)
    assert second.threshold == 0.5
    assert len(prober.cache) - runs < runs  # it starts from the first search's runs
    assert not search_schedule(prober, prober.probed, flat, 6.0, steps=14).reached
    # A non-monotone curve still yields a measured point that reaches the target.
    wobbly = FakeProber(lambda t: 2.5 if 0.1 < t < 0.2 else 1.0 + 4.0 * t)
    found = search_schedule(wobbly, wobbly.probed, flat, 2.0, steps=14)
    assert wobbly.cache[found.step].flops_speedup >= 2.0


def test_a_good_guess_makes_the_search_short():
    flat = ExitSchedule(window=0)
    blind = FakeProber(lambda t: 1.0 + 4.0 * t)
    search_schedule(blind, blind.probed, flat, 2.0, steps=14)
    guided = FakeProber(lambda t: 1.0 + 4.0 * t)
    found = search_schedule(guided, guided.probed, flat, 2.0, steps=14, guess=0.26)
    assert found.threshold == 0.25
    assert len(guided.cache) < len(blind.cache)


def test_bracket_uses_measured_points():
    probed = {GRID: Measurement(None, 4.0, 1.0), 5000: Measurement(None, 2.5, 2.0), 2500: Measurement(None, 1.5, 3.0)}
    assert bracket(probed, 2.0) == (2500, 5000)
    assert bracket(probed, 3.0) == (5000, GRID)
    assert bracket(probed, 1.0) == (0, 2500)


def test_written_configs_and_pipeline_copies_load_with_the_choice(trained_ner, tuned, tmp_path):
    report = json.loads(json.dumps(tuned))
    write_tuned(trained_ner, report, tmp_path / "configs", tmp_path / "pipelines")
    chosen = entry(report, 2.0)
    assert sorted(p.name for p in (tmp_path / "configs").iterdir()) == ["2x.json"]
    assert sorted(p.name for p in (tmp_path / "pipelines").iterdir()) == ["2x"]
    loaded = spacy.load(chosen["pipeline_path"]).get_pipe("tokee_ner")
    assert (loaded.exit_mode, loaded.window, loaded.threshold) == ("tokee", chosen["window"], chosen["threshold"])
    assert loaded.thresholds == chosen["thresholds"] and loaded.temperatures == [0.25] * 4  # calibration kept
    # The overrides file applies to the untouched pipeline at load time.
    trained_ner.to_disk(tmp_path / "original")
    overrides = json.loads(Path(chosen["config_path"]).read_text(encoding="utf8"))
    ner = spacy.load(tmp_path / "original", config=overrides).get_pipe("tokee_ner")
    assert (ner.window, ner.threshold, ner.thresholds) == (chosen["window"], chosen["threshold"], chosen["thresholds"])


def test_metric_choice_and_option_parsing(trained_ner):
    assert main_metric(trained_ner) == "ents_f"
    with pytest.raises(ValueError, match="not in the scores"):
        measure(trained_ner, ner_examples(trained_ner)[:1], {"exit_mode": "off"}, "las")
    with pytest.raises(ValueError, match="--targets"):
        parse_numbers("2,fast", float, "--targets")
    assert parse_numbers(" 0, 1,2 ", int, "--windows") == [0, 1, 2]
    with pytest.raises(KeyError, match="nope"):
        apply_overrides(trained_ner.config.copy(), {"components.nope.threshold": 0.1})


def test_cli_tune(trained_ner, tmp_path):
    trained_ner.to_disk(tmp_path / "pipeline")
    data = save_data(trained_ner, tmp_path / "dev.spacy")
    output = tmp_path / "metrics" / "tune.json"
    args = [
        "tune", str(tmp_path / "pipeline"), str(data), "--targets", "1.5,50", "--windows", "1",
        "--steps", "4", "--limit", "3", "--output", str(output),
        "--write-configs", str(tmp_path / "configs"), "--pipeline-out", str(tmp_path / "pipes"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "UNREACHABLE" in result.output
    report = json.loads(output.read_text(encoding="utf8"))
    assert report["n_docs"] == 3 and report["dev_data"] == str(data)
    chosen = entry(report, 1.5)
    assert chosen["reachable"] and chosen["flops_speedup"] >= 1.5 * 1.02
    assert all(c["window"] in (0, 1) for c in chosen["candidates"])  # 0: the static cuts
    assert (tmp_path / "configs" / "1.5x.json").exists() and not (tmp_path / "configs" / "50x.json").exists()
    assert spacy.load(tmp_path / "pipes" / "1.5x").get_pipe("tokee_ner").threshold == chosen["threshold"]
    bad = CliRunner().invoke(app, ["tune", str(tmp_path / "pipeline"), str(data), "--windows", "a"])
    assert bad.exit_code != 0


@pytest.mark.parametrize("factory, config, expected", [
    ("tokee_ner", {}, "ents_f"),
    ("tokee_tagger", {"attribute": "pos"}, "pos_acc"),
    ("tokee_tagger", {"attribute": "tag"}, "tag_acc"),
])
def test_main_metric_is_a_key_the_component_reports(tiny_model_dir, factory, config, expected):
    import spacy
    from spacy_early_exit.tools.tune import main_metric

    nlp = spacy.blank("en")
    nlp.add_pipe(factory, config={"model": {"name": str(tiny_model_dir)}, **config})
    assert main_metric(nlp) == expected
