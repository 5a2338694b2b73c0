"""Is one row of a results table really better than another? A paired bootstrap on test.

Two rows of benchmarks/results/<dataset>.json (say `tokee@3` and
`tokee-stage1@3`) are run again on the test split with the exit fields stored
in the table. Each test doc's entity counts (true positives, predicted,
gold; spans aligned to the gold tokens as spaCy's Scorer does) are kept, and
the docs are resampled with replacement, the same docs for both rows, to give
the spread of the F1 difference that a test split of this size allows. The
counting and the bootstrap are spacy_early_exit/tools/paired_bootstrap.py's.

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
from spacy_early_exit.tools.paired_bootstrap import bootstrap as paired_bootstrap  # noqa: E402
from spacy_early_exit.tools.paired_bootstrap import f_score, setting_counts  # noqa: E402

# The table's model names and the pipelines under training/<dataset>/ they stand for.
PIPELINES = {"stage2": "final", "stage1": "stage1-final", "distill": "distill-final"}


def pipeline_dir(model: str) -> str:
    return PIPELINES.get(model, f"{model}-final")


def entity_counts(nlp: Language, examples: List[Example], fields: Dict[str, Any]) -> numpy.ndarray:
    """Per doc: (true positives, predicted entities, gold entities), shape (n_docs, 3)."""
    return setting_counts(nlp, examples, fields, "ents_f")


# Micro F1 in percent of count totals over the last axis.
f1 = f_score


def bootstrap(a: numpy.ndarray, b: numpy.ndarray, resamples: int, seed: int) -> Dict[str, float]:
    """Paired bootstrap of F1(a) - F1(b) over docs, 95% interval (the package's, under this table's keys)."""
    result = paired_bootstrap(a, b, resamples, seed, confidence=0.95)
    return {"delta": result["delta"], "ci95": result["ci"], "share_a_not_better": result["share_a_not_better"], "std": result["std"]}


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
