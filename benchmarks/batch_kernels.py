"""What each batch-time change to the layer step buys, side by side in one process.

Five changes made batch prediction faster (issue 25); each can be switched
off at run time, so the versions run interleaved on the same documents:

1. `fused block`: the bf16 stack's output block as three oneDNN products
   with the residual adds and GELU as post-ops (`bf16_block.BF16OutputBlock`);
   off: `layer_step._output_block` on the same parts without it (bf16 only).
2. `keys to 16`: attention over key lengths padded to a multiple of 16
   (`layer_step.key_span`, bf16 only since this benchmark's run showed
   nothing for fp32 and int8); off: `KEY_BLOCK = 1`.
3. `grid keys`: keys and values projected on the live rows' padded grid when
   it has little padding (`GRID_PROJECTION_LIMIT`, bf16 only: fp32 and int8
   pack, so for them the last two variants run the same code); off: always
   packed (0).
4. `sub-batches`: rows cut into length-sorted sub-batches that trade padding
   against passes (`layers/sub_batches.py`, every precision); off: cut by
   the `batch_pieces` budget alone (`SUB_BATCH_OVERHEAD = inf`). It matters
   at large batches and in document order (`--batch-size 128 --order
   document`); at batch 32 length-sorted it rarely cuts.
5. `attention groups`: at prediction, attention runs over contiguous ranges
   of rows, each padded to its own most active and longest row
   (`encoder/attention_groups.py`, every precision's eager path); off: one
   call for the whole batch (`MAX_GROUPS = 1`).

Variants are cumulative: `before` (all five off), `+ fused block`, `+ keys to
16`, `+ grid keys`, `+ sub-batches`, `this version` (all on). Each setting (precision and tuned target of
metrics/<dataset>/tune.json, or full depth) runs every variant in turn per
repetition, after one warm-up pass each; the median is kept.

    python benchmarks/batch_kernels.py conll2003 --threads 1
    python benchmarks/batch_kernels.py conll2003 --threads 1 --batch-size 128
    python benchmarks/batch_kernels.py conll2003 --threads 1 --batch-size 128 --order document

Writes benchmarks/results/batch_kernels_<dataset>.json (batch 32, sorted), else
batch_kernels_<dataset>_b<size>_<order>.json.
"""
import dataclasses
import json
import os
import platform
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import spacy
import torch
import typer

from spacy_early_exit.encoder import attention_groups, layer_step
from spacy_early_exit.layers import sub_batches
from spacy_early_exit.tools.data import load_examples
from spacy_early_exit.tools.evaluate import exit_settings

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "project"
SWITCHES = ("fused_block", "keys_to_16", "grid_keys", "sub_batches", "attention_groups")
# name -> one flag per switch
VARIANTS: Dict[str, Tuple[bool, ...]] = {
    "before": (False, False, False, False, False), "+ fused block": (True, False, False, False, False),
    "+ keys to 16": (True, True, False, False, False), "+ grid keys": (True, True, True, False, False),
    "+ sub-batches": (True, True, True, True, False), "this version": (True, True, True, True, True),
}
_FUSED_OUTPUT_BLOCK = layer_step._output_block


def _unfused_output_block(parts: Any, context: torch.Tensor, residual: torch.Tensor, hidden_dropout: float) -> torch.Tensor:
    return _FUSED_OUTPUT_BLOCK(dataclasses.replace(parts, output_block=None), context, residual, hidden_dropout)


@contextmanager
def variant(fused: bool, keys: bool, grid: bool, cut: bool, groups: bool) -> Iterator[None]:
    """The layer step, the sub-batch cut and the attention groups with each
    change on or off (restored afterwards)."""
    saved = (layer_step._output_block, layer_step.KEY_BLOCK, layer_step.GRID_PROJECTION_LIMIT,
             sub_batches.SUB_BATCH_OVERHEAD, attention_groups.MAX_GROUPS)
    layer_step._output_block = _FUSED_OUTPUT_BLOCK if fused else _unfused_output_block
    layer_step.KEY_BLOCK = saved[1] if keys else 1
    layer_step.GRID_PROJECTION_LIMIT = saved[2] if grid else 0.0
    sub_batches.SUB_BATCH_OVERHEAD = saved[3] if cut else float("inf")
    attention_groups.MAX_GROUPS = saved[4] if groups else 1
    try:
        yield
    finally:
        (layer_step._output_block, layer_step.KEY_BLOCK, layer_step.GRID_PROJECTION_LIMIT,
         sub_batches.SUB_BATCH_OVERHEAD, attention_groups.MAX_GROUPS) = saved


def parse_settings(text: str, targets: Dict[float, Dict[str, Any]]) -> List[Tuple[str, Dict[str, Any]]]:
    """`precision:target` items (target a tuned one, or `full`) -> (label, exit fields)."""
    out = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        precision, _, target = item.partition(":")
        if target == "full":
            fields: Dict[str, Any] = {"exit_mode": "off"}
        else:
            try:
                fields = dict(targets[float(target)])
            except (ValueError, KeyError):
                raise typer.BadParameter(f"--settings: {item!r} needs a tuned target ({sorted(targets)}) or 'full'")
        out.append((item, {**fields, "precision": precision}))
    if not out:
        raise typer.BadParameter("--settings names no setting")
    return out


def main(
    dataset: str = typer.Argument(..., help="project/training/<dataset>/final and metrics/<dataset>/tune.json"),
    settings: str = typer.Option("bf16:2,bf16:3,bf16:full,fp32:2,int8:2", help="precision:target (or :full), comma-separated"),
    docs: int = typer.Option(500, help="Test docs timed, evenly spaced"),
    batch_size: int = typer.Option(32, help="Docs per batch"),
    order: str = typer.Option("sorted", help="sorted (by length, as the precision table's faster order) or document"),
    repeats: int = typer.Option(5, help="Repetitions (median kept)"),
    threads: int = typer.Option(1, help="torch threads"),
    project: Path = typer.Option(PROJECT, help="The project folder"),
    output: Optional[Path] = typer.Option(None, help="Default: benchmarks/results/batch_kernels_<dataset>.json "
                                          "(batch 32 sorted; else ..._b<size>_<order>.json)"),
) -> None:
    """Time each variant of the layer step per setting, interleaved."""
    if order not in ("sorted", "document"):
        raise typer.BadParameter(f"--order must be sorted or document; got {order!r}")
    torch.set_num_threads(threads)
    nlp = spacy.load(project / "training" / dataset / "final")
    tune = json.loads((project / "metrics" / dataset / "tune.json").read_text(encoding="utf8"))
    chosen = parse_settings(settings, {float(t["target"]): t["fields"] for t in tune["targets"] if t.get("fields")})
    texts = [eg.reference.text for eg in load_examples(nlp, project / "corpus" / dataset / "test.spacy", limit=docs, spread=True)]
    if order == "sorted":
        texts.sort(key=len)
    n_words = sum(len(doc) for doc in nlp.tokenizer.pipe(texts))
    seconds: Dict[Tuple[str, str], List[float]] = {(label, name): [] for label, _ in chosen for name in VARIANTS}
    for rep in range(repeats):
        for label, fields in chosen:
            with exit_settings(nlp, fields):
                for name, switches in VARIANTS.items():
                    with variant(*switches):
                        if rep == 0:  # warm-up: the layer stack, oneDNN's kernels for these shapes
                            for _ in nlp.pipe(texts, batch_size=batch_size):
                                pass
                        began = time.perf_counter()
                        for _ in nlp.pipe(texts, batch_size=batch_size):
                            pass
                        seconds[(label, name)].append(time.perf_counter() - began)
        print(f"repetition {rep + 1}/{repeats} done", flush=True)
    rows = []
    for label, fields in chosen:
        speed = {name: n_words / statistics.median(seconds[(label, name)]) for name in VARIANTS}
        row = {"setting": label, "fields": fields, "words_per_second": {k: round(v) for k, v in speed.items()},
               "over_before": {k: round(v / speed["before"], 3) for k, v in speed.items()}}
        print(json.dumps({k: row[k] for k in ("setting", "words_per_second", "over_before")}), flush=True)
        rows.append(row)
    report = {"dataset": dataset, "docs": len(texts), "words": n_words, "batch_size": batch_size, "order": order,
              "repeats": repeats, "threads": threads,
              "variants": {k: dict(zip(SWITCHES, v)) for k, v in VARIANTS.items()},
              "rows": rows, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
              "command": f"python benchmarks/batch_kernels.py {dataset} --settings {settings} --docs {docs} "
                         f"--batch-size {batch_size} --order {order} --repeats {repeats} --threads {threads}"}
    # Batch 32 length-sorted is the plain name (the table's batch size); other runs say theirs.
    suffix = "" if (batch_size, order) == (32, "sorted") else f"_b{batch_size}_{order}"
    path = output or ROOT / "benchmarks" / "results" / f"batch_kernels_{dataset}{suffix}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf8")
    print(f"Wrote {path}")


if __name__ == "__main__":
    typer.run(main)
