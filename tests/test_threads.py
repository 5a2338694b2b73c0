"""threads = auto: busy cores from /proc/stat, the setting's parsing, the passive wait policy, --stop-after."""
import importlib.util
import io
import itertools
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import spacy
import torch
import typer
from spacy.tokens import DocBin
from typer.testing import CliRunner

from spacy_early_exit import threads
from spacy_early_exit.cli import app
from spacy_early_exit.cli_annotate import per_worker_threads
from spacy_early_exit.testing import ner_examples
from spacy_early_exit.threads import (
    AUTO,
    AutoChoice,
    apply_threads,
    busy_cores,
    count_busy,
    measure_busy,
    parse_cpu_times,
    parse_threads,
)

PROJECT = Path(__file__).parent.parent / "project"
# Two samples of a 2-core machine 100 jiffies apart per core: core 0 idle
# (98 of 100 idle), core 1 busy (95 of 100 in user time, 2 in iowait).
STAT_BEFORE = """cpu  1100 0 200 5000 10 0 0 0 0 0
cpu0 100 0 100 4000 5 0 0 0 0 0
cpu1 1000 0 100 1000 5 0 0 0 0 0
intr 12345 0 0
ctxt 99
"""
STAT_AFTER = """cpu  1197 0 201 5100 12 0 0 0 0 0
cpu0 102 0 100 4098 5 0 0 0 0 0
cpu1 1095 0 101 1002 7 0 0 0 5 0
intr 12999 0 0
ctxt 120
"""


@pytest.fixture
def torch_setting():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def load_train_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_script_threads", PROJECT / "scripts" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_times_are_per_core_busy_and_total():
    times = parse_cpu_times(STAT_BEFORE)
    # The aggregate "cpu" line is left out; idle + iowait are the idle time.
    assert times == {0: (200, 4205), 1: (1100, 2105)}


def test_busy_cores_from_two_samples():
    before, after = parse_cpu_times(STAT_BEFORE), parse_cpu_times(STAT_AFTER)
    load = busy_cores(before, after)
    # core 0: 2 busy of 100; core 1: 96 busy of 100 (guest time is not counted twice).
    assert load == pytest.approx(0.02 + 0.96)
    assert count_busy(load) == 1
    # Only the cores of this process's affinity count.
    assert busy_cores(before, after, cores=[0]) == pytest.approx(0.02)
    assert busy_cores(before, after, cores=[1, 7]) == pytest.approx(0.96)
    # No time passed: nothing measured, nothing busy.
    assert busy_cores(before, before) == 0.0


@pytest.mark.parametrize("load,busy", [(0.0, 0), (0.3, 0), (0.59, 0), (0.6, 1), (1.02, 1), (1.7, 2), (-1.0, 0)])
def test_a_core_counts_as_busy_from_60_percent(load, busy):
    assert count_busy(load) == busy


def test_measure_busy_sleeps_between_two_samples(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    stat.write_text(STAT_BEFORE)
    monkeypatch.setattr(threads, "PROC_STAT", str(stat))
    # The second sample is written while this process sleeps.
    monkeypatch.setattr(threads.time, "sleep", lambda seconds: stat.write_text(STAT_AFTER))
    assert measure_busy((0, 1)) == (1, str(stat))
    stat.write_text(STAT_BEFORE)
    assert measure_busy((0,)) == (0, str(stat))


def test_without_proc_stat_the_load_average_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "PROC_STAT", str(tmp_path / "missing"))
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.1, 0.5, 0.2))
    assert measure_busy((0, 1)) == (1, "load average")
    # Never more busy cores than this process may use.
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (7.0, 0.5, 0.2))
    assert measure_busy((0, 1)) == (2, "load average")
    assert AutoChoice(cores=2, busy=2, source="load average").threads == 1


@pytest.mark.parametrize("value,setting", [("auto", AUTO), ("AUTO", AUTO), (" auto ", AUTO), ("2", 2), (0, 0), ("0", 0)])
def test_parse_threads(value, setting):
    assert parse_threads(value) == setting


@pytest.mark.parametrize("value", ["-1", "two", "", "1.5", -3])
def test_parse_threads_rejects(value):
    with pytest.raises(ValueError, match="threads must be 'auto' or an integer >= 0"):
        parse_threads(value)


def test_auto_takes_the_free_cores_and_says_so(monkeypatch, torch_setting):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "allowed_cores", lambda: (0, 1))
    monkeypatch.setattr(threads, "measure_busy", lambda cores, seconds=0.4: (1, threads.PROC_STAT))
    out = io.StringIO()
    assert apply_threads("auto", stream=out) == 1 == torch.get_num_threads()
    assert out.getvalue() == "torch threads: 1 (auto: 1 of 2 cores busy)\n"
    monkeypatch.setattr(threads, "measure_busy", lambda cores, seconds=0.4: (0, "load average"))
    out = io.StringIO()
    assert apply_threads("auto", stream=out) == 2
    assert out.getvalue() == "torch threads: 2 (auto: 0 of 2 cores busy, from the load average)\n"
    # An explicit count is used as given, with no note.
    out = io.StringIO()
    assert apply_threads(1, stream=out) == 1 and out.getvalue() == "torch threads: 1\n"


def test_the_environment_caps_auto_without_sampling(monkeypatch, torch_setting):
    monkeypatch.setattr(threads, "allowed_cores", lambda: (0, 1, 2, 3))

    def no_sampling(cores, seconds=0.4):
        raise AssertionError("a cap of 1 needs no sample")

    monkeypatch.setattr(threads, "measure_busy", no_sampling)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = io.StringIO()
    assert apply_threads("auto", stream=out) == 1
    assert out.getvalue() == "torch threads: 1 (auto: capped at 1 by OMP_NUM_THREADS/MKL_NUM_THREADS)\n"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(threads, "measure_busy", lambda cores, seconds=0.4: (1, threads.PROC_STAT))
    out = io.StringIO()
    assert apply_threads("auto", stream=out) == 2
    assert out.getvalue() == "torch threads: 2 (auto: 1 of 4 cores busy; capped at 2 by OMP_NUM_THREADS/MKL_NUM_THREADS)\n"


def test_the_cli_takes_auto_or_a_count(monkeypatch, torch_setting, tmp_path):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runner = CliRunner()
    bad = runner.invoke(app, ["--threads", "many", "migrate", str(tmp_path / "none")])
    assert bad.exit_code == 2 and "--threads" in bad.output and "'many'" in bad.output, bad.output
    # auto is the default; the command itself then fails on the missing path,
    # with its one error line and no thread line (stderr is not a terminal).
    for args in ([], ["--threads", "auto"], ["--threads", "2"]):
        result = runner.invoke(app, [*args, "migrate", str(tmp_path / "none")])
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
        assert torch.get_num_threads() == 1


def test_annotate_threads_per_worker():
    assert per_worker_threads("auto") is None
    assert per_worker_threads("3") == 3
    for bad in ("0", "x", "-2"):
        with pytest.raises(typer.BadParameter, match="'auto' or an integer >= 1"):
            per_worker_threads(bad)


WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def test_importing_the_package_sets_a_short_spin_before_torch():
    env = {key: value for key, value in os.environ.items() if key not in WAIT_VARIABLES}
    code = (
        "import os, sys; import spacy_early_exit; assert 'torch' not in sys.modules; "
        "spin = os.environ.get('GOMP_SPINCOUNT'); import torch; print(spin)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "3000", result.stderr
    # A wait policy or a spin count the user set wins.
    for variable, value, expected in (("OMP_WAIT_POLICY", "PASSIVE", "None"), ("GOMP_SPINCOUNT", "7", "7")):
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env={**env, variable: value}, timeout=120
        )
        assert result.returncode == 0 and result.stdout.strip() == expected, result.stderr


def test_the_train_script_loads_the_package_before_torch():
    env = {key: value for key, value in os.environ.items() if key not in WAIT_VARIABLES}
    # sys.modules keeps import order: the package must come before torch.
    code = (
        "import importlib.util, os, sys; "
        f"spec = importlib.util.spec_from_file_location('train_script', {str(PROJECT / 'scripts' / 'train.py')!r}); "
        "spec.loader.exec_module(importlib.util.module_from_spec(spec)); "
        "names = list(sys.modules); "
        "print(names.index('spacy_early_exit') < names.index('torch'), os.environ['GOMP_SPINCOUNT'])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.split() == ["True", "3000"], result.stderr


def test_stop_after_keeps_the_schedule_of_the_whole_budget():
    from spacy.util import load_config, registry

    script = load_train_script()
    assert script.stop_overrides(600, 0, 100) == {}
    overrides = script.stop_overrides(600, 300, 100)
    assert overrides == {"training.max_steps": 300, "training.optimizer.learn_rate.total_steps": 600}
    for bad in (250, 700, -100):
        with pytest.raises(typer.BadParameter, match="--stop-after"):
            script.stop_overrides(600, bad, 100)

    def rates(extra: dict) -> list:
        config = load_config(PROJECT / "configs" / "ner.cfg", overrides={"training.max_steps": 600, **extra}, interpolate=True)
        schedule = registry.resolve({"s": config["training"]["optimizer"]["learn_rate"]})["s"]
        return list(itertools.islice(schedule, 301))

    # Every update up to the stop gets the learning rate of the full run.
    assert rates(overrides) == rates({})


def write_tiny_corpus(folder: Path) -> Path:
    folder.mkdir()
    nlp = spacy.blank("en")
    docs = [example.reference for example in ner_examples(nlp)]
    for split in ("train", "dev"):
        DocBin(docs=docs * 4).to_disk(folder / f"{split}.spacy")
    (folder / "meta.json").write_text('{"dataset": "tiny", "task": "ner", "lang": "en"}')
    return folder


def test_train_stops_after_the_evaluation_of_update_n(tiny_model_dir, tmp_path):
    corpus = write_tiny_corpus(tmp_path / "corpus")
    output = tmp_path / "out"
    args = [
        sys.executable, str(PROJECT / "scripts" / "train.py"), str(corpus), str(output), "--backbone", str(tiny_model_dir),
        "--max-steps", "8", "--eval-frequency", "2", "--stop-after", "4", "--batch-size", "4", "--threads", "auto",
        "--configs", str(PROJECT / "configs"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "torch threads: 1 (auto: capped at 1 by OMP_NUM_THREADS/MKL_NUM_THREADS)" in result.stdout
    # spaCy's table has a row per evaluation: updates 0, 2 and 4, and no later one.
    steps = [int(line.split()[1]) for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert steps == [0, 2, 4], result.stdout
    for name in ("model-best", "model-last"):
        config = spacy.util.load_config(output / name / "config.cfg")
        assert config["training"]["max_steps"] == 4
        assert config["training"]["optimizer"]["learn_rate"]["total_steps"] == 8
