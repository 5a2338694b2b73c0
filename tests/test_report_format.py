"""What the reports print: the evaluate table's empty cells, the sweep plot's title and full-depth label."""
import json
from typing import Any, Dict, List

import pytest

from spacy_early_exit.tools.evaluate import format_table
from spacy_early_exit.tools.plotting import full_depth_label, plot_sweep, sweep_meta, sweep_title

DASH = "\u2013"


def row(method: str, window, threshold) -> Dict[str, Any]:
    return {
        "method": method, "score": 63.01, "flops_speedup": 1.0, "mean_exit_layer": 6.0,
        "wall_speedup": {"1": 1.0}, "words_per_second": {"1": 1000.0}, "window": window, "threshold": threshold,
    }


def test_evaluate_table_prints_a_dash_where_a_field_does_not_apply():
    table = format_table([row("full", None, None), row("tokee-2x", 1, 0.2)], "ents_f")
    lines = table.splitlines()
    assert "None" not in table
    assert lines[2].endswith(f"| 6.00 | {DASH} | {DASH} |")
    assert lines[3].endswith("| 6.00 | 1 | 0.2 |")


def test_window_zero_is_not_a_missing_value():
    assert format_table([row("tokee", 0, 0.1)], "ents_f").splitlines()[2].endswith("| 0 | 0.1 |")


META = {
    "pipeline": "training/uner_en_ewt/final", "data": "corpus/uner_en_ewt/test.spacy",
    "limit": 600, "n_docs": 600, "window": 2,
}


def test_title_names_the_pipeline_corpus_window_and_docs():
    assert sweep_title(META) == "uner_en_ewt/final on uner_en_ewt/test\nTOKEE window 2, 600 docs"
    assert sweep_title({}) == ""


def test_full_depth_label_says_when_it_is_a_subset():
    assert full_depth_label(META) == "full depth (on this 600-doc subset)"
    assert full_depth_label({**META, "limit": 0, "n_docs": 2077}) == "full depth (2077 docs)"
    assert full_depth_label({}) == "full"


ROWS: List[Dict[str, Any]] = [
    {"method": "full", "layer": None, "score": 60.26, "flops_speedup": 1.0},
    {"method": "tokee", "layer": None, "score": 58.0, "flops_speedup": 2.0},
    {"method": "static-3", "layer": 3, "score": 55.0, "flops_speedup": 2.0},
]


@pytest.fixture
def drawn(monkeypatch) -> Dict[str, Any]:
    """The title and legend entries of the next figure plot_sweep saves."""
    from matplotlib.figure import Figure

    seen: Dict[str, Any] = {}
    save = Figure.savefig

    def spy(self, *args, **kwargs):
        axes = self.axes[0]
        seen["title"] = axes.get_title()
        seen["legend"] = [text.get_text() for text in axes.get_legend().get_texts()]
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return seen


def test_the_plot_reads_its_title_from_the_report_beside_it(tmp_path, drawn):
    # write_sweep writes sweep.json first, then draws sweep.png from the rows.
    (tmp_path / "sweep.json").write_text(json.dumps({**META, "metric": "ents_f", "rows": ROWS}), encoding="utf8")
    plot_sweep(ROWS, tmp_path / "sweep.png", "ents_f")
    assert drawn["title"] == sweep_title(META)
    assert "full depth (on this 600-doc subset)" in drawn["legend"]
    assert sweep_meta(tmp_path / "sweep.png")["n_docs"] == 600


def test_an_explicit_title_and_meta_win(tmp_path, drawn):
    plot_sweep(ROWS, tmp_path / "p.png", "ents_f", title="mine", meta={"n_docs": 5})
    assert drawn["title"] == "mine" and "full depth (5 docs)" in drawn["legend"]


def test_a_tuned_sweep_plot_names_the_families_and_marks_the_tuned_points(tmp_path, drawn):
    families = [{"method": "tokee-2x", "window": 1, "min_layer": 1, "slope": 2.0, "max_layer": None, "stage": 1}]
    meta = {"pipeline": "training/x/final", "tuned": "metrics/x/tune.json", "families": families, "n_docs": 5}
    rows = ROWS[:1] + [
        {"method": "tokee-2x", "layer": None, "score": 57.0, "flops_speedup": 1.5},
        {"method": "tokee-2x", "layer": None, "score": 56.0, "flops_speedup": 2.5},
        {"method": "tuned-2x", "layer": None, "score": 56.5, "flops_speedup": 2.05},
    ]
    plot_sweep(rows, tmp_path / "p.png", "ents_f", meta=meta)
    assert "the tuned schedules of x/tune" in drawn["title"]
    assert "TOKEE 2x schedule (w1, from layer 1, slope 2, stage 1)" in drawn["legend"]
    assert "tuned on dev (scored here)" in drawn["legend"] and "TOKEE" not in drawn["legend"]
