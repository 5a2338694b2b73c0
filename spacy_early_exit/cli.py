"""Command-line tools: ``python -m spacy_early_exit COMMAND``."""
import json
import platform
from pathlib import Path
from typing import Any, Dict, List, NoReturn, Optional

import typer

app = typer.Typer(no_args_is_help=True, help="Early-exit sequence labeling for spaCy")


@app.callback()
def _options(
    threads: str = typer.Option("auto", "--threads", help="torch threads for the command: auto (the cores not busy at start), a count, or 0 for torch's default; OMP_NUM_THREADS caps it"),
) -> None:
    """Options before the command name, shared by every command."""
    import sys

    from .threads import apply_threads, parse_threads

    try:
        setting = parse_threads(threads)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--threads") from None
    # The chosen count goes to a terminal only: commands promise one error line
    # on stderr and nothing else, which scripts and tests rely on.
    apply_threads(setting, stream=sys.stderr if sys.stderr.isatty() else None)


def _fail(message: str) -> NoReturn:
    """Print one error line (no traceback, no usage box that wraps long paths) and exit with status 2."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(2)


def _check_pipeline(path: Path) -> Path:
    """Fail in one line unless `path` is a pipeline folder (see loading.check_pipeline_dir)."""
    from .loading import PipelineError, check_pipeline_dir

    try:
        return check_pipeline_dir(path)
    except PipelineError as err:
        _fail(str(err))


def _write(path: Path, text: str) -> None:
    """Write an output file (making its folder) and say where it went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf8")
    typer.echo(f"Wrote {path}")


def _check_precision(value: str) -> str:
    """Fail in one line on a precision that is not one of the known ones."""
    from .encoder.precision import validate_precision

    try:
        return validate_precision(value)
    except ValueError as err:
        _fail(str(err))


def _load_pipeline(path: Path, config: Optional[Dict[str, Any]] = None):
    """spacy.load an early-exit pipeline, or fail in one line naming the path."""
    from .loading import PipelineError, load_pipeline

    try:
        return load_pipeline(path, config=config)
    except PipelineError as err:
        _fail(str(err))


def _load_examples(nlp, path: Path, limit: int = 0):
    """Gold examples from a .spacy file (the first `limit`), or fail in one line."""
    from .tools.data import DataFileError, load_examples

    try:
        return load_examples(nlp, path, limit)
    except DataFileError as err:
        _fail(str(err))


@app.command()
def evaluate(
    pipeline: Path = typer.Argument(..., help="Trained pipeline folder"),
    data: Path = typer.Argument(..., help="Evaluation .spacy file (e.g. test)"),
    tuned: Optional[Path] = typer.Option(None, help="A `tune` report, or the stage choice's (project/scripts/choose_stage.py): evaluate each reachable target's setting on the pipeline it names, and the static cuts around it"),
    tune_data: Optional[Path] = typer.Option(None, help="Without --tuned: held-out .spacy file on which a TOKEE threshold is chosen per --speedup (never the test set)"),
    speedup: List[float] = typer.Option([2.0], help="Target FLOPs speed-ups for TOKEE (with --tune-data)"),
    window: int = typer.Option(2, help="TOKEE window k (with --tune-data)"),
    metric: Optional[str] = typer.Option(None, help="Score to report (default: the component's main score)"),
    batch_sizes: str = typer.Option("1,32", help="Batch sizes to time, comma separated"),
    repeats: int = typer.Option(5, help="Timing repetitions (median kept)"),
    timing_docs: int = typer.Option(0, help="Time on the first N docs only (0: all)"),
    output: Optional[Path] = typer.Option(None, help="Write the rows as JSON here"),
    precision: Optional[str] = typer.Option(None, "--precision", help="Prediction precision: fp32, bf16 or int8 (default: the pipeline's)"),
) -> None:
    """Score a pipeline at full depth, with TOKEE and at the static cuts next to it on test; time them side by side."""
    import torch

    from .tools.evaluate import (
        Setting, by_speedup, compare, format_table, pipeline_stage, report_settings, static_fields,
        bracketing_layers,
    )
    from .tools.measure import flops_speedup, main_metric, threshold_for_speedup
    from .tools.sweep import encoder_depth

    nlp = _load_pipeline(pipeline)
    metric = metric or main_metric(nlp)
    examples = _load_examples(nlp, data)
    num_layers = encoder_depth(nlp)
    # A report from the stage choice names each row's pipeline; load each once.
    loaded = {str(pipeline): nlp}

    def load(path: Optional[str]):
        key = str(path or pipeline)
        if key not in loaded:
            loaded[key] = _load_pipeline(Path(key))
        return loaded[key]

    here = {"stage": pipeline_stage(nlp), "pipeline": str(pipeline)}
    if tuned is not None:
        report = json.loads(tuned.read_text(encoding="utf8"))
        for entry in report["targets"]:
            if not entry["reachable"]:
                typer.echo(f"target {entry['target']}x was not reachable on dev: {entry.get('reason', '')}")
        settings = report_settings(report, load, num_layers, str(pipeline))
    elif tune_data is not None:
        settings = [Setting("full", {"exit_mode": "off"}, info=here)]
        tune_texts = [eg.reference.text for eg in _load_examples(nlp, tune_data)]
        reached = []
        for target in speedup:
            threshold = threshold_for_speedup(nlp, tune_texts, target, "tokee", window)
            if threshold is None:
                typer.echo(f"TOKEE cannot reach {target}x on {tune_data}; skipped")
                continue
            typer.echo(f"TOKEE {target}x on {tune_data.name}: window {window}, threshold {threshold}")
            fields = {"exit_mode": "tokee", "window": window, "threshold": threshold, "thresholds": None}
            settings.append(Setting(f"tokee-{target:g}x", fields, info={**here, "target": target}))
            reached.append(target)
        # The static cuts' speed-ups on the same held-out texts (FLOPs only, no labels).
        statics = [{"layer": k, "flops_speedup": flops_speedup(nlp, tune_texts, static_fields(k, num_layers))} for k in range(1, num_layers)]
        for layer in bracketing_layers(statics, reached):
            info = {**here, "layer": layer, "window": None, "threshold": None}
            settings.append(Setting(f"static-{layer}", static_fields(layer, num_layers), info=info))
    else:
        settings = [Setting("full", {"exit_mode": "off"}, info=here), Setting("tokee", {"exit_mode": "tokee"}, info=here)]
    if precision is not None:
        _check_precision(precision)
        for setting in settings:
            setting.fields = {**setting.fields, "precision": precision}
    timing = [eg.reference.text for eg in examples[: timing_docs or len(examples)]]
    sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    rows = by_speedup(compare(nlp, examples, settings, metric, timing, sizes, repeats))
    typer.echo(format_table(rows, metric))
    if output is not None:
        report = {
            "pipeline": str(pipeline),
            "data": str(data),
            "tuned": str(tuned) if tuned else None,
            "tune_data": str(tune_data) if tune_data else None,
            "metric": metric,
            "precision": precision,
            "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "timing_docs": len(timing),
            "rows": rows,
        }
        _write(output, json.dumps(report, indent=2) + "\n")


@app.command()
def calibrate(
    pipeline: Path = typer.Argument(..., help="Trained pipeline folder"),
    dev_data: Path = typer.Argument(..., help="Dev .spacy file with gold annotation (never the test set)"),
    output: Path = typer.Option(..., "--output", help="Folder for the calibrated pipeline"),
    metrics: Optional[Path] = typer.Option(None, "--metrics", help="Write the JSON report here (e.g. metrics/calibration.json)"),
    limit: int = typer.Option(0, "--limit", min=0, help="Use the first N dev docs only (0: all)"),
    component: Optional[str] = typer.Option(None, "--component", help="Calibrate only this early-exit component (default: all)"),
    precision: Optional[str] = typer.Option(None, "--precision", help="Prediction precision: fp32, bf16 or int8 to fit the temperatures for; written into the saved config"),
) -> None:
    """Fit one temperature per layer on dev data (full depth, minimum NLL) and save the calibrated pipeline."""
    from .tools.calibrate import calibrate_pipeline, format_report

    _check_pipeline(pipeline)
    if not dev_data.exists():
        _fail(f"No such data file: {dev_data}")
    if precision is not None:
        _check_precision(precision)
    report = calibrate_pipeline(pipeline, dev_data, output, component=component, limit=limit, precision=precision)
    typer.echo(format_report(report))
    typer.echo(f"Saved the calibrated pipeline to {output}")
    if metrics is not None:
        _write(metrics, json.dumps(report, indent=2) + "\n")


@app.command()
def tune(
    pipeline: Path = typer.Argument(..., help="Trained pipeline folder"),
    dev_data: Path = typer.Argument(..., help="Dev .spacy file (never the test set)"),
    targets: str = typer.Option("2,3,4", "--targets", help="Target speed-ups (see --cost), comma separated"),
    cost: str = typer.Option("flops", "--cost", help="What a target counts: flops (corpus FLOPs: batches of many docs) or layers (encoder layers per doc: one doc at a time)"),
    windows: str = typer.Option("0,1,2", "--windows", help="TOKEE windows k in the schedule grid, comma separated"),
    min_layers: Optional[str] = typer.Option(None, "--min-layers", help="First exit layers in the schedule grid, comma separated (default: 1 to depth-1)"),
    slopes: str = typer.Option("0.5,1,2", "--slopes", help="Per-layer threshold growth factors in the schedule grid, comma separated"),
    max_layers: Optional[str] = typer.Option(None, "--max-layers", help="Layers by which every token has left, in the schedule grid, comma separated; 0 = no cap (default: 0 for --cost flops, 0 and 2 to depth-1 for --cost layers)"),
    keep: int = typer.Option(3, "--keep", min=1, help="Schedules measured for real per target (best simulated first)"),
    margin: float = typer.Option(0.02, "--margin", min=0.0, max=0.99, help="Relative safety margin on each target: 0.02 tunes 2x to 2.04x on dev"),
    precision: Optional[str] = typer.Option(None, "--precision", help="Prediction precision: fp32, bf16 or int8 to tune for; the chosen settings then set it (default: the pipeline's, not written)"),
    output: Path = typer.Option(Path("metrics/tune.json"), "--output", help="JSON report"),
    limit: int = typer.Option(0, "--limit", min=0, help="Tune on the first N dev docs only (0: all)"),
    metric: Optional[str] = typer.Option(None, "--metric", help="Score to maximize (default: the component's main score)"),
    steps: int = typer.Option(6, "--steps", min=1, help="Most bisection runs per measured schedule and target"),
    write_configs: Optional[Path] = typer.Option(None, "--write-configs", help="Folder for <target>x.json config overrides"),
    pipeline_out: Optional[Path] = typer.Option(None, "--pipeline-out", help="Folder for a <target>x/ pipeline copy per target"),
) -> None:
    """For each target speed-up, find on dev the exit schedule (window, first and last exit layer, threshold per layer) that scores best."""
    import spacy

    from .tools.options import parse_numbers
    from .tools.measure import validate_cost
    from .tools.tune import format_tune_report, tune as tune_pipeline, write_tuned

    if precision is not None:
        _check_precision(precision)
    try:
        target_list = parse_numbers(targets, float, "--targets")
        window_list = parse_numbers(windows, int, "--windows")
        layer_list = parse_numbers(min_layers, int, "--min-layers") if min_layers else None
        slope_list = parse_numbers(slopes, float, "--slopes")
        cap_list = [c or None for c in parse_numbers(max_layers, int, "--max-layers")] if max_layers else None
        validate_cost(cost)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    nlp = _load_pipeline(pipeline)
    examples = _load_examples(nlp, dev_data, limit)
    try:
        report = tune_pipeline(
            nlp, examples, target_list, window_list, metric=metric, steps=steps, progress=True,
            min_layers=layer_list, slopes=slope_list, keep=keep, margin=margin, precision=precision,
            cost=cost, max_layers=cap_list,
        )
    except ValueError as err:
        _fail(str(err))
    write_tuned(nlp, report, write_configs, pipeline_out)
    report = {"pipeline": str(pipeline), "dev_data": str(dev_data), "limit": limit, **report}
    typer.echo(format_tune_report(report))
    _write(output, json.dumps(report, indent=2) + "\n")


@app.command()
def sweep(
    pipeline: Path = typer.Argument(..., help="Trained pipeline folder"),
    data: Path = typer.Argument(..., help=".spacy file to score"),
    output_dir: Path = typer.Option(Path("metrics/sweep"), "--output-dir", help="Folder for sweep.csv, sweep.json, sweep.png"),
    thresholds: Optional[str] = typer.Option(None, "--thresholds", help="Thresholds, comma separated (default: a 0.01-1.0 grid)"),
    window: int = typer.Option(2, "--window", min=0, help="TOKEE window k"),
    min_layer: int = typer.Option(1, "--min-layer", min=1, help="TOKEE's first exit layer (no off-ramp runs below it)"),
    slope: float = typer.Option(1.0, "--slope", min=0.01, help="TOKEE's per-layer threshold growth above --min-layer"),
    limit: int = typer.Option(0, "--limit", min=0, help="Use the first N docs only (0: all)"),
    metric: Optional[str] = typer.Option(None, "--metric", help="Score to report (default: the component's main score)"),
    tuned: Optional[Path] = typer.Option(None, "--tuned", help="A tune report (metrics/<dataset>/tune.json): sweep each tuned target's schedule family (on the pipeline it names) and mark the tuned points, instead of --window/--min-layer/--slope"),
) -> None:
    """Score and FLOPs speed-up of SENTEE/TOKEE over a threshold grid, full depth and static-k; CSV, JSON, PNG."""
    import spacy

    from .tools.sweep import DEFAULT_THRESHOLDS, describe_families, run_sweep, write_sweep
    from .tools.measure import main_metric
    from .tools.options import parse_numbers

    try:
        grid = parse_numbers(thresholds, float, "--thresholds") if thresholds else list(DEFAULT_THRESHOLDS)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    if tuned is not None and not tuned.is_file():
        _fail(f"No such tune report: {tuned}")
    nlp = _load_pipeline(pipeline)
    examples = _load_examples(nlp, data, limit)
    metric = metric or main_metric(nlp)
    report = json.loads(tuned.read_text(encoding="utf8")) if tuned is not None else None
    loaded: Dict[str, Any] = {str(pipeline): nlp}

    def load(path: str):
        if path not in loaded:
            loaded[path] = _load_pipeline(Path(path))
        return loaded[path]

    rows = run_sweep(nlp, examples, grid, window, metric=metric, progress=True, min_layer=min_layer, slope=slope, tuned=report, load=load)
    meta = {"pipeline": str(pipeline), "data": str(data), "limit": limit, "n_docs": len(examples)}
    if report is None:
        meta.update(window=window, min_layer=min_layer, slope=slope)
    else:
        meta.update(tuned=str(tuned), families=describe_families(report))
    for path in write_sweep(rows, output_dir, metric, meta).values():
        typer.echo(f"Wrote {path}")


from .cli_annotate import annotate_command  # noqa: E402  (its own module: cheap to import)

app.command(name="annotate")(annotate_command)


@app.command()
def visualize(
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


from .cli_annotate import annotate_command  # noqa: E402  (its own module: cheap to import)

app.command(name="annotate")(annotate_command)


if __name__ == "__main__":
    app()


@app.command()
def migrate(
    pipelines: List[Path] = typer.Argument(..., help="Pipeline folders saved by an earlier version"),
) -> None:
    """Move config fields that moved into blocks (learn_rate -> fine_tuning.learn_rate, ...)."""
    from .tools.migrate import describe_moves, migrate_pipeline

    for path in pipelines:
        _check_pipeline(path)
        moves = migrate_pipeline(path)
        typer.echo(f"{path}: {describe_moves(moves) if moves else 'already current'}")
