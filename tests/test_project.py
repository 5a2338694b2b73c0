"""The spaCy project workflow end to end: tiny corpus slice, tiny model, minutes."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).parent.parent / "project"


@pytest.mark.slow
def test_workflow_all_runs_end_to_end(tiny_model_dir, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns("corpus", "training", "metrics"))
    overrides = {
        "backbone": str(tiny_model_dir),
        "limit": 40,
        "stage1_steps": 6,
        "stage2_steps": 4,
        "eval_frequency": 3,
        "tune_limit": 20,
        "sweep_limit": 20,
        "timing_docs": 10,
        "repeats": 1,
        "targets": "2,3",
        "windows": "0,1",
    }
    args = [f"--vars.{key}={value}" for key, value in overrides.items()]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "spacy", "project", "run", "all", str(project), *args],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = project / "metrics" / "uner_en_ewt"
    meta = json.loads((project / "corpus" / "uner_en_ewt" / "meta.json").read_text())
    assert meta["task"] == "ner" and meta["metric"] == "ents_f"
    calibration = json.loads((metrics / "calibration.json").read_text())
    fitted = calibration["components"]["tokee_ner"]
    # One positive temperature per layer of the 4-layer tiny backbone; a fit
    # is kept only where it helps on held-out dev docs, so none may leave the
    # layer worse than T = 1.
    assert [row["layer"] for row in fitted["layers"]] == [1, 2, 3, 4]
    assert fitted["temperatures"] == [row["temperature"] for row in fitted["layers"]]
    assert fitted["kept"] == [row["kept"] for row in fitted["layers"]]
    assert all(t > 0 for t in fitted["temperatures"])
    assert all(row["kept"] or row["temperature"] == 1.0 for row in fitted["layers"])
    assert all(row["nll_after"] <= row["nll_before"] + 1e-6 for row in fitted["layers"])
    assert all(row["ece_after"] <= row["ece_before"] + 1e-12 for row in fitted["layers"])
    assert fitted["n_tokens"] > 0 and calibration["n_docs"] > 0
    # Both stages were tuned on the same dev docs; per target stage 2 was kept
    # unless stage 1 was better on them with 95% confidence.
    tune = json.loads((metrics / "tune.json").read_text())
    assert [t["target"] for t in tune["targets"]] == [2.0, 3.0]
    assert {json.loads((metrics / f"stage{s}" / "tune.json").read_text())["n_docs"] for s in (1, 2)} == {tune["n_docs"]}
    stage_paths = {1: "training/uner_en_ewt/stage1-final", 2: "training/uner_en_ewt/final"}
    for entry in tune["targets"] + [tune["full"]] + tune["static"]:
        assert set(entry["dev_scores"]) == {"stage1", "stage2"}
        if entry["stage"] is not None:
            assert entry["pipeline"] == stage_paths[entry["stage"]]
            assert entry["score"] == entry["dev_scores"][f"stage{entry['stage']}"]
            result = entry["bootstrap"]
            if result is None:  # one stage had no dev score
                assert entry["dev_scores"][f"stage{3 - entry['stage']}"] is None
            else:
                assert entry["stage"] == (1 if result["ci"][0] > 0 else 2), entry["decision"]
    evaluation = json.loads((metrics / "evaluate.json").read_text())
    rows = evaluation["rows"]
    full = rows[0]
    assert full["method"] == "full" and full["flops_speedup"] == 1.0
    assert (full["stage"], full["pipeline"]) == (tune["full"]["stage"], tune["full"]["pipeline"])
    for row in rows:
        assert set(row["words_per_second"]) == {"1", "32"}
        assert row["stage"] in (1, 2) and row["pipeline"] == stage_paths[row["stage"]]
    chosen = {f"tokee-{e['target']:g}x": e for e in tune["targets"] if e["reachable"]}
    assert {row["method"] for row in rows if row["method"].startswith("tokee-")} == set(chosen)
    for row in rows:
        if row["method"] in chosen:
            assert row["stage"] == chosen[row["method"]]["stage"]
    statics = [row for row in rows if row["method"].startswith("static-")]
    assert statics and all(row["window"] is None and 1 <= row["layer"] < 4 for row in statics)
    assert (metrics / "sweep" / "sweep.png").stat().st_size > 0
    sweep = json.loads((metrics / "sweep" / "sweep.json").read_text())
    assert sweep["tuned"] == "metrics/uner_en_ewt/tune.json" and sweep["families"]
    assert {r["method"] for r in sweep["rows"] if r["method"].startswith("tuned-")} == {
        f"tuned-{e['target']:g}x" for e in tune["targets"] if e["reachable"]}
    # Stage 2 started from stage 1 and the final pipeline carries the temperatures.
    config = (project / "training" / "uner_en_ewt" / "final" / "config.cfg").read_text()
    assert "self_sampling" in config and "temperatures = [" in config
    # choose-stage left a ready-to-load pipeline per reachable target beside
    # `final`, from the stage it kept, and no other tuned copy.
    training = project / "training" / "uner_en_ewt"
    for entry in tune["targets"]:
        published = training / f"final-{entry['target']:g}x"
        assert published.exists() == entry["reachable"], entry
        if entry["reachable"]:
            assert ("self_sampling" in (published / "config.cfg").read_text()) == (entry["stage"] == 2)
    assert not (training / "tuned").exists() and not (training / "stage1-tuned").exists()
    # The benchmark table (issue 4) from the same trained pipelines.
    result = subprocess.run(
        [sys.executable, "-m", "spacy", "project", "run", "calibrate-stage1", str(project), *args],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = tmp_path / "results"
    bench = [
        sys.executable, str(PROJECT.parent / "benchmarks" / "run.py"), "uner_en_ewt", "--project", str(project),
        "--tune-limit", "15", "--steps", "3", "--windows", "0,1", "--timing-docs", "6", "--repeats", "1",
        "--output-dir", str(results),
    ]
    result = subprocess.run(bench, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((results / "uner_en_ewt.json").read_text())
    assert report["split"] == "test" and report["metric"] == "ents_f"
    methods = [row["method"] for row in report["rows"]]
    assert methods[0] == "full" and methods[-1] == "hf-full"
    assert {"static-3", "static-2"} <= set(methods)
    tokee_rows = [row for row in report["rows"] if row["method"] == "tokee"]
    assert tokee_rows, methods
    for row in tokee_rows:  # each TOKEE row gives its exit schedule, chosen on dev
        assert len(row["thresholds"]) == 4 and row["fields"]["thresholds"] == row["thresholds"]
        assert all(t == 0.0 for t in row["thresholds"][: row["min_layer"] - 1])
        assert row["dev_flops_speedup"] >= row["target"] * 1.02
    for row in report["rows"]:
        assert set(row["wall_speedup"]) == set(row["words_per_second"]) == {"1", "32"}
    full = report["rows"][0]
    assert full["wall_speedup"] == {"1": 1.0, "32": 1.0}
    # The same weights at full depth outside spaCy label the words identically.
    assert report["rows"][-1]["score"] == full["score"]
    assert (results / "uner_en_ewt.md").read_text().count("\n|") >= len(methods) + 1
    assert (results / "uner_en_ewt.png").stat().st_size > 0


@pytest.mark.parametrize(
    "task,lang,chars",
    [("ner", "zh", True), ("segmenter", "zh", True), ("ner", "en", False), ("tagger", "en", False)],
)
def test_corpus_overrides_build_the_right_pipeline(task, lang, chars, tiny_model_dir):
    # Chinese corpora are annotated per character: their pipelines must
    # tokenize into characters (Weibo once trained on unaligned gold).
    import importlib.util

    from spacy.util import load_config, load_model_from_config

    spec = importlib.util.spec_from_file_location("train_script", PROJECT / "scripts" / "train.py")
    train_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_script)
    overrides = train_script.corpus_overrides({"task": task, "lang": lang})
    overrides.update({"nlp.lang": lang, "paths.backbone": str(tiny_model_dir)})
    config = load_config(PROJECT / "configs" / f"{task}.cfg", overrides=overrides)
    nlp = load_model_from_config(config, auto_fill=True)
    name = nlp.pipe_names[0]
    # Chinese text meets characters an English backbone does not know.
    assert nlp.get_pipe(name).fine_tuning.extend_vocab is (lang == "zh")
    # The default configs show the training and precision fields users may set.
    assert config["components"][name]["training"]["distill_weight"] == 0.0
    assert config["components"][name]["precision"] == "fp32"
    assert nlp.get_pipe(name).precision == "fp32" and nlp.get_pipe(name).training.distill_weight == 0.0
    text = "张三在北京" if lang == "zh" else "Ada lives in London"
    expected = list(text) if chars else text.split()
    assert [t.text for t in nlp.make_doc(text)] == expected
    assert nlp.pipe_names == [name] and nlp.get_pipe_meta(name).factory == f"tokee_{task}"
