"""Command-line tools: ``python -m spacy_early_exit COMMAND``."""
import json
import platform
from pathlib import Path
from typing import Any, Dict, List, Optional

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


from .cli_checks import (  # noqa: E402
    _check_pipeline,
    _check_precision,
    _fail,
    _load_examples,
    _load_pipeline,
    _write,
)


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
    precision: Optional[str] = typer.Option(None, "--precision", help="Prediction precision: fp32, bf16, int8, int8-ort or fp32-ort (default: the pipeline's)"),
) -> None:
    """Score a pipeline at full depth, with TOKEE and at the static cuts next to it on test; time them side by side."""
    import torch

    from .tools.evaluate import Setting, compare, format_table
    from .tools.evaluation_rows import bracketing_layers, by_speedup, pipeline_stage, report_settings, static_fields
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
    component: Optional[str] = typer.Option(None, "--component", help="Calibrate only this early-exit component, shared tokee_transformer (all its heads) or listening head (default: all)"),
    precision: Optional[str] = typer.Option(None, "--precision", help="Prediction precision: fp32, bf16, int8, int8-ort or fp32-ort to fit the temperatures for; written into the saved config"),
) -> None:
    """Fit one temperature per layer (per head and layer on a shared encoder) on dev data (full depth, minimum NLL) and save the calibrated pipeline."""
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
    precision: Optional[str] = typer.Option(None, "--precision", help="Prediction precision: fp32, bf16, int8, int8-ort or fp32-ort to tune for; the chosen settings then set it (default: the pipeline's, not written)"),
    output: Path = typer.Option(Path("metrics/tune.json"), "--output", help="JSON report"),
    limit: int = typer.Option(0, "--limit", min=0, help="Tune on the first N dev docs only (0: all)"),
    metric: Optional[str] = typer.Option(None, "--metric", help="Score to maximize (default: the component's main score); on a shared encoder HEAD=METRIC,... per head, and the worst head's loss against its full depth is maximized"),
    steps: int = typer.Option(6, "--steps", min=1, help="Most bisection runs per measured schedule and target"),
    write_configs: Optional[Path] = typer.Option(None, "--write-configs", help="Folder for <target>x.json config overrides"),
    pipeline_out: Optional[Path] = typer.Option(None, "--pipeline-out", help="Folder for a <target>x/ pipeline copy per target"),
) -> None:
    """For each target speed-up, find on dev the exit schedule (window, first and last exit layer, threshold per layer) that scores best."""
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
def migrate(
    pipelines: List[Path] = typer.Argument(..., help="Pipeline folders saved by an earlier version"),
) -> None:
    """Move config fields that moved into blocks (learn_rate -> fine_tuning.learn_rate, ...)."""
    from .tools.migrate import describe_moves, migrate_pipeline

    for path in pipelines:
        _check_pipeline(path)
        moves = migrate_pipeline(path)
        typer.echo(f"{path}: {describe_moves(moves) if moves else 'already current'}")


from .cli_visualize import visualize_command  # noqa: E402

app.command(name="visualize")(visualize_command)


if __name__ == "__main__":
    app()
