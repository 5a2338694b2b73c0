"""Where a prediction's time goes, per setting and batch size, beside ONNX Runtime.

ONNX Runtime runs the same weights about twice as fast as our encoder at batch
size 1. For full depth and TOKEE in fp32, bf16, int8 and int8-ort, and outside_rows.py's
ort-fp32 / ort-int8, per batch size: `nlp.pipe`'s wall time (table_harness's
interleaved timing, median); a profiled run's top-level aten ops per doc (each
a trip through Python and the dispatcher; ORT: nodes run) and self CPU time by
category, `outside ops` being the wall time no op accounts for (Python, spaCy,
Thinc, the tokenizer; ORT: tokenizer, numpy, session overhead); the layers
each batch runs (its deepest exit) and the mean exit layer. The ORT rows label
pre-split words (no spaCy Doc) in the faster of document order and
length-sorted, as outside_rows.py times them; ours run the texts in order.

Categories go by the op called from Python, its children counted with it (the
`addmm` under `linear`, all under `scaled_dot_product_attention`); `int8
quantize/rescale` is every non-product op inside `Int8Linear.forward` (a
profiler range, not a guess from op names). Shares are of the profiled run's
wall time, so they sum to 1; `profiler_overhead_ms_per_doc` is what profiling added.

    python benchmarks/profile_layer_step.py uner_en_ewt --docs 300 --threads 1
"""
import json
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import spacy
import torch
import typer
from spacy.language import Language

sys.path.insert(0, str(Path(__file__).parent))
from hf_full import HFFullDepth  # noqa: E402
from outside_rows import (  # noqa: E402
    LENGTH_SORTED, ORT_METHODS, LabellerRow, OrtFullDepth, export_onnx, onnxruntime_missing, optimize_onnx, quantize_onnx,
)
from profile_exits import layers_run  # noqa: E402
from table_harness import (  # noqa: E402
    DOCUMENT_ORDER, Row, command_line, machine, markdown_table, one_order, time_rows, write_report,
)

from spacy_early_exit.encoder.precision import PRECISIONS, int8_kernels_available  # noqa: E402
from spacy_early_exit.encoder.ort_document import DocumentGraph  # noqa: E402
from spacy_early_exit.encoder.ort_layer import OrtLayer  # noqa: E402
from spacy_early_exit.encoder.quantized_linear import Int8Linear  # noqa: E402
from spacy_early_exit.tools.data import load_examples  # noqa: E402
from spacy_early_exit.tools.evaluate import SETTING_FIELDS, Setting, early_exit_pipes, exit_settings, setting_runner  # noqa: E402
from spacy_early_exit.tools.options import parse_numbers  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS, PROJECT = ROOT / "benchmarks" / "results", ROOT / "project"
ORDERS = (DOCUMENT_ORDER, LENGTH_SORTED)
INT8_RANGE, INT8, OTHER, OUTSIDE = "Int8Linear.forward", "int8 quantize/rescale", "other ops", "outside ops"
# int8-ort and fp32-ort: their ONNX Runtime calls (the session, numpy in and out): one
# per layer, or at batch size 1 one per sequence (layers, off-ramps and exits).
ORT_RANGE, ORT_CALLS = "our ORT session call", "our ORT session calls"
# Per category, aten's op names (no "aten::") and the node types of ORT's fused graphs.
CATEGORY_OPS: Dict[str, Set[str]] = {
    # ORT's DynamicQuantizeMatMul quantizes its input inside the node.
    "products": {"addmm", "mm", "bmm", "matmul", "linear", "_int_mm", "baddbmm", "_linear_pointwise",
                 "MatMul", "Gemm", "FusedMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"},
    # ORT's Attention / QAttention nodes include the Q, K, V projections.
    "attention": {"scaled_dot_product_attention", "Attention", "QAttention", "MultiHeadAttention"},
    INT8: {"DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear"},
    "indexing/packing": {"index", "index_put", "index_put_", "index_select", "nonzero", "nonzero_numpy", "cumsum",
                         "new_zeros", "masked_fill", "where", "cat", "stack", "Gather", "Concat", "Slice", "Where"},
    # ORT's (Q)EmbedLayerNormalization also looks up the embeddings; SkipLayerNormalization adds the residual.
    "norms/activations": {"layer_norm", "gelu", "softmax", "log_softmax", "LayerNormalization", "SkipLayerNormalization",
                          "EmbedLayerNormalization", "QEmbedLayerNormalization", "Gelu", "BiasGelu", "FastGelu", "Softmax"},
}
CATEGORIES = tuple(CATEGORY_OPS) + (ORT_CALLS, OTHER, OUTSIDE)
# One profiled run's result: wall seconds, op seconds per category, ops (nodes) run.
Profiled = Tuple[float, Dict[str, float], int]


def category(op: str, in_int8: bool) -> str:
    """The category of an op's self time.

    op (str): the op called from Python (without "aten::") or an ORT node type.
    in_int8 (bool): whether it ran inside Int8Linear.forward.
    RETURNS (str): one of CATEGORIES.
    """
    if in_int8 and op not in CATEGORY_OPS["products"]:
        return INT8
    return next((name for name, ops in CATEGORY_OPS.items() if op in ops), OTHER)


@contextmanager
def int8_ranges() -> Iterator[None]:
    """Mark every Int8Linear call with a profiler range inside the block: its
    abs/amax/round/mul_/add_ share names with ops elsewhere in the layer.
    Every int8-ort session call (OrtLayer, DocumentGraph) gets one too: the
    profiler sees no op inside a session, so its time is the range's own."""
    forward, call, document = Int8Linear.forward, OrtLayer.__call__, DocumentGraph.__call__

    def marked(self: Int8Linear, x: torch.Tensor) -> torch.Tensor:
        with torch.profiler.record_function(INT8_RANGE):
            return forward(self, x)

    def marked_call(self: OrtLayer, *args: Any) -> torch.Tensor:
        with torch.profiler.record_function(ORT_RANGE):
            return call(self, *args)

    def marked_document(self: DocumentGraph, *args: Any) -> Any:
        with torch.profiler.record_function(ORT_RANGE):
            return document(self, *args)

    Int8Linear.forward = marked  # type: ignore[method-assign]
    OrtLayer.__call__ = marked_call  # type: ignore[method-assign]
    DocumentGraph.__call__ = marked_document  # type: ignore[method-assign]
    try:
        yield
    finally:
        Int8Linear.forward = forward  # type: ignore[method-assign]
        OrtLayer.__call__ = call  # type: ignore[method-assign]
        DocumentGraph.__call__ = document  # type: ignore[method-assign]


def profile_pipeline(nlp: Language, texts: List[str], fields: Dict[str, Any], batch_size: int) -> Profiled:
    """One torch-profiled `nlp.pipe` run, its aten self time summed by category.

    nlp (Language): the pipeline.
    texts (List[str]): the docs.
    fields (Dict[str, Any]): the exit fields to run under.
    batch_size (int): nlp.pipe's batch size.
    RETURNS (Profiled): wall seconds, op self seconds per category, top-level ops.
    """
    with exit_settings(nlp, fields), int8_ranges():
        list(nlp.pipe(texts[: 2 * batch_size], batch_size=batch_size))  # warm-up
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            list(nlp.pipe(texts, batch_size=batch_size))
            wall = time.perf_counter() - start
    seconds, top_level = dict.fromkeys(CATEGORIES[:-1], 0.0), 0
    for event in prof.events():
        if event.name == ORT_RANGE:
            seconds[ORT_CALLS] += event.self_cpu_time_total / 1e6  # the session (no aten op inside it)
            top_level += 1
            continue
        if "::" not in event.name:
            continue  # not an op (aten::, mkldnn::): our Int8Linear ranges, whose self time is Python
        top, in_int8, parent = event, False, event.cpu_parent
        while parent is not None:
            top = parent if "::" in parent.name else top
            in_int8 = in_int8 or parent.name == INT8_RANGE
            parent = parent.cpu_parent
        top_level += top is event
        seconds[category(top.name.split("::")[-1], in_int8)] += event.self_cpu_time_total / 1e6
    return wall, seconds, top_level


def profile_ort(labeller: OrtFullDepth, graph: Path, words: List[List[str]], batch_size: int) -> Tuple[Profiled, float]:
    """One run of an ORT row on a profiling session, its node time summed by category.

    labeller (OrtFullDepth): the row (its own session comes back afterwards).
    graph (Path): its ONNX graph.
    words (List[List[str]]): the docs' words.
    batch_size (int): rows per session run.
    RETURNS (Tuple[Profiled, float]): wall seconds, node seconds per category and nodes run; seconds in
        session.run (ORT's model_run events: the rest of the wall is tokenizer and numpy).
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = labeller.threads, 1
    options.enable_profiling, options.profile_file_prefix = True, f"{graph.with_suffix('')}-b{batch_size}"
    # A fresh session per batch size: ORT profiles from creation to end_profiling.
    session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    own, labeller.session = labeller.session, session
    try:
        labeller.run(words[:batch_size], batch_size)  # one warm-up run, cut from the trace below
        start = time.perf_counter()
        labeller.run(words, batch_size)
        wall = time.perf_counter() - start
    finally:
        labeller.session = own
    trace = json.loads(Path(session.end_profiling()).read_text(encoding="utf8"))
    runs = sorted((e["ts"], e["dur"]) for e in trace if e.get("name") == "model_run")
    nodes = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= runs[1][0]]
    seconds = dict.fromkeys(CATEGORIES[:-1], 0.0)
    for node in nodes:
        seconds[category(node["args"]["op_name"], False)] += node["dur"] / 1e6
    return (wall, seconds, len(nodes)), sum(dur for _, dur in runs[1:]) / 1e6


@contextmanager
def ort_graphs(nlp: Language) -> Iterator[Dict[str, Path]]:
    """outside_rows.py's ort-fp32 and ort-int8 graphs, in a folder that lives for the block.

    nlp (Language): the trained pipeline.
    YIELDS (Dict[str, Path]): the graph per method.
    """
    reference = HFFullDepth(nlp)
    with tempfile.TemporaryDirectory(prefix="profile-ort-") as name:
        folder = Path(name)
        optimize_onnx(export_onnx(reference, folder / "exported.onnx"), reference, folder / "ort-fp32.onnx")
        quantize_onnx(folder / "ort-fp32.onnx", folder / "ort-int8.onnx")
        yield {method: folder / f"{method}.onnx" for method in ORT_METHODS}


def choose_settings(nlp: Language, tuned: Optional[Path], target: float) -> Tuple[List[Row], Dict[str, Any]]:
    """Full depth and TOKEE, each in every precision of PRECISIONS.

    nlp (Language): the pipeline.
    tuned (Optional[Path]): a tune.json whose `target` fields TOKEE uses (None: the pipeline's own fields).
    target (float): the tuned target speed-up.
    RETURNS (Tuple[List[Row], Dict[str, Any]]): the rows, and where TOKEE's fields came from.
    """
    name, pipe = early_exit_pipes(nlp)[0]
    fields = {f: getattr(pipe, f) for f in SETTING_FIELDS if f != "precision"}
    source: Dict[str, Any] = {"from": f"the pipeline's own fields ({name})"}
    if tuned is not None:
        entries = json.loads(tuned.read_text(encoding="utf8"))["targets"]
        entry = next((e for e in entries if e["target"] == target and e["reachable"]), None)
        if entry is None:
            raise typer.BadParameter(f"{tuned} has no reachable {target:g}x target")
        fields = dict(entry["fields"])  # tuned in fp32: the bf16 and int8 rows reuse them
        source = {"from": str(tuned), "target": target, "tuned_pipeline": entry.get("pipeline"), "stage": entry.get("stage")}
    fields["exit_mode"] = "tokee"  # the row is TOKEE whatever mode the pipeline was saved with
    rows = [Row("full", p, 1, {"exit_mode": "off", "precision": p}) for p in PRECISIONS]
    return rows + [Row("tokee", p, 1, {**fields, "precision": p}) for p in PRECISIONS], source


def per_doc(profiled: Profiled, timed_seconds: float, n_docs: int) -> Dict[str, Any]:
    """One row's numbers at one batch size, per doc.

    profiled (Profiled): the profiled run.
    timed_seconds (float): the unprofiled run's median seconds.
    n_docs (int): the docs run.
    RETURNS (Dict[str, Any]): wall ms (unprofiled, profiled, the profiler's overhead), ops, and per
        category ms and share of the profiled wall time (`outside ops`: the wall time no op accounts for).
    """
    wall, seconds, ops = profiled
    parts = {**seconds, OUTSIDE: wall - sum(seconds.values())}
    ms = 1e3 / n_docs
    return {"wall_ms_per_doc": round(timed_seconds * ms, 3), "profiled_wall_ms_per_doc": round(wall * ms, 3),
            "profiler_overhead_ms_per_doc": round((wall - timed_seconds) * ms, 3), "ops_per_doc": round(ops / n_docs, 1),
            "categories": {c: {"ms_per_doc": round(s * ms, 4), "share": round(s / wall, 4)} for c, s in parts.items()}}


def markdown(report: Dict[str, Any]) -> str:
    """report (Dict[str, Any]): the report. RETURNS (str): one line per setting and batch size."""
    head = ["setting", "batch", "ms/doc", "words/s", "profiler +ms", "ops/doc", "layers run", "mean exit"]
    lines = []
    for row in report["settings"]:
        for b, e in row["by_batch"].items():
            setting = row["setting"] + (f" ({e['order']})" if "order" in e else "")
            cells = [setting, b, f"{e['wall_ms_per_doc']:.2f}", f"{e['words_per_second']:.0f}",
                     f"{e['profiler_overhead_ms_per_doc']:.2f}", f"{e['ops_per_doc']:.0f}",
                     f"{e['layers_run_per_batch']:.2f}", f"{e['mean_exit_layer']:.2f}"]
            lines.append(cells + [f"{p['ms_per_doc']:.2f} ({100 * p['share']:.0f}%)" for p in e["categories"].values()])
    return markdown_table(head + [f"{c} ms (share)" for c in CATEGORIES], lines)


def main(
    dataset: str = typer.Argument(..., help="Corpus (project/corpus/<dataset>/test.spacy)"),
    docs: int = typer.Option(300, help="Test docs, evenly spaced (0: all)"),
    threads: int = typer.Option(1, help="torch intra-op threads, and ONNX Runtime's"),
    pipeline: Optional[Path] = typer.Option(None, help="The pipeline (default: <project>/training/<dataset>/final)"),
    project: Path = typer.Option(PROJECT, help="The project folder"),
    tuned: Optional[Path] = typer.Option(None, help="A tune.json: TOKEE runs its --target's fields, not the pipeline's"),
    target: float = typer.Option(2.0, help="The tuned target used with --tuned"),
    batch_sizes: str = typer.Option("1,32", help="Batch sizes"),
    repeats: int = typer.Option(3, help="Timing repetitions (median kept)"),
    ort: bool = typer.Option(True, help="Add ort-fp32 and ort-int8 where onnxruntime imports"),
    output_dir: Path = typer.Option(RESULTS, help="Where profile_layer_step_<dataset>.json/.md go"),
) -> Path:
    torch.set_num_threads(threads)
    path = pipeline or project / "training" / dataset / "final"
    nlp = spacy.load(path)
    texts = [eg.reference.text for eg in load_examples(nlp, project / "corpus" / dataset / "test.spacy", docs, spread=True)]
    words = [[t.text for t in doc] for doc in nlp.tokenizer.pipe(texts)]
    rows, source = choose_settings(nlp, tuned, target)
    sizes, depth = parse_numbers(batch_sizes, int, "--batch-sizes"), early_exit_pipes(nlp)[0][1].num_layers
    missing = onnxruntime_missing() if ort else "--no-ort"
    report: Dict[str, Any] = {
        "corpus": dataset, "pipeline": str(path), "docs": len(texts), "words": sum(map(len, words)), "depth": depth,
        "batch_sizes": sizes, "repeats": repeats, "command": command_line("benchmarks/profile_layer_step.py"),
        "threads": torch.get_num_threads(), "machine": machine(), "int8_kernels": int8_kernels_available(),
        "versions": {"torch": torch.__version__, "spacy": spacy.__version__}, "tokee_fields": source,
        "ort_skipped": missing, "categories": list(CATEGORIES), "settings": [],
    }
    with ExitStack() as stack:
        graphs = {} if missing else stack.enter_context(ort_graphs(nlp))
        labellers = {m: LabellerRow(m, m.split("-")[1], OrtFullDepth(nlp, graph, threads), {}, ORDERS)
                     for m, graph in graphs.items()}
        if labellers:
            report["versions"]["onnxruntime"] = sys.modules["onnxruntime"].__version__
        rows += [Row(m, ort_row.precision) for m, ort_row in labellers.items()]
        # ORT rows: the faster of document order and length-sorted (padding to the batch's longest doc
        # costs a plain session dearly at 32), as outside_rows times them; ours run the texts as given.
        timings = {row.key: labellers[row.method].timing(texts, words, sizes) if row.method in labellers
                   else one_order(setting_runner(nlp, texts, Setting(row.key, row.fields))) for row in rows}
        # The unrounded median words/s: the report's seconds are rounded to ms, too coarse for a few docs.
        speeds = time_rows(rows, timings, len(texts), report["words"], sizes, repeats, {})
        for row in rows:
            entry: Dict[str, Any] = {"setting": f"{row.method}/{row.precision}", "fields": row.fields, "by_batch": {}}
            for b in sizes:
                timed = report["words"] / speeds[row.key][b]
                if row.method in labellers:
                    by_order = row.result["words_per_second_by_order"]
                    order = max(ORDERS, key=lambda o: by_order[o][str(b)])
                    ordered = sorted(words, key=len) if order == LENGTH_SORTED else words
                    profiled, run = profile_ort(labellers[row.method].labeller, graphs[row.method], ordered, b)
                    out = {**per_doc(profiled, timed, len(texts)), "layers_run_per_batch": float(depth),
                           "mean_exit_layer": float(depth), "order": order,
                           "words_per_second_by_order": {o: by_order[o][str(b)] for o in ORDERS},
                           "session_run_ms_per_doc": round(run * 1e3 / len(texts), 4),
                           "tokenizer_numpy_ms_per_doc": round((profiled[0] - run) * 1e3 / len(texts), 4)}
                else:
                    out = {**per_doc(profile_pipeline(nlp, texts, row.fields, b), timed, len(texts)),
                           **layers_run(nlp, texts, row.fields, b)}
                entry["by_batch"][str(b)] = {"words_per_second": row.result["words_per_second"][str(b)], **out}
                print(f"[profile] {entry['setting']} b{b}: {out['wall_ms_per_doc']} ms/doc, {out['ops_per_doc']} ops/doc",
                      flush=True)
            report["settings"].append(entry)
    header = (f"{dataset}: {len(texts)} evenly spaced test docs, {report['threads']} thread(s), {report['machine']}. "
              f"ms/doc: wall, median of {repeats}; profiler +ms: what profiling added; categories: ms/doc (share of the "
              "profiled wall); ops/doc: top-level aten ops (ORT: nodes); ORT rows in their faster order (ours: document "
              "order), their attention includes the Q/K/V products.\n\n")
    table = markdown(report)
    path = write_report(report, output_dir / f"profile_layer_step_{dataset}", header, table)
    print(table + f"\nWrote {path}")
    return path


if __name__ == "__main__":
    typer.run(main)
