"""benchmarks/run.py --phase ablation: a later-trained pipeline joins an existing table."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import typer

from test_precision_benchmark import DATASET, tiny_project

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def run_module():
    spec = importlib.util.spec_from_file_location("run_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def project(tiny_model_dir, tmp_path_factory):
    """The tiny layout with only an ablation's pipeline, training/<dataset>/distill-stage1-final."""
    root = tiny_project(tmp_path_factory.mktemp("ablation") / "project", tiny_model_dir)
    final = root / "training" / DATASET / "final"
    shutil.move(str(final), str(final.parent / "distill-stage1-final"))
    return root


def existing_table(output: Path) -> dict:
    """A table as --phase score/time left it (the main pipelines' rows)."""
    timed = {"wall_speedup": {"1": 1.0, "32": 1.0}, "words_per_second": {"1": 10.0, "32": 20.0}}
    rows = [
        {"method": "full", "target": 1, "score": 50.0, "flops_speedup": 1.0, "mean_exit_layer": 4.0, **timed,
         "window": None, "threshold": None, "model": "stage2", "fields": {"exit_mode": "off"}},
        {"method": "hf-full", "target": 1, "score": 50.0, "flops_speedup": 1.0, "mean_exit_layer": 4.0, **timed,
         "window": None, "threshold": None, "model": "stage2", "fields": {}},
    ]
    report = {"corpus": DATASET, "split": "test", "metric": "ents_f", "backbone": "tiny", "backbone_name": "tiny",
              "vocabulary_extension": False, "test_docs": 8, "tune_docs": 8, "batch_sizes": [1, 32], "repeats": 1,
              "timing_docs": 4, "threads": 1, "rows": rows}
    output.mkdir(parents=True)
    (output / f"{DATASET}.json").write_text(json.dumps(report), encoding="utf8")
    return report


def ablate(module, project: Path, output: Path, timing: bool, name: str = "distill-stage1") -> dict:
    module.run_ablation(DATASET, name, timing, project, output, targets=[2.0], windows=[0], tune_limit=0,
                        steps=2, margin=0.0, timing_docs=4, batch_sizes=[1, 32], repeats=1)
    return json.loads((output / f"{DATASET}.json").read_text(encoding="utf8"))


def test_ablation_rows_join_the_table(run_module, project, tmp_path):
    output = tmp_path / "results"
    before = existing_table(output)

    scored = ablate(run_module, project, output, timing=False)
    methods = [r["method"] for r in scored["rows"]]
    assert methods == ["full", "tokee-distill-stage1", "hf-full"], scored["ablations"]
    row = scored["rows"][1]
    assert row["model"] == "distill-stage1" and row["target"] == 2
    assert row["fields"]["thresholds"] == row["thresholds"] and len(row["thresholds"]) == 4
    assert 1.0 < row["flops_speedup"] and "wall_speedup" not in row  # scored, not yet timed
    assert scored["rows"][0] == before["rows"][0]  # the main rows stay as they were
    info = scored["ablations"]["distill-stage1"]
    assert info["tune_docs"] == 8 and info["pipeline"] == f"training/{DATASET}/distill-stage1-final"

    timed = ablate(run_module, project, output, timing=True)
    row = timed["rows"][1]
    assert set(row["wall_speedup"]) == set(row["words_per_second"]) == {"1", "32"}
    assert row["score"] == scored["rows"][1]["score"]
    assert set(timed["ablations"]["distill-stage1"]["full_words_per_second"]) == {"1", "32"}
    assert (output / f"{DATASET}.md").read_text(encoding="utf8").count("tokee-distill-stage1") == 1

    again = ablate(run_module, project, output, timing=False)  # a rerun replaces, never duplicates
    assert [r["method"] for r in again["rows"]] == methods


def test_ablation_needs_a_table_and_a_pipeline(run_module, project, tmp_path):
    output = tmp_path / "results"
    with pytest.raises(typer.BadParameter, match="run --phase score first"):
        ablate(run_module, project, output, timing=False)
    existing_table(output)
    with pytest.raises(typer.BadParameter, match="No pipeline at"):
        ablate(run_module, project, output, timing=False, name="missing")
    with pytest.raises(typer.BadParameter, match="run --phase ablation first"):
        ablate(run_module, project, output, timing=True)
