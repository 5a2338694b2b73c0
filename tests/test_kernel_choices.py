"""benchmarks/kernel_choices.py runs end to end and records every variant."""
import importlib.util
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from kernel_choices import main  # noqa: E402

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None


def test_kernel_choices_records_every_variant_and_row_count(tmp_path):
    output = tmp_path / "kernel_choices.json"
    main(threads=1, calls=1, repeats=1, rows="1,3", compile_it=False, output=output)
    report = json.loads(output.read_text(encoding="utf8"))
    layouts = report["linear_layouts"]
    single = [e for e in layouts if "nn_linear" in e["microseconds"]]
    assert {(e["in"], e["out"], e["rows"]) for e in single} == {(i, o, r) for i, o in ((384, 384), (384, 1536), (1536, 384)) for r in (1, 3)}
    assert all(set(e["microseconds"]) == {"nn_linear", "transposed", "int8", "bf16_plain", "bf16_packed"} for e in single)
    assert all(v > 0 for e in layouts for v in e["microseconds"].values())
    runs = report["output_block"]["runs"]
    assert [r["rows"] for r in runs] == [1, 3]
    for run in runs:
        assert ("onnxruntime" in run["microseconds"]) == HAS_ORT
        # The same block in every variant: the same numbers up to float rounding.
        assert all(gap < 1e-4 for gap in run["max_abs_difference"].values())
    fused = report["bf16_output_block"]
    if torch.backends.mkldnn.is_available():
        assert [r["rows"] for r in fused] == [1, 3]
        assert all(set(r["microseconds"]) == {"unfused", "fused"} and r["max_abs_difference"] < 0.1 for r in fused)
    keys = report["attention_key_lengths"]
    assert {(r["dtype"], r["keys"]) for r in keys} == {(d, k) for d in ("bfloat16", "float32") for k in (14, 16, 30, 32, 62, 64)}
    assert all(r["microseconds"] > 0 for r in keys)
    assert report["command"] == f"python benchmarks/kernel_choices.py --threads 1 --output {output}"
