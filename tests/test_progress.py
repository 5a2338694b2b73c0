"""Threads and training progress: the ProgressLogger, the thread cap, the project's threads var."""
import io
import subprocess
import sys
from pathlib import Path

import pytest
import spacy
import srsly
import torch

from spacy_early_exit.loggers import Progress, format_duration, make_progress_logger
from spacy_early_exit.threads import environment_cap, set_torch_threads

PROJECT = Path(__file__).parent.parent / "project"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (42.4, "42s"), (187, "3m07s"), (3900, "1h05m"), (-3, "0s")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_progress_line_has_rate_and_eta():
    clock = FakeClock()
    progress = Progress(max_steps=100, clock=clock)
    for _ in range(25):
        progress.tick()
    clock.now = 10.0
    assert progress.line() == "step 25/100 (25%) | 2.50 updates/s | ETA 30s (to max_steps)"
    # A slow spell shows in the recent rate at once; the ETA uses the average.
    for _ in range(25):
        progress.tick()
    clock.now = 60.0
    assert progress.line() == "step 50/100 (50%) | 0.50 updates/s | ETA 1m00s (to max_steps)"
    assert Progress(0, clock).line().startswith("step 0 | ")


def eval_info(step: int) -> dict:
    return {"epoch": 0, "step": step, "score": 0.5, "other_scores": {}, "losses": {}, "checkpoints": [], "seconds": 1, "words": 10}


def test_logger_prints_a_line_every_n_updates_between_evaluations():
    nlp = spacy.blank("en")
    nlp.config["training"]["max_steps"] = 100
    stdout = io.StringIO()
    log_step, finalize = make_progress_logger(progress_every=10)(nlp, stdout, io.StringIO())
    log_step(eval_info(0))  # spaCy evaluates after the first update
    for _ in range(28):
        log_step(None)
    log_step(eval_info(29))  # the 30th update is an evaluation: its row, no progress line
    finalize()
    lines = [line for line in stdout.getvalue().splitlines() if "progress:" in line]
    assert [line.split("|")[0].strip() for line in lines] == ["progress: step 10/100 (10%)", "progress: step 20/100 (20%)"]
    assert all("updates/s" in line and "ETA" in line for line in lines)
    # spaCy's own table is still there: its header and a row per evaluation.
    assert "E    #" in stdout.getvalue()


def test_logger_is_quiet_when_asked():
    nlp = spacy.blank("en")
    stdout = io.StringIO()
    log_step, _ = make_progress_logger(progress_every=0)(nlp, stdout, io.StringIO())
    for _ in range(50):
        log_step(None)
    assert "progress:" not in stdout.getvalue()
    with pytest.raises(ValueError, match="progress_every"):
        make_progress_logger(progress_every=-1)


def test_the_project_configs_use_it_and_it_resolves_through_the_entry_point():
    for name in ("ner", "tagger", "segmenter"):
        text = (PROJECT / "configs" / f"{name}.cfg").read_text()
        assert '@loggers = "spacy-early-exit.ProgressLogger.v1"' in text
    code = (
        "from spacy.util import registry; "
        "f = registry.loggers.get('spacy-early-exit.ProgressLogger.v1'); assert callable(f(progress_every=5))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_thread_cap_from_the_environment(monkeypatch):
    previous = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        monkeypatch.setenv("MKL_NUM_THREADS", "junk")
        assert environment_cap() == 1
        assert set_torch_threads(2) == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.delenv("MKL_NUM_THREADS")
        assert environment_cap() is None
        assert set_torch_threads(2) == 2
        assert set_torch_threads(0) == 2  # 0 leaves torch's setting alone
        with pytest.raises(ValueError, match="threads must be >= 0; got -1"):
            set_torch_threads(-1)
    finally:
        torch.set_num_threads(previous)


def test_every_project_step_gets_the_threads_var():
    project = srsly.read_yaml(PROJECT / "project.yml")
    assert project["vars"]["threads"] == 2
    for command in project["commands"]:
        for line in command["script"]:
            if "scripts/train.py" in line:
                assert "--threads ${vars.threads}" in line, command["name"]
            if "spacy_early_exit" in line:
                assert line.startswith("python -m spacy_early_exit --threads ${vars.threads} "), command["name"]
