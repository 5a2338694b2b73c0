"""Where an "int8-ort" batch spends its time, and what the attention grids buy.

At batch sizes above one, "int8-ort" runs each layer's dense work as one
ONNX Runtime call (`encoder/ort_layer.py`) whose attention runs over up to
`ort_grids.ATTENTION_GROUPS` sets of rows, each padded to its own widest
(`encoder/ort_grids.py`). For one setting of a pipeline this script:

1. runs the timed docs once and records every layer call's inputs, with the
   wall time inside the sessions against the whole pass (the rest is torch,
   Python and spaCy between the calls);
2. counts the attention slots (query x key per row) the calls run with one
   grid, with each row alone, and with 2-4 sets;
3. replays the recorded calls through graphs of 1, 2, 3 and 4 grids,
   interleaved, median of `--repeats` (the calls' states are checked equal);
4. replays them once more with ONNX Runtime's profiler on (the graphs of
   this version) and sums each operator's kernel time into categories.

    python benchmarks/ort_layer_profile.py conll2003 --setting tokee-layers:2 --threads 1

Writes benchmarks/results/ort_layer_profile_<dataset>.json.
"""
import json
import os
import platform
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import spacy
import torch
import typer

from spacy_early_exit.encoder import ort_grids, ort_layer
from spacy_early_exit.encoder import precision as precision_module
from spacy_early_exit.tools.data import load_examples
from spacy_early_exit.tools.evaluate import exit_settings

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "project"
GRID_COUNTS = (1, 2, 3, 4)
# ONNX Runtime operator -> what it does in the layer graph.
CATEGORIES = {
    "MatMulIntegerToFloat": "int8 products", "MatMul": "attention", "FusedMatMul": "attention",
    "Softmax": "attention", "BiasGelu": "GELU", "FastGelu": "GELU", "Gather": "gathers and concat",
    "Concat": "gathers and concat", "Transpose": "transposes", "Abs": "activation quantization",
    "ReduceMax": "activation quantization", "Max": "activation quantization", "Div": "activation quantization",
    "QuantizeLinear": "activation quantization", "Squeeze": "activation quantization",
    "Expand": "activation quantization", "Shape": "activation quantization",
    "LayerNormalization": "layer norms", "Add": "adds (mask, biases, residuals)",
}


def setting_fields(table: Path, setting: str) -> Dict[str, Any]:
    """The exit fields of the int8-ort row `method:target` of a precision table (benchmarks/precision.py's JSON)."""
    method, _, target = setting.partition(":")
    for row in json.loads(table.read_text(encoding="utf8"))["rows"]:
        if row["method"] == method and row["precision"] == "int8-ort" and str(row["target"]) == target:
            return dict(row["fields"])
    raise typer.BadParameter(f"--setting: no int8-ort row {setting!r} in {table}")


def record_calls(nlp: Any, texts: List[str], batch_size: int) -> Tuple[list, list, float, float]:
    """One pass over `texts`: every layer call's session and inputs, the
    layers' fp32 parts and heads, the seconds inside the calls and the pass's."""
    calls: list = []
    made: list = []
    inside = [0.0]
    call, with_sessions = ort_layer.OrtLayer.__call__, precision_module.with_sessions

    def recording_call(self: Any, *args: Any) -> torch.Tensor:
        began = time.perf_counter()
        out = call(self, *args)
        inside[0] += time.perf_counter() - began
        calls.append((self, [a.clone() if isinstance(a, torch.Tensor) else list(a) for a in args]))
        return out

    def capturing(torch_parts: Any, layers: Any, num_heads: int, products: str = "int8") -> Any:
        out = with_sessions(torch_parts, layers, num_heads, products)
        made.append((tuple(layers), num_heads, products, [id(parts.dense_step) for parts in out]))
        return out

    ort_layer.OrtLayer.__call__, precision_module.with_sessions = recording_call, capturing
    try:
        for _ in nlp.pipe(texts, batch_size=batch_size):  # the stack and its sessions
            pass
        calls.clear()
        inside[0] = 0.0
        began = time.perf_counter()
        for _ in nlp.pipe(texts, batch_size=batch_size):
            pass
        whole = time.perf_counter() - began
    finally:
        ort_layer.OrtLayer.__call__, precision_module.with_sessions = call, with_sessions
    return calls, made, inside[0], whole


def slot_counts(calls: list) -> Dict[str, float]:
    """Attention slots of the recorded calls, as a share of one grid per call."""
    one = per_row = 0
    sets = Counter()
    for _, (_, _, _, _, _, queries, keys) in calls:
        one += len(queries) * max(queries) * max(keys)
        per_row += sum(q * k for q, k in zip(queries, keys))
        order = sorted(range(len(queries)), key=lambda r: -queries[r])
        q, k = np.array([queries[r] for r in order]), np.array([keys[r] for r in order])
        for groups in GRID_COUNTS[1:]:
            for start, stop in ort_grids.row_ranges(q, k, groups, 0):
                sets[groups] += (stop - start) * int(q[start]) * int(k[start:stop].max())
    return {"one grid": 1.0, "each row alone": round(per_row / one, 3),
            **{f"{g} sets": round(sets[g] / one, 3) for g in GRID_COUNTS[1:]}}


def layer_plan(calls: list, made: list) -> Tuple[list, int, str, list]:
    """The fp32 layers, heads and products of the recorded stack, and each
    call as (its layer's index, its inputs)."""
    layers, heads, products, sessions = made[-1]
    return list(layers), heads, products, [(sessions.index(id(session)), args) for session, args in calls]


def replay(calls: list, made: list, repeats: int) -> Dict[str, Any]:
    """The recorded calls through graphs of each grid count, interleaved."""
    layers, heads, products, plan = layer_plan(calls, made)
    used = sorted({i for i, _ in plan})
    graphs = {g: {i: ort_layer.OrtLayer(layers[i], heads, products, g) for i in used} for g in GRID_COUNTS}
    want = [graphs[1][i](*args) for i, args in plan]
    for g in GRID_COUNTS[1:]:
        gap = max(float((w - graphs[g][i](*args)).abs().max()) for w, (i, args) in zip(want, plan))
        assert gap < 1e-4, f"{g} grids differ from one by {gap}"
    seconds: Dict[int, List[float]] = {g: [] for g in GRID_COUNTS}
    for _ in range(repeats):
        for g in GRID_COUNTS:
            began = time.perf_counter()
            for i, args in plan:
                graphs[g][i](*args)
            seconds[g].append(time.perf_counter() - began)
    ms = {g: statistics.median(s) * 1e3 for g, s in seconds.items()}
    return {"ms": {str(g): round(v, 1) for g, v in ms.items()},
            "over_one_grid": {str(g): round(ms[1] / v, 3) for g, v in ms.items()}}


def node_profile(calls: list, made: list) -> Dict[str, float]:
    """Each operator category's share of the sessions' run time (ONNX Runtime's profiler)."""
    layers, heads, products, plan = layer_plan(calls, made)
    options = ort_layer.session_options
    kernel: Counter = Counter()
    total = 0.0
    with tempfile.TemporaryDirectory() as folder:
        def profiled() -> Any:
            made_options = options()
            made_options.enable_profiling = True
            made_options.profile_file_prefix = str(Path(folder) / "layer")
            return made_options

        ort_layer.session_options = profiled
        try:
            sessions = {i: ort_layer.OrtLayer(layers[i], heads, products) for i in sorted({i for i, _ in plan})}
        finally:
            ort_layer.session_options = options
        for i, args in plan:
            sessions[i](*args)
        for layer in sessions.values():
            for event in json.loads(Path(layer.session.end_profiling()).read_text(encoding="utf8")):
                if event.get("cat") == "Session" and event["name"] == "model_run":
                    total += event["dur"]
                elif event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                    op = event["args"].get("op_name", "?")
                    kernel[CATEGORIES.get(op, op)] += event["dur"]
    shares = {name: round(us / total, 3) for name, us in kernel.most_common()}
    shares["session overhead (run time no node accounts for)"] = round(1 - sum(kernel.values()) / total, 3)
    return shares


def main(
    dataset: str = typer.Argument(..., help="project/training/<dataset>/final and benchmarks/results/precision_<dataset>.json"),
    setting: str = typer.Option("tokee-layers:2", help="method:target of an int8-ort row of the precision table"),
    docs: int = typer.Option(500, help="Test docs, evenly spaced, length-sorted"),
    batch_size: int = typer.Option(32, help="Docs per batch"),
    repeats: int = typer.Option(7, help="Repetitions of the replay (median kept)"),
    threads: int = typer.Option(1, help="torch threads"),
    project: Path = typer.Option(PROJECT, help="The project folder"),
    table: Optional[Path] = typer.Option(None, help="The precision table whose row gives the exit fields; "
                                         "default: benchmarks/results/precision_<dataset>.json"),
    output: Optional[Path] = typer.Option(None, help="Default: benchmarks/results/ort_layer_profile_<dataset>.json"),
) -> None:
    """Profile the int8-ort layer calls of one setting and replay them per grid count."""
    torch.set_num_threads(threads)
    fields = setting_fields(table or ROOT / "benchmarks" / "results" / f"precision_{dataset}.json", setting)
    nlp = spacy.load(project / "training" / dataset / "final")
    texts = [eg.reference.text for eg in load_examples(nlp, project / "corpus" / dataset / "test.spacy", limit=docs, spread=True)]
    texts.sort(key=len)
    with exit_settings(nlp, fields):
        calls, made, inside, whole = record_calls(nlp, texts, batch_size)
    if not calls:
        raise typer.BadParameter(f"--setting {setting}: no int8-ort layer call at batch size {batch_size}")
    report = {
        "dataset": dataset, "setting": setting, "fields": fields, "docs": len(texts), "batch_size": batch_size,
        "threads": threads, "repeats": repeats, "layer_calls": len(calls),
        "share_of_pass_in_layer_calls": round(inside / whole, 3),
        "attention_slots": slot_counts(calls),
        "replay_by_grids": replay(calls, made, repeats),
        "grids_of_this_version": ort_grids.ATTENTION_GROUPS,
        "node_time_shares": node_profile(calls, made),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "command": f"python benchmarks/ort_layer_profile.py {dataset} --setting {setting} --docs {docs} "
                   f"--batch-size {batch_size} --repeats {repeats} --threads {threads}",
    }
    print(json.dumps({k: report[k] for k in ("share_of_pass_in_layer_calls", "attention_slots", "replay_by_grids",
                                             "node_time_shares")}, indent=1), flush=True)
    path = output or ROOT / "benchmarks" / "results" / f"ort_layer_profile_{dataset}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf8")
    print(f"Wrote {path}")


if __name__ == "__main__":
    typer.run(main)
