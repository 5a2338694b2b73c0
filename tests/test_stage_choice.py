"""project/scripts/choose_stage.py: stage 2 unless stage 1 is better on dev with confidence."""
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy
import pytest
from spacy.tokens import DocBin
from thinc.api import fix_random_seed

from spacy_early_exit.encoder.exit_schedule import ExitSchedule
from spacy_early_exit.testing import make_ner_nlp, ner_examples
from spacy_early_exit.tools.evaluation_rows import static_fields
from spacy_early_exit.tools.measure import measure

SCRIPTS = Path(__file__).parent.parent / "project" / "scripts"


@pytest.fixture(scope="module")
def choose_stage():
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location("choose_stage", SCRIPTS / "choose_stage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_report(pipeline, scores, full, static):
    """A tune report with one entry per target (None: unreachable) and runs of
    the static cuts; target t's threshold is t / 10, so fake runs tell them apart."""
    targets = [
        {"target": t, "reachable": s is not None, "score": s, "window": 0, "threshold": t / 10 if s else None,
         "flops_speedup": t * 1.03 if s else None, "overrides": {"components.tokee_ner.threshold": t / 10} if s else None,
         "pipeline_path": f"{pipeline}-tuned/{t:g}x" if s else None}
        for t, s in scores.items()
    ]
    runs = {f"w0-m{k}-s1": [{"threshold": 1.0, "score": s, "flops_speedup": 4.0 / k, "layer_speedup": 4.0 / k}] for k, s in static.items()}
    return {"pipeline": pipeline, "metric": "ents_f", "n_docs": 10, "full": {"exit_mode": "off", "score": full}, "targets": targets, "runs": runs}


def draws(seed: int, share: float, n: int = 200) -> numpy.ndarray:
    """Per-doc entity counts of a system that finds each gold entity with probability `share`."""
    rng = numpy.random.default_rng(seed)
    gold = numpy.random.default_rng(99).integers(1, 5, n)  # the same gold docs for every system
    return numpy.stack([rng.binomial(gold, share), gold, gold], axis=1)


class FakeRuns:
    """Dev runs from a table: the 2x target has stage 1 far ahead, every other
    setting two draws of the same system (stage 1 ahead or behind by noise)."""

    def __init__(self) -> None:
        self.calls: List[Dict[str, Any]] = []

    def counts(self, stage: int, fields: Dict[str, Any]) -> numpy.ndarray:
        self.calls.append(fields)
        if fields.get("threshold") == 0.2:
            return draws(stage, 0.9 if stage == 1 else 0.6)
        return draws(stage, 0.7)

    def depth(self, stage: int) -> int:
        return 4


def test_plain_rule_at_confidence_zero_keeps_the_higher_dev_score(choose_stage):
    stage1 = fake_report("s1", {2.0: 94.20, 3.0: 93.0, 4.0: None, 9.0: None}, 95.0, {1: 80.0, 2: 90.0, 3: 93.0})
    stage2 = fake_report("s2", {2.0: 94.20, 3.0: 93.5, 4.0: 90.0, 9.0: None}, 94.0, {1: 82.0, 2: 89.0, 3: 93.0})
    merged = choose_stage.merge_reports(stage1, stage2, None, choose_stage.Rule(confidence=0))
    chosen = {e["target"]: e for e in merged["targets"]}
    assert chosen[2.0]["stage"] == 2 and chosen[2.0]["pipeline"] == "s2"  # a tie keeps stage 2, the method's model
    assert chosen[3.0]["stage"] == 2 and chosen[3.0]["score"] == 93.5
    assert chosen[3.0]["dev_scores"] == {"stage1": 93.0, "stage2": 93.5} and chosen[3.0]["bootstrap"] is None
    assert chosen[4.0]["stage"] == 2 and "only stage 2" in chosen[4.0]["decision"]
    assert not chosen[9.0]["reachable"] and chosen[9.0]["stage"] is None
    assert merged["full"]["stage"] == 1 and merged["full"]["pipeline"] == "s1" and merged["full"]["score"] == 95.0
    assert [(s["layer"], s["stage"]) for s in merged["static"]] == [(1, 2), (2, 1), (3, 2)]
    assert merged["static"][0]["flops_speedup"] == 4.0 and merged["static"][0]["pipeline"] == "s2"
    with pytest.raises(ValueError, match="same"):
        choose_stage.merge_reports({**stage1, "n_docs": 5}, stage2, None, choose_stage.Rule(confidence=0))
    with pytest.raises(ValueError, match="dev runs"):
        choose_stage.merge_reports(stage1, stage2)


def test_stage_1_only_where_its_dev_lead_is_not_noise(choose_stage):
    # Stage 1 is ahead on the tuned dev scores everywhere, as a max over many
    # schedules on a small dev set tends to be.
    stage1 = fake_report("s1", {2.0: 80.0, 3.0: 71.0, 4.0: 60.0}, 72.0, {1: 60.0, 2: 71.0, 3: 72.0})
    stage2 = fake_report("s2", {2.0: 60.0, 3.0: 70.0, 4.0: None}, 70.0, {1: 59.0, 2: 70.0, 3: 71.0})
    runs = FakeRuns()
    merged = choose_stage.merge_reports(stage1, stage2, runs, choose_stage.Rule(confidence=0.95, resamples=500, seed=1))
    chosen = {e["target"]: e for e in merged["targets"]}
    clear = chosen[2.0]["bootstrap"]
    assert chosen[2.0]["stage"] == 1 and clear["ci"][0] > 0 and clear["share_stage1_not_better"] < 0.025
    assert chosen[2.0]["decision"].startswith("stage 1: stage 1 better on dev")
    noise = chosen[3.0]["bootstrap"]
    assert chosen[3.0]["stage"] == 2 and noise["ci"][0] <= 0 <= noise["ci"][1]
    assert chosen[3.0]["decision"].startswith("stage 2: stage 1 not better on dev with 95% confidence")
    assert chosen[4.0]["stage"] == 1 and chosen[4.0]["bootstrap"] is None  # only stage 1 reaches 4x
    assert merged["full"]["stage"] == 2 and all(s["stage"] == 2 for s in merged["static"])
    assert merged["full"]["dev_scores"] == {"stage1": 72.0, "stage2": 70.0}
    # Static cuts run with the pipeline's depth: every token leaves after layer k.
    assert {"exit_mode": "tokee", "window": 0, "threshold": 1.0, "thresholds": [0.0, 1.0, 1.0, 1.0]} in runs.calls
    assert merged["confidence"] == 0.95 and "95% confidence" in merged["rule"]
    again = choose_stage.merge_reports(stage1, stage2, FakeRuns(), choose_stage.Rule(confidence=0.95, resamples=500, seed=1))
    assert again == merged  # seeded
    # The plain rule would have kept stage 1 everywhere.
    plain = choose_stage.merge_reports(stage1, stage2, None, choose_stage.Rule(confidence=0))
    assert {e["stage"] for e in [plain["full"], *plain["static"], *plain["targets"]]} == {1}


def write_dev(nlp, path: Path, copies: int) -> int:
    """NER_DATA `copies` times as a DocBin; RETURNS the doc count."""
    refs = [eg.reference for eg in ner_examples(nlp)] * copies
    DocBin(docs=refs).to_disk(path)
    return len(refs)


def measured_report(nlp, pipeline: str, examples, n_docs: int, fields: Dict[str, Any]) -> Dict[str, Any]:
    """A tune report of `nlp` with real dev scores: full depth, one 2x target, the static cuts."""
    def row(setting: Dict[str, Any]) -> Dict[str, Any]:
        return measure(nlp, examples, setting, "ents_f").as_row()

    static = {}
    for k in (1, 2, 3):
        static[ExitSchedule(window=0, min_layer=k, slope=1.0).key] = [
            {"threshold": 1.0, **row(static_fields(k, 4))}]
    target = {"target": 2.0, "reachable": True, **row(fields), "fields": fields, "window": fields["window"], "threshold": fields["threshold"],
              "overrides": {"components.tokee_ner.threshold": fields["threshold"]}, "pipeline_path": f"{pipeline}-tuned/2x"}
    Path(target["pipeline_path"]).mkdir(parents=True)
    (Path(target["pipeline_path"]) / "config.cfg").write_text(pipeline)
    return {"pipeline": pipeline, "dev_data": "dev.spacy", "limit": 0, "metric": "ents_f", "n_docs": n_docs,
            "full": {"exit_mode": "off", **row({"exit_mode": "off"})}, "targets": [target], "runs": static}


def test_choose_stage_reruns_both_stages_on_dev_and_publishes(choose_stage, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fix_random_seed(0)
    trained = make_ner_nlp(tiny_model_dir, steps=30, threshold=0.5, window=1, temperatures=[0.25] * 4)
    n_docs = write_dev(trained, Path("dev.spacy"), copies=5)
    fields = {"exit_mode": "tokee", "window": 1, "threshold": 0.5, "thresholds": None}
    untrained = make_ner_nlp(tiny_model_dir, steps=0)
    # Stage 1 trained, stage 2 not: far apart. Then the same model twice: only noise.
    cases = [("trained", untrained, "untrained"), ("trained", trained, "copy")]
    for (one, second, two), expected in zip(cases, (1, 2)):
        for name, nlp in ((one, trained), (two, second)):
            if not Path(name).exists():
                nlp.to_disk(name)
        examples = ner_examples(trained) * 5
        reports = [measured_report(nlp, name, examples, n_docs, fields) for name, nlp in ((one, trained), (two, second))]
        for name, report in zip(("one.json", "two.json"), reports):
            Path(name).write_text(json.dumps(report))
        choose_stage.main(Path("one.json"), Path("two.json"), Path("training"), Path("metrics/tune.json"), Path("metrics/configs"),
                          dev=None, confidence=0.95, resamples=500, seed=0, threads="1")
        merged = json.loads(Path("metrics/tune.json").read_text())
        full, target = merged["full"], merged["targets"][0]
        # The reruns give the tuner's scores back: the same dev docs, the same settings.
        for entry in (full, target, *merged["static"]):
            assert entry["bootstrap"]["rerun_scores"] == entry["dev_scores"]
            assert entry["stage"] == (1 if entry["bootstrap"]["ci"][0] > 0 else 2), entry["decision"]
        if expected == 1:
            assert full["dev_scores"]["stage1"] > full["dev_scores"]["stage2"] + 10
            assert full["stage"] == 1 and full["pipeline"] == one and full["bootstrap"]["ci"][0] > 0
        else:
            assert all(e["stage"] == 2 and e["bootstrap"]["ci"] == [0, 0] for e in (full, target, *merged["static"]))
            assert target["pipeline"] == "copy"
        assert Path("training/final-2x/config.cfg").read_text() == target["pipeline"]
        assert not Path(f"{one}-tuned").exists() and not Path(f"{two}-tuned").exists()
        assert target["pipeline_path"] == str(Path("training/final-2x")) and Path("metrics/configs/2x.json").exists()
        shutil.rmtree("training")
