"""What the benchmark tables share: rows, scoring, interleaved timing, output.

run.py (the speed/accuracy table) and precision.py (early exit x precision)
both score rows on the whole test split with spaCy's Scorer, time them side by
side in one process (tools.evaluate.interleaved_seconds: settings take turns
every 64 documents, the median of the repetitions is kept), turn seconds into
words/s and ratios against reference rows, and write a JSON report beside a
Markdown table. This module holds that once; each script keeps only its own
rows, columns and report layout (`ReportLayout`).
"""
import json
import os
import platform
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from spacy.language import Language
from spacy.scorer import Scorer
from spacy.tokens import Doc
from spacy.training import Example

from spacy_early_exit.tools.evaluate import interleaved_seconds
from spacy_early_exit.tools.measure import metric_value

# A timed call: processes the items in the slice at the batch size.
Runner = Callable[[slice, int], Any]
DASH = "\u2013"
# The run order of a row timed once: the timing docs as given.
DOCUMENT_ORDER = "document"
# The second run order: the timing docs sorted by word count, then batched, so
# each padded batch wastes little (what a serving loop that buckets by length
# does).
LENGTH_SORTED = "length-sorted"


@dataclass
class Row:
    """One line of a table.

    method (str): the row's name, e.g. "full", "tokee", "hf-full", "ort-int8".
    precision (str): what the encoder layers compute in ("fp32" unless set).
    target (int): the speed-up aimed at (1 for full depth and the outside rows).
    fields (Dict[str, Any]): the exit fields that reproduce the row (empty for
        rows run outside the early-exit pipeline).
    result (Dict[str, Any]): score, flops_speedup, mean_exit_layer, ...; after
        timing words_per_second, the ratios and seconds.
    dev (Dict[str, Any]): what tuning measured on dev (TOKEE rows).
    model (str): which loaded pipeline runs the row (run.py: "stage2", "stage1", ...).
    extra (Dict[str, Any]): more keys the report shows as they are (run.py:
        window, threshold; an outside row: its runtime).
    """

    method: str
    precision: str = "fp32"
    target: int = 1
    fields: Dict[str, Any] = field(default_factory=dict)
    result: Dict[str, Any] = field(default_factory=dict)
    dev: Dict[str, Any] = field(default_factory=dict)
    model: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The row's name in timings and lookups: method, target and precision."""
        return f"{self.method}@{self.target}/{self.precision}"


@dataclass(frozen=True)
class ReportLayout:
    """Where a script's report puts a row's parts, in key order: `head`, the
    `untimed` placeholders, the result, `extra`, the dev keys (flat unless
    `nest_dev`), "model" (with `model`), "fields", then "dev" (with `nest_dev`).

    head (Tuple[str, ...]): Row attributes written first, e.g. ("method", "target").
    untimed (Tuple[str, ...]): result keys written as None until the rows are timed.
    extra (Tuple[str, ...]): the keys read back into `Row.extra`.
    nest_dev (bool): `dev` as one "dev" key (else its keys at the top level).
    dev_keys (Tuple[str, ...]): with a flat `dev`, the keys read back into it.
    model (bool): write the row's "model".
    """

    head: Tuple[str, ...]
    untimed: Tuple[str, ...] = ()
    extra: Tuple[str, ...] = ()
    nest_dev: bool = True
    dev_keys: Tuple[str, ...] = ()
    model: bool = False

    def to_json(self, row: Row) -> Dict[str, Any]:
        """The row as the report keeps it.

        row (Row): the row.
        RETURNS (Dict[str, Any]): its JSON object.
        """
        data: Dict[str, Any] = {name: getattr(row, name) for name in self.head}
        data.update({key: None for key in self.untimed})
        data.update(row.result)
        data.update(row.extra)
        if not self.nest_dev:
            data.update(row.dev)
        if self.model:
            data["model"] = row.model
        data["fields"] = row.fields
        if self.nest_dev:
            data["dev"] = row.dev
        return data

    def from_json(self, data: Dict[str, Any]) -> Row:
        """A row back from the report (the timing phase reads the scored rows).

        data (Dict[str, Any]): one of the report's rows.
        RETURNS (Row): the row; every key the layout does not name is result.
        """
        own = set(self.head) | set(self.extra) | {"fields", "model", "dev"} | set(self.dev_keys)
        extra = {k: data[k] for k in self.extra if k in data}
        dev = data.get("dev", {}) if self.nest_dev else {k: data[k] for k in self.dev_keys if k in data}
        result = {k: v for k, v in data.items() if k not in own}
        head = {name: data[name] for name in self.head}
        return Row(fields=data["fields"], result=result, dev=dev, model=data.get("model", ""), extra=extra, **head)


def scored_percent(nlp: Language, docs: Sequence[Doc], test: Sequence[Example], metric: str) -> Optional[float]:
    """spaCy's Scorer on docs labelled outside the early-exit pipeline, so an
    outside row is scored exactly like the pipeline's own rows.

    nlp (Language): the pipeline whose components' scorers score (the early-exit one).
    docs (Sequence[Doc]): one predicted doc per test example, same text.
    test (Sequence[Example]): the gold examples.
    metric (str): the score key, e.g. "ents_f".
    RETURNS (Optional[float]): the score in percent, rounded to 2 places (None: no score).
    """
    scores = Scorer(nlp).score([Example(doc, eg.reference) for doc, eg in zip(docs, test)])
    value = metric_value(scores, metric)
    return round(100 * value, 2) if value is not None else None


def score_rows(rows: Sequence[Row], score: Callable[[Row], Dict[str, Any]], metric: str) -> None:
    """Set every row's result to what `score` measures on the test split.

    rows (Sequence[Row]): the rows; each one's result is replaced.
    score (Callable[[Row], Dict[str, Any]]): a row's result (score, flops_speedup, ...).
    metric (str): the score key, for the progress line.
    """
    for row in rows:
        row.result = score(row)
        print(f"[score] {row.key:24s} {metric}={row.result['score']} FLOPs x{row.result['flops_speedup']:.2f}", flush=True)


@dataclass
class Timing:
    """How one row is timed.

    runs (Dict[str, Runner]): run order name -> runner. Most rows have one,
        `DOCUMENT_ORDER`; a row given the timing docs both as they are and
        sorted by length reports its faster order per batch size.
    extra_batch_sizes (Tuple[int, ...]): batch sizes beyond the table's, timed
        in a second pass; the table's largest batch size then reports the
        row's best from that size up (a row with its own best batch size).
    """

    runs: Dict[str, Runner]
    extra_batch_sizes: Tuple[int, ...] = ()


def one_order(runner: Runner) -> Timing:
    """A row timed on the timing docs as they are.

    runner (Runner): the row's runner.
    RETURNS (Timing): its timing.
    """
    return Timing({DOCUMENT_ORDER: runner})


def run_orders(items: Sequence[Any], n_words: Sequence[int],
               orders: Sequence[str] = (DOCUMENT_ORDER, LENGTH_SORTED)) -> Dict[str, List[Any]]:
    """`items` in each run order: as given, or by their word counts `n_words`
    (stable: ties keep their order).

    items (Sequence[Any]): the timing docs (texts, or their words).
    n_words (Sequence[int]): each item's word count (read only to sort).
    orders (Sequence[str]): DOCUMENT_ORDER and/or LENGTH_SORTED.
    RETURNS (Dict[str, List[Any]]): order name -> the items in that order.
    """
    def arranged(order: str) -> List[Any]:
        if order == LENGTH_SORTED:
            return [items[i] for i in sorted(range(len(items)), key=lambda i: n_words[i])]
        return list(items)

    return {order: arranged(order) for order in orders}


def words_per_second(n_words: int, seconds: float) -> float:
    """Words/s, rounded as the tables print them.

    n_words (int): the words processed.
    seconds (float): the time taken.
    RETURNS (float): words per second, 1 decimal.
    """
    return round(n_words / seconds, 1)


def time_rows(
    rows: Sequence[Row],
    timings: Dict[str, Timing],
    n_items: int,
    n_words: int,
    batch_sizes: Sequence[int],
    repeats: int,
    references: Dict[str, str],
) -> Dict[str, Dict[int, float]]:
    """Median words/s per row and batch size, every row timed side by side.

    Each runner runs once at the largest batch size first (first-call
    allocations, lazy imports, each precision's converted layer stack). Then
    every run order of every row takes turns per chunk of 64 items
    (interleaved_seconds); rows with `extra_batch_sizes` get a second pass at
    those, over all items at once so that a batch of up to `n_items` forms.

    Writes into each row's result: `words_per_second` per batch size (a row
    with several run orders: its faster one, each order kept in
    `words_per_second_by_order`; with extra batch sizes: the best from the
    table's largest size up, every size kept in `words_per_second_by_batch`
    and the one used in `batch_size_used`), one ratio per reference (this
    row's words/s over the reference row's), and `seconds` (the repetitions
    behind the reported value).

    rows (Sequence[Row]): the rows; each needs a timing.
    timings (Dict[str, Timing]): row key -> how to time it.
    n_items (int): how many items (docs) the runners cover.
    n_words (int): the words in those items.
    batch_sizes (Sequence[int]): the table's batch sizes.
    repeats (int): repetitions (the median is kept).
    references (Dict[str, str]): result key -> the key of the row it is
        relative to, e.g. {"vs_hf_full": "hf-full@1/fp32"}; absent rows are skipped.
    RETURNS (Dict[str, Dict[int, float]]): the unrounded words/s reported per
        row key and batch size.
    """
    def runner_name(row: Row, order: str) -> str:
        return f"{row.key}|{order}"

    runners = {runner_name(row, order): run for row in rows for order, run in timings[row.key].runs.items()}
    widest = max(batch_sizes)
    for run in runners.values():
        run(slice(None), widest)
    times = interleaved_seconds(runners, n_items, batch_sizes, repeats)
    extra = {runner_name(row, order): run for row in rows if timings[row.key].extra_batch_sizes
             for order, run in timings[row.key].runs.items()}
    extra_sizes = sorted({b for row in rows for b in timings[row.key].extra_batch_sizes} - set(batch_sizes))
    if extra and extra_sizes:
        print(f"[time] batch sizes {extra_sizes} for {sorted({name.split('|')[0] for name in extra})}", flush=True)
        for run in extra.values():
            run(slice(None), max(extra_sizes))
        more = interleaved_seconds(extra, n_items, extra_sizes, repeats, chunk=max(n_items, 1))
        for name, per_size in more.items():
            times[name].update(per_size)
    speeds: Dict[str, Dict[int, float]] = {}
    seconds: Dict[str, Dict[str, List[float]]] = {}
    for row in rows:
        timing = timings[row.key]
        # A row read back from an earlier report keeps its old result keys:
        # drop the timing ones this run may not write again.
        for stale in ("words_per_second_by_order", "words_per_second_by_batch", "batch_size_used"):
            row.result.pop(stale, None)
        sizes = list(batch_sizes) + [b for b in extra_sizes if b in timing.extra_batch_sizes]
        # Per order and batch size: the median seconds' words/s.
        by_order = {order: {b: n_words / statistics.median(times[runner_name(row, order)][b]) for b in sizes}
                    for order in timing.runs}
        best_order = {b: max(by_order, key=lambda order: by_order[order][b]) for b in sizes}
        best = {b: by_order[best_order[b]][b] for b in sizes}
        used = {b: b for b in batch_sizes}
        if timing.extra_batch_sizes:
            used[widest] = max((b for b in sizes if b >= widest), key=lambda b: best[b])
        speeds[row.key] = {b: best[used[b]] for b in batch_sizes}
        seconds[row.key] = {
            str(b): [round(t, 3) for t in times[runner_name(row, best_order[used[b]])][used[b]]] for b in batch_sizes
        }
        row.result["words_per_second"] = {str(b): round(speeds[row.key][b], 1) for b in batch_sizes}
        if len(timing.runs) > 1:
            row.result["words_per_second_by_order"] = {
                order: {str(b): round(by_order[order][b], 1) for b in batch_sizes} for order in timing.runs
            }
        if timing.extra_batch_sizes:
            row.result["words_per_second_by_batch"] = {str(b): round(best[b], 1) for b in sizes}
            row.result["batch_size_used"] = {str(b): used[b] for b in batch_sizes}
    # The ratios need every row's speed first: the reference may come later.
    for row in rows:
        for name, reference in references.items():
            if reference in speeds:
                row.result[name] = {str(b): round(speeds[row.key][b] / speeds[reference][b], 3) for b in batch_sizes}
        row.result["seconds"] = seconds[row.key]
    return speeds


def dash(value: Any, form: str = "{}") -> str:
    """A table cell: the value formatted, or a dash where there is none.

    value (Any): the value (None: no value).
    form (str): the format string.
    RETURNS (str): the cell.
    """
    return DASH if value is None else form.format(value)


def markdown_table(head: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    """A Markdown table.

    head (Sequence[str]): the column names.
    lines (Sequence[Sequence[str]]): the rows' cells.
    RETURNS (str): the table, no trailing newline.
    """
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(out)


def per_batch_cells(row: Dict[str, Any], key: str, sizes: Sequence[str], form: str) -> List[str]:
    """One cell per batch size of a per-batch-size result ("–" until timed).

    row (Dict[str, Any]): a report row.
    key (str): the result key, e.g. "words_per_second".
    sizes (Sequence[str]): the batch sizes, as the report's keys.
    form (str): the format string.
    RETURNS (List[str]): the cells.
    """
    values = row.get(key)
    return [dash(values.get(b) if values else None, form) for b in sizes]


def write_report(report: Dict[str, Any], stem: Path, header: str, table: str) -> Path:
    """Write `<stem>.json` (the report) and `<stem>.md` (header and table).

    report (Dict[str, Any]): the report.
    stem (Path): the output path without suffix; its folder is created.
    header (str): the Markdown text above the table.
    table (str): the Markdown table.
    RETURNS (Path): the JSON file.
    """
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf8")
    stem.with_suffix(".md").write_text(header + table + "\n", encoding="utf8")
    return stem.with_suffix(".json")


def machine() -> str:
    """The machine as the reports name it: architecture, CPUs, torch version."""
    return f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"


def command_line(script: str) -> str:
    """This process's command line as a report records it.

    script (str): the script's path from the repository root, e.g. "benchmarks/run.py".
    RETURNS (str): "python <script> <arguments>".
    """
    return f"python {script} " + " ".join(sys.argv[1:])
