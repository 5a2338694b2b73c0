"""Per-layer temperature calibration: the fit, ECE, the pipeline round trip and the CLI."""
import json

import numpy
import pytest
import spacy
from spacy.tokens import DocBin
from thinc.api import Config
from typer.testing import CliRunner

from spacy_early_exit.cli import app
from spacy_early_exit.testing import ner_examples
from spacy_early_exit.tools.calibrate import (
    MIN_TEMPERATURE,
    calibrate_layers,
    calibrate_pipeline,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)


def sample(n_tokens, n_classes, true_temperature, seed, scale=2.0):
    """Logits z and labels drawn from softmax(z / true_temperature)."""
    rng = numpy.random.default_rng(seed)
    logits = rng.normal(0.0, scale, size=(n_tokens, n_classes))
    scaled = logits / true_temperature
    probs = numpy.exp(scaled - scaled.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    gold = (probs.cumsum(axis=1) > rng.random((n_tokens, 1))).argmax(axis=1)
    return logits.astype("float32"), gold


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.0, 4.0])
def test_fit_recovers_a_known_temperature(true_temperature):
    logits, gold = sample(4000, 6, true_temperature, seed=1)
    fitted = fit_temperature(logits, gold)
    assert fitted == pytest.approx(true_temperature, rel=0.1)
    assert fit_temperature(logits, gold) == fitted  # deterministic


@pytest.mark.parametrize("seed", range(6))
def test_fit_never_increases_the_nll(seed):
    rng = numpy.random.default_rng(seed)
    true_temperature = float(rng.choice([0.3, 1.0, 3.0]))
    logits, gold = sample(int(rng.integers(1, 300)), int(rng.integers(2, 8)), true_temperature, seed)
    if seed % 2:
        gold = rng.integers(0, logits.shape[1], size=len(gold))  # labels unrelated to the logits
    fitted = fit_temperature(logits, gold)
    assert fitted > 0
    assert negative_log_likelihood(logits, gold, fitted) <= negative_log_likelihood(logits, gold, 1.0) + 1e-12


def test_fit_edge_cases():
    assert fit_temperature(numpy.zeros((0, 5), dtype="float32"), numpy.zeros(0, dtype="int64")) == 1.0
    # Temperature cannot change equal logits: keep 1.0.
    assert fit_temperature(numpy.full((4, 3), 2.0), numpy.array([0, 1, 2, 0])) == 1.0
    # Separable data: the NLL keeps falling as T -> 0, so the fit stops at the bound.
    separable = numpy.eye(3)[[0, 1, 2, 0]] * 5.0
    assert fit_temperature(separable, numpy.array([0, 1, 2, 0])) == MIN_TEMPERATURE
    with pytest.raises(ValueError, match="gold"):
        fit_temperature(numpy.zeros((3, 2)), numpy.array([0, 1, 2]))
    with pytest.raises(ValueError, match="logits"):
        fit_temperature(numpy.zeros(3), numpy.array([0, 1, 1]))


def test_ece_drops_for_over_confident_logits():
    logits, gold = sample(4000, 5, 1.0, seed=3)
    over_confident = logits * 3.0  # the labels follow softmax(logits), the model claims softmax(3 logits)
    fitted = fit_temperature(over_confident, gold)
    assert fitted == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(over_confident, gold, 1.0)
    after = expected_calibration_error(over_confident, gold, fitted)
    assert before > 0.1 and after < before / 3


def test_ece_by_hand():
    # Two tokens at confidence 0.9 in one bin, one right and one wrong: |0.5 - 0.9| = 0.4.
    logits = numpy.log(numpy.array([[0.9, 0.1], [0.9, 0.1]]))
    assert expected_calibration_error(logits, numpy.array([0, 1]), 1.0, n_bins=10) == pytest.approx(0.4)
    assert expected_calibration_error(logits, numpy.array([0, 0]), 1.0, n_bins=10) == pytest.approx(0.1)
    assert expected_calibration_error(numpy.zeros((0, 2)), numpy.zeros(0, dtype="int64"), 1.0) == 0.0
    with pytest.raises(ValueError, match="temperature"):
        expected_calibration_error(logits, numpy.array([0, 1]), 0.0)


def test_calibrate_layers_reports_every_layer():
    layers = [sample(2000, 4, 1.0, seed=5)[0] * factor for factor in (0.5, 1.0, 3.0)]
    gold = sample(2000, 4, 1.0, seed=5)[1]
    report = calibrate_layers(numpy.stack(layers), gold)
    assert (report["n_tokens"], report["n_classes"]) == (2000, 4)
    assert [row["layer"] for row in report["layers"]] == [1, 2, 3]
    assert report["temperatures"] == [row["temperature"] for row in report["layers"]]
    assert report["temperatures"] == pytest.approx([0.5, 1.0, 3.0], rel=0.1)
    for row in report["layers"]:
        assert row["nll_after"] <= row["nll_before"] + 1e-12
    json.dumps(report)


@pytest.fixture(scope="module")
def saved_pipeline(trained_ner, tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibration")
    trained_ner.to_disk(folder / "pipeline")
    DocBin(docs=[eg.reference for eg in ner_examples(trained_ner)]).to_disk(folder / "dev.spacy")
    return folder / "pipeline", folder / "dev.spacy"


def test_calibrate_pipeline_saves_loadable_temperatures(saved_pipeline, tmp_path):
    pipeline, dev = saved_pipeline
    report = calibrate_pipeline(pipeline, dev, tmp_path / "out")
    fitted = report["components"]["tokee_ner"]
    temperatures = fitted["temperatures"]
    assert len(temperatures) == 4 and all(t > 0 for t in temperatures)
    assert fitted["previous_temperatures"] == [0.25] * 4
    assert fitted["n_tokens"] > 0 and report["n_docs"] == 4
    config = Config().from_disk(tmp_path / "out" / "config.cfg", interpolate=False)
    assert config["components"]["tokee_ner"]["temperatures"] == temperatures
    assert config["components"]["tokee_ner"]["threshold"] == 0.5  # the rest is kept
    loaded = spacy.load(tmp_path / "out")
    ner = loaded.get_pipe("tokee_ner")
    assert ner.temperatures == temperatures and ner.window == 1
    doc = loaded("John Smith lives in London")
    assert len(doc._.early_exit["tokee_ner"]["exit_layers"]) == len(doc)
    # The source pipeline is untouched.
    assert spacy.load(pipeline).get_pipe("tokee_ner").temperatures == [0.25] * 4


def test_calibrate_for_a_precision_fits_its_logits_and_sets_it(saved_pipeline, tmp_path):
    pipeline, dev = saved_pipeline
    fp32 = calibrate_pipeline(pipeline, dev, tmp_path / "fp32")["components"]["tokee_ner"]
    report = calibrate_pipeline(pipeline, dev, tmp_path / "int8", precision="int8")
    int8 = report["components"]["tokee_ner"]
    assert report["precision"] == "int8"
    # int8 logits differ a little, so the fitted NLLs do too.
    assert [r["nll_before"] for r in int8["layers"]] != [r["nll_before"] for r in fp32["layers"]]
    config = Config().from_disk(tmp_path / "int8" / "config.cfg", interpolate=False)
    assert config["components"]["tokee_ner"]["precision"] == "int8"
    assert spacy.load(tmp_path / "int8").get_pipe("tokee_ner").precision == "int8"
    assert "precision" not in Config().from_disk(tmp_path / "fp32" / "config.cfg", interpolate=False)["components"]["tokee_ner"] or \
        Config().from_disk(tmp_path / "fp32" / "config.cfg", interpolate=False)["components"]["tokee_ner"]["precision"] == "fp32"


def test_calibrate_pipeline_rejects_an_unknown_component(saved_pipeline, tmp_path):
    pipeline, dev = saved_pipeline
    with pytest.raises(ValueError, match="nonexistent"):
        calibrate_pipeline(pipeline, dev, tmp_path / "out", component="nonexistent")
    assert not (tmp_path / "out").exists()


def test_cli_writes_the_pipeline_and_the_report(saved_pipeline, tmp_path):
    pipeline, dev = saved_pipeline
    metrics = tmp_path / "metrics" / "calibration.json"
    args = ["calibrate", str(pipeline), str(dev), "--output", str(tmp_path / "out"), "--metrics", str(metrics), "--limit", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| layer | T | NLL before | NLL after | ECE before | ECE after | fit kept |" in result.output
    report = json.loads(metrics.read_text(encoding="utf8"))
    assert report["n_docs"] == 2
    temperatures = report["components"]["tokee_ner"]["temperatures"]
    assert spacy.load(tmp_path / "out").get_pipe("tokee_ner").temperatures == temperatures


def test_a_fit_that_does_not_help_on_held_out_tokens_keeps_t1():
    # A layer that is already calibrated (labels drawn from softmax(z)): the
    # in-sample fit still moves T off 1 (it fits the sample's noise), but on
    # held-out tokens that does not lower the NLL, so T = 1 stays.
    logits, gold = sample(600, 4, 1.0, seed=11)
    report = calibrate_layers(numpy.stack([logits]), gold)
    (row,) = report["layers"]
    assert report["kept"] == [False] and report["temperatures"] == [1.0]
    assert row["fitted_temperature"] != 1.0 and row["reason"] == "held-out NLL not improved"
    assert row["nll_after"] == row["nll_before"] and row["ece_after"] == row["ece_before"]
    assert row["heldout_nll_after"] >= row["heldout_nll_before"]


def test_held_out_check_refuses_a_fit_that_only_matches_its_own_fold():
    # Fold 0 is over-confident (labels from softmax(z / 3)), fold 1 is
    # under-confident (labels from softmax(3 z)): each fold's fit is wrong for the other.
    hot, hot_gold = sample(1500, 4, 3.0, seed=12)
    cold, cold_gold = sample(1500, 4, 1 / 3, seed=13)
    logits = numpy.concatenate([hot, cold])
    gold = numpy.concatenate([hot_gold, cold_gold])
    folds = numpy.array([0] * 1500 + [1] * 1500)
    assert fit_temperature(logits, gold) != 1.0  # in-sample the fit always finds something
    row = calibrate_layers(logits[None], gold, folds=folds)["layers"][0]
    assert not row["kept"] and row["temperature"] == 1.0
    assert row["heldout_nll_after"] >= row["heldout_nll_before"] and "held-out" in row["reason"]


def test_a_fit_that_helps_is_kept_and_refitted_on_all_tokens():
    logits, gold = sample(3000, 5, 1.0, seed=14)
    row = calibrate_layers((logits * 3.0)[None], gold)["layers"][0]
    assert row["kept"] and row["temperature"] == row["fitted_temperature"] == pytest.approx(3.0, rel=0.1)
    assert row["heldout_nll_after"] < row["heldout_nll_before"] and row["ece_after"] < row["ece_before"]


def test_too_little_data_to_check_keeps_t1():
    logits, gold = sample(50, 3, 1.0, seed=15)
    row = calibrate_layers((logits * 3.0)[None], gold, folds=numpy.zeros(50, dtype="int64"))["layers"][0]
    assert not row["kept"] and row["temperature"] == 1.0 and row["heldout_nll_before"] is None
    with pytest.raises(ValueError, match="folds"):
        calibrate_layers(logits[None], gold, folds=numpy.zeros(3))


def test_the_report_says_which_fits_were_kept(saved_pipeline, tmp_path):
    from spacy_early_exit.tools.calibrate import format_report

    pipeline, dev = saved_pipeline
    report = calibrate_pipeline(pipeline, dev, tmp_path / "out")
    fitted = report["components"]["tokee_ner"]
    assert len(fitted["kept"]) == 4
    for row, kept in zip(fitted["layers"], fitted["kept"]):
        assert row["kept"] is kept and (kept or row["temperature"] == 1.0)
        assert row["heldout_nll_before"] is not None  # 4 docs: two per fold
    table = format_report(report)
    assert table.count("| yes |") + table.count("| no (") == 4
