"""Command-line tools: ``python -m spacy_early_exit COMMAND``."""
import json
import platform
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(no_args_is_help=True, help="Early-exit sequence labeling for spaCy")


def _load_examples(nlp, path: Path, limit: int = 0):
    from spacy.tokens import DocBin
    from spacy.training import Example

    if not path.exists():
        raise typer.BadParameter(f"No such data file: {path}")
    refs = list(DocBin().from_disk(path).get_docs(nlp.vocab))
    if limit:
        refs = refs[:limit]
    return [Example(nlp.make_doc(doc.text), doc) for doc in refs]


@app.command()
def evaluate(
    pipeline: Path = typer.Argument(..., help="Trained pipeline folder"),
    data: Path = typer.Argument(..., help="Evaluation .spacy file (e.g. test)"),
    tune_data: Optional[Path] = typer.Option(None, help="Held-out .spacy file on which TOKEE thresholds are chosen (never the test set)"),
    speedup: List[float] = typer.Option([2.0], help="Target FLOPs speed-ups for TOKEE (with --tune-data)"),
    window: int = typer.Option(2, help="TOKEE window k"),
    metric: str = typer.Option("ents_f", help="Score to report"),
    batch_sizes: str = typer.Option("1,32", help="Batch sizes to time, comma separated"),
    repeats: int = typer.Option(5, help="Timing repetitions (median kept)"),
    timing_docs: int = typer.Option(0, help="Time on the first N docs only (0: all)"),
    output: Optional[Path] = typer.Option(None, help="Write the rows as JSON here"),
) -> None:
    """Score a pipeline at full depth and with TOKEE; time both side by side."""
    import spacy
    import torch

    from .evaluation import Setting, compare, format_table
    from .training.tuning import threshold_for_speedup

    nlp = spacy.load(pipeline)
    examples = _load_examples(nlp, data)
    settings = [Setting("full", {"exit_mode": "off"})]
    if tune_data is not None:
        tune_texts = [eg.reference.text for eg in _load_examples(nlp, tune_data)]
        for target in speedup:
            threshold = threshold_for_speedup(nlp, tune_texts, target, "tokee", window)
            if threshold is None:
                typer.echo(f"TOKEE cannot reach {target}x on {tune_data}; skipped")
                continue
            typer.echo(f"TOKEE {target}x on {tune_data.name}: window {window}, threshold {threshold}")
            settings.append(Setting(f"tokee-{target:g}x", {"exit_mode": "tokee", "window": window, "threshold": threshold}))
    else:
        settings.append(Setting("tokee", {"exit_mode": "tokee"}))
    timing = [eg.reference.text for eg in examples[: timing_docs or len(examples)]]
    sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    rows = compare(nlp, examples, settings, metric, timing, sizes, repeats)
    typer.echo(format_table(rows, metric))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "pipeline": str(pipeline),
            "data": str(data),
            "tune_data": str(tune_data) if tune_data else None,
            "metric": metric,
            "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "timing_docs": len(timing),
            "rows": rows,
        }
        output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf8")
        typer.echo(f"Wrote {output}")


if __name__ == "__main__":
    app()
