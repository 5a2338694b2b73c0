"""Early exit x reduced precision (issue 12): one table, every row in one process.

On one corpus of the four-corpus benchmark, with its trained pipeline
(`project/training/<dataset>/final`, or --pipeline):

1. for each precision (fp32, bf16, int8, int8-ort, fp32-ort): `full` depth, `tokee` at each
   target FLOPs speed-up (2x, 3x), and `tokee-layers` at each target speed-up
   in encoder layers per doc (what batch size 1 pays for: see
   `tools.evaluate.cost_summary`), with the exit schedule tuned on dev *for
   that precision* (`tools.tune.tune(..., precision=p, cost=c)`: thresholds
   fitted to the uncertainties that precision produces);
2. rows outside spaCy (outside_rows.py): `hf-full` (the same weights as plain
   transformers, fp32; hf_full.py) and `hf-int8` (the same after
   `torch.ao.quantization.quantize_dynamic` on its nn.Linear layers: the one
   line a practitioner adds today); with --outside (by default wherever they
   can run), `ort-fp32` / `ort-int8` (the same weights exported to ONNX, fused
   by ONNX Runtime's BERT optimizer, fp32 and dynamic int8) and `spacy-cnn`
   (spaCy's efficiency NER pipeline trained on the same corpus by
   train_spacy_cnn.sh, at its best batch size);
3. every row scored on the whole test split, and timed on evenly spaced test
   docs at the batch sizes asked (default 1 and 32), settings interleaved
   every 64 docs (or one batch, when larger), median of the repetitions after
   a warm-up pass (table_harness.py, as run.py); every row, ours and outside,
   in document order and length-sorted, reporting its faster; for our rows
   and spacy-cnn the largest column is the best from that batch size up (also
   timed at 1000; the ORT and hf rows pad a whole batch to its longest doc,
   so they are not);
4. benchmarks/results/precision_<dataset>.json and .md.

    python benchmarks/precision.py conll2003                 # everything
    python benchmarks/precision.py conll2003 --phase score   # tune + score (a busy machine is fine)
    python benchmarks/precision.py conll2003 --phase time    # time the scored rows (a quiet machine)
    python benchmarks/precision.py conll2003 --outside none  # no ORT / spacy-cnn rows
    python benchmarks/precision.py conll2003 --phase score --precisions fp32-ort --add  # one more precision's rows

FLOPs do not depend on precision (they are counted from the exit schedule), so
a row's speed over its fp32 twin is what the precision itself buys.
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
from outside_rows import (  # noqa: E402
    BOTH_ORDERS, ORT_METHODS, OUTSIDE_METHODS, SPACY_CNN, OutsideRow, hf_rows, large_batch_sizes,
    onnxruntime_missing, outside_rows,
)
from table_harness import (  # noqa: E402
    ReportLayout,
    Row,
    Timing,
    command_line,
    dash,
    machine,
    markdown_table,
    per_batch_cells,
    run_orders,
    score_rows,
    time_rows,
    write_report,
)

from spacy_early_exit.encoder.precision import PRECISIONS, cpu_has_fast_bf16, int8_kernels_available  # noqa: E402
from spacy_early_exit.tools.data import load_examples, spread_sample  # noqa: E402
from spacy_early_exit.tools.evaluate import Setting, early_exit_pipes, setting_runner  # noqa: E402
from spacy_early_exit.tools.options import parse_numbers  # noqa: E402
from spacy_early_exit.tools.tune import main_metric, measure, tune  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PROJECT = ROOT / "project"
HF_METHODS = ("hf-full", "hf-int8")
# What the report keeps of each tuned target (the full tune report is long).
TUNE_KEYS = ("target", "cost", "reachable", "reason", "window", "min_layer", "slope", "max_layer", "threshold", "score",
             "flops_speedup", "layer_speedup")
# The row name of a TOKEE schedule tuned for each cost (tune's `cost`): FLOPs,
# or encoder layers per doc (what batch size 1 pays for).
TOKEE_METHODS = {"flops": "tokee", "layers": "tokee-layers"}
# A row in precision_<dataset>.json: words/s and vs_hf_full read None until
# the timing phase; an outside row says what ran it under "runtime".
LAYOUT = ReportLayout(head=("method", "precision", "target"), untimed=("words_per_second", "vs_hf_full"), extra=("runtime",))
# Ratio columns: each row's words/s over these rows' (where the table has them).
REFERENCES = {"vs_hf_full": "hf-full", "vs_hf_int8": "hf-int8", "vs_ort_int8": "ort-int8"}


def choose_rows(
    nlp: Language, dev: List[Example], precisions: Sequence[str], targets: Sequence[float], windows: Sequence[int],
    steps: int, metric: str, margin: float, costs: Sequence[str] = ("flops",),
) -> Dict[str, Any]:
    """Every row's exit fields; the TOKEE schedules tuned on dev, per precision and cost.

    nlp (Language): the trained pipeline.
    dev (List[Example]): the dev examples tuned on.
    precisions (Sequence[str]): the precisions, each with its own rows.
    targets (Sequence[float]): the TOKEE target speed-ups.
    windows (Sequence[int]): the TOKEE windows tried.
    steps (int): most bisection runs per schedule and target.
    metric (str): the score key.
    margin (float): relative safety margin on each target.
    costs (Sequence[str]): what the targets count: "flops" and/or "layers".
    RETURNS (Dict[str, Any]): "rows" (the pipeline's rows, then hf-full and
        hf-int8), "unreachable" (targets dev could not reach), "tuning" (the
        tuner's summary per precision and cost).
    """
    rows: List[Row] = []
    unreachable: List[str] = []
    tuning: Dict[str, Any] = {}
    for precision in precisions:
        rows.append(Row("full", precision, 1, {"exit_mode": "off", "precision": precision}))
        for cost in costs:
            method = TOKEE_METHODS[cost]
            print(f"[tune] {precision}, {cost}: targets {list(targets)}, windows {list(windows)} on {len(dev)} dev docs", flush=True)
            started = time.time()
            report = tune(nlp, dev, targets, windows, metric=metric, steps=steps, margin=margin, precision=precision,
                          progress=True, cost=cost)
            summary = [{k: entry.get(k) for k in TUNE_KEYS} for entry in report["targets"]]
            key = precision if cost == "flops" else f"{precision}/{cost}"
            tuning[key] = {"full": report["full"], "seconds": round(time.time() - started), "targets": summary}
            for entry in report["targets"]:
                if not entry["reachable"]:
                    unreachable.append(f"{method} {entry['target']:g}x/{precision}: {entry['reason']}")
                    continue
                dev_result = {k: entry[k] for k in ("score", "flops_speedup", "layer_speedup", "window", "min_layer",
                                                    "slope", "max_layer", "threshold")}
                rows.append(Row(method, precision, int(entry["target"]), entry["fields"], dev=dev_result))
    rows += [Row("hf-full", "fp32", 1), Row("hf-int8", "int8", 1)]
    return {"rows": rows, "unreachable": unreachable, "tuning": tuning}


def choose_outside(spec: str, spacy_cnn: Path) -> Tuple[List[str], List[str]]:
    """The outside rows asked for with --outside.

    spec (str): "auto" (the ORT rows where onnxruntime imports, spacy-cnn
        where its pipeline exists), "none", or names from OUTSIDE_METHODS,
        comma-separated (each must be able to run).
    spacy_cnn (Path): the spacy-cnn pipeline.
    RETURNS (Tuple[List[str], List[str]]): the methods, and one line per row skipped.
    """
    missing = onnxruntime_missing()
    if spec.strip() == "auto":
        methods: List[str] = [] if missing else list(ORT_METHODS)
        skipped = [f"ort-fp32, ort-int8 skipped: {missing}"] if missing else []
        if spacy_cnn.exists():
            methods.append(SPACY_CNN)
        else:
            skipped.append(f"spacy-cnn skipped: no pipeline at {spacy_cnn} (bash benchmarks/train_spacy_cnn.sh <dataset>, or --spacy-cnn)")
        return methods, skipped
    methods = [m.strip() for m in spec.split(",") if m.strip() and m.strip() != "none"]
    unknown = [m for m in methods if m not in OUTSIDE_METHODS]
    if unknown:
        raise typer.BadParameter(f"--outside takes auto, none or some of {', '.join(OUTSIDE_METHODS)}; got {unknown}")
    if missing and any(m in ORT_METHODS for m in methods):
        raise typer.BadParameter(f"--outside {spec}: {missing}")
    if SPACY_CNN in methods and not spacy_cnn.exists():
        raise typer.BadParameter(f"--outside {spec}: no spacy-cnn pipeline at {spacy_cnn} (bash benchmarks/train_spacy_cnn.sh <dataset>)")
    return [m for m in OUTSIDE_METHODS if m in methods], []


def spacy_cnn_training(dataset: str) -> Optional[Dict[str, Any]]:
    """What train_spacy_cnn.sh recorded for the corpus (its per-evaluation log left out).

    dataset (str): the corpus name.
    RETURNS (Optional[Dict[str, Any]]): results/spacy_cnn_<dataset>_training.json, or None.
    """
    path = RESULTS / f"spacy_cnn_{dataset}_training.json"
    if not path.exists():
        return None
    return {k: v for k, v in json.loads(path.read_text(encoding="utf8")).items() if k != "evaluations"}


def added_to(old: Dict[str, Any], new: Dict[str, Any], new_rows: List[Row]) -> Tuple[Dict[str, Any], List[Row]]:
    """The report `old` with `new`'s precisions scored into it (--add).

    Rows of those precisions are replaced; the new rows go before the first
    outside row, every other row stays as it was. Tuning summaries and
    unreachable targets merge the same way; both score commands are kept.

    old (Dict[str, Any]): the existing report (JSON).
    new (Dict[str, Any]): the report of this run's precisions.
    new_rows (List[Row]): this run's rows.
    RETURNS (Tuple[Dict[str, Any], List[Row]]): the merged report and rows.
    """
    added = set(new["precisions"])
    pipeline_methods = {"full", *TOKEE_METHODS.values()}
    kept = [LAYOUT.from_json(r) for r in old["rows"]]
    kept = [r for r in kept if not (r.method in pipeline_methods and r.precision in added)]
    at = next((i for i, r in enumerate(kept) if r.method not in pipeline_methods), len(kept))
    rows = kept[:at] + new_rows + kept[at:]
    report = dict(old)
    report["precisions"] = [p for p in old["precisions"] if p not in added] + new["precisions"]
    report["tuning"] = {**{k: v for k, v in old["tuning"].items() if k.split("/")[0] not in added}, **new["tuning"]}
    report["unreachable"] = [u for u in old["unreachable"] if u.split(": ")[0].split("/")[-1] not in added]
    report["unreachable"] += new["unreachable"]
    report["score_command"] = f"{old['score_command']} && {new['score_command']}"
    report["score_seconds"] = old["score_seconds"] + new["score_seconds"]
    return report, rows


def row_result(row: Row, nlp: Language, outside: Dict[str, OutsideRow], test: List[Example], metric: str) -> Dict[str, Any]:
    """Score, FLOPs speed-up and mean exit layer of one row on the whole test split.

    row (Row): the row.
    nlp (Language): the trained pipeline (its own rows run in it; its scorers score every row).
    outside (Dict[str, OutsideRow]): the rows run outside it, by method.
    test (List[Example]): the test examples.
    metric (str): the score key.
    RETURNS (Dict[str, Any]): the row's result.
    """
    if row.method in outside:
        return outside[row.method].result(nlp, test, metric)
    return measure(nlp, test, row.fields, metric).as_row()


def row_timings(
    rows: Sequence[Row], nlp: Language, outside: Dict[str, OutsideRow], texts: List[str], batch_sizes: Sequence[int],
) -> Tuple[Dict[str, Timing], int]:
    """How each row is timed on the timing docs.

    rows (Sequence[Row]): the rows.
    nlp (Language): the trained pipeline.
    outside (Dict[str, OutsideRow]): the rows run outside it, by method.
    texts (List[str]): the timing docs.
    batch_sizes (Sequence[int]): the table's batch sizes.
    RETURNS (Tuple[Dict[str, Timing], int]): per row key its timing, and the
        words in the timing docs (the pipeline's tokenization, for every row).
    """
    words = [[t.text for t in doc] for doc in nlp.tokenizer.pipe(texts)]
    ordered = run_orders(texts, [len(w) for w in words], BOTH_ORDERS)
    timings = {
        row.key: outside[row.method].timing(texts, words, batch_sizes) if row.method in outside
        else Timing({order: setting_runner(nlp, docs, Setting(row.key, row.fields)) for order, docs in ordered.items()})
        for row in rows
    }
    # spacy-cnn's rule for our rows too: the largest column is the row's best
    # from that batch size up (ours gain from large batches: the rows of a big
    # batch are cut into sub-batches of like lengths). The ORT and hf rows pad
    # a whole batch to its longest doc: on CoNLL-2003 their batch 1,000 ran
    # 1.6-2.4x slower than 128, and on the demo a batch of 500 docs filled 19 GB.
    for row in rows:
        if row.method not in outside:
            timings[row.key].extra_batch_sizes = large_batch_sizes(batch_sizes)
    return timings, sum(len(w) for w in words)


def fp32_twin_delta(row: Dict[str, Any], rows: Sequence[Dict[str, Any]]) -> Optional[float]:
    """The row's score minus its fp32 twin's: the same method and target in
    fp32, or hf-full for the rows with hf-full's weights (spacy-cnn has none).

    row (Dict[str, Any]): a report row.
    rows (Sequence[Dict[str, Any]]): all report rows.
    RETURNS (Optional[float]): the difference in points (None: no such pair).
    """
    if row["method"] == SPACY_CNN:
        return None
    if row["method"] in HF_METHODS + ORT_METHODS:
        twin = next((r for r in rows if r["method"] == "hf-full"), None)
    else:
        twin = next((r for r in rows if (r["method"], r["target"], r["precision"]) == (row["method"], row["target"], "fp32")), None)
    if twin is None or twin is row or row["score"] is None or twin["score"] is None:
        return None
    return round(row["score"] - twin["score"], 2)


def markdown(report: Dict[str, Any]) -> str:
    """The table: score, its change against the fp32 twin, FLOPs and layer
    speed-up, words/s and words/s relative to hf-full, hf-int8 and (where the
    table has it) ort-int8, per batch size ("–" until timed).

    report (Dict[str, Any]): the report.
    RETURNS (str): the Markdown table.
    """
    sizes = [str(b) for b in report.get("batch_sizes", [1, 32])]
    rows = report["rows"]
    ratios = [("vs_hf_full", "hf-full"), ("vs_hf_int8", "hf-int8")]
    if any(r["method"] == "ort-int8" for r in rows):
        ratios.append(("vs_ort_int8", "ort-int8"))
    head = ["method", "precision", "target", report["metric"], "Δ vs fp32", "FLOPs x", "layers x"]
    head += [f"words/s b{b}" for b in sizes] + [f"vs {name} b{b}" for _, name in ratios for b in sizes]
    lines = []
    for r in rows:
        cells = [r["method"], r["precision"], f"{r['target']}x", dash(r["score"], "{:.2f}"),
                 dash(fp32_twin_delta(r, rows), "{:+.2f}"), f"{r['flops_speedup']:.2f}", dash(r.get("layer_speedup"), "{:.2f}")]
        cells += per_batch_cells(r, "words_per_second", sizes, "{:.0f}")
        for key, _ in ratios:
            cells += per_batch_cells(r, key, sizes, "{:.2f}")
        lines.append(cells)
    return markdown_table(head, lines)


def write_outputs(report: Dict[str, Any], output_dir: Path) -> Path:
    """precision_<dataset>.json and .md.

    report (Dict[str, Any]): the report.
    output_dir (Path): the results folder.
    RETURNS (Path): the JSON's path.
    """
    timed = "timing_docs" in report
    header = (
        f"{report['corpus']}, test split ({report['test_docs']} docs), {report['metric']}; TOKEE schedules tuned per "
        f"precision on {report['tune_docs']} dev docs. "
    )
    header += (
        f"Timing on {report['timing_docs']} evenly spaced test docs, {report['repeats']} interleaved repetitions, median, "
        f"{report['threads']} threads, {report['machine']}.\n\n"
        if timed else "Not timed yet (run --phase time).\n\n"
    )
    methods = {r["method"] for r in report["rows"]}
    if timed:
        header += ("Every row's words/s is the faster of document order and length-sorted batches (both in "
                   "words_per_second_by_order).\n")
    if methods & set(ORT_METHODS):
        header += "ort-*: the same weights in ONNX Runtime (fused for BERT).\n"
    if timed:
        header += ("Our rows' and spacy-cnn's largest batch-size column is their best from that size up "
                   "(batch_size_used, every size in words_per_second_by_batch).\n")
    if SPACY_CNN in methods:
        header += "spacy-cnn: spaCy's efficiency NER pipeline on the same corpus.\n"
    header += "\n"
    table = markdown(report)
    path = write_report(report, output_dir / f"precision_{report['corpus']}", header, table)
    print(table)
    print(f"Wrote {path.with_suffix('')}.json/.md" + ("" if timed else " (scores only; run --phase time next)"))
    return path


def main(
    dataset: str = typer.Argument("conll2003", help="Corpus name (project/corpus/<dataset>, project/training/<dataset>)"),
    phase: str = typer.Option("all", help="all | score (tune on dev, score on test) | time (time the scored rows)"),
    project: Path = typer.Option(PROJECT, help="The project folder"),
    pipeline: Optional[Path] = typer.Option(None, help="The trained pipeline (default: <project>/training/<dataset>/final)"),
    precisions: str = typer.Option(",".join(PRECISIONS), help="Precisions, comma-separated"),
    targets: str = typer.Option("2,3", help="TOKEE target speed-ups"),
    costs: str = typer.Option("flops,layers", help="What the TOKEE targets count, comma-separated: flops (row 'tokee') "
                              "and/or layers per doc (row 'tokee-layers', the batch-size-1 cost)"),
    windows: str = typer.Option("0,1,2", help="TOKEE windows tried on dev"),
    tune_limit: int = typer.Option(0, help="Dev docs used for tuning, evenly spaced (0: all)"),
    steps: int = typer.Option(6, help="Most bisection runs per measured schedule and target"),
    margin: float = typer.Option(0.02, help="Relative safety margin on each TOKEE target (tuned on dev)"),
    outside: str = typer.Option("auto", help="Rows outside spaCy besides hf-full/hf-int8 (score phase; the time phase "
                                "times the scored ones): auto (ort-fp32, ort-int8 where onnxruntime imports, spacy-cnn "
                                "where its pipeline exists), none, or some of " + ",".join(OUTSIDE_METHODS)),
    spacy_cnn: Optional[Path] = typer.Option(None, help="The spacy-cnn pipeline (default: <project>/training/"
                                             "spacy_cnn_<dataset>/model-best, from benchmarks/train_spacy_cnn.sh)"),
    timing_docs: int = typer.Option(500, help="Test docs timed, evenly spaced (0: all); every score uses all"),
    batch_sizes: str = typer.Option("1,32", help="Batch sizes timed"),
    repeats: int = typer.Option(5, help="Timing repetitions (median kept)"),
    threads: int = typer.Option(1, help="torch intra-op threads, and ONNX Runtime's (0: torch's default)"),
    output_dir: Path = typer.Option(RESULTS, help="Where precision_<dataset>.json/.md go"),
    add: bool = typer.Option(False, "--add", help="Score phase: tune and score only --precisions and put their rows "
                             "into the existing report (replacing those precisions' rows); every other row, its "
                             "tuning and the outside rows stay as scored"),
) -> None:
    if phase not in ("all", "score", "time"):
        raise typer.BadParameter(f"--phase must be all, score or time; got {phase!r}")
    if add and phase != "score":
        raise typer.BadParameter("--add goes with --phase score (then time every row with --phase time)")
    chosen_precisions = [p.strip() for p in precisions.split(",") if p.strip()]
    if not chosen_precisions or any(p not in PRECISIONS for p in chosen_precisions):
        raise typer.BadParameter(f"--precisions must be some of {', '.join(PRECISIONS)}; got {precisions!r}")
    chosen_costs = [c.strip() for c in costs.split(",") if c.strip()]
    if not chosen_costs or any(c not in TOKEE_METHODS for c in chosen_costs):
        raise typer.BadParameter(f"--costs must be some of {', '.join(TOKEE_METHODS)}; got {costs!r}")
    started = time.time()
    if threads:
        torch.set_num_threads(threads)
    corpus = project / "corpus" / dataset
    path = pipeline or project / "training" / dataset / "final"
    if not path.exists():
        raise typer.BadParameter(f"No pipeline at {path}: train it first (benchmarks/train_corpus.sh {dataset}) or pass --pipeline")
    cnn_path = spacy_cnn or project / "training" / f"spacy_cnn_{dataset}" / "model-best"
    nlp = spacy.load(path)
    test = load_examples(nlp, corpus / "test.spacy")
    command = command_line("benchmarks/precision.py")
    output = output_dir / f"precision_{dataset}.json"
    if phase == "time":
        if not output.exists():
            raise typer.BadParameter(f"No scored rows at {output}: run --phase score first")
        report = json.loads(output.read_text(encoding="utf8"))
        rows = [LAYOUT.from_json(r) for r in report["rows"]]
        # The outside rows scored before are timed now: they must run here too,
        # spacy-cnn from the pipeline it was scored with unless --spacy-cnn says.
        scored_cnn = next((r.extra.get("runtime", {}).get("pipeline") for r in rows if r.method == SPACY_CNN), None)
        if spacy_cnn is None and scored_cnn:
            cnn_path = Path(scored_cnn)
        methods, _ = choose_outside(",".join(m for m in OUTSIDE_METHODS if any(r.method == m for r in rows)) or "none", cnn_path)
    elif add:
        if not output.exists():
            raise typer.BadParameter(f"--add needs a scored report at {output}: run --phase score first")
        # The outside rows stay as scored; only the pipeline's rows are new.
        methods, skipped = [], []
    else:
        methods, skipped = choose_outside(outside, cnn_path)
        for line in skipped:
            print(f"[outside] {line}", flush=True)
    runners = {**hf_rows(nlp), **outside_rows(nlp, methods, torch.get_num_threads(), cnn_path)}
    if phase == "time":
        # spacy-cnn is a pipeline of its own, trained beside the scoring: it is
        # scored again here (seconds), so its row's F1 is always that of the
        # pipeline timed, and the training record is the one it came from.
        for row in rows:
            if row.method == SPACY_CNN:
                row.result.update(row_result(row, nlp, runners, test, main_metric(nlp)))
                report["spacy_cnn_training"] = spacy_cnn_training(dataset)
    if phase != "time":
        metric = main_metric(nlp)
        dev = load_examples(nlp, corpus / "dev.spacy", tune_limit, spread=True)
        meta_path = corpus / "meta.json"
        meta = json.loads(meta_path.read_text(encoding="utf8")) if meta_path.exists() else {}
        print(f"{dataset}: metric {metric}, {len(dev)} dev docs for tuning, {len(test)} test docs, {torch.get_num_threads()} threads", flush=True)
        chosen = choose_rows(
            nlp, dev, chosen_precisions, parse_numbers(targets, float, "--targets"), parse_numbers(windows, int, "--windows"),
            steps, metric, margin, chosen_costs,
        )
        rows = chosen["rows"] + [Row(m, runners[m].precision, 1) for m in methods]
        if add:
            rows = [row for row in rows if row.method not in runners]  # hf-full, hf-int8: scored already
        score_rows(rows, lambda row: row_result(row, nlp, runners, test, metric), metric)
        name = early_exit_pipes(nlp)[0][0]
        report = {
            "corpus": dataset,
            "lang": meta.get("lang"),
            "split": "test",
            "metric": metric,
            "pipeline": str(path),
            "backbone": nlp.config.interpolate()["components"][name]["model"]["name"],
            "precisions": chosen_precisions,
            "test_docs": len(test),
            "tune_docs": len(dev),
            "windows_tried": parse_numbers(windows, int, "--windows"),
            "costs": chosen_costs,
            "margin": margin,
            "outside": methods,
            "outside_skipped": skipped,
            "spacy_cnn_training": spacy_cnn_training(dataset) if SPACY_CNN in methods else None,
            "unreachable": chosen["unreachable"],
            "tuning": chosen["tuning"],
            "score_command": command,
            "score_seconds": round(time.time() - started),
        }
        if add:
            report, rows = added_to(json.loads(output.read_text(encoding="utf8")), report, rows)
    # Each outside row says what ran it, as of this phase (the timing phase's threads).
    for row in rows:
        if row.method in runners:
            row.extra["runtime"] = runners[row.method].runtime
    # What ran, where: the last phase's command; threads and machine as now
    # (the timing phase's, when there is one).
    report.update(
        command=command,
        threads=torch.get_num_threads(),
        machine=machine(),
        cpu_fast_bf16=cpu_has_fast_bf16(),
        int8_kernels=int8_kernels_available(),
    )
    if phase != "score":
        texts = spread_sample([eg.reference.text for eg in test], timing_docs)
        sizes = parse_numbers(batch_sizes, int, "--batch-sizes")
        print(f"[time] {len(rows)} rows, {len(texts)} test docs, batch sizes {sizes}, {repeats} repetitions, "
              f"{torch.get_num_threads()} threads", flush=True)
        timings, n_words = row_timings(rows, nlp, runners, texts, sizes)
        keys = {method: next((r.key for r in rows if r.method == method), None) for method in REFERENCES.values()}
        references = {name: keys[method] for name, method in REFERENCES.items() if keys[method] is not None}
        time_rows(rows, timings, len(texts), n_words, sizes, repeats, references)
        report.update(
            batch_sizes=sizes,
            repeats=repeats,
            timing_docs=len(texts),
            time_command=command,
            time_seconds=round(time.time() - started),
        )
    report["docs"] = {"test": report["test_docs"], "tune": report["tune_docs"], "timing": report.get("timing_docs")}
    report["rows"] = [LAYOUT.to_json(r) for r in rows]
    write_outputs(report, output_dir)


if __name__ == "__main__":
    typer.run(main)
