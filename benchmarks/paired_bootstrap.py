"""Is one row of a results table really better than another? A paired bootstrap on test.

Two rows of benchmarks/results/<dataset>.json (say `tokee@3` and
`tokee-stage1@3`) are run again on the test split with the exit fields stored
in the table. Each test doc's entity counts (true positives, predicted,
gold; spans aligned to the gold tokens as spaCy's Scorer does) are kept, and
the docs are resampled with replacement, the same docs for both rows, to give
the spread of the F1 difference that a test split of this size allows.

    python benchmarks/paired_bootstrap.py weibo tokee@3 tokee-stage1@3

Writes benchmarks/results/bootstrap_<dataset>_<a>_vs_<b>.json. Span metrics
(`ents_f`) only; the totals are checked against the table's scores.
"""
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy
import spacy
import torch
import typer
from spacy.language import Language
from spacy.training import Example

sys.path.insert(0, str(Path(__file__).parent))
from run import PROJECT, RESULTS  # noqa: E402

from spacy_early_exit.tools.data import load_examples  # noqa: E402
from spacy_early_exit.tools.evaluate import exit_settings  # noqa: E402

# The table's model names and the pipelines under training/<dataset>/ they stand for.
PIPELINES = {"stage2": "final", "stage1": "stage1-final", "distill": "distill-final"}


def pipeline_dir(model: str) -> str:
    return PIPELINES.get(model, f"{model}-final")


def entity_counts(nlp: Language, examples: List[Example], fields: Dict[str, Any]) -> numpy.ndarray:
    """Per doc: (true positives, predicted entities, gold entities), shape (n_docs, 3)."""
    with exit_settings(nlp, fields):
        docs = list(nlp.pipe((eg.reference.text for eg in examples), batch_size=64))
    counts = numpy.zeros((len(examples), 3), dtype=numpy.int64)
    for i, (doc, eg) in enumerate(zip(docs, examples)):
        aligned = Example(doc, eg.reference)
        gold = {(span.label_, span.start, span.end) for span in eg.reference.ents}
        predicted = {(span.label_, span.start, span.end) for span in aligned.get_aligned_spans_x2y(doc.ents)}
        counts[i] = (len(gold & predicted), len(predicted), len(gold))
    return counts


def f1(counts: numpy.ndarray) -> numpy.ndarray:
    """Micro F1 in percent of count totals over the last-but-one axis."""
    tp, predicted, gold = counts[..., 0], counts[..., 1], counts[..., 2]
    denominator = predicted + gold
    return numpy.where(denominator > 0, 200.0 * tp / numpy.maximum(denominator, 1), 0.0)


def bootstrap(a: numpy.ndarray, b: numpy.ndarray, resamples: int, seed: int) -> Dict[str, float]:
    """Paired bootstrap of F1(a) - F1(b) over docs."""
    rng = numpy.random.default_rng(seed)
    n = len(a)
    deltas = numpy.empty(resamples)
    for i in range(resamples):
        picked = rng.integers(0, n, n)
        deltas[i] = f1(a[picked].sum(0)) - f1(b[picked].sum(0))
    low, high = numpy.percentile(deltas, [2.5, 97.5])
    return {
        "delta": round(float(f1(a.sum(0)) - f1(b.sum(0))), 3),
        "ci95": [round(float(low), 3), round(float(high), 3)],
        "share_a_not_better": round(float((deltas <= 0).mean()), 4),
        "std": round(float(deltas.std()), 3),
    }


def find_row(report: Dict[str, Any], key: str) -> Dict[str, Any]:
    method, _, target = key.partition("@")
    for row in report["rows"]:
        if row["method"] == method and str(row["target"]) == target:
            return row
    raise typer.BadParameter(f"No row {key!r}; the table has {[r['method'] + '@' + str(r['target']) for r in report['rows']]}")


def main(
    dataset: str = typer.Argument(..., help="Corpus name (benchmarks/results/<dataset>.json)"),
    row_a: str = typer.Argument(..., help="First row, method@target (e.g. tokee@3)"),
    row_b: str = typer.Argument(..., help="Second row, method@target (e.g. tokee-stage1@3)"),
    project: Path = typer.Option(PROJECT, help="The project folder"),
    results: Path = typer.Option(RESULTS, help="Where the results table is and the output goes"),
    resamples: int = typer.Option(2000, help="Bootstrap resamples"),
    seed: int = typer.Option(0, help="Resampling seed"),
    threads: int = typer.Option(1, help="torch threads"),
) -> None:
    torch.set_num_threads(threads)
    report = json.loads((results / f"{dataset}.json").read_text(encoding="utf8"))
    if report["metric"] != "ents_f":
        raise typer.BadParameter(f"{dataset} is scored by {report['metric']}; this bootstrap handles ents_f only")
    counts: List[Tuple[str, Dict[str, Any], numpy.ndarray]] = []
    for key in (row_a, row_b):
        row = find_row(report, key)
        if row["method"] == "hf-full":
            raise typer.BadParameter("hf-full is not an early-exit pipeline; pick another row")
        nlp = spacy.load(project / "training" / dataset / pipeline_dir(row["model"]))
        examples = load_examples(nlp, project / "corpus" / dataset / "test.spacy")
        per_doc = entity_counts(nlp, examples, row["fields"])
        total = float(f1(per_doc.sum(0)))
        # A rerun that does not give the table's score is not the same system.
        if abs(total - row["score"]) > 0.01:
            raise RuntimeError(f"{key}: rerun F1 {total:.2f} differs from the table's {row['score']}")
        print(f"{key}: F1 {total:.2f} over {len(examples)} docs, {int(per_doc[:, 2].sum())} gold entities", flush=True)
        counts.append((key, row, per_doc))
    result = bootstrap(counts[0][2], counts[1][2], resamples, seed)
    out = {
        "corpus": dataset, "split": "test", "a": row_a, "b": row_b,
        "scores": {key: row["score"] for key, row, _ in counts},
        "flops_speedup": {key: row["flops_speedup"] for key, row, _ in counts},
        "test_docs": len(counts[0][2]), "gold_entities": int(counts[0][2][:, 2].sum()),
        "resamples": resamples, "seed": seed, **result,
        "command": "python benchmarks/paired_bootstrap.py " + " ".join(sys.argv[1:]),
    }
    path = results / f"bootstrap_{dataset}_{row_a.replace('@', '')}_vs_{row_b.replace('@', '')}.json"
    path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf8")
    print(f"{row_a} - {row_b}: {result['delta']:+.2f} F1, 95% interval [{result['ci95'][0]:+.2f}, {result['ci95'][1]:+.2f}], "
          f"{row_a} not better in {100 * result['share_a_not_better']:.1f}% of {resamples} resamples")
    print(f"Wrote {path}")


if __name__ == "__main__":
    typer.run(main)
