"""benchmarks/shared.py --tiny: every row scored, timed and written, on tiny random models."""
import importlib.util
import json
from pathlib import Path

import typer
from typer.testing import CliRunner

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "shared.py"


def load_script():
    spec = importlib.util.spec_from_file_location("shared_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_every_row(tmp_path):
    # In this process (not a subprocess): torch, spaCy and transformers are already imported.
    app = typer.Typer()
    app.command()(load_script().main)
    args = ["--tiny", "--output-dir", str(tmp_path), "--repeats", "1", "--timing-docs", "4", "--threads", "1", "--int8", "--bf16"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)

    report = json.loads((tmp_path / "shared_tiny.json").read_text(encoding="utf8"))
    assert (tmp_path / "shared_tiny.md").exists()
    assert {"rows", "commands", "machine", "threads", "timing_docs"} <= set(report)
    assert report["threads"] == 1 and report["timing_docs"] == 4 and report["unreachable"] == []
    rows = {(r["method"], r["target"], r["precision"]): r for r in report["rows"]}
    expected = {("shared-full", 1), ("shared-tokee", 2), ("shared-tokee", 3), ("separate-full", 1),
                ("separate-tokee", 2), ("separate-tokee", 3), ("spacy-trf", 1)}
    assert set(rows) == {(m, t, "fp32") for m, t in expected} | {
        (m, 2, p) for m in ("shared-tokee", "separate-tokee") for p in ("int8", "bf16")}
    for row in report["rows"]:
        assert 0 <= row["ner_f"] <= 100 and 0 <= row["pos_acc"] <= 100
        assert row["flops_speedup"] > 0
        assert set(row["words_per_second"]) == {"1", "32"} and all(v > 0 for v in row["words_per_second"].values())
    # The reference is one full-depth pass of the shared encoder: its own full row is 1x.
    assert rows[("shared-full", 1, "fp32")]["flops_speedup"] == 1.0
    # Two encoders run at full depth cost more than the shared one.
    assert rows[("separate-full", 1, "fp32")]["flops_speedup"] < 1.0
    assert len(rows[("separate-full", 1, "fp32")]["pipelines"]) == 2
    assert report["commands"]["benchmark"].startswith("python benchmarks/shared.py")
