"""Threads and training progress: the ProgressLogger, the thread cap, the project's threads var."""
import io
import subprocess
import sys
from pathlib import Path

import pytest
import spacy
import srsly
import torch

from spacy_early_exit.annotate.progress import Progress as AnnotateProgress
from spacy_early_exit.loggers import Progress, evaluations_left, format_duration, make_progress_logger
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


def tick(progress: Progress, clock: FakeClock, seconds: float, times: int = 1, evaluated: bool = False) -> None:
    for _ in range(times):
        clock.now += seconds
        progress.tick(evaluated=evaluated)


def test_progress_line_has_rate_and_eta():
    clock = FakeClock()
    progress = Progress(max_steps=100, clock=clock)
    assert progress.line() == "step 0/100 (0%) | ? updates/s | ETA ? (to max_steps)"
    tick(progress, clock, 0.4, 25)
    assert progress.line() == "step 25/100 (25%) | 2.50 updates/s | ETA 30s (to max_steps)"
    assert Progress(0, clock).line().startswith("step 0 | ")


def test_a_load_change_shows_in_the_eta_within_the_window():
    # Another job takes a core: updates go from 0.4 s to 4 s. An average since
    # the start would still say ~1 update/s after 20 slow ones; the recent
    # rate says 0.25 at once, and the ETA follows it.
    clock = FakeClock()
    progress = Progress(max_steps=200, clock=clock, window=20)
    tick(progress, clock, 0.4, 100)
    assert progress.line() == "step 100/200 (50%) | 2.50 updates/s | ETA 40s (to max_steps)"
    tick(progress, clock, 4.0, 10)
    # Half the window is slow already: (10 x 0.4 + 10 x 4) / 20 = 2.2 s per update.
    assert progress.line() == "step 110/200 (55%) | 0.45 updates/s | ETA 3m18s (to max_steps)"
    tick(progress, clock, 4.0, 10)
    assert progress.line() == "step 120/200 (60%) | 0.25 updates/s | ETA 5m20s (to max_steps)"


def test_evaluations_are_kept_out_of_the_rate_and_added_to_the_eta():
    clock = FakeClock()
    progress = Progress(max_steps=100, clock=clock, eval_frequency=25)
    # spaCy evaluates after the first update (index 0): update and evaluation 10 s.
    tick(progress, clock, 10.0, evaluated=True)
    tick(progress, clock, 0.5, 24)
    # The update at index 25 brings the next evaluation: 0.5 s update + 6 s.
    tick(progress, clock, 6.5, evaluated=True)
    assert progress.seconds_per_update() == 0.5 and progress.eval_seconds == 6.0
    # 74 updates left at 0.5 s, and evaluations at indices 50, 75 and 100 at 6 s.
    assert progress.seconds_left() == pytest.approx(74 * 0.5 + 3 * 6.0)
    assert progress.line() == "step 26/100 (26%) | 2.00 updates/s | ETA 55s (to max_steps)"


@pytest.mark.parametrize(
    "done,max_steps,frequency,left",
    [(0, 100, 25, 5), (1, 100, 25, 4), (25, 100, 25, 4), (26, 100, 25, 3), (101, 100, 25, 0), (10, 100, 0, 0), (99, 99, 33, 1)],
)
def test_evaluations_left(done, max_steps, frequency, left):
    assert evaluations_left(done, max_steps, frequency) == left


def test_annotate_progress_shows_the_recent_throughput_and_the_time_left():
    stream = io.StringIO()
    progress = AnnotateProgress(total=1000, stream=stream, every=10.0, started=100.0)
    progress.docs, progress.words = 500, 5000
    # The first line covers the run so far: 500 docs in 10 s.
    assert progress.line(110.0).startswith("500/1,000 docs (50%)  50 docs/s  500 words/s  ETA 10s  ")
    progress._last_report, progress._last_docs, progress._last_words = 110.0, 500, 5000
    progress.docs, progress.words = 600, 6000
    # Then the machine slows down: 100 docs in the next 10 s, not the average of 30/s.
    assert progress.line(120.0).startswith("600/1,000 docs (60%)  10 docs/s  100 words/s  ETA 40s  ")
    progress.docs = 1000
    assert "ETA" not in progress.line(130.0)


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
    assert project["vars"]["threads"] == "auto"
    for command in project["commands"]:
        for line in command["script"]:
            if "scripts/train.py" in line:
                assert "--threads ${vars.threads}" in line, command["name"]
            if "spacy_early_exit" in line:
                assert line.startswith("python -m spacy_early_exit --threads ${vars.threads} "), command["name"]


def test_annotate_rate_starts_at_the_first_document(monkeypatch):
    # 25 s of start-up (Ray actors) and then 10 docs in 1 s: the first line
    # must say ~10 docs/s and a matching ETA, not 10 docs over 26 s.
    import io

    from spacy_early_exit.annotate import progress as module

    clock = iter([25.0] + [25.0 + 0.1 * i for i in range(1, 11)])
    monkeypatch.setattr(module.time, "perf_counter", lambda: next(clock))
    stream = io.StringIO()
    progress = AnnotateProgress(total=110, stream=stream, every=1.0, started=0.0)
    for _ in range(11):
        progress.add({"exit_layers": [1, 2], "flops": 1, "full_flops": 2})
    line = stream.getvalue().strip().splitlines()[-1]
    assert "10 docs/s" in line and "ETA 10s" in line, line
