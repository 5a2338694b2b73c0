"""Exit schedules: the per-layer thresholds, the full-depth replay, and a search that finds the static cut."""
import copy

import pytest
import torch
from spacy.tokens import DocBin
from typer.testing import CliRunner

from spacy_early_exit.cli import app
from spacy_early_exit.encoder.exit_schedule import ExitSchedule, schedule_grid
from spacy_early_exit.layers.architecture import get_shim
from spacy_early_exit.testing import ner_examples
from spacy_early_exit.tools.evaluate import cost_summary, exit_settings
from spacy_early_exit.tools.prescreen import ExitProfile, cheapest_reaching
from spacy_early_exit.tools.tune import tune


def test_schedule_thresholds():
    assert ExitSchedule(2, 1, 1.0).thresholds(0.1, 4) == (0.1, 0.1, 0.1, 0.1)
    assert ExitSchedule(2, 3, 1.0).thresholds(0.1, 4) == (0.0, 0.0, 0.1, 0.1)
    assert ExitSchedule(0, 2, 2.0).thresholds(0.3, 4) == (0.0, 0.3, 0.6, 1.0)  # capped at 1
    assert ExitSchedule(0, 1, 0.5).thresholds(0.2, 3) == (0.2, 0.1, 0.05)
    # The static cut after layer k is the schedule starting at k at base 1.0.
    assert ExitSchedule(0, 3, 1.0).thresholds(1.0, 4) == (0.0, 0.0, 1.0, 1.0)
    fields = ExitSchedule(1, 2, 1.0).fields(0.25, 4)
    assert fields == {"exit_mode": "tokee", "window": 1, "threshold": 0.25, "thresholds": [0.0, 0.25, 0.25, 0.25]}
    with pytest.raises(ValueError, match="min_layer"):
        ExitSchedule(0, 5, 1.0).thresholds(0.1, 4)
    with pytest.raises(ValueError, match="slope"):
        ExitSchedule(0, 1, 0.0)
    with pytest.raises(ValueError, match="window"):
        ExitSchedule(-1, 1, 1.0)
    grid = schedule_grid(4, [0, 1], [1, 3, 5], [1.0])
    assert [s.key for s in grid] == ["w0-m1-s1", "w0-m3-s1", "w1-m1-s1", "w1-m3-s1"]


@pytest.fixture(scope="module")
def profile(trained_ner):
    return ExitProfile.collect(trained_ner.get_pipe("tokee_ner"), ner_examples(trained_ner), batch_size=2)


def real_cost(nlp, fields):
    with exit_settings(nlp, fields):
        docs = list(nlp.pipe([eg.reference.text for eg in ner_examples(nlp)]))
    return cost_summary(docs, nlp)


@pytest.mark.parametrize("schedule, base", [
    (ExitSchedule(0, 2, 1.0), 1.0),  # static cut: no state above an exit is read
    (ExitSchedule(0, 3, 1.0), 1.0),
    (ExitSchedule(1, 1, 1.0), 0.0),  # nothing exits
])
def test_replay_counts_flops_as_the_encoder_does(trained_ner, profile, schedule, base):
    point = profile.simulate(schedule, base)
    cost = real_cost(trained_ner, schedule.fields(base, 4))
    assert point.flops_speedup == pytest.approx(cost["flops_speedup"], rel=1e-9)


def test_replay_first_layer_exits_match_the_real_run(trained_ner, profile):
    # Exits after layer 1 read only layer-1 states, which no halting has changed yet.
    schedule = ExitSchedule(1, 1, 1.0)
    thresholds = schedule.thresholds(0.5, 4)
    from spacy_early_exit.encoder.exit_schedule import simulated_exits

    simulated = simulated_exits(profile.uncertainty, profile.shapes.word_mask, 1, thresholds)
    with exit_settings(trained_ner, schedule.fields(0.5, 4)):
        docs = list(trained_ner.pipe([eg.reference.text for eg in ner_examples(trained_ner)]))
    real = [layer for doc in docs for layer in doc._.early_exit["tokee_ner"]["exit_layers"]]
    sim = simulated[profile.shapes.word_mask].tolist()
    assert len(real) == len(sim)
    assert [r == 1 for r in real] == [s == 1 for s in sim]


def test_cheapest_reaching_is_the_smallest_grid_point(profile):
    schedule = ExitSchedule(1, 1, 1.0)
    grid = (0.01, 0.1, 0.3, 0.6, 1.0)
    point = cheapest_reaching(profile, schedule, 1.5, grid)
    assert point is not None and point.flops_speedup >= 1.5
    lower = [t for t in grid if t < point.base]
    assert all(profile.simulate(schedule, t).flops_speedup < 1.5 for t in lower)
    assert cheapest_reaching(profile, schedule, 100.0, grid) is None


@pytest.fixture(scope="module")
def useless_low_ramp(trained_ner):
    """The trained model with its first off-ramp confidently wrong: it always
    says the class that is least often right."""
    nlp = copy.deepcopy(trained_ner)
    ramp = get_shim(nlp.get_pipe("tokee_ner").model).encoder.ramps[0][1]
    names = nlp.get_pipe("tokee_ner").class_names
    wrong = names.index("I-LOC") if "I-LOC" in names else len(names) - 1
    with torch.no_grad():
        ramp.weight.zero_()
        ramp.bias.fill_(-50.0)
        ramp.bias[wrong] = 50.0
    return nlp


def test_search_avoids_a_useless_low_ramp_and_never_loses_to_the_static_cut(useless_low_ramp):
    nlp = useless_low_ramp
    report = tune(nlp, ner_examples(nlp), [1.5], [0, 1], steps=6, keep=2)
    chosen = report["targets"][0]
    assert chosen["reachable"]
    # Layer 1's off-ramp is confident and wrong: nothing may exit there.
    assert chosen["min_layer"] >= 2 and chosen["thresholds"][0] == 0.0
    static = [c for c in chosen["candidates"] if c["source"] == "static" and c["reached"]]
    assert [c["min_layer"] for c in static] == [1, 2]  # static-3 is too slow
    assert chosen["score"] >= max(c["score"] for c in static)
    assert static[0]["score"] < chosen["score"]  # static-1 reads the wrong ramp
    # The screen ranks schedules that exit at layer 1 last.
    assert all(p["min_layer"] >= 2 for p in chosen["screen"])


def test_tune_reads_only_the_dev_file(trained_ner, tmp_path, monkeypatch):
    trained_ner.to_disk(tmp_path / "pipeline")
    docs = [eg.reference for eg in ner_examples(trained_ner)]
    DocBin(docs=docs).to_disk(tmp_path / "dev.spacy")
    DocBin(docs=docs).to_disk(tmp_path / "test.spacy")
    read = []
    original = DocBin.from_disk

    def recording(self, path):
        read.append(str(path))
        return original(self, path)

    monkeypatch.setattr(DocBin, "from_disk", recording)
    args = ["tune", str(tmp_path / "pipeline"), str(tmp_path / "dev.spacy"), "--targets", "1.5", "--windows", "0",
            "--steps", "2", "--keep", "1", "--output", str(tmp_path / "tune.json")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert read == [str(tmp_path / "dev.spacy")]


def test_tune_for_a_precision_writes_it_with_the_schedule(trained_ner, tmp_path):
    pipe = trained_ner.get_pipe("tokee_ner")
    assert pipe.precision == "fp32"
    report = tune(trained_ner, ner_examples(trained_ner), [1.5], [0], steps=2, keep=1, precision="int8")
    chosen = report["targets"][0]
    assert report["precision"] == "int8" and pipe.precision == "fp32"  # restored
    assert chosen["fields"]["precision"] == "int8"
    assert chosen["overrides"]["components.tokee_ner.precision"] == "int8"
    # Every real run of the search ran at that precision.
    again = measure_at(trained_ner, chosen["fields"])
    assert round(100 * again.score, 2) == chosen["score"] and again.flops_speedup == pytest.approx(chosen["flops_speedup"], abs=1e-3)
    bad = CliRunner().invoke(app, ["tune", str(tmp_path), str(tmp_path / "dev.spacy"), "--precision", "int4"])
    assert bad.exit_code != 0 and "'precision' must be one of" in bad.output


def measure_at(nlp, fields):
    from spacy_early_exit.tools.measure import measure

    return measure(nlp, ner_examples(nlp), fields, "ents_f")


# -- a cap on the last exit layer, and tuning for layers per doc (batch size 1) --


def test_a_cap_lets_every_token_out_by_its_layer():
    assert ExitSchedule(0, 2, 2.0, max_layer=4).thresholds(0.1, 6) == (0.0, 0.1, 0.2, 1.0, 1.0, 1.0)
    assert ExitSchedule(0, 2, 1.0, max_layer=4).key == "w0-m2-s1-c4"
    assert ExitSchedule(0, 2, 1.0).key == "w0-m2-s1"  # keys of uncapped schedules are unchanged
    assert ExitSchedule(1, 1, 1.0, 3).as_dict() == {"window": 1, "min_layer": 1, "slope": 1.0, "max_layer": 3}
    with pytest.raises(ValueError, match="'max_layer' must be an integer >= min_layer"):
        ExitSchedule(0, 3, 1.0, max_layer=2)
    with pytest.raises(ValueError, match="max_layer 7 exceeds"):
        ExitSchedule(0, 1, 1.0, max_layer=7).thresholds(0.1, 6)
    # A cap at or below min_layer (the static cut) or at the last layer adds nothing: left out.
    grid = schedule_grid(4, [0], [1, 2], [1.0], [None, 2, 3, 4])
    assert [s.key for s in grid] == ["w0-m1-s1", "w0-m1-s1-c2", "w0-m1-s1-c3", "w0-m2-s1", "w0-m2-s1-c3"]


def test_simulated_layer_speedup_counts_each_rows_last_exit():
    from spacy_early_exit.encoder.exit_schedule import simulated_layer_speedup

    exits = torch.tensor([[1, 3, 2, 0], [4, 4, 0, 0], [0, 0, 0, 0]])  # last row: no words
    assert simulated_layer_speedup(exits, 4) == pytest.approx(4 * 2 / (3 + 4))
    assert simulated_layer_speedup(torch.zeros(2, 3, dtype=torch.long), 4) == 1.0


@pytest.mark.parametrize("schedule, layers_run", [
    (ExitSchedule(0, 2, 1.0), 2),  # static-2: every doc runs 2 of 4 layers
    (ExitSchedule(1, 1, 1.0, max_layer=3), 3),  # nothing exits below the cap
])
def test_layer_speedup_is_full_depth_over_each_docs_last_layer(trained_ner, profile, schedule, layers_run):
    base = 1.0 if schedule.max_layer is None else 0.0
    cost = real_cost(trained_ner, schedule.fields(base, 4))
    assert cost["layer_speedup"] == pytest.approx(4 / layers_run)
    # The replay says the same (no halted state is read in either case).
    assert profile.simulate(schedule, base).layer_speedup == pytest.approx(4 / layers_run)
    # FLOPs are less than halved at static-2: specials, keys and the last ramp still cost.
    assert cost["flops_speedup"] < cost["layer_speedup"] or layers_run == 3


def test_tuning_for_layers_per_doc_reaches_the_target_in_layers(trained_ner):
    examples = ner_examples(trained_ner)
    by_layers = tune(trained_ner, examples, [1.3], [0, 1], steps=4, keep=2, cost="layers")
    assert by_layers["cost"] == "layers" and 3 in by_layers["grid"]["max_layers"]
    chosen = by_layers["targets"][0]
    assert chosen["reachable"] and chosen["cost"] == "layers"
    assert chosen["layer_speedup"] >= 1.3 * 1.02
    # The written thresholds reproduce the tuned point, cap included.
    again = measure_at(trained_ner, chosen["fields"])
    assert again.layer_speedup == pytest.approx(chosen["layer_speedup"], abs=1e-3)
    if chosen["max_layer"] is not None:
        assert chosen["thresholds"][chosen["max_layer"] - 1:] == [1.0] * (4 - chosen["max_layer"] + 1)
    # Every measured candidate that reached the goal did so in layers per doc.
    assert all(c["layer_speedup"] >= 1.3 * 1.02 for c in chosen["candidates"] if c["reached"])
    # Never worse on dev than a static cut as fast in layers per doc.
    static = [c for c in chosen["candidates"] if c["source"] == "static" and c["reached"]]
    assert static and chosen["score"] >= max(c["score"] for c in static)


def test_tune_cli_rejects_an_unknown_cost(tmp_path):
    result = CliRunner().invoke(app, ["tune", str(tmp_path), str(tmp_path / "dev.spacy"), "--cost", "seconds"])
    assert result.exit_code != 0 and "'cost' must be one of flops, layers" in result.output
