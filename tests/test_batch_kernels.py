"""benchmarks/batch_kernels.py on a tiny project: every variant timed, the layer step restored."""
import json
import sys
from pathlib import Path

import pytest
import typer

from spacy_early_exit.encoder import attention_groups, layer_step
from spacy_early_exit.layers import sub_batches

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import batch_kernels  # noqa: E402
import shared  # noqa: E402


def test_every_variant_is_timed_and_the_layer_step_restored(tmp_path):
    shared.tiny_project(tmp_path / "project", "tiny")
    output = tmp_path / "kernels.json"
    before = (layer_step._output_block, layer_step.KEY_BLOCK, layer_step.GRID_PROJECTION_LIMIT,
              sub_batches.SUB_BATCH_OVERHEAD, attention_groups.MAX_GROUPS)
    batch_kernels.main("tiny", settings="bf16:2,fp32:full", docs=4, batch_size=2, order="sorted", repeats=1, threads=1,
                       project=tmp_path / "project", output=output)
    assert (layer_step._output_block, layer_step.KEY_BLOCK, layer_step.GRID_PROJECTION_LIMIT,
            sub_batches.SUB_BATCH_OVERHEAD, attention_groups.MAX_GROUPS) == before
    report = json.loads(output.read_text(encoding="utf8"))
    assert [r["setting"] for r in report["rows"]] == ["bf16:2", "fp32:full"]
    assert report["rows"][1]["fields"] == {"exit_mode": "off", "precision": "fp32"}
    for row in report["rows"]:
        assert list(row["words_per_second"]) == list(batch_kernels.VARIANTS)
        assert all(v > 0 for v in row["words_per_second"].values()) and row["over_before"]["before"] == 1.0


def test_a_variant_switches_each_change_off():
    with batch_kernels.variant(False, False, False, False, False):
        assert layer_step.KEY_BLOCK == 1 and layer_step.GRID_PROJECTION_LIMIT == 0.0
        assert layer_step._output_block is not batch_kernels._FUSED_OUTPUT_BLOCK
        assert sub_batches.SUB_BATCH_OVERHEAD == float("inf") and attention_groups.MAX_GROUPS == 1
    assert layer_step.KEY_BLOCK == 16 and layer_step._output_block is batch_kernels._FUSED_OUTPUT_BLOCK
    assert sub_batches.SUB_BATCH_OVERHEAD == 1024 and attention_groups.MAX_GROUPS > 1


def test_an_untuned_target_is_one_clear_error():
    with pytest.raises(typer.BadParameter, match="tuned target"):
        batch_kernels.parse_settings("bf16:5", {2.0: {"exit_mode": "tokee"}})
