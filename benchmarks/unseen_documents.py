"""Prediction speed on documents the process has not seen, against the same documents again.

oneDNN (bf16 products) compiles a kernel for every new input shape and keeps
1,024; a benchmark that times the same documents several times measures the
warm cache, a stream of new documents does not get it. For each precision,
consecutive slices of the test split are run twice in a row (first unseen,
then seen) at one batch size, in one process; bf16 also with its row buckets
switched off (`BF16Linear.bucket_rows = False`, on other slices, first), which
is what predictions did before the buckets. int8-ort (ONNX Runtime) plans
its memory per input shape, so it is measured the same way.

    python benchmarks/unseen_documents.py conll2003 --threads 1
    python benchmarks/unseen_documents.py conll2003 --threads 1 --settings int8,int8-ort --output ...

Writes benchmarks/results/unseen_documents_<dataset>.json.
"""
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import spacy
import torch
import typer

from spacy_early_exit.encoder.quantized_linear import BF16Linear
from spacy_early_exit.tools.data import load_examples
from spacy_early_exit.tools.evaluate import exit_settings

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "project"
# Run once per setting before its slices, so that no slice pays for making the layer stack.
WARM_UP = "Making the layer stack is not what this measures."
# Each setting: its precision, and whether bf16 products run at row buckets.
SETTINGS = {"bf16 without row buckets": ("bf16", False), "bf16": ("bf16", True), "fp32": ("fp32", True),
            "int8": ("int8", True), "int8-ort": ("int8-ort", True)}


def main(
    dataset: str = typer.Argument(..., help="project/training/<dataset>/final and metrics/<dataset>/tune.json"),
    target: float = typer.Option(2.0, help="The tuned target whose exit fields are used"),
    batch_size: int = typer.Option(32, help="Docs per batch"),
    slice_docs: int = typer.Option(400, help="Docs per slice"),
    slices: int = typer.Option(2, help="Slices per setting"),
    threads: int = typer.Option(1, help="torch threads"),
    project: Path = typer.Option(PROJECT, help="The project folder"),
    output: Optional[Path] = typer.Option(None, help="Default: benchmarks/results/unseen_documents_<dataset>.json"),
    settings: str = typer.Option(",".join(SETTINGS), help="Settings timed, comma-separated: some of " + ", ".join(SETTINGS)),
) -> None:
    """Time unseen documents against the same documents again, per precision."""
    torch.set_num_threads(threads)
    nlp = spacy.load(project / "training" / dataset / "final")
    tune = json.loads((project / "metrics" / dataset / "tune.json").read_text(encoding="utf8"))
    fields = next((t["fields"] for t in tune["targets"] if float(t["target"]) == target), None)
    if fields is None:
        raise typer.BadParameter(f"No target {target:g} in {project / 'metrics' / dataset / 'tune.json'}")
    texts = [eg.reference.text for eg in load_examples(nlp, project / "corpus" / dataset / "test.spacy")]
    chosen = [name.strip() for name in settings.split(",") if name.strip()]
    if not chosen or any(name not in SETTINGS for name in chosen):
        raise typer.BadParameter(f"--settings must be some of {', '.join(SETTINGS)}; got {settings!r}")
    settings = [(name, *SETTINGS[name]) for name in chosen]
    needed = len(settings) * slices * slice_docs
    if len(texts) < needed:
        raise typer.BadParameter(f"{len(texts)} test docs; {needed} needed (--slice-docs x --slices x {len(settings)})")
    rows: List[Dict[str, Any]] = []
    start = 0
    for label, precision, buckets in settings:
        BF16Linear.bucket_rows = buckets
        seconds = {"unseen": 0.0, "seen": 0.0}
        words = 0
        with exit_settings(nlp, {**fields, "precision": precision}):
            # The precision's layer stack is made on first use (int8-ort: six
            # ONNX Runtime sessions, about a second): not inside the timing.
            nlp(WARM_UP)
            for _ in range(slices):
                chunk = texts[start:start + slice_docs]
                start += slice_docs
                words += sum(len(doc) for doc in nlp.tokenizer.pipe(chunk))
                for state in ("unseen", "seen"):  # the same slice twice in a row
                    began = time.perf_counter()
                    for _ in nlp.pipe(chunk, batch_size=batch_size):
                        pass
                    seconds[state] += time.perf_counter() - began
        BF16Linear.bucket_rows = True
        row = {"setting": label, "precision": precision, "row_buckets": buckets, "words": words,
               "words_per_second": {state: round(words / spent) for state, spent in seconds.items()},
               "unseen_over_seen_time": round(seconds["unseen"] / seconds["seen"], 3)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    report = {"dataset": dataset, "target": target, "fields": fields, "batch_size": batch_size, "slice_docs": slice_docs,
              "slices": slices, "threads": threads, "settings": chosen, "rows": rows,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
              "command": f"python benchmarks/unseen_documents.py {dataset} --target {target:g} --batch-size {batch_size} "
                         f"--slice-docs {slice_docs} --slices {slices} --threads {threads}"
                         + (f" --settings '{','.join(chosen)}'" if chosen != list(SETTINGS) else "")}
    path = output or ROOT / "benchmarks" / "results" / f"unseen_documents_{dataset}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf8")
    print(f"Wrote {path}")


if __name__ == "__main__":
    typer.run(main)
