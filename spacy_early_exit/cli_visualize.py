"""``python -m spacy_early_exit visualize``: the exit picture of a few texts.

Kept apart from cli.py so that the command is one registration line there.
"""
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer

from .cli_checks import _check_pipeline, _fail, _load_pipeline, _write


def visualize_command(
    pipeline: Path = typer.Argument(..., help="Trained pipeline folder"),
    texts: Optional[List[str]] = typer.Argument(None, help="Texts to run (or --file)"),
    file: Optional[Path] = typer.Option(None, "--file", help="A UTF-8 text file: one text per line, blank lines skipped"),
    output: Path = typer.Option(Path("exits.html"), "--output", help="The HTML page to write"),
    component: Optional[str] = typer.Option(None, "--component", help="Early-exit component to show (default: the pipeline's last one)"),
    config: Optional[Path] = typer.Option(None, "--config", help="Overrides applied at load time, e.g. a tuned metrics/<dataset>/configs/2x.json"),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Exit threshold for this run (clears per-layer thresholds)"),
    window: Optional[int] = typer.Option(None, "--window", min=0, help="TOKEE window for this run"),
    labels: str = typer.Option("auto", "--labels", help="auto, ents, tags or none"),
    screenshot: Optional[Path] = typer.Option(None, "--screenshot", help="Also save a PNG of the page (needs Chromium)"),
    width: int = typer.Option(1000, "--width", min=200, help="Screenshot width in pixels"),
    height: int = typer.Option(700, "--height", min=100, help="Screenshot height in pixels"),
) -> None:
    """Write an HTML page with each token shaded by the layer at which it exited."""
    from .tools.evaluate import early_exit_pipes
    from .tools.visualize import LABEL_MODES, exit_setting, render, screenshot as save_screenshot

    _check_pipeline(pipeline)
    if labels not in LABEL_MODES:
        _fail(f"--labels must be one of {', '.join(LABEL_MODES)}; got {labels!r}")
    lines = list(texts or [])
    if file is not None:
        if not file.is_file():
            _fail(f"No such text file: {file}")
        lines += [line for line in file.read_text(encoding="utf8").splitlines() if line.strip()]
    if not lines:
        _fail("Nothing to show: give texts after the pipeline, or --file")
    if config is not None and not config.is_file():
        _fail(f"No such config file: {config}")
    overrides = json.loads(config.read_text(encoding="utf8")) if config else None
    nlp = _load_pipeline(pipeline, overrides)
    pipes = dict(early_exit_pipes(nlp))
    name = component or list(pipes)[-1]
    if name not in pipes:
        _fail(f"No early-exit component {name!r} in {pipeline}; it has {list(pipes)}")
    run_overrides: Dict[str, Any] = {}
    if threshold is not None:
        pipes[name].thresholds, pipes[name].threshold = None, threshold
        run_overrides["threshold"] = threshold
    if window is not None:
        pipes[name].window = window
        run_overrides["window"] = window
    keys = list(overrides or {}) if isinstance(overrides, dict) else []
    setting = exit_setting(
        nlp, name, pipeline=pipeline, config=config,
        config_keys=[key for key in keys if key.startswith(f"components.{name}.")] or keys, run_overrides=run_overrides,
    )
    page = render(
        list(nlp.pipe(lines)), component=name, num_layers=pipes[name].num_layers, labels=labels,
        title=f"Early exits: {pipeline.name}", setting=setting,
    )
    _write(output, page)
    if screenshot is not None:
        try:
            typer.echo(f"Wrote {save_screenshot(output, screenshot, width, height)}")
        except RuntimeError as err:
            _fail(str(err))
