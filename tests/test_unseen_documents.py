"""benchmarks/unseen_documents.py on a tiny project: every setting timed unseen and seen."""
import json
import sys
from pathlib import Path

import pytest

from spacy_early_exit.encoder.quantized_linear import BF16Linear

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import shared  # noqa: E402
import unseen_documents  # noqa: E402


def test_every_setting_is_timed_unseen_and_seen(tmp_path):
    shared.tiny_project(tmp_path / "project", "tiny")
    output = tmp_path / "unseen.json"
    unseen_documents.main("tiny", target=2.0, batch_size=2, slice_docs=2, slices=1, threads=1,
                          project=tmp_path / "project", output=output, settings=",".join(unseen_documents.SETTINGS))
    report = json.loads(output.read_text(encoding="utf8"))
    assert [r["setting"] for r in report["rows"]] == list(unseen_documents.SETTINGS)
    assert all(r["words_per_second"]["unseen"] > 0 and r["words_per_second"]["seen"] > 0 for r in report["rows"])
    assert BF16Linear.bucket_rows  # switched back on


def test_too_few_documents_is_one_clear_error(tmp_path):
    import typer

    shared.tiny_project(tmp_path / "project", "tiny")
    with pytest.raises(typer.BadParameter, match="test docs"):
        unseen_documents.main("tiny", target=2.0, batch_size=2, slice_docs=1000, slices=1, threads=1,
                              project=tmp_path / "project", output=tmp_path / "x.json", settings="int8")


def test_settings_can_be_chosen(tmp_path):
    import typer

    shared.tiny_project(tmp_path / "project", "tiny")
    output = tmp_path / "unseen.json"
    unseen_documents.main("tiny", target=2.0, batch_size=2, slice_docs=2, slices=1, threads=1,
                          project=tmp_path / "project", output=output, settings="int8,int8-ort")
    report = json.loads(output.read_text(encoding="utf8"))
    assert [r["precision"] for r in report["rows"]] == ["int8", "int8-ort"] and "--settings" in report["command"]
    with pytest.raises(typer.BadParameter, match="--settings"):
        unseen_documents.main("tiny", target=2.0, batch_size=2, slice_docs=2, slices=1, threads=1,
                              project=tmp_path / "project", output=output, settings="fp16")
