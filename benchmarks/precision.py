"""Early exit x reduced precision (issue 12): one table, every row in one process.

On one corpus of the four-corpus benchmark, with its trained pipeline
(`project/training/<dataset>/final`, or --pipeline):

1. for each precision (fp32, bf16, int8): `full` depth, `tokee` at each
   target FLOPs speed-up (2x, 3x), and `tokee-layers` at each target speed-up
   in encoder layers per doc (what batch size 1 pays for: see
   `tools.evaluate.cost_summary`), with the exit schedule tuned on dev *for
   that precision* (`tools.tune.tune(..., precision=p, cost=c)`: thresholds
   fitted to the uncertainties that precision produces);
2. two outside rows with the same weights outside spaCy: `hf-full` (plain
   transformers, fp32; hf_full.py) and `hf-int8` (the same after
   `torch.ao.quantization.quantize_dynamic` on its nn.Linear layers: the one
   line a practitioner adds today);
3. every row scored on the whole test split, and timed on evenly spaced test
   docs at batch sizes 1 and 32, settings interleaved every 64 docs, median of
   the repetitions after a warm-up pass (as benchmarks/run.py);
4. benchmarks/results/precision_<dataset>.json and .md.

    python benchmarks/precision.py conll2003                 # everything
    python benchmarks/precision.py conll2003 --phase score   # tune + score (a busy machine is fine)
    python benchmarks/precision.py conll2003 --phase time    # time the scored rows (a quiet machine)

FLOPs do not depend on precision (they are counted from the exit schedule), so
a row's speed over its fp32 twin is what the precision itself buys.
"""
import json
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import spacy
import torch
import typer
from spacy.language import Language
from spacy.scorer import Scorer
from spacy.training import Example
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from hf_full import HFFullDepth  # noqa: E402

from spacy_early_exit.encoder.precision import PRECISIONS, cpu_has_fast_bf16, int8_kernels_available  # noqa: E402
from spacy_early_exit.tools.data import load_examples, spread_sample  # noqa: E402
from spacy_early_exit.tools.evaluate import Setting, early_exit_pipes, interleaved_seconds, setting_runner  # noqa: E402
from spacy_early_exit.tools.options import parse_numbers  # noqa: E402
from spacy_early_exit.tools.tune import main_metric, measure, metric_value, tune  # noqa: E402

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


@dataclass
class Row:
    """One line of the table.

    method (str): "full", "tokee" (tuned for FLOPs), "tokee-layers" (tuned for
        layers per doc), "hf-full" or "hf-int8".
    precision (str): what the encoder layers compute in.
    target (int): the FLOPs speed-up aimed at (1 for full depth).
    fields (Dict[str, Any]): the exit fields that reproduce the row, precision
        included (empty for the hf rows).
    result (Dict[str, Any]): score, flops_speedup, mean_exit_layer; after
        timing words_per_second, vs_hf_full, vs_hf_int8 and seconds.
    dev (Dict[str, Any]): TOKEE rows: the dev score and speed-up the tuner measured.
    """

    method: str
    precision: str
    target: int
    fields: Dict[str, Any] = field(default_factory=dict)
    result: Dict[str, Any] = field(default_factory=dict)
    dev: Dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.method}@{self.target}/{self.precision}"

    def as_json(self) -> Dict[str, Any]:
        timed = {"words_per_second": None, "vs_hf_full": None}
        return {"method": self.method, "precision": self.precision, "target": self.target,
                **timed, **self.result, "fields": self.fields, "dev": self.dev}

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "Row":
        own = ("method", "precision", "target", "fields", "dev")
        result = {k: v for k, v in data.items() if k not in own}
        return cls(data["method"], data["precision"], data["target"], data["fields"], result, data.get("dev", {}))


def practitioner_int8(nlp: Language) -> HFFullDepth:
    """`hf-full` after one line of dynamic int8 quantization of every nn.Linear
    (the off-ramp included, as `quantize_dynamic(model, {nn.Linear})` on a
    token classifier would): what a user would run today for speed."""
    hf = HFFullDepth(nlp)
    with warnings.catch_warnings():
        # torch.ao announces its move to torchao; in this torch the API works,
        # and this row is meant to be what practitioners use now.
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        # Not in place: the pipeline's own encoder stays fp32.
        hf.encoder = quantize_dynamic(hf.encoder, {nn.Linear}, dtype=torch.qint8).eval()
    return hf


def choose_rows(
    nlp: Language, dev: List[Example], precisions: Sequence[str], targets: Sequence[float], windows: Sequence[int],
    steps: int, metric: str, margin: float, costs: Sequence[str] = ("flops",),
) -> Dict[str, Any]:
    """Every row's exit fields; the TOKEE schedules tuned on dev, per precision and cost."""
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


def score_rows(rows: Sequence[Row], nlp: Language, hfs: Dict[str, HFFullDepth], test: List[Example], metric: str) -> None:
    """Score, FLOPs speed-up and mean exit layer of every row on the whole test split."""
    for row in rows:
        if row.method in hfs:
            hf = hfs[row.method]
            docs = hf.annotate([eg.predicted for eg in test])
            value = metric_value(Scorer(nlp).score([Example(d, eg.reference) for d, eg in zip(docs, test)]), metric)
            row.result = {"score": round(100 * value, 2) if value is not None else None, "flops_speedup": 1.0,
                          "mean_exit_layer": float(len(hf.encoder.layers)), "layer_speedup": 1.0}
        else:
            row.result = measure(nlp, test, row.fields, metric).as_row()
        print(f"[score] {row.key:22s} {metric}={row.result['score']} FLOPs x{row.result['flops_speedup']:.2f}", flush=True)


def time_rows(
    rows: Sequence[Row], nlp: Language, hfs: Dict[str, HFFullDepth], texts: List[str], batch_sizes: Sequence[int], repeats: int,
) -> None:
    """Median words/second per row and batch size, repetitions interleaved
    across rows; each row's ratio to hf-full and hf-int8 on the same loop."""
    words = [[t.text for t in doc] for doc in nlp.tokenizer.pipe(texts)]
    n_words = sum(len(w) for w in words)

    def hf_runner(hf: HFFullDepth) -> Callable[[slice, int], Any]:
        return lambda part, batch_size: hf.run(words[part], batch_size)

    runners = {
        row.key: hf_runner(hfs[row.method]) if row.method in hfs else setting_runner(nlp, texts, Setting(row.key, row.fields))
        for row in rows
    }
    # Warm-up: first-call allocations, lazy imports, and each precision's
    # converted layer stack, made on its first prediction.
    for run in runners.values():
        run(slice(None), max(batch_sizes))
    times = interleaved_seconds(runners, len(texts), batch_sizes, repeats)
    medians = {key: {b: statistics.median(times[key][b]) for b in batch_sizes} for key in runners}
    reference = {method: next(r.key for r in rows if r.method == method) for method in HF_METHODS}
    for row in rows:
        median = medians[row.key]
        row.result["words_per_second"] = {str(b): round(n_words / median[b], 1) for b in batch_sizes}
        for method, key in reference.items():
            # Words/s relative to the reference = its seconds over this row's.
            ratio_key = "vs_" + method.replace("-", "_")
            row.result[ratio_key] = {str(b): round(medians[key][b] / median[b], 3) for b in batch_sizes}
        row.result["seconds"] = {str(b): [round(t, 3) for t in times[row.key][b]] for b in batch_sizes}


def fp32_twin_delta(row: Dict[str, Any], rows: Sequence[Dict[str, Any]]) -> Optional[float]:
    """The row's score minus the fp32 row of the same method and target (None: no such pair)."""
    if row["method"] in HF_METHODS:
        twin = next((r for r in rows if r["method"] == "hf-full"), None)
    else:
        twin = next((r for r in rows if (r["method"], r["target"], r["precision"]) == (row["method"], row["target"], "fp32")), None)
    if twin is None or twin is row or row["score"] is None or twin["score"] is None:
        return None
    return round(row["score"] - twin["score"], 2)


def markdown(report: Dict[str, Any]) -> str:
    """The table: score, its change against the fp32 twin, FLOPs speed-up,
    words/s and words/s relative to hf-full per batch size ("–" until timed)."""
    sizes = [str(b) for b in report.get("batch_sizes", [1, 32])]
    head = ["method", "precision", "target", report["metric"], "Δ vs fp32", "FLOPs x", "layers x"]
    head += [f"words/s b{b}" for b in sizes] + [f"vs hf-full b{b}" for b in sizes] + [f"vs hf-int8 b{b}" for b in sizes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = report["rows"]
    for r in rows:
        delta = fp32_twin_delta(r, rows)
        cells = [r["method"], r["precision"], f"{r['target']}x", "–" if r["score"] is None else f"{r['score']:.2f}",
                 "–" if delta is None else f"{delta:+.2f}", f"{r['flops_speedup']:.2f}",
                 f"{r['layer_speedup']:.2f}" if r.get("layer_speedup") is not None else "–"]
        for key, form in (("words_per_second", "{:.0f}"), ("vs_hf_full", "{:.2f}"), ("vs_hf_int8", "{:.2f}")):
            values = r.get(key)
            cells += [form.format(values[b]) if values else "–" for b in sizes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(report: Dict[str, Any], output_dir: Path) -> Path:
    """precision_<dataset>.json and .md; RETURNS the JSON's path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = output_dir / f"precision_{report['corpus']}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf8")
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
    table = markdown(report)
    stem.with_suffix(".md").write_text(header + table + "\n", encoding="utf8")
    print(table)
    print(f"Wrote {stem}.json/.md" + ("" if timed else " (scores only; run --phase time next)"))
    return stem.with_suffix(".json")


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
    timing_docs: int = typer.Option(500, help="Test docs timed, evenly spaced (0: all); every score uses all"),
    batch_sizes: str = typer.Option("1,32", help="Batch sizes timed"),
    repeats: int = typer.Option(5, help="Timing repetitions (median kept)"),
    threads: int = typer.Option(1, help="torch intra-op threads (0: torch's default)"),
    output_dir: Path = typer.Option(RESULTS, help="Where precision_<dataset>.json/.md go"),
) -> None:
    if phase not in ("all", "score", "time"):
        raise typer.BadParameter(f"--phase must be all, score or time; got {phase!r}")
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
    nlp = spacy.load(path)
    hfs = {"hf-full": HFFullDepth(nlp), "hf-int8": practitioner_int8(nlp)}
    test = load_examples(nlp, corpus / "test.spacy")
    command = "python benchmarks/precision.py " + " ".join(sys.argv[1:])
    output = output_dir / f"precision_{dataset}.json"
    if phase == "time":
        if not output.exists():
            raise typer.BadParameter(f"No scored rows at {output}: run --phase score first")
        report = json.loads(output.read_text(encoding="utf8"))
        rows = [Row.from_json(r) for r in report["rows"]]
    else:
        metric = main_metric(nlp)
        dev = load_examples(nlp, corpus / "dev.spacy", tune_limit, spread=True)
        meta_path = corpus / "meta.json"
        meta = json.loads(meta_path.read_text(encoding="utf8")) if meta_path.exists() else {}
        print(f"{dataset}: metric {metric}, {len(dev)} dev docs for tuning, {len(test)} test docs, {torch.get_num_threads()} threads", flush=True)
        chosen = choose_rows(
            nlp, dev, chosen_precisions, parse_numbers(targets, float, "--targets"), parse_numbers(windows, int, "--windows"),
            steps, metric, margin, chosen_costs,
        )
        rows = chosen["rows"]
        score_rows(rows, nlp, hfs, test, metric)
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
            "unreachable": chosen["unreachable"],
            "tuning": chosen["tuning"],
            "score_command": command,
            "score_seconds": round(time.time() - started),
        }
    # What ran, where: the last phase's command; threads and machine as now
    # (the timing phase's, when there is one).
    report.update(
        command=command,
        threads=torch.get_num_threads(),
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        cpu_fast_bf16=cpu_has_fast_bf16(),
        int8_kernels=int8_kernels_available(),
    )
    if phase != "score":
        texts = spread_sample([eg.reference.text for eg in test], timing_docs)
        sizes = parse_numbers(batch_sizes, int, "--batch-sizes")
        print(f"[time] {len(rows)} rows, {len(texts)} test docs, batch sizes {sizes}, {repeats} repetitions, "
              f"{torch.get_num_threads()} threads", flush=True)
        time_rows(rows, nlp, hfs, texts, sizes, repeats)
        report.update(
            batch_sizes=sizes,
            repeats=repeats,
            timing_docs=len(texts),
            time_command=command,
            time_seconds=round(time.time() - started),
        )
    report["docs"] = {"test": report["test_docs"], "tune": report["tune_docs"], "timing": report.get("timing_docs")}
    report["rows"] = [r.as_json() for r in rows]
    write_outputs(report, output_dir)


if __name__ == "__main__":
    typer.run(main)
