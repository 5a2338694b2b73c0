"""Score, FLOPs and wall-clock speed of early-exit pipelines, side by side.

Speed is only comparable within one process on one machine, so every setting
is timed in the same run, the settings interleaved every few dozen docs, and
the median of the repetitions kept; speed-ups are ratios against the
full-depth setting.
"""
import statistics
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from spacy.language import Language
from spacy.scorer import Scorer
from spacy.tokens import Doc
from spacy.training import Example

from ..pipes.base import EncoderOwner, TaskHead
from ..pipes.exit_fields import POLICY_FIELDS
from ..pipes.record import read_record
from .heads import HeadScoring, head_metrics, head_value, rounded_scores, score_heads

SETTING_FIELDS = tuple(POLICY_FIELDS)


@dataclass
class Setting:
    """One point to evaluate: a label and the exit fields it changes.

    method (str): row label ("full", "tokee", "sentee", "static-<k>", ...).
    fields (Dict[str, Any]): exit fields set on every early-exit pipe.
    nlp (Optional[Language]): the pipeline this setting runs on; None = the
        one `compare` is given (settings may come from different models, e.g.
        a target whose stage-1 model won on dev).
    info (Dict[str, Any]): extra keys for the setting's row (stage, pipeline,
        target, layer); they override the computed window and threshold.
    """

    method: str
    fields: Dict[str, Any] = field(default_factory=dict)
    nlp: Optional[Language] = None
    info: Dict[str, Any] = field(default_factory=dict)

    def model(self, default: Language) -> Language:
        """The pipeline to run: the setting's own, else `default`."""
        return self.nlp if self.nlp is not None else default


def early_exit_pipes(nlp: Language) -> List[Tuple[str, EncoderOwner]]:
    """The pipeline's early-exit encoders, in order: each standalone task
    component, and each `tokee_transformer` (once, whatever the number of
    heads listening to it). They hold the exit settings and write the
    ``doc._.early_exit`` records."""
    pipes = [(name, pipe) for name, pipe in nlp.pipeline if isinstance(pipe, EncoderOwner)]
    if not pipes:
        raise ValueError(f"The pipeline {nlp.pipe_names} has no early-exit component")
    return pipes


def task_heads(nlp: Language) -> List[Tuple[str, TaskHead]]:
    """The pipeline's early-exit task components (standalone or listening), in order."""
    return [(name, pipe) for name, pipe in nlp.pipeline if isinstance(pipe, TaskHead)]


@contextmanager
def exit_settings(nlp: Language, fields: Dict[str, Any]) -> Iterator[None]:
    """Run every early-exit pipe under the given exit fields (and `precision`)
    inside a ``with`` block; each pipe's own setting comes back afterwards."""
    unknown = set(fields) - set(SETTING_FIELDS)
    if unknown:
        raise ValueError(f"Unknown exit fields {sorted(unknown)}; expected {SETTING_FIELDS}")
    with ExitStack() as stack:
        for _, pipe in early_exit_pipes(nlp):
            stack.enter_context(pipe.using(**fields))
        yield


def cost_summary(docs: Sequence[Doc], nlp: Language) -> Dict[str, float]:
    """Corpus FLOPs speed-up, mean exit layer and layer speed-up over every early-exit pipe.

    The layer speed-up is full depth's encoder layers per doc over the layers
    each doc really runs (its last exit). It is what one doc at a time gains:
    at batch size 1 a layer costs about the same however few of its tokens
    are still active (reading the layer's weights and the per-call overhead
    dominate), so a doc is as slow as its slowest token.
    """
    flops = full = 0
    layers: List[int] = []
    layers_run = layers_full = 0
    pipes = early_exit_pipes(nlp)
    for doc in docs:
        for name, pipe in pipes:
            record = read_record(doc, name)
            if record is None:
                raise ValueError(f"Component '{name}' has not annotated the doc {doc.text[:40]!r}")
            flops += record["flops"]
            full += record["full_flops"]
            exits = [layer for layer in record["exit_layers"] if layer > 0]
            layers.extend(exits)
            if exits:
                layers_run += max(exits)
                layers_full += pipe.num_layers
    return {
        "flops": flops,
        "full_flops": full,
        "flops_speedup": full / flops if flops else 1.0,
        "mean_exit_layer": sum(layers) / len(layers) if layers else 0.0,
        "layer_speedup": layers_full / layers_run if layers_run else 1.0,
    }


def run_examples(nlp: Language, examples: Sequence[Example], batch_size: int = 64) -> List[Example]:
    """Annotate the examples' texts: RETURNS each predicted doc with its gold, ready to score."""
    docs = nlp.pipe((eg.reference.text for eg in examples), batch_size=batch_size)
    return [Example(doc, eg.reference) for doc, eg in zip(docs, examples)]


def score(nlp: Language, examples: Sequence[Example], batch_size: int = 64) -> Tuple[Dict[str, Any], Dict[str, float]]:
    """Annotate the examples' texts; RETURNS spaCy's scores and the cost summary."""
    scored = run_examples(nlp, examples, batch_size)
    return Scorer(nlp).score(scored), cost_summary([eg.predicted for eg in scored], nlp)


def interleaved_seconds(
    runners: Dict[str, Callable[[slice, int], Any]],
    n_items: int,
    batch_sizes: Sequence[int] = (1, 32),
    repeats: int = 5,
    progress: bool = True,
    chunk: int = 64,
) -> Dict[str, Dict[int, List[float]]]:
    """Time every runner at every batch size, interleaved chunk by chunk.

    On a shared machine the speed drifts within seconds. Running each setting
    over the whole corpus in turn lets one setting catch a slow spell that
    another misses; here every chunk of `chunk` items is run by all runners
    back to back (in a rotating order, so none always goes first), and a
    repetition's time is the sum over its chunks. A chunk is never smaller
    than the batch size being timed, so every batch but the last is whole.

    runners (Dict[str, Callable[[slice, int], Any]]): name -> a call that
        processes the items in the slice at the given batch size.
    n_items (int): how many items the runners cover.
    chunk (int): items per interleaving step (at least the batch size).
    RETURNS (Dict[str, Dict[int, List[float]]]): seconds per repetition, per
        runner and batch size (take the median).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1; got {chunk}")
    names = list(runners)
    times: Dict[str, Dict[int, List[float]]] = {name: {bs: [0.0] * repeats for bs in batch_sizes} for name in names}
    for rep in range(repeats):
        started = time.perf_counter()
        for batch_size in batch_sizes:
            # A chunk smaller than the batch would time smaller batches than
            # the column says (batch 128 in chunks of 64 ran batches of 64).
            step_items = max(chunk, batch_size)
            for step, begin in enumerate(range(0, n_items, step_items)):
                part = slice(begin, begin + step_items)
                turn = step % len(names) if names else 0
                for name in names[turn:] + names[:turn]:
                    start = time.perf_counter()
                    runners[name](part, batch_size)
                    times[name][batch_size][rep] += time.perf_counter() - start
        if progress:
            print(f"  timing: repetition {rep + 1}/{repeats} done in {time.perf_counter() - started:.0f} s", flush=True)
    return times


def setting_runner(nlp: Language, texts: Sequence[str], setting: Setting) -> Callable[[slice, int], None]:
    """A call that runs a slice of `texts` through the setting's pipeline (else
    `nlp`) with the setting's exit fields."""
    model = setting.model(nlp)

    def run(part: slice, batch_size: int) -> None:
        with exit_settings(model, setting.fields):
            for _ in model.pipe(texts[part], batch_size=batch_size):
                pass

    return run


def words_per_second(
    nlp: Language,
    texts: Sequence[str],
    settings: Sequence[Setting],
    batch_sizes: Sequence[int] = (1, 32),
    repeats: int = 5,
    progress: bool = True,
) -> Dict[str, Dict[int, float]]:
    """Median words/second per setting and batch size, settings interleaved chunk by chunk."""
    n_words = sum(len(doc) for doc in nlp.tokenizer.pipe(texts))
    runners = {setting.method: setting_runner(nlp, texts, setting) for setting in settings}
    times = interleaved_seconds(runners, len(texts), batch_sizes, repeats, progress)
    return {
        method: {bs: n_words / statistics.median(times[method][bs]) for bs in batch_sizes}
        for method in runners
    }


def compare(
    nlp: Language,
    examples: Sequence[Example],
    settings: Sequence[Setting],
    metric: str,
    timing_texts: Optional[Sequence[str]] = None,
    batch_sizes: Sequence[int] = (1, 32),
    repeats: int = 5,
) -> List[Dict[str, Any]]:
    """Score every setting and time them side by side; the first is the reference.

    RETURNS (List[Dict[str, Any]]): one row per setting with score (0-100),
        flops_speedup, words_per_second and wall_speedup per batch size,
        mean_exit_layer, window and threshold, and the setting's `info` keys.
        On a shared encoder, `score` is the first head's metric and a row
        adds ``scores`` ({head: {metric: value}}), ``objective`` (the worst
        head's score minus its score in the first row, in points) and
        ``worst_head``; FLOPs are the shared encoder's, counted once.
    """
    rows: List[Dict[str, Any]] = []
    reference: Optional[HeadScoring] = None  # a shared pipeline's first row: every head's reference
    for setting in settings:
        model = setting.model(nlp)
        metrics = head_metrics(model, metric)
        with exit_settings(model, setting.fields):
            scored = run_examples(model, examples)
            cost = cost_summary([eg.predicted for eg in scored], model)
            heads = score_heads(model, scored, metrics) if metrics else None
            pipe = early_exit_pipes(model)[0][1]
            exits_on = pipe.exit_mode != "off"
            window = pipe.window if pipe.exit_mode == "tokee" else None
            threshold = pipe.threshold if exits_on else None
        if heads is not None:
            # `score` stays the first head's metric, so readers of the
            # single-component rows (tables, plots) keep working.
            value: Any = head_value(heads, next(iter(heads)))
        else:
            scores = Scorer(model).score(scored)
            value = scores.get(metric)
            if value is None:
                raise ValueError(f"Metric {metric!r} not in the scores: {sorted(scores)}")
        row = {
            "method": setting.method,
            "score": round(100.0 * float(value), 2) if value is not None else None,
            "flops_speedup": round(cost["flops_speedup"], 3),
            "mean_exit_layer": round(cost["mean_exit_layer"], 3),
            "window": window,
            "threshold": threshold,
            **setting.info,
        }
        if heads is not None and metrics is not None:
            reference = reference or HeadScoring(metrics, heads)
            delta, worst = reference.objective(heads)
            row.update(scores=rounded_scores(heads), objective=round(100.0 * delta, 2) if delta is not None else None, worst_head=worst)
        rows.append(row)
        print(f"  scored {setting.method}: {metric}={number(row['score'])} FLOPs x{row['flops_speedup']:.2f}", flush=True)
    texts = list(timing_texts) if timing_texts is not None else [eg.reference.text for eg in examples]
    speed = words_per_second(nlp, texts, settings, batch_sizes, repeats)
    reference = settings[0].method
    for row in rows:
        wps = speed[row["method"]]
        row["words_per_second"] = {str(bs): round(wps[bs], 1) for bs in batch_sizes}
        row["wall_speedup"] = {str(bs): round(wps[bs] / speed[reference][bs], 3) for bs in batch_sizes}
    return rows


def format_table(rows: Sequence[Dict[str, Any]], metric: str) -> str:
    """A Markdown table of `compare` rows; a "stage" column when the rows say
    which training stage's model each ran on; on a shared encoder one column
    per head's metric and the worst head's delta instead of `metric`."""
    sizes = list(rows[0]["words_per_second"]) if rows else []
    staged = any("stage" in row for row in rows)
    per_head = [(head, key) for head, scores in (rows[0].get("scores") or {}).items() for key in scores] if rows else []
    scored = [f"{head} {key}" for head, key in per_head] + ["worst \u0394"] if per_head else [metric]
    head = ["method"] + (["stage"] if staged else []) + scored + ["FLOPs x"]
    head += [f"wall x (b{b})" for b in sizes] + [f"words/s (b{b})" for b in sizes]
    head += ["mean exit", "window", "threshold"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["method"]] + ([dash(row.get("stage"))] if staged else [])
        if per_head:
            cells += [number(row["scores"][h][k]) for h, k in per_head] + [number(row.get("objective"))]
        else:
            cells += [number(row["score"])]
        cells += [f"{row['flops_speedup']:.2f}"]
        cells += [f"{row['wall_speedup'][b]:.2f}" for b in sizes]
        cells += [f"{row['words_per_second'][b]:.0f}" for b in sizes]
        # A field that does not apply (full depth has no window) prints as the README's dash.
        cells += [f"{row['mean_exit_layer']:.2f}"] + [dash(row[key]) for key in ("window", "threshold")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def number(value: Optional[float]) -> str:
    """A score cell: two decimals, or the dash when the scorer had nothing to score."""
    return dash(None) if value is None else f"{value:.2f}"


def dash(value: Any) -> str:
    """A table cell: a field that does not apply (full depth has no window) prints as the README's dash."""
    return "\u2013" if value is None else str(value)


__all__ = [
    "Setting", "compare", "cost_summary", "early_exit_pipes", "exit_settings", "task_heads", "format_table",
    "interleaved_seconds", "run_examples", "score", "setting_runner", "words_per_second",
]
