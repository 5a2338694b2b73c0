"""calibrate, tune, evaluate and sweep on a shared encoder (tokee_transformer + listening heads)."""
import json

import pytest
import spacy
import torch
from spacy.tokens import DocBin
from thinc.api import fix_random_seed
from typer.testing import CliRunner

from spacy_early_exit.cli import app
from spacy_early_exit.encoder.exit_schedule import ExitSchedule, simulated_exits
from spacy_early_exit.encoder.exits import ExitPolicy
from spacy_early_exit.layers.architecture import get_shim
from spacy_early_exit.testing import make_shared_nlp, shared_examples
from spacy_early_exit.tools.calibrate import calibrate_pipeline, format_report
from spacy_early_exit.tools.evaluate import Setting, compare, exit_settings, format_table
from spacy_early_exit.tools.evaluation_rows import static_fields
from spacy_early_exit.tools.heads import HeadScoring
from spacy_early_exit.tools.measure import Measurement
from spacy_early_exit.tools.prescreen import ExitProfile
from spacy_early_exit.tools.schedule_search import Candidate, best_candidate
from spacy_early_exit.tools.sweep import run_sweep, write_sweep
from spacy_early_exit.tools.tune import format_tune_report, tune

HEADS = ("tokee_ner", "tokee_tagger")
SHARP = {"threshold": 0.5, "window": 1, "temperatures": [0.25] * 4}


@pytest.fixture(scope="module")
def shared(tiny_model_dir):
    fix_random_seed(0)
    return make_shared_nlp(tiny_model_dir, steps=8, **SHARP)


@pytest.fixture(scope="module")
def saved(shared, tmp_path_factory):
    """The shared pipeline on disk (one temperature list for both heads), and its examples as dev data."""
    folder = tmp_path_factory.mktemp("shared-tools")
    shared.to_disk(folder / "pipeline")
    DocBin(docs=[eg.reference for eg in shared_examples(shared)] * 3).to_disk(folder / "dev.spacy")
    return folder


def exit_layers(nlp, texts, **fields):
    with exit_settings(nlp, fields):
        return [doc._.early_exit["tokee_transformer"]["exit_layers"] for doc in nlp.pipe(texts)]


# -- calibrate -------------------------------------------------------------------------


def test_calibrate_fits_each_head_and_the_temperatures_load_back_and_move_exits(saved):
    report = calibrate_pipeline(saved / "pipeline", saved / "dev.spacy", saved / "calibrated")
    component = report["components"]["tokee_transformer"]
    assert set(component) == {"heads", "temperatures", "previous_temperatures"}
    assert list(component["heads"]) == list(HEADS) and component["previous_temperatures"] == [0.25] * 4
    for head in HEADS:
        fitted = component["heads"][head]
        assert fitted["n_tokens"] > 0 and len(fitted["layers"]) == 4
        assert component["temperatures"][head] == fitted["temperatures"]
    # Each head on its own columns: a tagger and a NER head get their own class counts.
    assert component["heads"]["tokee_ner"]["n_classes"] != component["heads"]["tokee_tagger"]["n_classes"]
    assert "tokee_transformer/tokee_ner" in format_report(report)
    loaded = spacy.load(saved / "calibrated")
    assert loaded.get_pipe("tokee_transformer").temperatures == component["temperatures"]
    assert any(t != 1.0 for values in component["temperatures"].values() for t in values)
    texts = [eg.reference.text for eg in shared_examples(loaded)]
    before = spacy.load(saved / "pipeline")
    fields = {"exit_mode": "tokee", "window": 0, "threshold": 0.5, "thresholds": None}
    assert exit_layers(loaded, texts, **fields) != exit_layers(before, texts, **fields)


def test_calibrating_one_head_keeps_the_others_temperatures(saved, tmp_path):
    first = calibrate_pipeline(saved / "pipeline", saved / "dev.spacy", tmp_path / "a")
    report = calibrate_pipeline(tmp_path / "a", saved / "dev.spacy", tmp_path / "b", component="tokee_tagger")
    component = report["components"]["tokee_transformer"]
    assert list(component["heads"]) == ["tokee_tagger"]
    kept = first["components"]["tokee_transformer"]["temperatures"]["tokee_ner"]
    assert spacy.load(tmp_path / "b").get_pipe("tokee_transformer").temperatures["tokee_ner"] == kept
    with pytest.raises(ValueError, match="No early-exit component named 'nope'"):
        calibrate_pipeline(saved / "pipeline", saved / "dev.spacy", tmp_path / "c", component="nope")


def test_calibrate_command_on_a_shared_pipeline(saved, tmp_path):
    metrics = tmp_path / "calibration.json"
    result = CliRunner().invoke(app, ["calibrate", str(saved / "pipeline"), str(saved / "dev.spacy"),
                                      "--output", str(tmp_path / "out"), "--metrics", str(metrics)])
    assert result.exit_code == 0, result.output
    assert set(json.loads(metrics.read_text())["components"]["tokee_transformer"]["heads"]) == set(HEADS)


# -- the screen replays the joint rule ----------------------------------------------------


def test_the_screen_replays_the_joint_rule(shared):
    transformer = shared.get_pipe("tokee_transformer")
    heads = [(name, shared.get_pipe(name)) for name in HEADS]
    examples = shared_examples(shared)
    profile = ExitProfile.collect(transformer, examples, batch_size=2, heads=heads)
    assert [head.name for head in profile.heads] == list(HEADS)
    schedule = ExitSchedule(1, 1, 1.0)
    simulated = simulated_exits(profile.uncertainty, profile.shapes.word_mask, 1, schedule.thresholds(0.5, 4))
    real = [layer for layers in exit_layers(shared, [eg.reference.text for eg in examples], **schedule.fields(0.5, 4))
            for layer in layers]
    # Exits after layer 1 read only layer-1 states, which no halting has changed yet.
    assert [r == 1 for r in real] == [s == 1 for s in simulated[profile.shapes.word_mask].tolist()]
    point = profile.simulate(schedule, 0.5)
    assert set(point.head_proxies) == set(HEADS)
    assert point.proxy == pytest.approx(min(point.head_proxies[h] - f for h, f in zip(HEADS, profile.full_proxies)))


# -- tune ------------------------------------------------------------------------------------


def measurement(ner: float, tagger: float, full=(0.5, 0.5)) -> Measurement:
    values = {"tokee_ner": {"ents_f": ner}, "tokee_tagger": {"tag_acc": tagger}}
    scoring = HeadScoring({"tokee_ner": "ents_f", "tokee_tagger": "tag_acc"},
                          {"tokee_ner": {"ents_f": full[0]}, "tokee_tagger": {"tag_acc": full[1]}})
    objective, worst = scoring.objective(values)
    return Measurement(ner, 2.0, 2.0, 2.0, values, objective, worst)


def test_the_best_candidate_is_the_one_whose_worst_head_loses_least():
    schedule = ExitSchedule(0, 1, 1.0)
    # The first has the better first-head score but sacrifices the tagger.
    sacrifices = Candidate(schedule, 2.0, 10, measurement(0.52, 0.30))
    balanced = Candidate(ExitSchedule(1, 1, 1.0), 2.0, 10, measurement(0.48, 0.49))
    assert best_candidate([sacrifices, balanced]) is balanced
    assert balanced.point.worst_head == "tokee_ner" and balanced.point.objective == pytest.approx(-0.02)
    row = sacrifices.as_row()
    assert row["objective"] == pytest.approx(-20.0) and row["worst_head"] == "tokee_tagger"
    assert row["scores"] == {"tokee_ner": {"ents_f": 52.0}, "tokee_tagger": {"tag_acc": 30.0}}


@pytest.fixture(scope="module")
def lopsided(tiny_model_dir):
    """A shared pipeline whose tagger is the same at every layer (one confident
    tag) while the NER head's early off-ramps say "O" to every token: only the
    NER head loses when tokens leave early."""
    fix_random_seed(0)
    nlp = make_shared_nlp(tiny_model_dir, steps=15, **SHARP)
    transformer, tagger = nlp.get_pipe("tokee_transformer"), nlp.get_pipe("tokee_tagger")
    encoder = get_shim(transformer.model).encoder
    ner_start, ner_stop = transformer.head_columns("tokee_ner")
    tag_start, tag_stop = transformer.head_columns("tokee_tagger")
    outside = ner_start + nlp.get_pipe("tokee_ner").class_names.index("O")
    common = tag_start + tagger.class_names.index("NNP")
    with torch.no_grad():
        for index, ramp in enumerate(encoder.ramps):
            linear = ramp[1]
            linear.weight[tag_start:tag_stop] = 0.0
            linear.bias[tag_start:tag_stop] = 0.0
            linear.bias[common] = 30.0
            if index < len(encoder.ramps) - 1:
                linear.weight[ner_start:ner_stop] = 0.0
                linear.bias[ner_start:ner_stop] = 0.0
                linear.bias[outside] = 30.0
    encoder.weights_changed()
    return nlp


def test_tune_follows_the_head_that_loses(lopsided):
    report = tune(lopsided, shared_examples(lopsided), [1.5], [0, 1], steps=3, keep=2, margin=0.0)
    assert report["metrics"] == {"tokee_ner": "ents_f", "tokee_tagger": "tag_acc"}
    full = report["full"]
    assert full["objective"] == 0.0 and full["scores"]["tokee_ner"]["ents_f"] > 0
    entry = report["targets"][0]
    assert entry["reachable"] and entry["flops_speedup"] >= 1.5
    # The tagger loses nothing; the worst head, and so the objective, is the NER head's.
    assert entry["scores"]["tokee_tagger"] == full["scores"]["tokee_tagger"]
    assert entry["worst_head"] == "tokee_ner"
    ner_loss = entry["scores"]["tokee_ner"]["ents_f"] - full["scores"]["tokee_ner"]["ents_f"]
    assert entry["objective"] == pytest.approx(ner_loss, abs=0.02) and entry["objective"] < 0
    reached = [c for c in entry["candidates"] if c["reached"]]
    assert entry["objective"] == max(c["objective"] for c in reached)
    assert all(key.startswith("components.tokee_transformer.") for key in entry["overrides"])
    assert all("head_proxies" in row for row in entry["screen"])
    assert "worst tokee_ner" in format_tune_report(report)


def test_tune_command_writes_transformer_overrides(shared, saved, tmp_path):
    args = ["tune", str(saved / "pipeline"), str(saved / "dev.spacy"), "--targets", "1.3", "--windows", "0",
            "--slopes", "1", "--keep", "1", "--steps", "2", "--output", str(tmp_path / "tune.json"),
            "--write-configs", str(tmp_path / "configs"), "--pipeline-out", str(tmp_path / "tuned")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    entry = json.loads((tmp_path / "tune.json").read_text())["targets"][0]
    assert entry["reachable"]
    overrides = json.loads((tmp_path / "configs" / "1.3x.json").read_text())
    assert overrides["components.tokee_transformer.thresholds"] == entry["thresholds"]
    tuned = spacy.load(tmp_path / "tuned" / "1.3x").get_pipe("tokee_transformer")
    assert tuned.thresholds == entry["thresholds"]


# -- evaluate and sweep -------------------------------------------------------------------


def test_evaluate_rows_report_every_head(shared):
    settings = [Setting("full", {"exit_mode": "off"}), Setting("static-2", static_fields(2, 4))]
    rows = compare(shared, shared_examples(shared), settings, "ents_f", batch_sizes=(1,), repeats=1)
    full, cut = rows
    assert set(full["scores"]) == set(HEADS) and full["objective"] == 0.0
    assert full["score"] == full["scores"]["tokee_ner"]["ents_f"]  # the first head's metric
    assert cut["flops_speedup"] > 1.5 and cut["worst_head"] in HEADS
    deltas = [cut["scores"][h][k] - full["scores"][h][k] for h in HEADS for k in cut["scores"][h]]
    assert cut["objective"] == pytest.approx(min(deltas), abs=0.02)
    table = format_table(rows, "ents_f")
    assert "| tokee_ner ents_f | tokee_tagger tag_acc | worst \u0394 |" in table.splitlines()[0]


def test_sweep_rows_report_every_head(shared, tmp_path):
    rows = run_sweep(shared, shared_examples(shared), [0.5], 1, progress=False)
    assert all(set(row["scores"]) == set(HEADS) for row in rows)
    assert rows[0]["method"] == "full" and rows[0]["objective"] == 0.0
    paths = write_sweep(rows, tmp_path, "ents_f")
    header = paths["csv"].read_text().splitlines()[0]
    assert header.endswith("tokee_ner.ents_f,tokee_tagger.tag_acc,objective,worst_head")


def test_a_joint_policy_is_what_the_encoder_runs(shared):
    # Sanity for the fixture the tests above lean on: both heads are on one encoder.
    encoder = get_shim(shared.get_pipe("tokee_transformer").model).encoder
    assert encoder.n_heads == 2 and isinstance(shared.get_pipe("tokee_transformer").policy, ExitPolicy)
