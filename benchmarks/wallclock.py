"""Wall-clock vs FLOPs: full depth against TOKEE at a threshold that halves FLOPs.

Runs a trained early-exit pipeline over the demo corpus test split at batch
sizes 1 and 32, settings interleaved, median of the repetitions, and writes
JSON + Markdown to benchmarks/results/. TOKEE runs at two thresholds:

- "tokee": chosen on the held-out dev tail for the target, the way a user
  would set it. On the demo's 200 dev sentences it overshoots on test.
- "tokee-timed": the threshold at which the timed texts themselves reach the
  target FLOPs speed-up, found from their FLOPs alone (no labels are read), so
  the timing runs exactly at the operating point "halves FLOPs". Its score is
  shown for information; it is not a tuned result.

    python benchmarks/wallclock.py project/training/uner_en_ewt/final \
        --test project/corpus/uner_en_ewt/test.spacy --tune project/corpus/uner_en_ewt/dev.spacy
"""
import json
import platform
import time
from pathlib import Path

import spacy
import torch
import typer

from spacy_early_exit.tools.data import load_examples
from spacy_early_exit.tools.evaluate import Setting, compare, format_table
from spacy_early_exit.tools.tune import threshold_for_speedup

RESULTS = Path(__file__).parent / "results"


def main(
    pipeline: Path = typer.Argument(..., help="Trained pipeline folder"),
    test: Path = typer.Option(Path("project/corpus/uner_en_ewt/test.spacy"), help="Evaluation data"),
    tune: Path = typer.Option(Path("project/corpus/uner_en_ewt/dev.spacy"), help="Held-out data for the threshold"),
    target: float = typer.Option(2.0, help="FLOPs speed-up the TOKEE threshold must reach"),
    window: int = typer.Option(2, help="TOKEE window k"),
    repeats: int = typer.Option(5, help="Timing repetitions"),
    name: str = typer.Option("wallclock_uner", help="Results file stem"),
    threads: int = typer.Option(0, help="torch intra-op threads (0: torch's default)"),
) -> None:
    start = time.time()
    if threads:
        torch.set_num_threads(threads)
    nlp = spacy.load(pipeline)
    test_examples = load_examples(nlp, test)
    tune_texts = [eg.reference.text for eg in load_examples(nlp, tune)]
    threshold = threshold_for_speedup(nlp, tune_texts, target, "tokee", window)
    if threshold is None:
        raise SystemExit(f"TOKEE cannot reach {target}x FLOPs speed-up on {tune}")
    print(f"threshold for {target}x on {tune.name}: {threshold} (window {window})")
    test_texts = [eg.reference.text for eg in test_examples]
    timed_threshold = threshold_for_speedup(nlp, test_texts, target, "tokee", window)
    print(f"threshold for {target}x on the timed texts' FLOPs: {timed_threshold}")
    tokee = {"exit_mode": "tokee", "window": window, "thresholds": None}
    settings = [
        Setting("full", {"exit_mode": "off"}),
        Setting("tokee", {**tokee, "threshold": threshold}),
    ]
    if timed_threshold is not None:
        settings.append(Setting("tokee-timed", {**tokee, "threshold": timed_threshold}))
    rows = compare(nlp, test_examples, settings, "ents_f", None, (1, 32), repeats)
    table = format_table(rows, "ents_f")
    print(table)
    for row in rows[1:]:
        row["wall_over_flops"] = {bs: round(row["wall_speedup"][bs] / row["flops_speedup"], 3) for bs in row["wall_speedup"]}
        for bs, ratio in row["wall_over_flops"].items():
            print(f"{row['method']}, batch {bs}: wall-clock speed-up / FLOPs speed-up = {ratio:.2f} (target >= 0.8)")
    report = {
        "pipeline": str(pipeline),
        "test": str(test),
        "tune": str(tune),
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {platform.system()}",
        "repeats": repeats,
        "words": sum(len(eg.reference) for eg in test_examples),
        "seconds": round(time.time() - start, 1),
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf8")
    (RESULTS / f"{name}.md").write_text(table + "\n", encoding="utf8")
    print(f"wrote {RESULTS / name}.json/.md")


if __name__ == "__main__":
    typer.run(main)
