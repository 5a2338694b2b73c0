"""The paper's speed/accuracy table for one corpus, in FLOPs and wall-clock.

From the two trained pipelines of the project workflow (stage 2 calibrated,
`training/<dataset>/final`; stage 1 calibrated, `training/<dataset>/stage1-final`):

1. choose on dev: TOKEE (window, threshold) per target for both stages,
   SENTEE thresholds for ~2x/~3x (no window), static-k layers 3 and 2;
2. score every row on the whole test split (score, FLOPs speed-up, mean exit layer);
3. time every row side by side in this process on the same test docs, at
   batch sizes 1 and 32, repetitions interleaved across rows, median kept;
   `hf-full` (the same weights run as a plain transformers model, see
   hf_full.py) is timed in the same loop;
4. write benchmarks/results/<dataset>.json, .md and .png.

    python benchmarks/run.py conll2003                 # everything
    python benchmarks/run.py conll2003 --phase score   # steps 1-2 only (JSON without timing)
    python benchmarks/run.py conll2003 --phase time    # step 3 on the scored rows, then outputs

A training ablation trained later (its pipeline training/<dataset>/NAME-final)
joins an existing table as rows tokee-NAME, tuned and scored the same way, and
timed against the same pipeline at full depth:

    python benchmarks/run.py conll2003 --phase ablation --ablation distill-stage1
    python benchmarks/run.py conll2003 --phase ablation-time --ablation distill-stage1

Scoring does not need a quiet machine; timing does (ratios are side by side,
but other load adds noise), hence the two phases. Progress goes to stdout.
"""
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import spacy
import torch
import typer
from spacy.language import Language
from spacy.training import Example

sys.path.insert(0, str(Path(__file__).parent))
from hf_full import HFFullDepth  # noqa: E402
from table_harness import (  # noqa: E402
    ReportLayout,
    Row,
    Timing,
    command_line,
    dash,
    machine,
    markdown_table,
    one_order,
    per_batch_cells,
    score_rows,
    scored_percent,
    time_rows,
    write_report,
)

from spacy_early_exit.encoder.exits import static_thresholds  # noqa: E402
from spacy_early_exit.tools.data import load_examples, spread_sample  # noqa: E402
from spacy_early_exit.tools.evaluate import Setting, early_exit_pipes, setting_runner  # noqa: E402
from spacy_early_exit.tools.measure import main_metric, measure, threshold_for_speedup  # noqa: E402
from spacy_early_exit.tools.options import parse_numbers  # noqa: E402
from spacy_early_exit.tools.tune import tune  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PROJECT = ROOT / "project"
# (pipeline, row label) of the TOKEE rows; "distill" only where that pipeline was trained.
TOKEE_MODELS = (("stage2", "tokee"), ("stage1", "tokee-stage1"), ("distill", "tokee-distill"))


# What a TOKEE row keeps of its dev-tuned schedule (Row.dev), at the top level of the report's row.
SCHEDULE_KEYS = ("min_layer", "slope", "thresholds", "source", "dev_flops_speedup", "dev_score")
# A row of <dataset>.json: method, target, the result, window and threshold as
# chosen on dev (None where they do not apply), the schedule keys, which
# trained pipeline ran it ("stage2", "stage1", "distill" or an ablation's
# name) and its exit fields (empty for hf-full). Methods: full | static-3 |
# static-2 | sentee | tokee | tokee-stage1 | tokee-distill | tokee-<ablation> | hf-full.
LAYOUT = ReportLayout(head=("method", "target"), extra=("window", "threshold"), nest_dev=False, dev_keys=SCHEDULE_KEYS,
                      model=True)


def chosen(window: Optional[int] = None, threshold: Optional[float] = None) -> Dict[str, Any]:
    """A row's window and threshold as chosen on dev (None where they do not apply).

    window (Optional[int]): the TOKEE window.
    threshold (Optional[float]): the exit threshold.
    RETURNS (Dict[str, Any]): the row's `extra`.
    """
    return {"window": window, "threshold": threshold}


# A training run writes its wall times under the project's (ignored) metrics
# folder; the reference runs these results describe keep theirs in
# benchmarks/results/workflow/.
REFERENCE_METRICS = Path(__file__).resolve().parent / "results" / "workflow"


def training_time_file(project: Path, dataset: str, *parts: str) -> Path:
    """The training_time.json of a corpus (or of an ablation under it): a new
    run's under project/metrics when there is one, else the reference run's.

    project (Path): the project folder.
    dataset (str): the corpus name.
    parts (str): sub-folders below the corpus folder, e.g. an ablation's name.
    RETURNS (Path): the file to read (it may not exist).
    """
    fresh = project.joinpath("metrics", dataset, *parts, "training_time.json")
    return fresh if fresh.exists() else REFERENCE_METRICS.joinpath(dataset, *parts, "training_time.json")


def choose_rows(
    models: Dict[str, Language],
    devs: Dict[str, List[Example]],
    targets: Sequence[float],
    sentee_targets: Sequence[float],
    static_layers: Sequence[int],
    windows: Sequence[int],
    steps: int,
    metric: str,
    margin: float,
) -> Dict[str, Any]:
    """Every row's exit settings, all chosen on dev.

    models (Dict[str, Language]): the trained pipelines by name ("stage2", "stage1", maybe "distill").
    devs (Dict[str, List[Example]]): each pipeline's dev examples for tuning.
    targets (Sequence[float]): the TOKEE target FLOPs speed-ups.
    sentee_targets (Sequence[float]): the SENTEE target FLOPs speed-ups.
    static_layers (Sequence[int]): the static exit layers.
    windows (Sequence[int]): the TOKEE windows tried.
    steps (int): most bisection runs per schedule and target.
    metric (str): the score key.
    margin (float): relative safety margin on each TOKEE target.
    RETURNS (Dict[str, Any]): "rows", "unreachable" (targets dev could not
        reach) and "tune_reports" (the tuner's report per pipeline).
    """
    nlp2, dev = models["stage2"], devs["stage2"]
    num_layers = early_exit_pipes(nlp2)[0][1].num_layers
    rows = [Row("full", target=1, model="stage2", fields={"exit_mode": "off"}, extra=chosen())]
    for layer in static_layers:
        fields = {"exit_mode": "tokee", "window": 0, "threshold": 1.0, "thresholds": list(static_thresholds(layer, num_layers))}
        rows.append(Row(f"static-{layer}", target=round(num_layers / layer), model="stage2", fields=fields, extra=chosen()))
    unreachable: List[str] = []
    dev_texts = [eg.reference.text for eg in dev]
    for target in sentee_targets:
        print(f"[tune] SENTEE {target:g}x on {len(dev)} dev docs", flush=True)
        threshold = threshold_for_speedup(nlp2, dev_texts, target, "sentee", steps=steps)
        if threshold is None:
            unreachable.append(f"sentee {target:g}x")
            continue
        fields = {"exit_mode": "sentee", "threshold": threshold, "thresholds": None}
        rows.append(Row("sentee", target=int(target), model="stage2", fields=fields, extra=chosen(None, threshold)))
    reports = {}
    for model, method in TOKEE_MODELS:
        if model not in models:
            continue
        found, reports[model], missed = tokee_rows(models[model], devs[model], model, method, targets, windows, steps, metric, margin)
        rows += found
        unreachable += missed
    rows.append(Row("hf-full", target=1, model="stage2", extra=chosen()))
    return {"rows": rows, "unreachable": unreachable, "tune_reports": reports}


def tokee_rows(
    nlp: Language,
    examples: List[Example],
    model: str,
    method: str,
    targets: Sequence[float],
    windows: Sequence[int],
    steps: int,
    metric: str,
    margin: float,
) -> Tuple[List[Row], Dict[str, Any], List[str]]:
    """One pipeline's TOKEE rows: the exit schedule per target, searched on dev.

    nlp (Language): the pipeline.
    examples (List[Example]): its dev examples.
    model (str): the pipeline's name in `models` ("stage2", "stage1", an ablation's).
    method (str): the rows' method, e.g. "tokee-stage1".
    targets (Sequence[float]): the target FLOPs speed-ups.
    windows (Sequence[int]): the windows tried.
    steps (int): most bisection runs per schedule and target.
    metric (str): the score key.
    margin (float): relative safety margin on each target.
    RETURNS (Tuple[List[Row], Dict[str, Any], List[str]]): the rows, the tuner's
        report (without its per-run log) and the targets dev could not reach.
    """
    print(f"[tune] TOKEE {model}: schedules over windows {list(windows)}, targets {list(targets)} on {len(examples)} dev docs", flush=True)
    started = time.time()
    report = tune(nlp, examples, targets, windows, metric=metric, steps=steps, progress=True, margin=margin)
    report["seconds"] = round(time.time() - started)
    rows, unreachable = [], []
    for entry in report["targets"]:
        if not entry["reachable"]:
            unreachable.append(f"{method} {entry['target']:g}x: {entry['reason']}")
            continue
        schedule = {"min_layer": entry["min_layer"], "slope": entry["slope"], "thresholds": entry["thresholds"],
                    "source": entry["source"], "dev_flops_speedup": entry["flops_speedup"], "dev_score": entry["score"]}
        rows.append(Row(method, target=int(entry["target"]), model=model, fields=entry["fields"],
                        extra=chosen(entry["window"], entry["threshold"]), dev=schedule))
    return rows, {k: v for k, v in report.items() if k != "runs"}, unreachable


def row_result(row: Row, models: Dict[str, Language], test: List[Example], metric: str, hf: Optional[HFFullDepth]) -> Dict[str, Any]:
    """Score, FLOPs speed-up and mean exit layer of one row on the whole test split.

    row (Row): the row.
    models (Dict[str, Language]): the trained pipelines by name.
    test (List[Example]): the test examples.
    metric (str): the score key.
    hf (Optional[HFFullDepth]): the hf-full row's model (needed with that row).
    RETURNS (Dict[str, Any]): the row's result.
    """
    if row.method == "hf-full":
        docs = hf.annotate([eg.predicted for eg in test])
        return {"score": scored_percent(models["stage2"], docs, test, metric), "flops_speedup": 1.0,
                "mean_exit_layer": float(len(hf.encoder.layers))}
    return measure(models[row.model], test, row.fields, metric).as_row()


def time_table(
    rows: List[Row], models: Dict[str, Language], hf: Optional[HFFullDepth], texts: List[str], batch_sizes: Sequence[int], repeats: int
) -> None:
    """Median words/second per row and batch size; repetitions interleaved across
    rows. Wall-clock speed-ups are against the row `full@1`, which `rows` must contain.

    rows (List[Row]): the rows.
    models (Dict[str, Language]): the trained pipelines by name.
    hf (Optional[HFFullDepth]): the hf-full row's model (needed with that row).
    texts (List[str]): the timing docs.
    batch_sizes (Sequence[int]): the batch sizes.
    repeats (int): repetitions (the median is kept).
    """
    words = [[t.text for t in doc] for doc in models[rows[0].model].tokenizer.pipe(texts)]
    timings: Dict[str, Timing] = {
        row.key: one_order(lambda part, batch_size: hf.run(words[part], batch_size)) if row.method == "hf-full"
        else one_order(setting_runner(models[row.model], texts, Setting(row.key, row.fields)))
        for row in rows
    }
    full = next(row.key for row in rows if (row.method, row.target) == ("full", 1))
    time_rows(rows, timings, len(texts), sum(len(w) for w in words), batch_sizes, repeats, {"wall_speedup": full})


def markdown(report: Dict[str, Any]) -> str:
    """The table for README.md ("–" where a row is not timed yet, as an
    ablation scored after the table was timed).

    report (Dict[str, Any]): the report.
    RETURNS (str): the Markdown table.
    """
    sizes = [str(b) for b in report["batch_sizes"]]
    head = ["method", "target", report["metric"], "Δ vs full", "FLOPs x"]
    head += [f"wall x b{b}" for b in sizes] + [f"words/s b{b}" for b in sizes] + ["mean exit layer", "window", "threshold"]
    full = next(r for r in report["rows"] if r["method"] == "full")["score"]
    lines = []
    for r in report["rows"]:
        delta = r["score"] - full if r["score"] is not None and full is not None else None
        cells = [r["method"], f"{r['target']}x", dash(r["score"], "{:.2f}"), dash(delta, "{:+.2f}"), f"{r['flops_speedup']:.2f}"]
        cells += per_batch_cells(r, "wall_speedup", sizes, "{:.2f}") + per_batch_cells(r, "words_per_second", sizes, "{:.0f}")
        cells += [f"{r['mean_exit_layer']:.2f}", dash(r["window"]), dash(r["threshold"], "{:g}")]
        lines.append(cells)
    return markdown_table(head, lines)


def plot(report: Dict[str, Any], path: Path) -> Path:
    """Score against FLOPs speed-up and against wall-clock speed-up (batch 32)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    styles = {
        "tokee": ("tab:blue", "o-", "TOKEE (stage 2)"),
        "tokee-stage1": ("tab:cyan", "s--", "TOKEE (stage 1 only)"),
        "tokee-distill": ("tab:purple", "v-.", "TOKEE (self-distillation, stage 2)"),
        "tokee-distill-stage1": ("tab:red", "P-.", "TOKEE (self-distillation, stage 1)"),
        "sentee": ("tab:orange", "^-", "SENTEE"),
        "static": ("tab:gray", "D:", "static-k"),
    }
    rows = report["rows"]
    full = next(r for r in rows if r["method"] == "full")
    figure = Figure(figsize=(10, 4))
    FigureCanvasAgg(figure)
    for i, (xkey, xlabel) in enumerate((("flops", "FLOPs speed-up"), ("wall", "wall-clock speed-up, batch 32"))):
        axes = figure.add_subplot(1, 2, i + 1)
        for method, (color, style, label) in styles.items():
            chosen = [r for r in rows if r["method"] == method or (method == "static" and r["method"].startswith("static-"))]
            if not chosen:
                continue
            chosen = [r for r in [full] + chosen if xkey == "flops" or "wall_speedup" in r]
            points = sorted((r["flops_speedup"] if xkey == "flops" else r["wall_speedup"]["32"], r["score"]) for r in chosen)
            axes.plot([x for x, _ in points], [y for _, y in points], style, color=color, label=label)
        axes.plot([1.0], [full["score"]], "k*", markersize=12, label="full depth")
        axes.set_xlabel(xlabel)
        axes.set_ylabel(report["metric"])
        axes.grid(alpha=0.3)
        if i == 0:
            axes.legend(fontsize=8)
    figure.suptitle(f"{report['corpus']} ({report['split']}), {report['backbone_name']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def write_outputs(report: Dict[str, Any], output_dir: Path) -> None:
    """<dataset>.json always; the table and plot once the rows are timed.

    report (Dict[str, Any]): the report.
    output_dir (Path): the results folder.
    """
    dataset = report["corpus"]
    output_dir.mkdir(parents=True, exist_ok=True)
    if "wall_speedup" not in report["rows"][0]:
        (output_dir / f"{dataset}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf8")
        print(f"Wrote {output_dir / dataset}.json (scores only; run --phase time next)")
        return
    table = markdown(report)
    note = " Chinese: MiniLM with the vocabulary extension (training-set characters added)." if report["vocabulary_extension"] else ""
    header = (
        f"{dataset}, test split ({report['test_docs']} docs), {report['metric']}; settings chosen on {report['tune_docs']} dev docs; "
        f"timing on {report['timing_docs']} evenly spaced test docs, {report['repeats']} interleaved repetitions, median, "
        f"{report['threads']} threads.{note}\n\n"
    )
    write_report(report, output_dir / dataset, header, table)
    plot(report, output_dir / f"{dataset}.png")
    print(table)
    print(f"Wrote {output_dir / dataset}.json/.md/.png")


def run_ablation(
    dataset: str,
    name: str,
    timing: bool,
    project: Path,
    output_dir: Path,
    targets: Sequence[float],
    windows: Sequence[int],
    tune_limit: int,
    steps: int,
    margin: float,
    timing_docs: int,
    batch_sizes: Sequence[int],
    repeats: int,
) -> None:
    """Add one more trained pipeline's TOKEE rows to an existing table.

    A training ablation (say, self-distillation in stage 1) is trained after the
    table was made, when the table's own pipelines may be gone. Its rows get
    the same schedule search on dev and the same test scoring as the main
    rows; timing (`timing`) runs them side by side with the same pipeline at
    full depth, which costs what any full-depth run of the architecture costs,
    so the wall-clock speed-ups compare with the table's.

    dataset (str): the corpus; benchmarks/results/<dataset>.json must exist.
    name (str): the pipeline training/<dataset>/<name>-final; rows tokee-<name>.
    timing (bool): time the rows scored before instead of scoring.
    """
    report_path = output_dir / f"{dataset}.json"
    if not report_path.exists():
        raise typer.BadParameter(f"No table at {report_path}: an ablation adds rows to it, so run --phase score first")
    path = project / "training" / dataset / f"{name}-final"
    if not path.exists():
        raise typer.BadParameter(f"No pipeline at {path}")
    report = json.loads(report_path.read_text(encoding="utf8"))
    method = f"tokee-{name}"
    nlp = spacy.load(path)
    corpus = project / "corpus" / dataset
    test = load_examples(nlp, corpus / "test.spacy")
    started = time.time()
    if not timing:
        dev = load_examples(nlp, corpus / "dev.spacy", tune_limit, spread=True)
        print(f"{dataset} ablation {name}: {len(dev)} dev docs for tuning, {len(test)} test docs, {torch.get_num_threads()} threads", flush=True)
        rows, tuning, unreachable = tokee_rows(nlp, dev, name, method, targets, windows, steps, report["metric"], margin)
        score_rows(rows, lambda row: row_result(row, {name: nlp}, test, report["metric"], None), report["metric"])
        full = measure(nlp, test, {"exit_mode": "off"}, report["metric"]).as_row()
        training_time = training_time_file(project, dataset, name.replace("-", "_"))
        report.setdefault("ablations", {})[name] = {
            "pipeline": str(path.relative_to(project)),
            "rows": method,
            "tune_docs": len(dev),
            "unreachable": unreachable,
            "tuning": tuning,
            "full_depth_score": full["score"],  # this pipeline at full depth, for reference
            "training": json.loads(training_time.read_text(encoding="utf8")) if training_time.exists() else None,
            "score_command": command_line("benchmarks/run.py"),
            "score_seconds": round(time.time() - started),
        }
        others = [r for r in report["rows"] if r["method"] != method]
        at = next((i for i, r in enumerate(others) if r["method"] == "hf-full"), len(others))
        report["rows"] = others[:at] + [LAYOUT.to_json(r) for r in rows] + others[at:]
    else:
        rows = [LAYOUT.from_json(r) for r in report["rows"] if r["method"] == method]
        if not rows:
            raise typer.BadParameter(f"No {method} rows in {report_path}: run --phase ablation first")
        texts = spread_sample([eg.reference.text for eg in test], timing_docs)
        reference = Row("full", target=1, model=name, fields={"exit_mode": "off"}, extra=chosen())
        print(f"[time] {method}: {len(rows)} rows and full depth, {len(texts)} test docs, batch sizes {list(batch_sizes)}, "
              f"{repeats} repetitions, {torch.get_num_threads()} threads", flush=True)
        time_table([reference] + rows, {name: nlp}, None, texts, batch_sizes, repeats)
        timed = {r.key: LAYOUT.to_json(r) for r in rows}
        report["rows"] = [timed.get(LAYOUT.from_json(r).key, r) for r in report["rows"]]
        report["ablations"][name].update(
            full_words_per_second=reference.result["words_per_second"], timing_docs=len(texts), repeats=repeats,
            threads=torch.get_num_threads(), time_command=command_line("benchmarks/run.py"),
            time_seconds=round(time.time() - started),
        )
    write_outputs(report, output_dir)


def main(
    dataset: str = typer.Argument(..., help="Corpus name (project/corpus/<dataset>, project/training/<dataset>)"),
    phase: str = typer.Option("all", help="all | score (tune on dev, score on test) | time (time the scored rows) | ablation | ablation-time"),
    ablation: str = typer.Option("", help="--phase ablation(-time): NAME of a further pipeline, training/<dataset>/NAME-final, added to the table as rows tokee-NAME (e.g. distill-stage1)"),
    project: Path = typer.Option(PROJECT, help="The project folder"),
    targets: str = typer.Option("2,3,4", help="TOKEE target FLOPs speed-ups"),
    sentee_targets: str = typer.Option("2,3", help="SENTEE target FLOPs speed-ups"),
    static_layers: str = typer.Option("3,2", help="Static exit layers (the efficient baseline)"),
    windows: str = typer.Option("0,1,2", help="TOKEE windows tried on dev"),
    tune_limit: int = typer.Option(0, help="Dev docs used for tuning, evenly spaced (0: all)"),
    ablation_tune_limit: int = typer.Option(0, help="Dev docs for tuning the stage-1 and distillation models (0: as --tune-limit)"),
    steps: int = typer.Option(6, help="Most bisection runs per measured schedule and target"),
    margin: float = typer.Option(0.02, help="Relative safety margin on each TOKEE target (tuned on dev)"),
    timing_docs: int = typer.Option(500, help="Test docs timed, evenly spaced (0: all); every score uses all"),
    batch_sizes: str = typer.Option("1,32", help="Batch sizes timed"),
    repeats: int = typer.Option(5, help="Timing repetitions (median kept)"),
    threads: int = typer.Option(0, help="torch intra-op threads (0: torch's default)"),
    output_dir: Path = typer.Option(RESULTS, help="Where <dataset>.json/.md/.png go"),
) -> None:
    if phase not in ("all", "score", "time", "ablation", "ablation-time"):
        raise typer.BadParameter(f"--phase must be all, score, time, ablation or ablation-time; got {phase!r}")
    if phase.startswith("ablation"):
        if not ablation:
            raise typer.BadParameter(f"--phase {phase} needs --ablation NAME (the pipeline training/{dataset}/NAME-final)")
        if threads:
            torch.set_num_threads(threads)
        run_ablation(
            dataset, ablation, phase == "ablation-time", project, output_dir, parse_numbers(targets, float, "--targets"),
            parse_numbers(windows, int, "--windows"), ablation_tune_limit or tune_limit, steps, margin, timing_docs,
            parse_numbers(batch_sizes, int, "--batch-sizes"), repeats,
        )
        return
    started = time.time()
    if threads:
        torch.set_num_threads(threads)
    corpus = project / "corpus" / dataset
    training = project / "training" / dataset
    meta = json.loads((corpus / "meta.json").read_text(encoding="utf8"))
    paths = {"stage2": training / "final", "stage1": training / "stage1-final"}
    for name, path in paths.items():
        if not path.exists():
            raise typer.BadParameter(f"No {name} pipeline at {path}: run benchmarks/train_corpus.sh {dataset} first")
    if (training / "distill-final").exists():  # the self-distillation ablation, where trained
        paths["distill"] = training / "distill-final"
    models = {name: spacy.load(path) for name, path in paths.items()}
    hf = HFFullDepth(models["stage2"])
    test = load_examples(models["stage2"], corpus / "test.spacy")
    if phase == "time":
        report = json.loads((output_dir / f"{dataset}.json").read_text(encoding="utf8"))
        rows = [LAYOUT.from_json(r) for r in report["rows"]]
        for model in {r.model for r in rows} - set(models):  # ablation rows added by --phase ablation
            models[model] = spacy.load(training / f"{model}-final")
    else:
        metric = main_metric(models["stage2"])
        # The ablation models (stage 1 only, self-distillation) may tune on an evenly
        # spaced dev subset to save time; the main model always uses --tune-limit.
        limits = {name: tune_limit if name == "stage2" or not ablation_tune_limit else ablation_tune_limit for name in models}
        devs = {name: load_examples(nlp, corpus / "dev.spacy", limits[name], spread=True) for name, nlp in models.items()}
        dev = devs["stage2"]
        print(f"{dataset}: metric {metric}, {len(dev)} dev docs for tuning, {len(test)} test docs, {torch.get_num_threads()} threads", flush=True)
        chosen = choose_rows(
            models, devs,
            parse_numbers(targets, float, "--targets"), parse_numbers(sentee_targets, float, "--sentee-targets"),
            parse_numbers(static_layers, int, "--static-layers"), parse_numbers(windows, int, "--windows"), steps, metric,
            margin,
        )
        rows = chosen["rows"]
        score_rows(rows, lambda row: row_result(row, models, test, metric, hf), metric)
        backbone = models["stage2"].config.interpolate()["components"][early_exit_pipes(models["stage2"])[0][0]]["model"]["name"]
        training_time = training_time_file(project, dataset)
        report = {
            "corpus": dataset,
            "split": "test",
            "metric": metric,
            "backbone": backbone,
            "backbone_name": "all-MiniLM-L6-v2" if "minilm" in backbone.lower() else backbone,
            "vocabulary_extension": bool(meta["lang"] == "zh"),
            "test_docs": len(test),
            "tune_docs": len(dev),
            "ablation_tune_docs": {name: len(examples) for name, examples in devs.items() if name != "stage2"},
            "windows_tried": parse_numbers(windows, int, "--windows"),
            "unreachable": chosen["unreachable"],
            "tuning": chosen["tune_reports"],
            "training": json.loads(training_time.read_text(encoding="utf8")) if training_time.exists() else None,
            "score_command": command_line("benchmarks/run.py"),
            "score_seconds": round(time.time() - started),
        }
    if phase != "score":
        texts = spread_sample([eg.reference.text for eg in test], timing_docs)
        sizes = parse_numbers(batch_sizes, int, "--batch-sizes")
        print(f"[time] {len(rows)} rows, {len(texts)} test docs, batch sizes {sizes}, {repeats} repetitions, {torch.get_num_threads()} threads", flush=True)
        time_table(rows, models, hf, texts, sizes, repeats)
        report.update(
            threads=torch.get_num_threads(),
            machine=machine(),
            batch_sizes=sizes,
            repeats=repeats,
            timing_docs=len(texts),
            time_command=command_line("benchmarks/run.py"),
            time_seconds=round(time.time() - started),
        )
    report["rows"] = [LAYOUT.to_json(r) for r in rows]
    write_outputs(report, output_dir)


if __name__ == "__main__":
    typer.run(main)
