"""Every CLI command fails on a wrong pipeline path with one line naming it."""
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List

import pytest
import spacy
import typer.main
from spacy.tokens import DocBin
from typer.testing import CliRunner

from spacy_early_exit.cli import app
from spacy_early_exit.loading import PipelineError, check_pipeline_dir, check_pipeline_name, load_pipeline

COMMANDS = sorted(typer.main.get_command(app).commands)
# The commands that share cli._fail's format ("Error: ...", status 2); annotate
# has its own module and prefix ("annotate: error: ...", status 2 too).
SHARED_FORMAT = {"evaluate", "calibrate", "tune", "sweep", "visualize", "migrate"}
OWN_PREFIX = {"annotate": "annotate: error: "}


def command_args(name: str, pipeline: Path, tmp_path: Path) -> List[str]:
    """The command with `pipeline` first and a placeholder for every other required parameter.

    Inputs exist (a data file must not be the first thing that fails) and
    outputs do not, so a wrong pipeline path is what the command meets first.
    """
    command = typer.main.get_command(app).commands[name]
    args = [name, str(pipeline)]
    # Required parameters, and arguments that take any number of values (texts).
    wanted = [p for p in command.params if p.required or (p.param_type_name == "argument" and p.nargs == -1)][1:]
    for param in wanted:
        if param.param_type_name == "option":
            args += [param.opts[0], str(tmp_path / f"out-{param.name}")]
        elif "output" in param.name:
            args.append(str(tmp_path / f"out-{param.name}.jsonl"))
        elif param.nargs == -1:
            args.append("Ada Lovelace lived in London.")
        else:
            placeholder = tmp_path / f"{param.name}.spacy"
            placeholder.write_bytes(DocBin().to_bytes())  # a valid, empty corpus
            args.append(str(placeholder))
    return args


def make_missing(tmp_path: Path) -> Path:
    return tmp_path / "no" / "such" / "pipeline"


def make_empty_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def make_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.bin"
    path.write_text("not a pipeline")
    return path


def make_config_only(tmp_path: Path) -> Path:
    folder = tmp_path / "half"
    folder.mkdir()
    (folder / "config.cfg").write_text("[nlp]\nlang = \"en\"\n")
    return folder


BAD_PATHS: Dict[str, Callable[[Path], Path]] = {
    "missing": make_missing,
    "empty-folder": make_empty_dir,
    "file": make_file,
    "no-meta": make_config_only,
}
MESSAGES = {
    "missing": "No such pipeline folder",
    "empty-folder": "Not a spaCy pipeline folder",
    "file": "Not a pipeline folder (it is a file)",
    "no-meta": "Not a spaCy pipeline folder (no meta.json)",
}


def test_every_command_is_covered():
    assert SHARED_FORMAT | set(OWN_PREFIX) == set(COMMANDS)


@pytest.mark.parametrize("kind", sorted(BAD_PATHS))
@pytest.mark.parametrize("command", COMMANDS)
def test_bad_pipeline_path_fails_in_one_line(command, kind, tmp_path):
    pipeline = BAD_PATHS[kind](tmp_path)
    result = CliRunner().invoke(app, command_args(command, pipeline, tmp_path))
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(pipeline) in lines[0], result.output
    assert "Traceback" not in result.output
    assert result.exit_code == 2
    prefix = OWN_PREFIX.get(command, "Error: ")
    assert lines[0].startswith(f"{prefix}{MESSAGES[kind]}"), lines[0]


@pytest.mark.parametrize("command", sorted(SHARED_FORMAT - {"calibrate", "migrate"}))
def test_a_pipeline_without_early_exit_fails_in_one_line(command, tmp_path):
    # calibrate only checks the folder (it loads the pipeline itself, once);
    # migrate only rewrites config files.
    folder = tmp_path / "blank"
    spacy.blank("en").to_disk(folder)
    result = CliRunner().invoke(app, command_args(command, folder, tmp_path))
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"Error: The pipeline {folder} has no early-exit component (its pipes: [])"
    ]


def test_missing_data_file_is_one_line_too(trained_ner, tmp_path):
    trained_ner.to_disk(tmp_path / "pipeline")
    missing = tmp_path / "dev.spacy"
    result = CliRunner().invoke(app, ["sweep", str(tmp_path / "pipeline"), str(missing)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"Error: No such data file: {missing}"]


def test_in_a_real_process_there_is_no_traceback(tmp_path):
    missing = tmp_path / "nowhere"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "spacy_early_exit", "evaluate", str(missing), str(tmp_path / "test.spacy")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"Error: No such pipeline folder: {missing}"]
    assert result.stdout == ""


@pytest.mark.parametrize("kind", ["missing", "empty-folder"])
def test_annotate_in_a_real_process_exits_2_in_one_line(kind, tmp_path):
    pipeline = BAD_PATHS[kind](tmp_path)
    source = tmp_path / "in.txt"
    source.write_text("Ada Lovelace lived in London.\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "spacy_early_exit", "annotate", str(pipeline), str(source), str(tmp_path / "out.jsonl")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"annotate: error: {MESSAGES[kind]}") and lines[0].endswith(str(pipeline))
    assert not (tmp_path / "out.jsonl").exists()


def test_check_pipeline_name_lets_an_installed_package_through(tmp_path):
    # Any installed distribution passes spaCy's is_package; spacy.load judges the rest.
    assert check_pipeline_name("spacy") == "spacy"
    with pytest.raises(PipelineError, match="No such pipeline folder: no_such_pipeline_package"):
        check_pipeline_name("no_such_pipeline_package")
    (tmp_path / "spacy").mkdir()  # a folder of that name wins over the package
    with pytest.raises(PipelineError, match="Not a spaCy pipeline folder"):
        check_pipeline_name(tmp_path / "spacy")


def test_load_pipeline_checks_before_spacy(tmp_path, trained_ner):
    with pytest.raises(PipelineError, match="No such pipeline folder"):
        check_pipeline_dir(tmp_path / "x")
    trained_ner.to_disk(tmp_path / "ok")
    assert check_pipeline_dir(tmp_path / "ok") == tmp_path / "ok"
    nlp = load_pipeline(tmp_path / "ok", config={"components.tokee_ner.threshold": 0.3})
    assert nlp.get_pipe("tokee_ner").threshold == 0.3
    # A bad override is spaCy's (or the pipe's) error, kept to one line naming the path.
    with pytest.raises(PipelineError, match="Cannot load the pipeline .*ok"):
        load_pipeline(tmp_path / "ok", config={"components.tokee_ner.threshold": 7})
