"""Why wall-clock falls short of FLOPs for TOKEE: layers run per batch and
where the time goes, for each row of a benchmark result.

At batch 1 a layer on 3 active tokens costs far more than its share of the
FLOPs (its matrix products are bound by reading the weights), so the time
follows the number of layers a document runs (its deepest token's exit
layer) more than the mean exit layer. This
script measures that count next to the mean exit layer (what FLOPs follow),
the time per doc at batch 1 spent outside the encoder, and a torch profile
of one setting by operator.

    python benchmarks/profile_exits.py ud_en_ewt --docs 300
"""
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import spacy
import torch
import typer

sys.path.insert(0, str(Path(__file__).parent))
from run import PROJECT, RESULTS  # noqa: E402

from spacy_early_exit.layers.architecture import get_shim  # noqa: E402
from spacy_early_exit.tools.data import load_examples  # noqa: E402
from spacy_early_exit.tools.evaluate import early_exit_pipes, exit_settings  # noqa: E402
from spacy_early_exit.memory import native_kernels  # noqa: E402
from spacy_early_exit.pipes.base import EXTENSION  # noqa: E402


def layers_run(nlp, texts: List[str], fields: Dict[str, Any], batch_size: int) -> Dict[str, float]:
    """Mean exit layer over words, and mean layers run per batch (its deepest word)."""
    name = early_exit_pipes(nlp)[0][0]
    words = deepest = 0.0
    n_words = n_batches = 0
    with exit_settings(nlp, fields):
        docs = list(nlp.pipe(texts, batch_size=batch_size))
    for start in range(0, len(docs), batch_size):
        batch = [doc._.get(EXTENSION)[name]["exit_layers"] for doc in docs[start : start + batch_size]]
        layers = [layer for doc in batch for layer in doc]
        if layers:
            words += sum(layers)
            n_words += len(layers)
            deepest += max(layers)
            n_batches += 1
    return {"mean_exit_layer": round(words / n_words, 2), "layers_run_per_batch": round(deepest / n_batches, 2)}


def operator_profile(nlp, texts: List[str], fields: Dict[str, Any], batch_size: int, top: int) -> List[Dict[str, Any]]:
    """Self CPU time by torch operator, as a share of the profiled time."""
    with exit_settings(nlp, fields):
        list(nlp.pipe(texts[:20], batch_size=batch_size))  # warm-up
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            list(nlp.pipe(texts, batch_size=batch_size))
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"op": e.key, "share": round(e.self_cpu_time_total / total, 3), "calls": e.count} for e in rows]


def ffn_milliseconds(nlp, rows: List[int], repeats: int = 500) -> Dict[str, float]:
    """Time of the first layer's feed-forward block on `rows` tokens: how far
    below proportional the cost of a few active tokens falls."""
    parts = get_shim(early_exit_pipes(nlp)[0][1].model).encoder.layers[0]
    width = parts.ffn_in.in_features
    times = {}
    # The same kernels as prediction uses (the shim runs it without oneDNN).
    with torch.inference_mode(), native_kernels():
        for n in rows:
            x = torch.randn(n, width)
            for _ in range(50):
                parts.ffn_out(parts.ffn_act(parts.ffn_in(x)))
            start = time.perf_counter()
            for _ in range(repeats):
                parts.ffn_out(parts.ffn_act(parts.ffn_in(x)))
            times[str(n)] = round((time.perf_counter() - start) / repeats * 1e3, 3)
    return times


def time_outside_encoder(nlp, texts: List[str], fields: Dict[str, Any], repeats: int = 3) -> Dict[str, float]:
    """Milliseconds per doc at batch 1: the whole pipeline, and the part spent
    outside the torch encoder call (tokenizing, alignment, decoding, doc.ents)."""
    shim = get_shim(early_exit_pipes(nlp)[0][1].model)
    inner = shim.predict
    spent = [0.0]

    def timed(inputs: Any) -> Any:
        start = time.perf_counter()
        try:
            return inner(inputs)
        finally:
            spent[0] += time.perf_counter() - start

    best_total, best_outside = float("inf"), float("inf")
    shim.predict = timed  # instance attribute: shadows the method until deleted
    try:
        with exit_settings(nlp, fields):
            list(nlp.pipe(texts[:20], batch_size=1))  # warm-up
            for _ in range(repeats):
                spent[0] = 0.0
                start = time.perf_counter()
                list(nlp.pipe(texts, batch_size=1))
                total = time.perf_counter() - start
                best_total = min(best_total, total)
                best_outside = min(best_outside, total - spent[0])
    finally:
        del shim.predict
    per_doc = 1e3 / len(texts)
    return {"pipeline_ms_per_doc": round(best_total * per_doc, 3), "outside_encoder_ms_per_doc": round(best_outside * per_doc, 3)}


def main(
    dataset: str = typer.Argument(..., help="Corpus with a benchmarks/results/<dataset>.json"),
    docs: int = typer.Option(300, help="Test docs, evenly spaced"),
    profile_method: str = typer.Option("tokee@2", help="Row (method@target) to profile by operator"),
    top: int = typer.Option(12, help="Operators listed"),
) -> None:
    report = json.loads((RESULTS / f"{dataset}.json").read_text(encoding="utf8"))
    nlp = spacy.load(PROJECT / "training" / dataset / "final")
    test = load_examples(nlp, PROJECT / "corpus" / dataset / "test.spacy", docs, spread=True)
    texts = [eg.reference.text for eg in test]
    out: Dict[str, Any] = {"corpus": dataset, "docs": len(texts), "threads": torch.get_num_threads(), "rows": []}
    for row in report["rows"]:
        if row["model"] != "stage2" or row["method"] == "hf-full":
            continue
        entry = {"method": row["method"], "target": row["target"], "flops_speedup": row["flops_speedup"], "wall_speedup": row["wall_speedup"]}
        for batch_size in (1, 32):
            entry[f"b{batch_size}"] = layers_run(nlp, texts, row["fields"], batch_size)
        out["rows"].append(entry)
        print(entry, flush=True)
    out["ffn_ms_by_tokens"] = ffn_milliseconds(nlp, [2, 17, 512])
    print("FFN ms by active tokens:", out["ffn_ms_by_tokens"], flush=True)
    method, target = profile_method.split("@")
    chosen = next(r for r in report["rows"] if r["method"] == method and r["target"] == int(target))
    out["batch1_ms_per_doc"] = {
        "full": time_outside_encoder(nlp, texts, {"exit_mode": "off"}),
        profile_method: time_outside_encoder(nlp, texts, chosen["fields"]),
    }
    print("batch 1, ms per doc:", out["batch1_ms_per_doc"], flush=True)
    out["profile"] = {
        "row": profile_method,
        "b1": operator_profile(nlp, texts, chosen["fields"], 1, top),
        "b1_full_depth": operator_profile(nlp, texts, {"exit_mode": "off"}, 1, top),
    }
    path = RESULTS / f"profile_{dataset}.json"
    path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf8")
    print(json.dumps(out["profile"], indent=1))
    print(f"Wrote {path}")


if __name__ == "__main__":
    typer.run(main)
